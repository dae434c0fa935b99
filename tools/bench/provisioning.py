"""`gasguard bench provisioning`: how long the technician's commands take against a virtual board.

Figures, not pass/fail. The virtual board's raw REPL moves bytes over a pty at memory speed, so these are
the protocol and verification costs (mpremote's 10 ms per 256 bytes written, one round trip per command),
not a 115200-baud cable: expect a real ESP32 to add the line time (~70 kB at 11.5 kB/s is ~6 s).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click

from gasguard.registry import Registry
from gasguard.provisioning import calibration, configure, flashing, identity, lifecycle, selftest
from gasguard.provisioning.board import Board
from gasguard.tools.sim.vboard_client import VBoardProcess


def _timed(rows, name, fn, note=None):
    """Run fn(); append (name, wall s, note(result) or "") to rows; return the result."""
    t0 = time.monotonic()
    out = fn()
    rows.append((name, time.monotonic() - t0, note(out) if note else ""))
    return out


@click.command("provisioning")
def provisioning_bench():
    """Wall time of flash (source / .mpy, first / unchanged), config, calibrate, selftest, rotate-key."""
    rows: list = []
    with tempfile.TemporaryDirectory(prefix="gg-bench-prov-") as td:
        tmp = Path(td)
        with Registry(tmp / "reg.db") as reg:
            dev = identity.new(reg, profile="household", board="virtual")
            src = flashing.application(False)
            mpy = _timed(rows, "mpy-cross all modules", lambda: flashing.application(True))
            with VBoardProcess(tmp / "flash") as vb:
                vb.wait_console("friendly")
                with Board(vb.pty) as b:
                    _timed(rows, "flash .py, empty board", lambda: flashing.flash(b, dev, app=src),
                           lambda r: f"{r['bytes']} B, {r['written']} files written")
                    _timed(rows, "flash .py, unchanged", lambda: flashing.flash(b, dev, app=src),
                           lambda r: f"{r['written']} written, {r['unchanged']} unchanged")
                    _timed(rows, "flash .mpy over .py", lambda: flashing.flash(b, dev, app=mpy, compile_mpy=True),
                           lambda r: f"{r['bytes']} B, {len(r['removed'])} .py removed")
                    _timed(rows, "config gas_l1=120", lambda: configure.apply(
                        b, reg, dev, configure.plan(dev, ["gas_l1=120"])))
                    d = reg.get(dev.dev_id)
                    _timed(rows, "calibrate (gas already on)", lambda: calibration.calibrate(
                        b, reg, d, 500, lambda step, _m: vb.ctl.set(gas=24000 if step == "span" else 8000)))
                    d = reg.get(dev.dev_id)
                    _timed(rows, "selftest", lambda: selftest.run(b, reg, d),
                           lambda r: f"round trip {r['round_trip_ms']} ms")
                    _timed(rows, "rotate-key", lambda: lifecycle.rotate_key(reg, reg.get(dev.dev_id), b))
    click.echo(f"{'step':30} {'wall s':>7}  notes")
    for name, dt, note in rows:
        click.echo(f"{name:30} {dt:7.2f}  {note}")
