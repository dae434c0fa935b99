"""`gasguard bench lane`: the reading lane's cost a reading, compiled (gateway/_lane.c) against Python
(gateway/fastlane.py), on the same frames (issue 17).

Two daemons on one registry of N devices, each device heard twice through the general path (the lane takes a
device's readings from then on); then `rounds` readings of every device, each handed to `take` alone, timed
per call. Both lanes must take every one of them (the run fails otherwise): what is timed is the accepted path.

`--states`: readings that each publish their device's retained state (a district's mix: a household meter's
every report, or every other one, refreshes it), through `Daemon.process` in groups of 170 (a serial read),
with the compiled lane (which takes them since the eleventh pass) and with the general path alone (where
they went before): CPU a reading, the spool commit included. Since the nineteenth pass a state is marked due in
ingest and its message built when the publisher sends it (gateway/presence.py), which this does not time. Both
must make a state due with every reading (the run fails otherwise).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import click

from .gateway import READ_FRAMES, load

SERIAL = {"transport": "serial", "port": "tty0", "rssi": None, "snr": None}


def _scratch(workdir, devices: int, first_dev: int) -> tuple[Path, list]:
    """Both benches' start: the compiled module is there, a scratch folder, N nodes and their registry."""
    from gasguard.gateway.fastlane import _lane
    from gasguard.testing.node import Node, make_registry
    if _lane is None:
        raise click.ClickException("gasguard.gateway._lane is not built: reinstall with a C compiler (pip install -e .)")
    base = Path(workdir or tempfile.mkdtemp(prefix="gg-bench-lane-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    nodes = [Node(first_dev + i) for i in range(devices)]
    make_registry(base / "registry.db", nodes)
    return base, nodes


def lane_figures(*, devices=10_000, rounds=4, repeats=3, echo=click.echo, workdir=None) -> dict:
    from gasguard.gateway.config import Config
    from gasguard.gateway.daemon import Daemon
    from gasguard.gateway.fastlane import ReadingLane, _lane
    out: dict = {"devices": devices, "rounds": rounds, "load_before": load(), "us_per_take": {}}
    base, nodes = _scratch(workdir, devices, 0x00C00000)
    try:

        async def run() -> None:
            daemons = {}
            for name in ("compiled", "python"):
                now = [1_700_000_000.25]
                cfg = Config(gateway_id="gw", district="d", registry=base / "registry.db",
                             spool=base / f"spool-{name}.db", mqtt_port=1, rate_per_min=6000.0, rate_burst=100)
                d = Daemon(cfg, clock=lambda now=now: now[0], plugins=[])
                d.ingest.lane = ReadingLane(d.verifier, d.presence, compiled=name == "compiled")
                d.ingest.start()
                daemons[name] = (d, now)
            for _ in range(2):
                group = [(n.reading(), SERIAL, "serial:tty0") for n in nodes]
                for d, now in daemons.values():
                    for i in range(0, devices, 500):
                        d.process(group[i:i + 500])
                    now[0] += 1.0
            for rep in range(repeats):
                frames = [[n.reading(pressure=2000 + k) for n in nodes] for k in range(rounds)]
                for name, (d, now) in daemons.items():       # the same frames, each lane its own state
                    lane = d.ingest.lane
                    d.verifier.registry.prefetch([n.dev for n in nodes])
                    taken, t = 0, time.perf_counter()
                    for fr in frames:
                        shared = lane.group("gw", now[0], SERIAL)
                        for raw in fr:
                            taken += lane.take(raw, now[0], shared) is not None
                        now[0] += 0.5
                    us = (time.perf_counter() - t) / (rounds * devices) * 1e6
                    if taken != rounds * devices:
                        raise click.ClickException(f"the {name} lane took {taken} of {rounds * devices} readings")
                    out["us_per_take"].setdefault(name, []).append(us)
                    echo(f"  repeat {rep + 1}, {name:8}: {us:.2f} µs a reading ({rounds * devices:,} taken)  ({load()})")
        asyncio.run(run())
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    m = {k: statistics.median(v) for k, v in out["us_per_take"].items()}
    out.update(median_us=m, ratio=m["python"] / m["compiled"], sha_extensions=bool(_lane.SHA_EXTENSIONS),
               load_after=load())
    return out


def states_figures(*, devices=2_000, rounds=12, repeats=3, echo=click.echo, workdir=None) -> dict:
    """--states: CPU a reading of Daemon.process when every reading publishes its device's retained state, with
    the compiled lane and with the general path alone, alternated (module docstring)."""
    from gasguard.gateway.config import Config
    from gasguard.gateway.daemon import Daemon
    out: dict = {"devices": devices, "rounds": rounds, "load_before": load(), "us_per_reading": {}}
    base, nodes = _scratch(workdir, devices, 0x00C80000)
    try:

        async def one(name: str, rep: int) -> float:
            now = [1_700_000_000.25]
            cfg = Config(gateway_id="gw", district="d", registry=base / "registry.db",
                         spool=base / f"spool-{name}-{rep}.db", mqtt_port=1, rate_per_min=60_000.0, rate_burst=1000)
            d = Daemon(cfg, clock=lambda: now[0], plugins=[])
            if name == "general":
                d.ingest.lane = None
            d.ingest.start()
            for g in range(0, devices, READ_FRAMES):            # heard: online, state byte 0
                d.process([(n.reading(state=0), SERIAL, "serial:tty0") for n in nodes[g:g + READ_FRAMES]])
            # the state byte flips with every reading (the gas level, 0 <-> 1): each one publishes the state
            frames = [n.reading(state=(k % 2) * 8) for k in range(1, rounds + 1) for n in nodes]
            fell = [0]                      # states that fell due with the timed readings (presence.fell_due)
            fell_due = d.presence.fell_due

            def counted(devs, t):
                fell[0] += len(devs)
                fell_due(devs, t)
            d.presence.fell_due = counted
            t = time.process_time()
            for g in range(0, len(frames), READ_FRAMES):
                now[0] += 0.01
                d.process([(f, SERIAL, "serial:tty0") for f in frames[g:g + READ_FRAMES]])
            us = (time.process_time() - t) / len(frames) * 1e6
            states = fell[0]
            d.spool.close()
            if states != len(frames):
                raise click.ClickException(f"{name}: {states} retained states for {len(frames)} readings")
            return us

        for rep in range(repeats):
            for name in ("general", "lane"):
                us = asyncio.run(one(name, rep))
                out["us_per_reading"].setdefault(name, []).append(us)
                echo(f"  repeat {rep + 1}, {name:7}: {us:.1f} µs CPU a reading, each publishing its state  ({load()})")
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    m = {k: statistics.median(v) for k, v in out["us_per_reading"].items()}
    out.update(median_us=m, saved_us=m["general"] - m["lane"], load_after=load())
    return out


@click.command("lane")
@click.option("--devices", default=None, type=int, help="[default: 10,000; with --states 2,000]")
@click.option("--rounds", default=None, type=int, help="readings of every device per repeat [default: 4; with --states 12]")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1))
@click.option("--states", is_flag=True, help="readings that each publish their device's retained state, through "
              "Daemon.process: the compiled lane against the general path alone")
@click.option("--json", "as_json", is_flag=True)
def lane_bench(devices, rounds, repeats, states, as_json):
    """The reading lane a reading: compiled against Python, the same frames."""
    echo = (lambda *_: None) if as_json else click.echo
    if states:
        out = states_figures(devices=devices or 2_000, rounds=rounds or 12, repeats=repeats, echo=echo)
        if as_json:
            click.echo(json.dumps(out, indent=2))
            return
        m = out["median_us"]
        click.echo(f"median: general path {m['general']:.1f} µs, lane {m['lane']:.1f} µs CPU a reading that publishes "
                   f"its state ({out['saved_us']:.1f} µs less with the lane)")
        return
    out = lane_figures(devices=devices or 10_000, rounds=rounds or 4, repeats=repeats, echo=echo)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"median: compiled {out['median_us']['compiled']:.2f} µs, Python {out['median_us']['python']:.2f} µs a "
               f"reading ({out['ratio']:.1f}x; SHA extensions {'on' if out['sha_extensions'] else 'not on this CPU'})")
