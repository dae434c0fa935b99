"""The virtual board's console: raw-REPL emulation good enough for mpremote, and Ctrl-C / Ctrl-D."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from gasguard.tools.sim.vboard_client import VBoardProcess, install

pytestmark = pytest.mark.micropython

MPREMOTE = Path(sys.executable).parent / "mpremote"
KEY = bytes(range(16))


@pytest.fixture
def board(tmp_path):
    flash = install(tmp_path / "flash", {"dev_id": 77, "profile": "station", "board": "virtual"}, KEY)
    with VBoardProcess(flash, virtual_clock=True) as vb:
        vb.wait_console("firmware")
        yield vb


def mpremote(vb, *args):
    p = subprocess.run([str(MPREMOTE), "connect", vb.pty, *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def read_until(ser, token, timeout=5.0):
    buf = b""
    deadline = time.monotonic() + timeout
    while token not in buf:
        assert time.monotonic() < deadline, f"waited for {token!r}, got {buf[-300:]!r}"
        buf += ser.read(256)
    return buf


def test_mpremote_exec_cp_ls_and_files_land_in_flash(board, tmp_path):
    assert mpremote(board, "exec", "print(6 * 7)").strip() == "42"
    src = tmp_path / "note.txt"
    src.write_text("station 77\n")
    mpremote(board, "cp", str(src), ":/note.txt")
    assert (board.flash / "note.txt").read_text() == "station 77\n"
    listing = mpremote(board, "fs", "ls", ":/lib/gasguard/firmware")
    assert "safety.py" in listing
    # a missing file is reported the way mpremote understands (POSIX errno)
    p = subprocess.run([str(MPREMOTE), "connect", board.pty, "fs", "cat", ":/nope.txt"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0 and "No such file" in (p.stdout + p.stderr)


def test_files_persist_across_power_cycle_and_soft_reset(board):
    mpremote(board, "exec", "open('/kept.txt','w').write('x')")
    mpremote(board, "soft-reset")
    board.ctl.power_cycle()
    board.wait_console("firmware")
    assert (board.flash / "kept.txt").read_text() == "x"
    out = mpremote(board, "exec", "print(open('/kept.txt').read())")
    assert out.strip() == "x"


def test_raw_paste_is_declined_and_ctrl_c_ctrl_d_work(board):
    ser = serial.Serial(board.pty, 115200, timeout=0.1)
    ser.write(b"\r\x03")
    read_until(ser, b">>> ")
    assert board.ctl.request("info")["console"] == "friendly"
    ser.write(b"\r\x01")
    read_until(ser, b"raw REPL; CTRL-B to exit\r\n>")
    ser.write(b"\x05A\x01")
    assert read_until(ser, b"R\x00").endswith(b"R\x00")
    ser.write(b"print('hi')\x04")
    out = read_until(ser, b"\x04>")
    assert out.startswith(b"OK") and b"hi" in out
    ser.write(b"\x02")
    read_until(ser, b">>> ")
    ser.write(b"\x04")  # soft reset at the friendly prompt runs /main.py again
    read_until(ser, b"soft reboot")
    board.wait_console("firmware")
    ser.close()


def test_machine_reset_through_mpremote_reboots_into_the_firmware(board):
    mpremote(board, "exec", "import json; json.dump({'dev_id': 77, 'profile': 'station', 'board': 'virtual', "
                            "'params': {'sample_ms': 200}}, open('/gg_config.json', 'w'))")
    assert json.loads((board.flash / "gg_config.json").read_text())["params"] == {"sample_ms": 200}
    mpremote(board, "reset")
    st = board.wait_console("firmware")
    g = board.ctl.get()
    assert g["reset_cause"] == 2 and g["mode"] == "firmware" and st["console"] == "firmware"  # HARD_RESET


def test_nvs_storage_survives_a_power_cycle_uncommitted_does_not(board):
    mpremote(board, "exec", "import esp32; n = esp32.NVS('gg'); n.set_i32('boots', 41); n.commit(); "
                            "n.set_i32('lost', 1)")
    board.ctl.power_cycle()
    board.wait_console("firmware")
    out = mpremote(board, "exec", "import machine\nn = machine.NVS('gg')\nprint(n.get_i32('boots'))\n"
                                  "try:\n  n.get_i32('lost')\nexcept OSError:\n  print('gone')")
    assert out.split() == ["41", "gone"]


def test_an_empty_board_flashed_with_mpremote_boots_the_firmware(tmp_path):
    """What the technician CLI does: mkdir, cp every module, config, key and /main.py, then reset."""
    from gasguard.provisioning.image import device_files
    from gasguard.provisioning.image import MAIN_STUB

    (tmp_path / "cfg.json").write_text(json.dumps({"dev_id": 3, "profile": "household", "board": "virtual"}))
    (tmp_path / "key.bin").write_bytes(KEY)
    (tmp_path / "main.py").write_text(MAIN_STUB)
    args = ["fs", "mkdir", ":/lib"]
    for d in ("/lib/gasguard", "/lib/gasguard/protocol", "/lib/gasguard/firmware"):
        args += ["+", "fs", "mkdir", ":" + d]
    for host, target in device_files():
        args += ["+", "fs", "cp", str(host), ":" + target]
    for src, dst in (("cfg.json", "/gg_config.json"), ("key.bin", "/gg_key.bin"), ("main.py", "/main.py")):
        args += ["+", "fs", "cp", str(tmp_path / src), ":" + dst]
    with VBoardProcess(tmp_path / "flash", virtual_clock=True) as vb:
        vb.wait_console("friendly")  # nothing to run yet
        mpremote(vb, *args, "+", "reset")
        vb.wait_console("firmware")
        assert (vb.flash / "gg_key.bin").read_bytes() == KEY
        assert (vb.flash / "lib" / "gasguard" / "firmware" / "safety.py").exists()
        vb.ctl.advance(1000)
        assert json.loads((vb.flash / "gg_state.json").read_text())["up_ceiling"] == 257
