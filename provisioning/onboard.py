"""Reading and rewriting a provisioned board's own files (/gg_config.json, /gg_state.json) over the REPL.

The firmware reads /gg_config.json at boot and keeps SET_PARAM overrides in /gg_state.json "params"
(firmware/README.md). A technician's change must win over an older override of the same name, so the
override is dropped with an atomic write (a temporary file, then a rename, as the firmware writes it) while
the firmware is stopped at the REPL; every other state field (counters, latch) is kept as it was.
"""

from __future__ import annotations

import json
import time

from gasguard.registry import Device
from gasguard.protocol import const

from .board import Board, file_hash
from .errors import ProvisioningError


def read_json(board: Board, path: str) -> dict | None:
    data = board.read_file(path)
    if data is None:
        return None
    try:
        got = json.loads(data)
    except ValueError:
        raise ProvisioningError(f"{path} on the board is not JSON: flash the board again") from None
    return got if isinstance(got, dict) else None


def config_of(board: Board, dev: Device) -> dict:
    """The board's /gg_config.json, checked to belong to `dev` (a technician can pick up the wrong board)."""
    cfg = read_json(board, "/gg_config.json")
    if cfg is None:
        raise ProvisioningError(f"the board on {board.port} is not provisioned (no /gg_config.json): "
                                f"run 'gasguard device flash {dev.dev_id:08x} --port {board.port}' first")
    if cfg.get("dev_id") != dev.dev_id:
        other = cfg.get("dev_id")
        raise ProvisioningError(f"the board on {board.port} is device {other:08x}, not {dev.dev_id:08x}: "
                                "check the label (or flash this board with the new identity)"
                                if isinstance(other, int) else "the board's /gg_config.json has no dev_id: flash it")
    return cfg


def write_json(board: Board, path: str, obj: dict) -> None:
    data = json.dumps(obj, sort_keys=True).encode()
    board.write_file(path, data)
    if board.sha256(path) != file_hash(data):
        raise ProvisioningError(f"{path} did not verify after writing: run the command again")


def drop_overrides(board: Board, names) -> list[str]:
    """Remove SET_PARAM overrides of `names` from /gg_state.json (atomically); returns those removed."""
    st = read_json(board, "/gg_state.json")
    if not st or not st.get("params"):
        return []
    gone = [n for n in names if n in st["params"]]
    if gone:
        for n in gone:
            del st["params"][n]
        write_json(board, "/gg_state.json", st)   # through a temporary name and a rename, as the firmware does
    return gone


def boot_and_check(board: Board, dev: Device, key: bytes | None = None, timeout: float = 30.0, step=None) -> dict:
    """Soft-reset into the firmware; its BOOT event must verify, and no CONFIG event may say it fell back to
    its defaults (the firmware sends CONFIG 00 00 00 when /gg_config.json fails its bounds check).
    step("reboot") before the reset, step("boot", seconds_left, timeout) while the BOOT event is awaited."""
    if step:
        step("reboot")
    board.run_firmware()
    boot = board.wait_boot(dev.dev_id, key or dev.key, timeout,
                           on_wait=(lambda left: step("boot", left, timeout)) if step else None)
    for f in board.frames(time.monotonic() + 1.5):
        if f["dev"] == dev.dev_id and f["type"] == "event" and f["code"] == const.EV_CONFIG and f["data"] == b"\x00\x00\x00":
            raise ProvisioningError("the node refused its configuration and runs its profile defaults: "
                                    "see 'gasguard device monitor' for the reason, then fix it with 'device config'")
        if f["type"] == "reading":
            break
    return boot
