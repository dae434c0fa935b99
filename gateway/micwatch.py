"""MIC failures are alarmed, not only counted (SPEC 5; issue 12 item 9).

A failed MIC is either a damaged frame that slipped past the CRC, a node with a stale key, or someone
forging frames for a real device id. One is noise; `threshold` of them for one device within `window`
seconds is a security event: the daemon publishes it and raises a metric, once per window per device.
Pure logic, the daemon's clock passed in.
"""

from __future__ import annotations

from collections import OrderedDict, deque


class MicWatch:
    MAX_DEVICES = 10_000   # devices tracked at once; the least recently failed one is forgotten (counted)

    def __init__(self, threshold: int, window: float, max_devices: int | None = None):
        self.threshold, self.window = threshold, window
        self.max_devices = max_devices or self.MAX_DEVICES
        self.failures: OrderedDict[int, deque] = OrderedDict()   # dev -> times of its last `threshold` failures
        self.alarmed: dict[int, float] = {}                        # dev -> when its last event was raised
        self.forgotten = 0                                         # devices dropped past max_devices

    def failed(self, dev: int, now: float) -> int | None:
        """Record one failure; returns the failures in the window when this one raises the event, else None."""
        q = self.failures.get(dev)
        if q is None:
            q = self.failures[dev] = deque(maxlen=self.threshold)
            if len(self.failures) > self.max_devices:
                old, _ = self.failures.popitem(last=False)
                self.alarmed.pop(old, None)
                self.forgotten += 1
        else:
            self.failures.move_to_end(dev)
        q.append(now)
        while q and now - q[0] > self.window:
            q.popleft()
        if len(q) < self.threshold or now - self.alarmed.get(dev, -1e18) < self.window:
            return None
        self.alarmed[dev] = now
        return len(q)
