"""The suite's real-board mode, run against a real-time virtual board standing in for /dev/ttyUSB0: the
`--port` / `--node-dir` path opens the port as pytest-embedded does for a board, tests without stimulus
pass, tests that need stimulus skip and say why, and a role with no board on the bench is deselected."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gasguard.tools.sim.vboard_client import VBoardProcess, install

HERE = Path(__file__).resolve().parent
BOARD = {"dev_id": 0x00480009, "profile": "household", "board": "virtual"}


def test_real_board_mode_runs_without_a_rig_and_says_why_it_skips(tmp_path):
    flash = install(tmp_path / "flash", BOARD, os.urandom(16))
    node_dir = tmp_path / "node"           # what 'gasguard device' leaves for the bench: config and key
    node_dir.mkdir()
    for name in ("gg_config.json", "gg_key.bin"):
        shutil.copy2(flash / name, node_dir / name)
    with VBoardProcess(flash, virtual_clock=False) as vb:
        vb.wait_console("firmware")
        p = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-rs", "-q",
             "--embedded-services", "serial", f"--port={vb.pty}", f"--node-dir={node_dir}",
             str(HERE / "test_hil_boot.py"), str(HERE / "test_hil_safety.py"), str(HERE / "test_hil_link.py")],
            cwd=HERE.parent, capture_output=True, text=True, timeout=240)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    # STATUS identity needs no rig but its role is a station: deselected on a household-only bench
    assert "deselected: no board with role(s) ['station']" in out, out[-3000:]
    assert "needs a rig for power cycling: no --rig-port for this board" in out, out[-3000:]
    assert "2 passed, 11 skipped, 3 deselected" in out, out[-3000:]  # the rig-free tests ran on the "board"
    # the board's downlink counter is kept for the next run (a real board remembers the last it accepted)
    kept = json.loads((node_dir / f"hil_downlink_{BOARD['dev_id']:08x}.json").read_text())["down"]
    assert kept >= 4
