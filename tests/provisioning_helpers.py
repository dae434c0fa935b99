"""Shared by the tests/test_provisioning_*.py files: the CLI in-process, a registry, boards, frame capture."""

from __future__ import annotations

import json
import time

import serial
from click.testing import CliRunner

from gasguard.registry import Registry
from gasguard.gateway.verify import RegistryCache, Verifier
from gasguard.protocol import framing
from gasguard.provisioning import identity
from gasguard.tools.sim.vboard_client import VBoardProcess, install


def cli(*args, registry=None, input=None):
    """Run `gasguard device ...` (or gateway ...) in-process; returns (exit code, stdout, stderr)."""
    from gasguard.cli import cli as root
    argv = list(args)
    if registry is not None:
        argv += ["--registry", str(registry)]
    r = CliRunner().invoke(root, argv, input=input, catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def cli_json(*args, registry=None):
    code, out, err = cli(*args, "--json", registry=registry)
    assert code == 0, out + err
    return json.loads(out)


def new_device(reg_path, profile="household", **kw):
    with Registry(reg_path) as reg:
        return identity.new(reg, profile=profile, board="virtual", **kw)


def installed_board(tmp_path, dev):
    """A real-time virtual board laid out as a flashed board for `dev` (tests of what follows a flash)."""
    flash = install(tmp_path / "flash", identity.node_config(dev), dev.key)
    vb = VBoardProcess(flash, virtual_clock=False).start()
    vb.wait_console("firmware")
    return vb


def capture(pty, seconds, want=1):
    """Raw frames the board sends within `seconds` (stops early after `want`)."""
    out = []
    de = framing.Deframer()
    with serial.Serial(pty, 115200, timeout=0.1) as s:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(out) < want:
            for kind, p in de.feed(s.read(4096)):
                if kind == framing.FRAME:
                    out.append(p)
    return out


def gateway_verifier(reg_path, refresh=0.0):
    """The gateway's own verifier over the registry file, fresh counters."""
    return Verifier(RegistryCache(reg_path, refresh=refresh), {})


def board_runs(vb, ms: int, timeout: float = 30.0) -> None:
    """Let the board run `ms` of its own time (its clock, read over the control socket): what a test waits
    for is board time passing (debounce, fault detection, a technician's pause), not a guess of wall time."""
    from gasguard.testing.waits import wait_until
    start = vb.ctl.get()["now"]
    wait_until(lambda: vb.ctl.get()["now"] - start >= ms, timeout, f"{ms} ms of board time", step=0.05)
