"""An independent receiver for the fleet tests: verifies every frame with the registry keys (as a gateway
must), keeps per-device counters, records what arrived, and builds signed downlinks. It uses only
gasguard.protocol, never the simulator's code."""

import collections

from gasguard.protocol import const, counter, frame


class Oracle:
    def __init__(self, keys, ack_after=1):
        self.keys = keys                     # dev -> key
        self.last = collections.defaultdict(int)
        self.down = collections.defaultdict(int)
        self.frames = []                     # every verified frame's fields, in arrival order
        self.copies = collections.Counter()  # (dev, type, seq) -> copies seen
        self.ack_after = ack_after           # ack an alarm/event only from this copy on
        self.acked = set()

    def accept(self, raw):
        """Verify one uplink; raises ProtocolError if it does not verify. Returns the fields."""
        f = frame.decode(raw)
        f["fcnt"] = frame.verify(raw, f, self.keys[f["dev"]], const.UP, self.last[f["dev"]])
        self.last[f["dev"]] = f["fcnt"]
        self.frames.append(f)
        return f

    def downlink(self, dev, fields):
        self.down[dev] += 1
        return frame.seal(dict(fields, dev=dev, fcnt=self.down[dev]), self.keys[dev], const.DOWN)

    def reply(self, f):
        """The ack a gateway sends for an alarm/event (None while holding back for ack_after)."""
        if f["type"] not in ("alarm", "event"):
            return None
        seq = f["aseq"] if f["type"] == "alarm" else f["eseq"]
        k = (f["dev"], f["type"], counter.identity(f["fcnt"], seq))    # SPEC 3.4 identity
        self.copies[k] += 1
        if self.copies[k] < self.ack_after:
            return None
        self.acked.add(k)
        ref_type = const.ALARM if f["type"] == "alarm" else const.EVENT
        return self.downlink(f["dev"], {"type": "ack", "ref_type": ref_type, "ref": seq, "result": 0})

    def alarms(self, dev=None, cleared=False):
        """Distinct alarms (first copy of each identity, SPEC 3.4) as (dev, code)."""
        seen, out = set(), []
        for f in self.frames:
            if f["type"] == "alarm" and f["cleared"] == cleared and (dev is None or f["dev"] == dev):
                k = (f["dev"], counter.identity(f["fcnt"], f["aseq"]))
                if k not in seen:
                    seen.add(k)
                    out.append((f["dev"], f["code"]))
        return out
