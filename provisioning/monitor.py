"""`device monitor`: what a node sends, decoded and verified with the registry's key as the gateway would.

Passive: the firmware keeps running, nothing is acked (the gateway does that). A device's first frame is
taken at whatever counter it has reached; later ones must move forward (SPEC 4), so a replayed frame shows.
"""

from __future__ import annotations

import time

from gasguard.registry import Registry
from gasguard.protocol import const, frame
from gasguard.protocol.errors import ProtocolError

from .board import Board


def describe(f: dict) -> str:
    t = f["type"]
    if t == "reading":
        st = frame.state_fields(f["state"])
        gas = "--" if f["gas"] is None else f"{f['gas'] / 10:g} %LEL"
        p = "--" if f["pressure"] is None else f"{f['pressure']} Pa"
        extra = f" inlet {f['inlet']} Pa" if f.get("inlet") is not None else ""
        bat = "mains" if f["battery"] is None else f"{f['battery']} %"
        return (f"reading gas {gas} pressure {p}{extra} battery {bat} valve "
                f"{'closed' if st['valve'] == 1 else 'open'}{' LATCHED' if st['latched'] else ''}"
                f"{' FAULT' if st['fault'] else ''}")
    if t == "alarm":
        return (f"alarm {const.ALARM_NAMES.get(f['code'], f['code'])}{' cleared' if f['cleared'] else ''} "
                f"value {f['value']} aseq {f['aseq']}")
    if t == "event":
        return f"event {const.EVENT_NAMES.get(f['code'], f['code'])} data {f['data'].hex()} eseq {f['eseq']}"
    if t == "ack":
        return f"ack ref_type {f['ref_type']} ref {f['ref']} result {f['result']}"
    return t


def watch(board: Board, reg: Registry, duration: float | None, count: int | None, emit) -> dict:
    """Call emit(record) per frame and log line until `duration` s or `count` frames; returns the tally."""
    last: dict[int, int] = {}
    devices = {}   # dev id -> its registry entry (None: unknown), read once
    tally = {"frames": 0, "verified": 0, "rejected": 0, "log_lines": 0}
    deadline = time.monotonic() + (duration if duration is not None else 10 ** 9)

    def text(line):
        tally["log_lines"] += 1
        emit({"log": line})

    for f in board.frames(deadline, on_text=text):
        dev = f["dev"]
        if dev not in devices:
            devices[dev] = reg.get(dev)
        d = devices[dev]
        rec = {"dev": f"{dev:08x}", "type": f["type"]}
        if d is None or not d.active:
            rec["verified"] = False
            rec["reason"] = "unknown_device" if d is None else "decommissioned"
        else:
            try:
                gap = const.MAX_GAP if dev in last else const.MAX_FCNT
                f["fcnt"] = frame.verify(f["raw"], f, d.key, const.UP, last.get(dev, 0), max_gap=gap)
                last[dev] = f["fcnt"]
                rec.update(verified=True, fcnt=f["fcnt"], text=describe(f))
            except ProtocolError as e:
                rec.update(verified=False, reason=e.reason)
        tally["frames"] += 1
        tally["verified" if rec["verified"] else "rejected"] += 1
        fields = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in f.items() if k not in ("raw", "mic")}
        rec["fields"] = fields
        emit(rec)
        if count is not None and tally["frames"] >= count:
            break
    return tally
