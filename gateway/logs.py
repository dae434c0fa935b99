"""Structured logs: one line per event, key=value text or JSON (gateway.log_json) for a log shipper."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, r: logging.LogRecord) -> str:
        d = {"t": round(r.created, 3), "level": r.levelname.lower(), "logger": r.name, "msg": r.getMessage()}
        if r.exc_info:
            d["exc"] = self.formatException(r.exc_info)
        return json.dumps(d)


def setup(level: str = "INFO", as_json: bool = False) -> None:
    h = logging.StreamHandler(sys.stderr)
    if as_json:
        h.setFormatter(JsonFormatter())
    else:
        f = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        f.converter = time.gmtime
        h.setFormatter(f)
    root = logging.getLogger("gasguard")
    root.handlers[:] = [h]
    root.setLevel(level)
    root.propagate = False
