"""pytest-embedded opens the virtual board's pty like a serial board (`--port=PTY`) and sees its frames."""

import subprocess
import sys
from pathlib import Path

import pytest

from gasguard.protocol import const, frame, framing
from gasguard.tools.sim.vboard_client import VBoardProcess, install

pytestmark = pytest.mark.micropython
KEY = bytes(range(16))

INNER = '''
import re

def test_status_answers(dut):
    dut.write(%r)
    # an ack frame: delimiter, COBS code byte, then HDR 0x60 (v1, type 4 ack); only a command gets one
    dut.expect(re.compile(rb"\\x00[\\x01-\\xff]\\x60"), timeout=10)
'''


def test_pytest_embedded_serial_dut_on_the_pty(tmp_path):
    flash = install(tmp_path / "flash", {"dev_id": 11, "profile": "household", "board": "virtual"}, KEY)
    cmd = framing.wrap(frame.seal({"type": "command", "dev": 11, "fcnt": 1, "cmd": const.CMD_STATUS, "cid": 1,
                                   "args": b""}, KEY, const.DOWN))
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "test_inner.py").write_text(INNER % cmd)
    (inner / "pytest.ini").write_text("[pytest]\n")
    with VBoardProcess(flash, virtual_clock=False) as vb:
        vb.wait_console("firmware")
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--embedded-services",
                            "serial", f"--port={vb.pty}", "test_inner.py"], cwd=inner, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
        assert "1 passed" in p.stdout
