"""`gasguard sim vboard` starts a board in its own process and prints where to reach it."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gasguard.tools.sim.vboard_client import Control, VBoardError

pytestmark = pytest.mark.micropython
GASGUARD = Path(sys.executable).parent / "gasguard"


def test_cli_prints_pty_and_control_socket_and_stops_on_sigterm(tmp_path):
    p = subprocess.Popen([str(GASGUARD), "sim", "vboard", "--flash", str(tmp_path / "flash"),
                          "--ctl", str(tmp_path / "ctl.sock")], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        info = json.loads(p.stdout.readline())
        assert os.path.exists(info["pty"]) and info["ctl"] == str(tmp_path / "ctl.sock")
        ctl = Control(info["ctl"])
        st = ctl.get()
        assert st["console"] in ("friendly", "off")  # an empty flash has no /main.py: the REPL waits
        with pytest.raises(VBoardError, match="--virtual-clock"):
            ctl.advance(10)
        with pytest.raises(VBoardError, match="unknown op"):
            ctl.request("explode")
        ctl.close()
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0
    assert not (tmp_path / "ctl.sock").exists()
