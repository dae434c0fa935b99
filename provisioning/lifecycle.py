"""Key rotation and decommissioning, in the order that never leaves a node the gateway cannot verify
for longer than the reboot, and never leaves a retired identity usable.

rotate-key: new key staged on the board (/gg_key.new, hash-checked) -> registry (key, key_version + 1) ->
on the board renamed over /gg_key.bin -> reboot -> BOOT event verified with the new key. From the registry
commit on, the gateway (which reloads the registry) rejects frames MIC'd with the old key. If the cable goes
after the commit, 'gasguard device flash' writes the registry's key and finishes the job.
"""

from __future__ import annotations

from gasguard.registry import Device, Registry

from . import keys, onboard
from .board import Board, file_hash
from .errors import ProvisioningError

STAGED = "/gg_key.new"
WIPE = ("/gg_key.bin", STAGED, "/gg_config.json", "/gg_state.json", "/gg_state.tmp", "/main.py")


def rotate_key(reg: Registry, dev: Device, board: Board | None) -> dict:
    new = keys.new_device_key()
    if board is not None:
        board.repl()
        onboard.config_of(board, dev)
        board.write_file(STAGED, new)
        if board.sha256(STAGED) != file_hash(new):
            board.remove(STAGED)
            raise ProvisioningError("the new key did not verify on the board; nothing was changed: run again")
    rotated = reg.rotate_key(dev.dev_id, new)
    reg.log(dev.dev_id, "rotate-key", {"key_version": rotated.key_version, "on_board": board is not None})
    out = {"dev": f"{dev.dev_id:08x}", "key_version": rotated.key_version, "on_board": board is not None}
    if board is None:
        return out
    try:
        board.exec(f"import os\nos.rename({STAGED!r}, '/gg_key.bin')")
        if board.sha256("/gg_key.bin") != file_hash(new):
            raise ProvisioningError("/gg_key.bin did not verify after the rename")
        boot = onboard.boot_and_check(board, rotated)
    except ProvisioningError as e:
        raise ProvisioningError(f"the registry has key v{rotated.key_version} but the board may not ({e}): run "
                                f"'gasguard device flash {dev.dev_id:08x} --port {board.port}' to write it") from None
    out["boot"] = {"fcnt": boot["fcnt"]}
    return out


def decommission(reg: Registry, dev: Device, board: Board | None, reason: str = "") -> dict:
    """Retire the identity in the registry first (the gateway rejects its frames from then on), then wipe
    the key and configuration from the board if it is connected (the firmware stays; it cannot run)."""
    if board is not None:
        board.repl()
        onboard.config_of(board, dev)       # the right board, before anything changes
    reg.decommission(dev.dev_id)
    reg.log(dev.dev_id, "decommission", {"reason": reason, "wiped": board is not None})
    wiped = []
    if board is not None:
        for p in WIPE:
            if board.read_file(p) is not None:
                board.remove(p)
                wiped.append(p)
        left = [p for p in WIPE if board.read_file(p) is not None]
        if left:
            raise ProvisioningError(f"the device is retired in the registry, but {', '.join(left)} could not be "
                                    "removed from the board: erase its flash (esptool erase_flash) before reuse")
    return {"dev": f"{dev.dev_id:08x}", "state": "decommissioned", "wiped": wiped}
