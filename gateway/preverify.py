"""The second core: decode, MIC check and the reading entry's JSON of a group of frames, in a worker process
while the event loop commits the group before it (issue 17).

One CPython thread did all of a reading's work; on a 2-core gateway the other core idled. The stateless,
expensive part of verification moves to one worker process:

    main (event loop)                          worker process
    group k+1 taken from the queue  ────────►  decode, key from the registry, HMAC (SPEC 5) for the
    group k: counters, rate, spool commit       counter its own mirror predicts, the entry JSON
             (fsync), acks, publish  ◄────────  [(fields, key, entry json) or None per frame]

The worker's answer is a **proposal**, never a decision: `Verifier.check(raw, now, pre)` uses it only when the
key is the registry's current key for that device and the main process's own counter reconstruction (from
its durable counters) gives the very counter the worker checked the MIC for; the HMAC verdict depends on
nothing else (key, direction, counter, bytes), so the result is the one the main process would have
computed. Anything else (a replay, a rotated key, a frame the worker refused, a counter the main process
rejected in between) takes the full in-process path, which also names the rejection. Replay protection,
rate limits, per-device order (groups are answered in order by the one worker), the fsync before the ack
and alarms first stay where they were, in the main process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing

from gasguard.protocol import counter, frame, mic
from gasguard.protocol.const import MAX_FCNT, MIC_LEN, UP
from gasguard.protocol.errors import ProtocolError

from . import payloads

log = logging.getLogger("gasguard.gateway.preverify")

_W: dict = {}      # the worker process's state: registry cache, counter mirror


def _init(registry_path: str, counters: dict) -> None:
    from .verify import RegistryCache
    _W["registry"] = RegistryCache(registry_path)
    _W["last"] = dict(counters)      # dev -> highest uplink counter this worker saw verify (a prediction)


def _verify(now: float, frames: list) -> list:
    """Runs in the worker. frames: [(raw, rx)]; one answer per frame: (fields, key, entry json) or None."""
    reg, last = _W["registry"], _W["last"]
    out = []
    for raw, rx in frames:
        if raw is None:
            out.append(None)
            continue
        try:
            f = frame.decode(raw)
        except ProtocolError:
            out.append(None)
            continue
        dev = f["dev"]
        try:
            device = reg.get(dev)
        except Exception:  # noqa: BLE001 - an unreadable registry: the main process decides and names it
            device = None
        if device is None or f["type"] == "command":
            out.append(None)
            continue
        cand = counter.forward(f["fcnt16"], last.get(dev, 0))
        if cand > MAX_FCNT or not mic.check(device.key, UP, cand, raw[:len(raw) - MIC_LEN], f["mic"]):
            out.append(None)
            continue
        last[dev] = cand
        f["fcnt"] = cand
        js = payloads.reading_json(f, now, rx) if f["type"] == "reading" else None
        out.append((f, device.key, js))
    return out


class PreVerifier:
    """One worker process; `submit(now, group)` -> an asyncio future of its answers, in submission order."""

    def __init__(self, registry_path, up: dict):
        """`up`: the spool's durable dev -> highest accepted uplink counter (the worker's first prediction)."""
        # spawn, not fork: the daemon has threads (paho, metrics) by the time a worker may be (re)started
        self.pool = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"), initializer=_init,
            initargs=(str(registry_path), up))
        self.ready = False      # the worker answered its first (empty) group: groups go to it from now on

    def start(self) -> None:
        """Start the worker in the background (spawning costs ~0.5 s, seconds on a loaded machine): ingest
        verifies in-process until `ready`, so a gateway restarted after a crash reads its ports at once."""
        warm = asyncio.get_running_loop().run_in_executor(self.pool, _verify, 0.0, [])

        def done(f):
            self.ready = not f.cancelled() and f.exception() is None
            if self.ready:
                log.info("verification worker started (decode, MIC and entry JSON on the second core)")
            elif not f.cancelled():
                log.error("verification worker did not start (%s); verifying in-process", f.exception())
        warm.add_done_callback(done)

    def submit(self, now: float, group: list) -> asyncio.Future:
        frames = [(raw, rx) for raw, rx, _route in group]
        return asyncio.get_running_loop().run_in_executor(self.pool, _verify, now, frames)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
