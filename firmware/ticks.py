# MicroPython's millisecond ticks, defined once for the firmware (MicroPython docs, time.ticks_diff).
#
# time.ticks_ms() wraps at 2**30. Two tick values are compared by their difference modulo the period: a
# difference in the lower half of the ring means "at or past", in the upper half "not yet". All of it is
# small-int arithmetic, so the hot path never allocates (a long uptime never makes a long int).

TICKS_MASK = 0x3FFFFFFF     # ticks_ms period - 1 (the ring is 2**30 ms, ~12.4 days)
TICKS_HALF = 0x20000000     # half the ring: the largest distance that still means "ahead"


def add(t, ms):
    """The tick `ms` after `t` (ms below TICKS_HALF)."""
    return (t + ms) & TICKS_MASK


def elapsed(now, since):
    """ms from `since` to `now` (since at or before now)."""
    return (now - since) & TICKS_MASK


def reached(now, t):
    """True once `now` is at or past `t`."""
    return ((now - t) & TICKS_MASK) < TICKS_HALF


def until(now, t):
    """ms from `now` until `t`; 0 once t is reached."""
    d = (t - now) & TICKS_MASK
    return 0 if d > TICKS_HALF else d
