"""The garbage collector's pauses, kept off the alarm path (issue 17).

CPython's full (generation-2) collection walks every tracked object while it holds the GIL. The gateway keeps
a ReplayState and a Presence per heard device, so the automatic full collection - due whenever long-lived
objects grew by a quarter, which the registry LRU's churn makes happen - stops the event loop for as long as
that walk takes. Measured (`gasguard bench memory`: the real daemon with every device heard once): 123 ms with
58,240 devices (189,000 tracked objects), 532 ms with a district's 330,000 (732,000); after the freeze below,
0.00 ms. An alarm that arrives meanwhile waits. In the in-process latency run at 10,000 readings/s (5,000
devices) two full collections of 27 and 43 ms fell in one 5 s run, and they were the alarm p99's tail.

gc.freeze() moves every tracked object into a permanent generation that no collection walks; those objects
are still freed by reference counting when dropped (per-device state holds no reference cycles). So:

- at start, one full collection (nothing waits yet), then freeze; young collections every YOUNG_EVERY
  allocations, not CPython's 700;
- every FREEZE_EVERY s a young collection (generations 0-1, ~1-3 ms: the cycles of recent garbage go first,
  so they are not frozen), then freeze what survived: new devices' state joins the permanent generation;
- what could leak is a cycle that became garbage after it was frozen. A full collection that unfreezes first
  reclaims it every FULL_EVERY s, only while ingest is idle: no frame waits when it starts (one arriving
  during it waits, as before, but once in FULL_EVERY, not whenever the heap grew by a quarter).
"""

from __future__ import annotations

import gc
import time

FREEZE_EVERY = 300.0        # s between freezes: a full collection walks at most what was made since (bounded)
# allocations (net, of container objects) between two young collections; CPython's default is 700. Ingest makes and
# drops a few tuples and lists per reading, so at 700 a gateway made 48-55 young and 4 middle collections in a 1-s
# burst of 50,000 readings (~12 ms of CPU: 2,500 new devices' state survives each walk); at 10,000 it made 2, 2.4-6.6
# ms in all, the longest 1.3-5.8 ms (2 runs; BENCHMARKS.md, twentieth pass). What a young collection frees is only
# cycles (reference counting frees the rest): 10,000 objects of those at most wait for it.
YOUNG_EVERY = 10_000
FULL_EVERY = 6 * 3600.0     # s between full collections (reclaiming frozen cycles), taken only when idle


class Collector:
    """Owned by the daemon: start() once its state is loaded, tick() from its ticker."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.last = self.last_full = clock()
        self.fulls = 0

    def start(self) -> None:
        gc.set_threshold(YOUNG_EVERY, *gc.get_threshold()[1:])
        gc.collect()
        gc.freeze()
        self.last = self.last_full = self.clock()

    def tick(self, idle: bool) -> str | None:
        """'full', 'freeze' or None: what this tick did."""
        now = self.clock()
        if idle and now - self.last_full >= FULL_EVERY:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.last = self.last_full = now
            self.fulls += 1
            return "full"
        if now - self.last >= FREEZE_EVERY:
            self.freeze()
            return "freeze"
        return None

    def freeze(self) -> None:
        """The young generations collected, then everything that survived frozen."""
        gc.collect(1)
        gc.freeze()
        self.last = self.clock()
