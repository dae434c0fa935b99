"""`gasguard bench buses`: issue 17's alarm goal over real serial lines, one gateway process per bus.

`gasguard bench alarms` hands frames to one in-process daemon; here the readings and alarms go over ptys into
real `gasguard gateway run` processes, one per bus (as the systemd template `gasguard-gateway@` runs a
substation with several buses), and each alarm is timed from the moment its bytes were handed to the line
(os.write of its frame) to the moment a subscriber in another process (as the command is) has it. The
background is split evenly over the buses; an alarm every ALARM_EVERY s goes to the buses in turn. One writer
thread per line writes the readings due by now, an alarm first when one is due on that line: a line is a
single stream: an alarm waits for what is on the line already (the pty's buffer), and goes ahead of readings
the line has not taken yet (nodes that have not sent). What a gateway cannot take stays with the writer, so
"offered" is what the lines took.

Runs alternate between the bus counts asked for (`--buses 1 --buses 2`), so a change of the machine's load
hits both alike. The broker is mosquitto as `gasguard authority broker-config` sets it up.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import click

from .gateway import ALARM_EVERY, ALARM_GOAL_MS, PER_DEV, AlarmSubscriber, _pct, _saves, autosave_option, load

TICK = 0.005             # s between a writer's slices of readings
READY_S = 60.0           # a gateway not up (port open, warm-up taken, probe alarm through) in this long failed


def _line_writer(fd: int, frames: list[bytes], rate: float, seconds: float, alarms: list[tuple[str, bytes]],
                 alarm_at: list[float], stamped: dict, stop: threading.Event, out: dict) -> None:
    """Write `frames` at `rate`/s for `seconds` (or until they run out) and each alarm of `alarms` at its time in
    `alarm_at` (s from the start); `stamped[mid]`: when it was written. Readings the line has not taken yet
    wait here; a due alarm goes ahead of them, after the frame in progress, as a node that transmits when the
    bus is free: it waits for what is on the line already (the kernel's pty buffer, ~20 KB), not for nodes
    that have not sent yet. `out`: readings written and the wall time."""
    t0 = time.perf_counter()
    fi = ai = 0
    pending = b""
    while not stop.is_set():
        now = time.perf_counter() - t0
        if now >= seconds and (not pending or now >= seconds + 10):
            break
        due = min(len(frames), int(rate * min(now, seconds)) + 1)
        if due > fi:
            pending += b"".join(frames[fi:due])
            fi = due
        if ai < len(alarms) and now >= alarm_at[ai]:
            mid, raw = alarms[ai]
            ai += 1
            # frames are 0 ... 0: a pending that does not begin with 0 is the rest of a frame begun on the line
            k = pending.index(0) + 1 if pending and pending[0] != 0 else 0
            pending = pending[:k] + raw + pending[k:]
            stamped[mid] = time.perf_counter()
        while pending and not stop.is_set():
            select.select([], [fd], [], TICK)
            try:
                n = os.write(fd, pending[:65536])
            except BlockingIOError:
                n = 0
            pending = pending[n:]
            if time.perf_counter() - t0 >= now + TICK:     # back for what fell due meanwhile
                break
        if not pending:
            time.sleep(max(0.0, t0 + (int((time.perf_counter() - t0) / TICK) + 1) * TICK - time.perf_counter()))
    out["written"] = fi
    out["wall"] = time.perf_counter() - t0


def _until_accepted(gw, bind: str, n: int) -> None:
    """Until the gateway's gasguard_gateway_accepted_total (every type) reaches n."""
    from gasguard.testing.gateway import scrape
    deadline = time.monotonic() + READY_S
    got = 0.0
    while got < n:
        if gw.proc.poll() is not None or time.monotonic() > deadline:
            raise click.ClickException(f"the gateway accepted {got:.0f} of {n} warm-up readings in {READY_S:.0f} s "
                                       f"(exit {gw.proc.poll()}); see {gw.log_path}")
        time.sleep(0.05)
        try:
            got = scrape(bind, "gasguard_gateway_accepted_total")
        except OSError:             # not listening yet
            got = 0.0


def bus_run(base: Path, port: int, buses: int, nodes: list, alarm_nodes: list, probe_nodes: list, rate: float,
            seconds: float, sub: AlarmSubscriber) -> dict:
    """One run: `buses` fresh gateways (own pty, id, spool), every device heard once, then the timed window."""
    from gasguard.gateway import payloads
    from gasguard.protocol import framing
    from gasguard.testing.config import write_config
    from gasguard.testing.gateway import GatewayProcess
    from gasguard.testing.links import PtyCable
    from gasguard.testing.mosquitto import free_port
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    gws, cables, binds = [], [], []
    try:
        for b in range(buses):
            cable = PtyCable(base / f"tty{b}")
            binds.append(f"127.0.0.1:{free_port()}")
            cfg = write_config(base / f"bus{b}.toml", registry=base.parent / "registry.db",
                               spool=base / f"spool-bus{b}.db", mqtt_port=port, serial=[str(cable.link)],
                               gateway_id=f"bus{b}", district="d1",
                               extra=f"[batch]\ndelay = 0.05\n[limits]\nburst = 60\n[metrics]\nbind = \"{binds[b]}\"\n")
            cables.append(cable)
            gws.append(GatewayProcess(cfg, base / f"bus{b}.log").start())
        # pyserial's open() flushes what waits on the line: nothing is written before each gateway opened it
        for gw in gws:
            try:
                gw.wait_log("open (serial", READY_S)
            except AssertionError as e:
                raise click.ClickException(str(e)) from None
        # a device is wired to one bus: device i on bus i % buses
        mine = [[n for i, n in enumerate(nodes) if i % buses == b] for b in range(buses)]
        # every device heard once (the first sight takes the general path: ~80 µs, not ~25), all of it accepted
        # before the clock starts (the gateway's own count, from its metrics), then a probe alarm through to the
        # subscriber
        for b in range(buses):
            cables[b].write(b"".join(framing.wrap(n.reading(gas=0, pressure=2000)) for n in mine[b]))
        for b in range(buses):
            _until_accepted(gws[b], binds[b], len(mine[b]))
        deadline = time.monotonic() + READY_S
        for b in range(buses):
            pn = probe_nodes[b]
            while True:
                raw = pn.alarm()
                mid = payloads.msg_id(f"bus{b}", pn.dev, pn.fcnt)
                cables[b].write(framing.wrap(raw))
                try:
                    sub.wait_until(mid, 1.0)
                    break
                except TimeoutError:
                    if gws[b].proc.poll() is not None or time.monotonic() > deadline:
                        raise click.ClickException(f"gateway bus{b} delivered no probe alarm in {READY_S:.0f} s "
                                                   f"(exit {gws[b].proc.poll()}); see {gws[b].log_path}") from None
        frames = [[framing.wrap(n.reading(gas=0, pressure=2001 + k)) for k in range(PER_DEV - 1) for n in m]
                  for m in mine]
        n_alarms = int(seconds / ALARM_EVERY)
        alarms: list[list] = [[] for _ in range(buses)]
        alarm_at: list[list] = [[] for _ in range(buses)]
        for i in range(n_alarms):
            b, an = i % buses, alarm_nodes[i % len(alarm_nodes)]
            raw = an.alarm()
            alarms[b].append((payloads.msg_id(f"bus{b}", an.dev, an.fcnt), framing.wrap(raw)))
            alarm_at[b].append(i * ALARM_EVERY)
        stamped: dict = {}
        stop = threading.Event()
        outs = [{} for _ in range(buses)]
        writers = [threading.Thread(target=_line_writer, args=(cables[b].master, frames[b], rate / buses, seconds,
                                                               alarms[b], alarm_at[b], stamped, stop, outs[b]),
                                    daemon=True) for b in range(buses)]
        for w in writers:
            w.start()
        for w in writers:
            w.join(seconds + 30)
        stop.set()
        sub.wait_for(stamped, 10.0)
        t_first = min(stamped.values(), default=0.0)
        # (s into the run, ms) per alarm, in the order written: where in the run the slow ones were
        series = sorted((round(t - t_first, 3), round((sub.seen[m] - t) * 1000, 2)) for m, t in stamped.items()
                        if m in sub.seen)
        lat = sorted(ms for _t, ms in series)
        written = sum(o.get("written", 0) for o in outs)
        wall = max(o.get("wall", 1e-9) for o in outs)
        return {"buses": buses, "offered_per_s": written / wall, "alarms": len(stamped), "arrived": len(lat),
                "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "max_ms": _pct(lat, 100), "series": series}
    finally:
        for gw in gws:
            gw.stop()
        for c in cables:
            c.close()


def bus_figures(*, bus_counts=(1, 2), rate=50_000, seconds=4.0, runs=3, echo=click.echo, workdir=None,
                autosave: int | None = None) -> dict:
    from gasguard.authority.broker import PUBACK_AT_ONCE
    from gasguard.protocol.topics import Topics
    from gasguard.testing.mosquitto import Mosquitto
    from gasguard.testing.node import make_registry
    from .gateway import _nodes
    base = Path(workdir or tempfile.mkdtemp(prefix="gg-bench-buses-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    out: dict = {"rate": rate, "seconds": seconds, "load_before": load(), "runs": []}
    try:
        nodes = _nodes(max(1, int(rate * seconds) // (PER_DEV - 1)))
        alarm_nodes = _nodes(200, first=0x800000)
        probe_nodes = _nodes(max(bus_counts), first=0x900000)
        make_registry(base / "registry.db", nodes + alarm_nodes + probe_nodes)
        echo(f"{len(nodes):,} devices, {rate:,} readings/s requested for {seconds} s, an alarm every "
             f"{ALARM_EVERY * 1000:.0f} ms; buses {', '.join(map(str, bus_counts))} alternated; the broker "
             f"{_saves(autosave)} ({load()})")
        with Mosquitto(workdir=base / "broker", extra_config=PUBACK_AT_ONCE + "\n", autosave=autosave) as mq:
            out["autosave_s"] = mq.autosave_s
            sub = AlarmSubscriber(mq.port, Topics().gateway("d1", "+").devices("alarm"))
            try:
                for r in range(runs):
                    for buses in bus_counts:
                        run = bus_run(base / "run", mq.port, buses, nodes, alarm_nodes, probe_nodes, rate, seconds,
                                      sub)
                        out["runs"].append(run)
                        echo(f"  run {r + 1}, {buses} bus{'es' if buses > 1 else ''}: {run['offered_per_s']:,.0f} "
                             f"readings/s offered; {run['arrived']}/{run['alarms']} alarms at the subscriber: p50 "
                             f"{run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, max {run['max_ms']:.1f} ms  "
                             f"({load()})")
            finally:
                sub.close()
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    out["by_buses"] = {}
    for buses in bus_counts:
        rs = [x for x in out["runs"] if x["buses"] == buses]
        out["by_buses"][buses] = {"p99_ms": [x["p99_ms"] for x in rs],
                                  "p99_median_ms": statistics.median(x["p99_ms"] for x in rs),
                                  "met": sum(x["p99_ms"] <= ALARM_GOAL_MS for x in rs), "runs": len(rs),
                                  "offered_per_s": [x["offered_per_s"] for x in rs]}
    out["load_after"] = load()
    return out


@click.command("buses")
@click.option("--buses", "bus_counts", multiple=True, type=click.IntRange(1, 8), default=(1, 2),
              show_default=True, help="gateway processes, one per bus (repeatable: the runs alternate)")
@click.option("--rate", default=50_000, show_default=True, help="background readings/s requested, over all buses")
@click.option("--seconds", default=4.0, show_default=True)
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1), help="runs of each bus count")
@autosave_option
@click.option("--json", "as_json", is_flag=True)
def buses_bench(bus_counts, rate, seconds, runs, autosave, as_json):
    """Alarm p99 (written to the line -> at a subscriber) with the background over 1 or more buses, one
    gateway process each."""
    out = bus_figures(bus_counts=bus_counts, rate=rate, seconds=seconds, runs=runs, autosave=autosave,
                      echo=(lambda *_: None) if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for buses, v in out["by_buses"].items():
        click.echo(f"{buses} bus{'es' if buses > 1 else ''}: alarm p99 per run "
                   + " / ".join(f"{x:.1f}" for x in v["p99_ms"]) + f" ms (median {v['p99_median_ms']:.1f}); "
                   f"p99 <= {ALARM_GOAL_MS:.0f} ms in {v['met']} of {v['runs']} runs; offered "
                   + " / ".join(f"{x:,.0f}" for x in v["offered_per_s"]) + " readings/s")
