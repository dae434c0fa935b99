# Counter reconstruction from the 16 bits on air (SPEC 4). Pure arithmetic; the MIC decides.

from .const import MAX_FCNT, MAX_GAP


def forward(c16, last):
    """The smallest counter above `last` whose low 16 bits are `c16`."""
    f = (last & 0xFFFF0000) | c16
    if f <= last:
        f += 0x10000
    return f


def in_window(f, last, max_gap=MAX_GAP):
    return f - last <= max_gap and f <= MAX_FCNT


def identity(fcnt, seq):
    """SPEC 3.4: the identity of an alarm or event, the full counter of its first transmission, from the
    counter of this copy and its 8-bit `aseq`/`eseq` (the low byte of that first counter): the largest counter
    <= fcnt whose low byte is `seq`. Exact while a copy goes out fewer than 256 counters after the first;
    counters are never reused (SPEC 4), so two alarms never share an identity, across reboots included."""
    return fcnt - ((fcnt - seq) & 0xFF)


class CounterReservation:
    """Sender side: hands out counters and tells when the next block must be persisted.

    `ceiling` is what flash holds; counters below it may be used. At boot the node resumes from the
    stored ceiling (skipping at most one block) so a counter is never reused after a power loss.
    """

    def __init__(self, stored_ceiling, block):
        self.block = block
        self.next = stored_ceiling if stored_ceiling > 0 else 1
        self.ceiling = self.next  # nothing reserved yet: the first take() asks for a block

    def need_persist(self):
        return self.next >= self.ceiling

    def new_ceiling(self):
        return self.next + self.block

    def persisted(self, ceiling):
        self.ceiling = ceiling

    def take(self):
        """Next counter; the caller must have persisted a ceiling above it (need_persist() is False)."""
        if self.next >= self.ceiling:
            raise RuntimeError("counter block not persisted")
        if self.next > MAX_FCNT:
            raise RuntimeError("counter exhausted: rotate the key")
        n = self.next
        self.next = n + 1
        return n
