"""`gasguard device flash` with mpremote over the virtual board's raw REPL: write, verify, boot, and the
gateway's verifier accepts the node's frames with the registry entry just created."""

import stat
import time

import pytest

from gasguard.registry import Registry
from gasguard.provisioning.board import Board
from gasguard.provisioning.image import device_files
from gasguard.tools.sim.vboard_client import VBoardProcess

from provisioning_helpers import board_runs, capture, cli, cli_json, gateway_verifier

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(180)]


def test_new_then_flash_compiled_boots_with_the_new_identity_and_the_gateway_verifies_it(tmp_path):
    reg = tmp_path / "reg.db"
    made = cli_json("device", "new", "--profile", "household", "--board", "virtual", "--site", "Lane 3 No. 12", "--lat", "36.67", "--lon", "117.05",
                    "--households", "1", registry=reg)
    dev = made["dev"]
    assert stat.S_IMODE(reg.stat().st_mode) == 0o600
    with Registry(reg) as r:
        key = r.get(int(dev, 16)).key
    assert key.hex() not in str(made)
    with VBoardProcess(tmp_path / "flash") as vb:        # an empty board: MicroPython only
        vb.wait_console("friendly")
        rep = cli_json("device", "flash", dev, "--port", vb.pty, "--compile", registry=reg)
        # the image (protocol and firmware modules) and /main.py, /gg_config.json, /gg_key.bin
        assert rep["verified"] == rep["files"] == len(device_files()) + 3 and rep["compiled"]
        assert rep["boot"]["profile"] == "household" and rep["boot"]["reset_cause"] == "soft"
        lib = vb.flash / "lib" / "gasguard" / "firmware"
        assert (lib / "safety.mpy").exists() and not (lib / "safety.py").exists()
        assert (vb.flash / "gg_key.bin").read_bytes() == key
        assert vb.ctl.request("info")["console"] == "firmware"
        # the node retransmits its unacked BOOT event: the gateway's verifier takes it with the new entry
        frames = capture(vb.pty, 15)
        assert frames, "no frame from the flashed node"
        v = gateway_verifier(reg).check(frames[0], time.time())
        assert v.device.dev_id == int(dev, 16) and v.f["type"] == "event"
        # the REPL is reached again after .mpy firmware has run a while (Board.repl's clean-answer check)
        board_runs(vb, 3000)
        got = cli_json("device", "config", dev, "--port", vb.pty, registry=reg)
        assert got["params"]["gas_l2"] == 250 and got["source"]["gas_l2"] == "default"
    with Registry(reg) as r:
        assert r.get(int(dev, 16)).state == "commissioned"
        assert [h["action"] for h in r.history(int(dev, 16))] == ["new", "flash"]


def test_after_flash_soft_reset_and_a_new_raw_repl_sys_path_is_a_boards(tmp_path):
    """Regression: the vboard host put '/rom' at sys.path[0]; a board has the current directory there."""
    reg = tmp_path / "reg.db"
    dev = cli_json("device", "new", "--profile", "station", "--board", "virtual", "--lat", "36.67", "--lon", "117.05", "--households", "800",
                   registry=reg)["dev"]
    with VBoardProcess(tmp_path / "flash") as vb:
        vb.wait_console("friendly")
        cli_json("device", "flash", dev, "--port", vb.pty, registry=reg)
        with Board(vb.pty) as b:
            assert b.eval("__import__('sys').path") == ["", ".frozen", "/lib"]
            assert b.eval("__import__('machine').__name__") == "machine"   # the shim is still "built in"


def test_flash_shows_progress_through_verify_reboot_and_boot(tmp_path):
    """After the bytes: every file's verification, the reboot, and the BOOT wait counting down, in order;
    the CLI says each phase on stderr."""
    from gasguard.provisioning import flashing, identity
    reg = tmp_path / "reg.db"
    dev = cli_json("device", "new", "--profile", "household", "--board", "virtual", "--lat", "36.67", "--lon",
                   "117.05", registry=reg)["dev"]
    steps = []
    with VBoardProcess(tmp_path / "flash") as vb:
        vb.wait_console("friendly")
        with Registry(reg) as r, Board(vb.pty) as b:
            rep = flashing.flash(b, identity.get(r, int(dev, 16)), step=lambda *a: steps.append(a))
        phases = [s[0] for s in steps]
        first = {p: phases.index(p) for p in ("verify", "reboot", "boot")}
        assert first["verify"] < first["reboot"] < first["boot"] and phases[-1] == "boot"
        assert [s[1] for s in steps if s[0] == "verify"] == list(range(1, rep["files"] + 1))
        lefts = [s[1] for s in steps if s[0] == "boot"]
        assert lefts == sorted(lefts, reverse=True) and 0 < lefts[0] <= 30
        code, out, err = cli("device", "flash", dev, "--port", vb.pty, registry=reg)
        assert code == 0, err
        for said in ("verifying every file by SHA-256", "rebooting into the firmware",
                     "waiting up to 30 s for the node's BOOT event"):
            assert said in err, err

