"""Hardware-in-the-loop suite (pytest-embedded, serial service). README.md in this folder says how to run it.

Target: virtual boards started here (default), or real boards with `--port=/dev/ttyUSB0` (several boards:
`--port="/dev/ttyUSB0|/dev/ttyUSB1"` with one `--node-dir` per board, same order). Stimulus goes through a
rig (hil_rig.py): the virtual board's control channel, or a hardware rig on `--rig-port`.

Fixtures, one per node role: `household`, `station` (a Node on a pytest-embedded DUT: pytest-embedded
opens the role's port and keeps a device log per test), and `household_board` / `station_board` for tests
where the gateway daemon, not the DUT, owns the port.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from gasguard.tools.sim.vboard_client import VBoardProcess, install
import hil_provision
from hil_node import BoardInfo, Node
from hil_rig import RigUnsupported, SerialRig, VBoardRig

HERE = Path(__file__).resolve().parent
ROLES = ("household", "station")
# fixtures that hand pytest-embedded a board's port, and the role of that board
PORT_FIXTURES = {"household": "household_board", "station": "station_board",
                 "provisioned_household": "provisioned_household_board"}
ROLE_OF = {"household": "household", "household_board": "household", "station": "station",
           "station_board": "station", "provisioned_household": "household",
           "provisioned_household_board": "household"}
VIRTUAL = {
    "household": {"dev_id": 0x00480001, "profile": "household", "board": "virtual"},
    "station": {"dev_id": 0x00530001, "profile": "station", "board": "virtual"},
}


def pytest_addoption(parser):
    g = parser.getgroup("gasguard-hil", "GasGuard hardware-in-the-loop (hil_tests/README.md)")
    g.addoption("--node-dir", default=None,
                help="with --port: folder(s) holding each board's gg_config.json and gg_key.bin as provisioned "
                     "('|'-separated, one per --port, same order)")
    g.addoption("--rig-port", default=None,
                help="with --port: the hardware rig's serial port(s) ('|'-separated, one per --port; empty = "
                     "no rig for that board). Tests that need stimulus skip without one.")
    g.addoption("--rig-baud", default=115200, type=int, help="the rig's serial speed (default 115200)")
    g.addoption("--hil-boot-s", default=3.0, type=float,
                help="hardware: seconds a real board needs from power-on to its first frame (default 3)")


def _hardware(config) -> bool:
    return bool(config.getoption("port", None))


def _split(v):
    return [s.strip() for s in v.split("|")] if v else []


def _bench(config) -> list[dict]:
    """The real boards on this bench: port, node dir, rig port, role (from the node's gg_config.json)."""
    ports = _split(config.getoption("port"))
    dirs = _split(config.getoption("node_dir"))
    rigs = _split(config.getoption("rig_port"))
    if not dirs:
        raise pytest.UsageError("--port needs --node-dir=DIR: the folder holding the board's gg_config.json and "
                                "gg_key.bin as provisioned by 'gasguard device' (one per port, '|'-separated)")
    if len(dirs) != len(ports) or (rigs and len(rigs) != len(ports)):
        raise pytest.UsageError(f"{len(ports)} port(s) but {len(dirs)} --node-dir and {len(rigs)} --rig-port "
                                "entries: give one per port, '|'-separated, same order")
    out = []
    for i, (port, d) in enumerate(zip(ports, dirs)):
        d = Path(d)
        try:
            cfg = json.loads((d / "gg_config.json").read_text())
            key = (d / "gg_key.bin").read_bytes()
        except (OSError, ValueError) as e:
            raise pytest.UsageError(f"--node-dir {d}: {e} (provision the board with 'gasguard device' first)")
        if len(key) != 16:
            raise pytest.UsageError(f"{d}/gg_key.bin holds {len(key)} bytes, a device key is 16")
        out.append({"port": port, "dir": d, "rig": rigs[i] if rigs and rigs[i] else None,
                    "role": cfg.get("profile"), "config": cfg, "key": key})
    return out


def pytest_collection_modifyitems(config, items):
    """On hardware, tests for a role that has no board on this bench are deselected (and said so).
    On virtual boards every test here runs the firmware in real MicroPython: marked so."""
    if not _hardware(config):
        for it in items:
            if HERE in Path(str(it.path)).resolve().parents:
                it.add_marker(pytest.mark.micropython)
    if not _hardware(config) or not config.getoption("node_dir"):
        return
    roles = {b["role"] for b in _bench(config)}
    keep, drop = [], []
    for it in items:
        here = HERE in Path(str(it.path)).resolve().parents
        used = {ROLE_OF[f] for f in getattr(it, "fixturenames", ()) if f in ROLE_OF}
        (drop if here and used - roles else keep).append(it)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr:
            tr.write_line(f"hil: {len(drop)} test(s) deselected: no board with role(s) "
                          f"{sorted(set(ROLES) - roles)} on this bench (see --node-dir)")


@pytest.fixture
def embedded_services(request):
    """pytest-embedded's services: `serial` unless given on the command line."""
    return request.config.getoption("embedded_services", None) or "serial"


@pytest.fixture
def port(request):
    """Overrides pytest-embedded's `port`: the port of the role board this test uses (a virtual board's pty
    by default). Tests without a DUT get None, so pytest-embedded opens nothing for them."""
    if "dut" in request.fixturenames:
        for node, board in PORT_FIXTURES.items():
            if node in request.fixturenames:
                return request.getfixturevalue(board).port
    return None


def _virtual_board(role, tmp_path):
    key = os.urandom(16)
    flash = install(tmp_path / f"{role}-flash", dict(VIRTUAL[role]), key)
    vb = VBoardProcess(flash, virtual_clock=True, keep=True).start()
    try:
        vb.wait_console("firmware")
    except Exception:
        vb.stop()
        raise
    return BoardInfo(role, vb.pty, dict(VIRTUAL[role]), key, VBoardRig(vb), flash, vb)


def _real_board(request, role):
    cfg = request.config
    for b in _bench(cfg):
        if b["role"] == role:
            if "://" not in b["port"] and not os.path.exists(b["port"]):
                pytest.fail(f"no serial port {b['port']} for the {role} board: check the USB cable (a data cable, "
                            "not power-only), 'ls /dev/serial/by-id' and 'dmesg | tail'", pytrace=False)
            rig = (SerialRig(b["rig"], cfg.getoption("rig_baud"), boot_s=cfg.getoption("hil_boot_s"))
                   if b["rig"] else None)
            return BoardInfo(role, b["port"], b["config"], b["key"], rig, state_dir=b["dir"])
    pytest.fail(f"no board with profile {role!r} among --node-dir (deselection should have caught this)")


def _board(request, role, tmp_path):
    board = _real_board(request, role) if _hardware(request.config) else _virtual_board(role, tmp_path)
    yield board
    if board.vb is not None:
        _stop_virtual(board.vb, tmp_path / f"{role}-vboard.log")
    elif board.rig is not None:
        board.rig.close()


def _stop_virtual(vb, keep_log: Path):
    """Stop a virtual board; its own log (launcher and interpreter errors) stays with the test's files."""
    vb.stop()
    log = vb.tmp / "vboard.log"
    if log.exists():
        shutil.copyfile(log, keep_log)
    shutil.rmtree(vb.tmp, ignore_errors=True)


@pytest.fixture
def household_board(request, tmp_path):
    yield from _board(request, "household", tmp_path)


@pytest.fixture
def station_board(request, tmp_path):
    yield from _board(request, "station", tmp_path)


def _node(board, dut):
    node = Node(dut, board).start()
    yield node
    if board.vb is None and board.rig is not None:
        restore(node)


def restore(node):
    """Hardware: leave the board as the next test expects it (clean inputs, latch reset)."""
    from gasguard.protocol import const
    fs = int((node.cal.get("pressure") or {}).get("full_scale", 10000))
    node.set_gas(0)
    node.set_pressure(min(2000, fs))
    node.run(3000)
    node.command(const.CMD_RESET, 250)


@pytest.fixture
def household(household_board, dut):
    """The household-meter node under test (pytest-embedded DUT + rig + device key)."""
    yield from _node(household_board, dut)


@pytest.fixture
def station(station_board, dut):
    """The regulator-station node under test."""
    yield from _node(station_board, dut)


@pytest.fixture
def provisioned_household_board(request, tmp_path):
    """A household board flashed and configured (gas_l1=120) by `gasguard device` before the DUT opens it.
    `.cli` holds the commands' JSON answers."""
    reg = tmp_path / "registry.db"
    if _hardware(request.config):
        board = _real_board(request, "household")
        dev = hil_provision.registry_from_node_dir(reg, board.config, board.key)
        vb = None
    else:
        vb = VBoardProcess(tmp_path / "blank-flash", virtual_clock=True, keep=True).start()  # MicroPython only
        vb.wait_console("friendly")
        dev = hil_provision.device(reg, "new", "--profile", "household", "--board", "virtual", "--site",
                                   "HIL bench", "--households", "1", "--lat", "36.67",
                                   "--lon", "117.05")["dev"]
    try:
        port = vb.pty if vb else board.port
        cli = {"flash": hil_provision.device(reg, "flash", dev, "--compile", "--port", port)}
        cli["config"] = hil_provision.device(reg, "config", dev, "gas_l1=120", "--port", port)
        cli["show"] = hil_provision.device(reg, "config", dev, "--port", port)
        config, key = hil_provision.entry(reg, dev)
        if vb is not None:
            board = BoardInfo("household", vb.pty, config, key, VBoardRig(vb), vb.flash, vb)
            vb.wait_console("firmware")
        else:
            board.config = config
        board.cli = cli
        board.registry = reg
        yield board
        if vb is None:   # leave the bench board as its node dir describes it
            old = (json.loads((board.state_dir / "gg_config.json").read_text()).get("params") or {}).get("gas_l1")
            hil_provision.device(reg, "config", dev, f"gas_l1={old or 100}", "--port", board.port)
    finally:
        if vb is not None:
            _stop_virtual(vb, tmp_path / "household-vboard.log")


@pytest.fixture
def provisioned_household(provisioned_household_board, dut):
    """The household node after `gasguard device flash` and `config`, as a Node on the DUT."""
    yield from _node(provisioned_household_board, dut)


@pytest.fixture
def rig_feature():
    """Call a rig operation; a rig without that feature skips the test and names the feature."""
    def call(fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except RigUnsupported as e:
            pytest.skip(f"{e}; see hil_tests/README.md for the rig features")
    return call
