"""Uplink verification: decode -> registry lookup -> MIC and counter (protocol.frame.verify) -> policy.

Pure logic: no I/O besides the registry cache. The spool holds the durable counters; this class holds
the working copy (`ReplayState.up`), which ingest rolls back if the spool write fails.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

from gasguard.protocol import counter, frame, mic
from gasguard.protocol.const import FLAG_INLET, HEAD_LEN, MAX_FCNT, MAX_GAP, MIC_LEN, NA16, READING, UP, VERSION
from gasguard.protocol.errors import ProtocolError
from gasguard.protocol.units import pressure_from_wire
from gasguard.registry import Device, Registry, RegistryError

PREFETCH = 500   # devices per registry query when a group's devices are read ahead (RegistryCache.prefetch)
RECENT = 8   # frames per device remembered to tell a second path's copy (duplicate) from a replay
DUPLICATE_WINDOW = 30.0   # s (limits.duplicate_window): a second path's copy arrives within seconds


class RegistryUnreadable(RegistryError):
    """The registry file is missing, not a registry, or unreadable. At start: a refusal (exit 2). Mid-run:
    every frame is refused with reason `registry_unreadable` (the registry is the authority on keys and
    decommissioning; nodes retransmit alarms until acked) and the file is tried again every `check` s."""

    def __init__(self, path, detail: str):
        super().__init__(f"registry {path}: {detail}; restore it (gasguard gateway import-registry BUNDLE "
                         f"--registry {path} --trust AUTHORITY.pub.pem) or point gateway.registry at the right file")


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
    """Devices by id, read from the registry's SQLite file by primary key (a few µs: the file is local) and
    kept in a bounded LRU, not the whole district in memory (330,000 `Device` objects were ~280 MB).

    The LRU is dropped (and the file reopened, in case it was replaced) when the registry files change,
    checked with a stat at most every `check` s, and every `refresh` s regardless: a technician's
    decommissioning or key rotation reaches a running gateway within about a second, without a restart.
    A device not in the LRU is always read from the file, so a newly added one is seen at once."""

    SIZE = 32_768   # devices: holds a burst's working set (the ingest benchmark cycles through 25,000
                    # devices; a miss costs ~10 µs); a district's quiet 15-min cycle misses anyway, cheaply

    def __init__(self, path, refresh: float = 30.0, clock=time.monotonic, check: float = 1.0,
                 size: int | None = None):
        self.path, self.refresh, self.clock, self.check = path, refresh, clock, check
        self.size = size or self.SIZE
        self.cached: OrderedDict[int, Device] = OrderedDict()
        self.db: Registry | None = None
        self.loaded = -1e18
        self.checked = -1e18
        self.sig: tuple = ()
        self.error: str | None = None   # why the file cannot be read now; None: it can
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
        """Forget every cached device; the next lookups read the file (reopened: it may have been replaced)."""
        sig = self._signature()
        self.cached.clear()
        self.sig = sig
        self.loaded = self.checked = self.clock()
        if self.db is not None:
            self.db.close()
            self.db = None
        db = None
        try:
            db = Registry(self.path, readonly=True, check_same_thread=False)   # raises if the file is gone
            db.lookup(0)      # a probe: garbage, or a file that is not a registry, fails here and not later
        except (RegistryError, sqlite3.Error) as e:
            if db is not None:
                db.close()
            self.error = str(e)
            raise RegistryUnreadable(self.path, self.error) from None
        self.db, self.error = db, None

    def _read(self, dev: int) -> Device | None:
        if self.db is None:
            raise RegistryUnreadable(self.path, self.error or "not open")
        try:
            d = self.db.lookup(dev)
        except sqlite3.Error as e:       # overwritten in place between two stats
            self.db.close()
            self.db, self.error = None, str(e)
            self.cached.clear()
            raise RegistryUnreadable(self.path, self.error) from None
        if d is not None:
            self.cached[dev] = d
            if len(self.cached) > self.size:
                self.cached.popitem(last=False)
        return d

    def _fresh(self) -> None:
        """Reload when the file changed or `refresh` passed; raises RegistryUnreadable (after a retry at most
        every `check` s, so a burst of frames does not reopen the file for each)."""
        now = self.clock()
        if self.error is not None:
            if now - self.checked <= self.check:
                raise RegistryUnreadable(self.path, self.error)
            self.reload()
        elif now - self.loaded > self.refresh:
            self.reload()
        elif now - self.checked > self.check:
            self.checked = now
            if self._signature() != self.sig:
                self.reload()

    def readable(self) -> bool:
        """Reload when the file changed (as get() does); False while it cannot be read (get() names why)."""
        try:
            self._fresh()
        except RegistryUnreadable:
            return False
        return True

    def prefetch(self, devs) -> None:
        """Read the devices of a group that are not in the LRU with one query per PREFETCH of them (~4 µs a
        device instead of ~13): a district's 15-minute cycle misses the LRU for nearly every reading. Call
        after readable() said True. Best effort: a file overwritten meanwhile is left to get(), which names it."""
        cached = self.cached
        missing = list({d for d in devs if d not in cached})
        if len(missing) < 2 or self.db is None:
            return                        # (one miss: get() reads it as cheaply)
        try:
            for k in range(0, len(missing), PREFETCH):
                for d in self.db.lookup_many(missing[k:k + PREFETCH]):
                    cached[d.dev_id] = d
        except sqlite3.Error:
            return                        # overwritten in place: get() finds out and says so
        while len(cached) > self.size:
            cached.popitem(last=False)

    def get(self, dev: int) -> Device | None:
        """The device, None when it is not in the registry; raises RegistryUnreadable (after a retry at most
        every `check` s, so a burst of frames does not reopen the file for each)."""
        self._fresh()
        d = self.cached.get(dev)
        if d is None:
            return self._read(dev)
        self.cached.move_to_end(dev)
        return d

    def recheck(self, dev: int) -> Device | None:
        """Read this device again from the file after a MIC failure: a technician may just have rotated its
        key (gasguard device rotate-key), and its new frames must not wait for the next stat."""
        self.cached.pop(dev, None)
        if self.error is not None:
            raise RegistryUnreadable(self.path, self.error)
        return self._read(dev)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


class ReplayState:
    """What verification keeps per heard device: the uplink counter (the replay protection: durable in the
    spool's `counters` table, committed with each accepted frame, loaded back at start), the rate bucket and
    the memory of recent frames that tells a second path's copy from a replay. Never dropped. Presence
    (online, route, retained state) is another table: presence.PresenceTable. Slotted: ~330,000 devices."""

    __slots__ = ("up", "tokens", "t_bucket", "recent")

    def __init__(self, up: int = 0):
        self.up = up                       # highest accepted uplink counter
        self.tokens: float | None = None   # rate bucket: tokens at t_bucket; None until the first reading
        self.t_bucket = 0.0
        self.recent = b""                  # the last RECENT accepted frames: (fcnt u32 LE + mic + s u32 LE) each

    def saw(self, fcnt: int, mic: bytes, now: float, window: float) -> bool:
        """This exact frame was accepted within the last `window` seconds (a copy by another path)."""
        rec, r = fcnt.to_bytes(4, "little") + mic, self.recent
        for i in range(0, len(r), _REC):
            if r[i:i + _KEY] == rec:
                return (int(now) - int.from_bytes(r[i + _KEY:i + _REC], "little")) & 0xFFFFFFFF <= window
        return False


# the reading fast path (Verifier._reading): a reading frame's header and body in one unpack
_READING_HDR = (VERSION << 6) | (READING << 3)
_READING_LEN = HEAD_LEN + 6 + MIC_LEN
_R = struct.Struct(">BIHHHBB")
_RI = struct.Struct(">BIHHHBBH")
_B0_HEAD = mic.b0(UP, 0)[:4]          # SPEC 5: B0 = 'G' 'G' version direction | fcnt u32 BE
_equal = hmac.compare_digest

# HMAC-SHA256 from each key's padded inner and outer SHA-256 states, made once per key and copied per frame:
# 0.96 µs a MIC against 2.73 µs for hmac.digest, which makes OpenSSL 3 fetch the algorithm and key the MAC on
# every call (timeit, 16-byte key, 26-byte message, 2026-12-03). Same bytes as hmac.digest (RFC 2104), tested
# for key lengths around the 64-byte block (tests/test_verify_fast.py).
PADS_MAX = 65_536     # keys kept (two SHA-256 states each, ~0.5 KB): twice the registry LRU; past it, start over
_PADS: dict[bytes, tuple] = {}
_IPAD, _OPAD = bytes(x ^ 0x36 for x in range(256)), bytes(x ^ 0x5C for x in range(256))


def _pads(key: bytes) -> tuple:
    k = key if len(key) <= 64 else hashlib.sha256(key).digest()
    k = k.ljust(64, b"\0")
    if len(_PADS) >= PADS_MAX:
        _PADS.clear()
    p = _PADS[key] = (hashlib.sha256(k.translate(_IPAD)), hashlib.sha256(k.translate(_OPAD)))
    return p


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """hmac.digest(key, msg, "sha256"), from the key's precomputed pads (hot path)."""
    p = _PADS.get(key) or _pads(key)
    i = p[0].copy()
    i.update(msg)
    o = p[1].copy()
    o.update(i.digest())
    return o.digest()

_KEY = 4 + MIC_LEN


def mic_at_next(key: bytes, raw: bytes, n: int, c16: int, last: int) -> int | None:
    """The full counter of an uplink frame whose counter's low 16 bits are `c16`, the device's last accepted
    being `last` (counter.forward, inlined), when it is within the window and the frame's MIC verifies at it;
    else None, and the general path names why (hot path: the reading fast paths)."""
    fcnt = (last & 0xFFFF0000) | c16
    if fcnt <= last:
        fcnt += 0x10000
    if fcnt > MAX_FCNT or fcnt - last > MAX_GAP:
        return None
    if not _equal(hmac_sha256(key, _B0_HEAD + fcnt.to_bytes(4, "big") + raw[:n - MIC_LEN])[:MIC_LEN],
                  raw[n - MIC_LEN:]):
        return None
    return fcnt
_REC = _KEY + 4     # + the accept time, whole seconds (u32 LE, wraps in 136 years)


class Verifier:
    def __init__(self, registry: RegistryCache, up: dict[int, int], *, rate_per_min: float = 60.0,
                 burst: int = 30, duplicate_window: float = DUPLICATE_WINDOW):
        """`up`: the spool's durable dev -> highest accepted uplink counter."""
        self.registry = registry
        self.states: dict[int, ReplayState] = {dev: ReplayState(c) for dev, c in up.items()}
        self.rate = rate_per_min / 60.0
        self.burst = float(burst)
        self.duplicate_window = duplicate_window
        self.pre_used = 0        # frames verified on the worker's proposal (no decode/HMAC here)
        self.pre_missed = 0      # proposals that did not fit: verified here in full

    def state(self, dev: int) -> ReplayState:
        st = self.states.get(dev)
        if st is None:
            st = self.states[dev] = ReplayState()
        return st

    def check(self, raw: bytes, now: float, pre: tuple | None = None) -> Verified:
        """Verify one uplink frame; raises Rejected(reason). Does not change any state (but the rate bucket).

        `pre` is the worker process's proposal (gateway/preverify.py): (fields with "fcnt", key, ...). It is
        taken only if the key is the registry's current key and this process's own reconstruction from its
        counters gives the counter the worker verified the MIC for; else the frame is verified here."""
        if pre is None:
            n = len(raw)
            if (n == _READING_LEN and raw[0] == _READING_HDR) or (n == _READING_LEN + 2
                                                                  and raw[0] == _READING_HDR | FLAG_INLET):
                v = self._reading(raw, n, now)
                if v is not None:
                    return v
        if pre is not None:
            f, key = pre[0], pre[1]
            dev = f["dev"]
            try:
                device = self.registry.get(dev)
            except RegistryUnreadable:
                device = None                    # the full path below names it
            if device is not None and device.active and device.key == key:
                st = self.states.get(dev)
                last = st.up if st is not None else 0
                if counter.forward(f["fcnt16"], last) == f["fcnt"] and f["fcnt"] - last <= MAX_GAP:
                    self.pre_used += 1
                    if f["type"] == "reading" and not self._take_token(dev, now):
                        raise Rejected("rate_limit", dev, f"{dev:08x} sends readings faster than limits.rate_per_min")
                    return Verified(f, device)
            self.pre_missed += 1
        try:
            f = frame.decode(raw)
        except ProtocolError as e:
            raise Rejected(e.reason, None, str(e)) from None
        dev = f["dev"]
        if f["type"] == "command":
            raise Rejected("direction", dev, "a command frame travels downlink only")
        try:
            device = self.registry.get(dev)
        except RegistryUnreadable as e:
            raise Rejected("registry_unreadable", dev, str(e)) from None
        if device is None:
            raise Rejected("unknown_device", dev, f"{dev:08x} is not in the registry")
        if not device.active:
            raise Rejected("decommissioned", dev, f"{dev:08x} is decommissioned")
        st = self.states.get(dev)
        last = st.up if st is not None else 0
        try:
            try:
                f["fcnt"] = frame.verify(raw, f, device.key, UP, last)
            except ProtocolError as e:
                try:
                    again = self.registry.recheck(dev) if e.reason == "mic" else None
                except RegistryUnreadable as u:
                    raise Rejected("registry_unreadable", dev, str(u)) from None
                if again is None or again.key == device.key:
                    raise
                device = again                   # the key was rotated: the registry's new entry decides
                if not device.active:
                    raise Rejected("decommissioned", dev, f"{dev:08x} is decommissioned") from None
                f["fcnt"] = frame.verify(raw, f, device.key, UP, last)
        except ProtocolError as e:
            reason = e.reason
            # SPEC 4 step 4: an exact copy of a frame we accepted seconds ago came by another path (a second
            # radio or forwarder): "duplicate", harmless; anything older (the same frame an hour later is
            # someone replaying a recording) is a "replay"
            if reason == "replay" and st is not None and e.fcnt is not None and st.saw(
                    e.fcnt, f["mic"], now, self.duplicate_window):
                reason = "duplicate"
            raise Rejected(reason, dev, str(e)) from None
        if f["type"] == "reading" and not self._take_token(dev, now):
            raise Rejected("rate_limit", dev, f"{dev:08x} sends readings faster than limits.rate_per_min")
        return Verified(f, device)

    def _reading(self, raw: bytes, n: int, now: float) -> Verified | None:
        """The common frame, a well-formed reading of a known, active device whose MIC verifies at the next
        counter, in one pass: the same fields and verdict as decode + verify below (tests/test_verify_fast.py
        holds them equal), without their generality. None: anything else, and the full path decides and names
        it (a MIC that fails here may be a rotated key, a replay or a duplicate)."""
        if n == _READING_LEN:
            _h, dev, c16, g, p, bat, st = _R.unpack_from(raw)
            inlet = None
        else:
            _h, dev, c16, g, p, bat, st, iw = _RI.unpack_from(raw)
            inlet = pressure_from_wire(iw)
        if (g > 1000 and g != NA16) or (bat > 100 and bat != 0xFF) or dev == 0 or dev == 0xFFFFFFFF:
            return None
        try:
            device = self.registry.get(dev)
        except RegistryUnreadable:
            return None
        if device is None or not device.active:
            return None
        sta = self.states.get(dev)
        fcnt = mic_at_next(device.key, raw, n, c16, sta.up if sta is not None else 0)
        if fcnt is None:
            return None
        tag = raw[n - MIC_LEN:]
        if not self._take_token(dev, now):
            raise Rejected("rate_limit", dev, f"{dev:08x} sends readings faster than limits.rate_per_min")
        return Verified({"type": "reading", "dev": dev, "fcnt16": c16, "mic": tag,
                         "gas": None if g == NA16 else g, "pressure": pressure_from_wire(p),
                         "battery": None if bat == 0xFF else bat, "state": st, "inlet": inlet, "fcnt": fcnt}, device)

    def _take_token(self, dev: int, now: float) -> bool:
        # alarms, events and acks are never rate limited: only a runaway reading stream is
        b = self.state(dev)
        if b.tokens is None:
            b.tokens, b.t_bucket = self.burst, now
        b.tokens = min(self.burst, b.tokens + (now - b.t_bucket) * self.rate)
        b.t_bucket = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True

    def accept(self, v: Verified, now: float) -> int:
        """Record an accepted frame in the working state. Returns the previous counter (for rollback)."""
        st = self.state(v.f["dev"])
        prev, st.up = st.up, v.f["fcnt"]
        r = st.recent + v.f["fcnt"].to_bytes(4, "little") + v.f["mic"] + (int(now) & 0xFFFFFFFF).to_bytes(4, "little")
        st.recent = r[-RECENT * _REC:]      # one small bytes object, not a list of tuples (memory)
        return prev

    def rollback(self, dev: int, prev: int) -> None:
        st = self.states[dev]
        st.up = prev
        if st.recent:
            st.recent = st.recent[:-_REC]
