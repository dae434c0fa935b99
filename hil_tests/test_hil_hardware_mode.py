"""The suite's real-board mode, run against a real-time virtual board standing in for /dev/ttyUSB0: the
`--port` / `--node-dir` path opens the port as pytest-embedded does for a board, tests without stimulus
pass, tests that need stimulus skip and say why, and a role with no board on the bench is deselected."""

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from gasguard.tools.sim.vboard_client import VBoardProcess, install

HERE = Path(__file__).resolve().parent
# the tests of test_hil_boot/safety/link a household board answers without a rig (no stimulus, no power cut)
RIG_FREE = {"test_hil_boot.py::test_household_identifies_itself_on_status",
            "test_hil_link.py::test_forged_and_replayed_commands_get_no_answer"}


def _outcomes(junit: Path) -> dict:
    """test -> (passed | skipped | failed, message), from a JUnit XML report."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("classname").rsplit(".", 1)[-1] + ".py::" + case.get("name")
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        out[name] = (("failed", bad.get("message", "")) if bad is not None else
                     ("skipped", skip.get("message", "")) if skip is not None else ("passed", ""))
    return out
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
             f"--junitxml={tmp_path / 'hil.xml'}",
             "--embedded-services", "serial", f"--port={vb.pty}", f"--node-dir={node_dir}",
             str(HERE / "test_hil_boot.py"), str(HERE / "test_hil_safety.py"), str(HERE / "test_hil_link.py")],
            cwd=HERE.parent, capture_output=True, text=True, timeout=240)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    # STATUS identity needs no rig but its role is a station: deselected on a household-only bench
    assert "deselected: no board with role(s) ['station']" in out, out[-3000:]
    assert "needs a rig for power cycling: no --rig-port for this board" in out, out[-3000:]
    # per test, from the run's JUnit report (not its summary line): the rig-free tests ran on the "board" and
    # passed, every other one skipped and said which rig feature it needs; none failed
    outcome = _outcomes(tmp_path / "hil.xml")
    assert {n for n, (o, _) in outcome.items() if o == "passed"} == RIG_FREE, outcome
    assert all(o == "skipped" and "rig" in why for n, (o, why) in outcome.items() if n not in RIG_FREE), outcome
    # the board's downlink counter is kept for the next run (a real board remembers the last it accepted)
    kept = json.loads((node_dir / f"hil_downlink_{BOARD['dev_id']:08x}.json").read_text())["down"]
    assert kept >= 4
