"""A node's sending side for tests and benchmarks: its key and uplink counter, frames sealed as a device
seals them, downlinks checked as a device checks them; and the registry that knows such nodes."""

from __future__ import annotations

import os

from gasguard.protocol import frame
from gasguard.protocol.const import DOWN, UP
from gasguard.registry import Device, Registry


class Node:
    """A device's sending side: its key and uplink counter; checks the gateway's downlinks."""

    def __init__(self, dev: int, key: bytes | None = None):
        self.dev, self.key = dev, key or os.urandom(16)
        self.fcnt = 0
        self.down_last = 0
        self.aseq = 0
        self.eseq = 0

    def reading(self, gas=0, pressure=2000, battery=90, state=0, **kw) -> bytes:
        self.fcnt += 1
        return frame.seal({"type": "reading", "dev": self.dev, "fcnt": self.fcnt, "gas": gas, "pressure": pressure,
                           "battery": battery, "state": state, **kw}, self.key, UP)

    def alarm(self, code=2, value=260, state=0x15, aseq=None, cleared=False) -> bytes:
        """A new alarm (aseq = the low byte of its counter, SPEC 3.4), or a copy of one: aseq=node.aseq."""
        self.fcnt += 1
        if aseq is None:
            self.aseq = aseq = self.fcnt & 0xFF
        return frame.seal({"type": "alarm", "dev": self.dev, "fcnt": self.fcnt, "code": code, "cleared": cleared,
                           "aseq": aseq, "age": 3, "value": value, "state": state}, self.key, UP)

    def event(self, code=1, data=b"\x01\x01\x00\x01") -> bytes:
        self.fcnt += 1
        self.eseq = self.fcnt & 0xFF
        return frame.seal({"type": "event", "dev": self.dev, "fcnt": self.fcnt, "code": code, "eseq": self.eseq,
                           "data": data}, self.key, UP)

    def ack(self, ref_type, ref, result=0) -> bytes:
        self.fcnt += 1
        return frame.seal({"type": "ack", "dev": self.dev, "fcnt": self.fcnt, "ref_type": ref_type, "ref": ref,
                           "result": result}, self.key, UP)

    def open_downlink(self, buf: bytes) -> dict:
        f = frame.open_frame(buf, self.key, DOWN, self.down_last)
        self.down_last = f["fcnt"]
        return f


def make_registry(path, nodes, *, state="commissioned", **extra) -> None:
    with Registry(path) as r:
        r.add_many([Device(dev_id=n.dev, key=n.key, profile="household", state=state, site_name=f"site {n.dev}",
                           households=1, **extra) for n in nodes])
