"""Logs that cannot be flooded or forged (issue 12 item 7).

`BurstLog`: a repeating condition is logged `allow` times per window and then counted; when the window
closes, one line says how many were suppressed. Tracebacks go through it too (`exception`), keyed by where
they come from, so 60,000 bad inputs give a handful of tracebacks and a count, not 6,648 of them.

`untrusted`: text from outside (a node's serial output, a forwarder's error string, a command's request id)
with every control and non-printing character escaped and a bounded length, so it can never become a log
line of its own (a forged `CRITICAL` line) or rewrite a terminal.
"""

from __future__ import annotations

import logging
import time

UNTRUSTED_MAX = 200    # characters of outside text per log line; the rest is counted, not logged


def untrusted(text: bytes | str, limit: int = UNTRUSTED_MAX) -> str:
    """Outside text made safe for one log line: \\n, \\r, ESC, DEL, U+2028... escaped as \\xNN / \\uNNNN."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "backslashreplace")
    more = len(text) - limit
    if more > 0:
        text = text[:limit]
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return out + (f"...(+{more} chars)" if more > 0 else "")


class BurstLog:
    def __init__(self, logger: logging.Logger, window: float = 10.0, clock=time.monotonic, on_suppressed=None):
        self.log, self.window, self.clock = logger, window, clock
        self.open: dict[str, list] = {}   # key -> [window start, logged in window, suppressed count, level]
        self.on_suppressed = on_suppressed   # (key, n) -> None: e.g. a metric

    def event(self, key: str, msg: str, *args, level: int = logging.WARNING, allow: int = 1, exc_info=None,
              extra: dict | None = None) -> bool:
        """Log unless this key already logged `allow` lines in the current window. True if logged."""
        now = self.clock()
        b = self.open.get(key)
        if b is None or now - b[0] >= self.window:
            if b:
                self._summary(key, b, now)
            b = self.open[key] = [now, 0, 0, level]
        if b[1] >= allow:
            b[2] += 1
            return False
        b[1] += 1
        self.log.log(level, msg, *args, exc_info=exc_info, extra=extra)
        return True

    def exception(self, key: str, msg: str, *args, exc: BaseException | None = None) -> bool:
        """A traceback (of the exception being handled, or `exc`), at most once per window per key."""
        return self.event(key, msg, *args, level=logging.ERROR, exc_info=exc if exc is not None else True)

    def _summary(self, key: str, b: list, now: float) -> None:
        if b[2]:
            self.log.log(b[3], "%s: %d more suppressed in the last %.0f s", key, b[2], now - b[0])
            if self.on_suppressed:
                self.on_suppressed(key, b[2])

    def flush(self) -> None:
        now = self.clock()
        for key, b in list(self.open.items()):
            if now - b[0] >= self.window:
                self._summary(key, b, now)
                del self.open[key]
