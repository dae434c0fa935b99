"""`device selftest`: the node's own self-test (SPEC 3.6 SELFTEST), asked over the link it reports on.

The command goes down the same UART the gateway uses, sealed with the device key and the next downlink
counter after the one the board last accepted (read from its /gg_state.json); the answer (a command ack
and a SELFTEST event) must come back MIC-verified. So one run proves: the valve strokes (closed, then open
again unless it is latched shut - a shut valve is never opened by a test), the sensors read without a
fault, and the UART/radio path works both ways. The gateway's next downlink may be refused once as a
replay; the node retransmits and the gateway's following ack is taken (its counter has moved on).
"""

from __future__ import annotations

import secrets
import time

from gasguard.registry import Device, Registry
from gasguard.protocol import const, frame

from . import onboard
from .board import Board
from .errors import ProvisioningError

# the firmware's _selftest bits: bit 0 valve stroke, bit 1 sensors, bit 2 link
CHECKS = (("valve", 1, "valve stroke"), ("sensors", 2, "sensor check"), ("link", 4, "UART/radio loopback"))
MASK = sum(bit for _, bit, _ in CHECKS)   # run them all (7)


def run(board: Board, reg: Registry, dev: Device, timeout: float = 20.0) -> dict:
    board.repl()
    onboard.config_of(board, dev)
    st = onboard.read_json(board, "/gg_state.json") or {}
    down = int(st.get("down_last", 0)) + 1
    latched = bool(st.get("latched"))
    boot = onboard.boot_and_check(board, dev)
    last = boot["fcnt"]
    cid = secrets.randbelow(256)
    t0 = time.monotonic()
    board.write_frame(frame.seal({"type": "command", "dev": dev.dev_id, "fcnt": down, "cmd": const.CMD_SELFTEST,
                                  "cid": cid, "args": bytes([MASK])}, dev.key, const.DOWN))
    acked = result = None
    deadline = t0 + timeout
    for f in board.frames(deadline):
        if f["dev"] != dev.dev_id:
            continue
        try:
            f["fcnt"] = frame.verify(f["raw"], f, dev.key, const.UP, last)
        except Exception:  # noqa: BLE001 - an unverifiable frame proves nothing; count it out
            continue
        last = f["fcnt"]
        if f["type"] == "ack" and f["ref_type"] == const.COMMAND and f["ref"] == cid:
            acked = f["result"]
        elif f["type"] == "event" and f["code"] == const.EV_SELFTEST:
            result = f["data"]
        if acked is not None and result is not None:
            break
    rtt = round((time.monotonic() - t0) * 1000)
    if acked is None and result is None:
        raise ProvisioningError(f"no answer to the self-test within {timeout:.0f} s: the link does not work both "
                                "ways (check the radio/UART wiring and the baud rate in 'device config')")
    if acked not in (None, const.R_OK):
        raise ProvisioningError(f"the node refused the self-test (result {acked}): flash it again")
    if result is None:
        raise ProvisioningError(f"the node acked the self-test but its report did not arrive within {timeout:.0f} s: "
                                "the uplink drops frames (check the antenna / line), then run it again")
    ok = result[0]
    checks = {name: bool(ok & bit) for name, bit, _ in CHECKS}
    report = {"dev": f"{dev.dev_id:08x}", "passed": all(checks.values()), "checks": checks, "round_trip_ms": rtt,
              "valve_latched": latched}
    reg.log(dev.dev_id, "selftest", {"checks": checks, "passed": report["passed"]})
    return report
