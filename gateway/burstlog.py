"""Log a repeating condition once per burst: the first occurrence now, then one summary per window."""

from __future__ import annotations

import logging
import time


class BurstLog:
    def __init__(self, logger: logging.Logger, window: float = 10.0, clock=time.monotonic):
        self.log, self.window, self.clock = logger, window, clock
        self.open: dict[str, list] = {}   # key -> [window start, suppressed count]

    def event(self, key: str, msg: str, *args, level: int = logging.WARNING) -> None:
        now = self.clock()
        b = self.open.get(key)
        if b is None or now - b[0] >= self.window:
            if b and b[1]:
                self.log.log(level, "%s: %d more in the last %.0f s", key, b[1], now - b[0])
            self.open[key] = [now, 0]
            self.log.log(level, msg, *args)
        else:
            b[1] += 1

    def flush(self) -> None:
        now = self.clock()
        for key, b in list(self.open.items()):
            if now - b[0] >= self.window:
                if b[1]:
                    self.log.warning("%s: %d more in the last %.0f s", key, b[1], now - b[0])
                del self.open[key]
