"""Downlink commands: an MQTT request on <root>/<dev>/cmd becomes a signed command frame; the device's
ack, or a timeout, becomes a result on <root>/<dev>/cmd/result.

Request JSON: {"request_id": str, "cmd": "reset"|"set_param"|"status"|"selftest",
               "param": int, "value": int (set_param), "mask": int (selftest), "ttl_s": number (optional)}.
Authorisation (issue 14): the request arrives signed (gasguard.authority envelope); the daemon's Gate checks
signature, role (node commands are engineers'), revocation, freshness and replay before anything is queued,
and records allowed and refused requests in the audit log. The broker's ACL is the second wall. The gateway
only commands commissioned devices in its registry.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass

from gasguard.protocol.const import COMMAND, COMMAND_CODES as _CODES

log = logging.getLogger("gasguard.gateway.commands")

class BadCommand(ValueError):
    pass


def parse_request(payload: bytes | dict) -> dict:
    """A request (JSON bytes, or the verified body of a signed request) -> its checked fields."""
    try:
        req = json.loads(payload) if isinstance(payload, (bytes, str)) else payload
    except (ValueError, RecursionError):     # RecursionError: nested past the parser's depth
        raise BadCommand("payload is not JSON") from None
    if not isinstance(req, dict):
        raise BadCommand("payload must be a JSON object")
    rid = req.get("request_id")
    if not isinstance(rid, str) or not 0 < len(rid) <= 128:
        raise BadCommand("request_id: a string of 1-128 characters is required")
    cmd = req.get("cmd")
    if not isinstance(cmd, str) or cmd not in _CODES:     # a list or object is not hashable: no TypeError
        raise BadCommand(f"cmd: choose one of {', '.join(_CODES)}")
    args = b""
    if cmd == "set_param":
        p, v = req.get("param"), req.get("value")
        if not isinstance(p, int) or not 0 < p < 256 or not isinstance(v, int) or not 0 <= v <= 0xFFFF:
            raise BadCommand("set_param needs param (1-255) and value (0-65535, wire units)")
        args = struct.pack(">BH", p, v)
    elif cmd == "selftest":
        m = req.get("mask", 7)
        if not isinstance(m, int) or not 0 < m < 8:
            raise BadCommand("selftest mask: 1 valve, 2 sensor, 4 link (1-7)")
        args = bytes([m])
    ttl = req.get("ttl_s")
    if ttl is not None and (not isinstance(ttl, (int, float)) or not 0 < ttl <= 86400):
        raise BadCommand("ttl_s: seconds, 0 < ttl_s <= 86400")
    return {"request_id": rid, "cmd": cmd, "code": _CODES[cmd], "args": args, "ttl": ttl}


@dataclass
class Pending:
    dev: int
    cid: int
    request_id: str
    cmd: str
    code: int
    args: bytes
    deadline: float
    next_try: float
    tries: int = 0
    auth: object = None     # the Verified signed request (gasguard.authority): its outcome is audited too


class Commands:
    """Pending commands by (dev, cid). Pure bookkeeping; the daemon seals, sends and publishes."""

    def __init__(self, timeout: float, retry: float):
        self.timeout, self.retry = timeout, retry
        self.pending: dict[tuple[int, int], Pending] = {}
        self.next_cid: dict[int, int] = {}

    def add(self, dev: int, req: dict, now: float) -> Pending:
        cid = self.next_cid.get(dev, 0)
        for _ in range(256):
            cid = (cid + 1) & 0xFF
            if (dev, cid) not in self.pending:
                break
        else:
            raise BadCommand("256 commands already pending for this device")
        self.next_cid[dev] = cid
        p = Pending(dev, cid, req["request_id"], req["cmd"], req["code"], req["args"],
                    now + (req["ttl"] or self.timeout), now)
        self.pending[(dev, cid)] = p
        return p

    def fields(self, p: Pending) -> dict:
        return {"type": "command", "dev": p.dev, "cmd": p.code, "cid": p.cid, "args": p.args}

    def due(self, now: float) -> tuple[list[Pending], list[Pending]]:
        """(to send now, timed out)."""
        send, dead = [], []
        for key, p in list(self.pending.items()):
            if now >= p.deadline:
                dead.append(self.pending.pop(key))
            elif now >= p.next_try:
                p.next_try = now + self.retry
                p.tries += 1
                send.append(p)
        return send, dead

    def acked(self, dev: int, f: dict) -> Pending | None:
        if f.get("ref_type") != COMMAND:
            return None
        return self.pending.pop((dev, f["ref"]), None)
