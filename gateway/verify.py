"""Uplink verification: decode -> registry lookup -> MIC and counter (protocol.frame.verify) -> policy.

Pure logic: no I/O besides the registry cache. The daemon owns the durable counters; this class holds
the working copy (`last`), which the daemon rolls back if the spool write fails.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from gasguard.protocol import frame
from gasguard.protocol.const import UP
from gasguard.protocol.errors import ProtocolError

from .registry import Device, Registry

RECENT = 8   # frames per device remembered to tell a second path's copy (duplicate) from a replay


class Rejected(Exception):
    def __init__(self, reason: str, dev: int | None = None, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.dev = dev


@dataclass
class Verified:
    f: dict            # decoded fields with "fcnt"
    device: Device


class RegistryCache:
    """Devices by id. Reloaded when the registry files change (checked with a stat at most every `check` s),
    every `refresh` s regardless, and on a miss at most once a second: a technician's decommissioning or
    key rotation reaches a running gateway within about a second, without a restart, while a quiet
    registry of 330,000 devices is never re-read for nothing."""

    def __init__(self, path, refresh: float = 30.0, clock=time.monotonic, check: float = 1.0):
        self.path, self.refresh, self.clock, self.check = path, refresh, clock, check
        self.devices: dict[int, Device] = {}
        self.loaded = -1e18
        self.miss_reload = -1e18
        self.checked = -1e18
        self.sig: tuple = ()
        self.reload()

    def _signature(self) -> tuple:
        # the CLI writes in WAL mode: a commit lands in -wal first and in the main file at a checkpoint
        # (an empty -wal, which a reader's open leaves behind, is the same as none)
        out = []
        for p in (str(self.path), f"{self.path}-wal"):
            try:
                st = os.stat(p)
            except OSError:
                out.append(None)
                continue
            out.append((st.st_mtime_ns, st.st_size, st.st_ino) if st.st_size else None)
        return tuple(out)

    def reload(self) -> None:
        sig = self._signature()
        with Registry(self.path, readonly=True) as r:
            self.devices = {d.dev_id: d for d in r.all()}
        self.sig = sig
        self.loaded = self.checked = self.clock()

    def get(self, dev: int) -> Device | None:
        now = self.clock()
        if now - self.loaded > self.refresh:
            self.reload()
        elif now - self.checked > self.check:
            self.checked = now
            if self._signature() != self.sig:
                self.reload()
        d = self.devices.get(dev)
        if d is None and now - self.miss_reload > 1.0:
            self.miss_reload = now
            self.reload()
            d = self.devices.get(dev)
        return d

    def recheck(self, dev: int) -> Device | None:
        """Reload (at most once a second, shared with misses) after a MIC failure: a technician may just have
        rotated this device's key (gasguard device rotate-key), and its new frames must not wait `refresh`."""
        now = self.clock()
        if now - self.miss_reload > 1.0:
            self.miss_reload = now
            self.reload()
        return self.devices.get(dev)


class Verifier:
    def __init__(self, registry: RegistryCache, last: dict[tuple[int, int], int], *, rate_per_min: float = 60.0,
                 burst: int = 30):
        self.registry = registry
        self.last = last                      # (dev, direction) -> highest accepted counter
        self.recent: dict[int, list] = {}
        self.rate = rate_per_min / 60.0
        self.burst = float(burst)
        self.buckets: dict[int, list[float]] = {}

    def check(self, raw: bytes, now: float) -> Verified:
        """Verify one uplink frame; raises Rejected(reason). Does not change any state."""
        try:
            f = frame.decode(raw)
        except ProtocolError as e:
            raise Rejected(e.reason, None, str(e)) from None
        dev = f["dev"]
        if f["type"] == "command":
            raise Rejected("direction", dev, "a command frame travels downlink only")
        device = self.registry.get(dev)
        if device is None:
            raise Rejected("unknown_device", dev, f"{dev:08x} is not in the registry")
        if not device.active:
            raise Rejected("decommissioned", dev, f"{dev:08x} is decommissioned")
        last = self.last.get((dev, UP), 0)
        try:
            try:
                f["fcnt"] = frame.verify(raw, f, device.key, UP, last)
            except ProtocolError as e:
                again = self.registry.recheck(dev) if e.reason == "mic" else None
                if again is None or again.key == device.key:
                    raise
                device = again                   # the key was rotated: the registry's new entry decides
                if not device.active:
                    raise Rejected("decommissioned", dev, f"{dev:08x} is decommissioned") from None
                f["fcnt"] = frame.verify(raw, f, device.key, UP, last)
        except ProtocolError as e:
            reason = e.reason
            # SPEC 4 step 4: an exact copy of a frame we just accepted came by another path (a second
            # radio or forwarder): "duplicate", harmless; anything else older is a "replay"
            if reason == "replay" and (e.fcnt, f["mic"]) in self.recent.get(dev, ()):
                reason = "duplicate"
            raise Rejected(reason, dev, str(e)) from None
        if f["type"] == "reading" and not self._take_token(dev, now):
            raise Rejected("rate_limit", dev, f"{dev:08x} sends readings faster than limits.rate_per_min")
        return Verified(f, device)

    def _take_token(self, dev: int, now: float) -> bool:
        # alarms, events and acks are never rate limited: only a runaway reading stream is
        b = self.buckets.get(dev)
        if b is None:
            b = self.buckets[dev] = [self.burst, now]
        b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if b[0] < 1.0:
            return False
        b[0] -= 1.0
        return True

    def accept(self, v: Verified) -> int:
        """Record an accepted frame in the working state. Returns the previous counter (for rollback)."""
        dev = v.f["dev"]
        prev = self.last.get((dev, UP), 0)
        self.last[(dev, UP)] = v.f["fcnt"]
        r = self.recent.get(dev)
        if r is None:
            r = self.recent[dev] = []     # a short list, not a deque: 330,000 of them (a deque is 600+ bytes)
        r.append((v.f["fcnt"], v.f["mic"]))
        if len(r) > RECENT:
            del r[0]
        return prev

    def rollback(self, dev: int, prev: int) -> None:
        self.last[(dev, UP)] = prev
        r = self.recent.get(dev)
        if r:
            r.pop()
