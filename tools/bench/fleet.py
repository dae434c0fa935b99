"""`gasguard bench fleet`: how many frames per second one core of the simulator generates and signs.

Every figure is one process (one core), the median of `--runs` runs:
- seal:            frame.seal of a household reading (HMAC-SHA256 MIC) with per-device counters
- seal+wrap:       the same plus the UART framing (COBS + CRC16) a pty carries
- fleet quiet:     the whole pipeline (scheduling, readings with noise, counters, sealing, framing) over a
                   NullTransport, virtual time as fast as possible
- fleet storm:     alarm_storm with 2,000 dynamic nodes: the rate counts safety steps (each dynamic node
                   evaluates its gas/pressure logic every virtual second) plus frames sent, since the steps
                   are most of the work
- fleet udp:       quiet over the Semtech UDP forwarder (rxpk JSON + base64, PUSH_DATA of 8) to a loopback
                   socket nobody reads (the kernel drops what overflows; this measures the sender)
"""

import json
import platform
import socket
import statistics
import time

import click

from gasguard import __version__


def _median_rate(fn, runs):
    rates = []
    for _ in range(runs):
        n, secs = fn()
        rates.append(n / secs)
    return statistics.median(rates), min(rates), max(rates)


def _seal(devs, frames, wrap):
    from gasguard.protocol import const, frame, framing

    keys = [(d.dev_id, d.key) for d in devs]
    fcnt = [1] * len(keys)

    def run():
        t0 = time.perf_counter()
        n = len(keys)
        for i in range(frames):
            j = i % n
            dev, key = keys[j]
            raw = frame.seal({"type": "reading", "dev": dev, "fcnt": fcnt[j], "gas": 12, "pressure": 2000,
                              "battery": 90, "state": 0}, key, const.UP)
            fcnt[j] += 1
            if wrap:
                framing.wrap(raw)
        return frames, time.perf_counter() - t0
    return run


def _fleet(devs, frames, scenario, transport_factory, params=None, count_steps=False):
    from gasguard.tools.sim import scenarios
    from gasguard.tools.sim.fleet import Fleet

    def run():
        tr = transport_factory()
        fl = Fleet.from_devices(devs, tr, seed=1)
        scen = scenarios.make(scenario, **(params or {}))
        rep = fl.run(scen, duration=10 * 86400, realtime=False, max_frames=frames, wall_timeout=300)
        tr.close()
        return rep.frames + (rep.steps if count_steps else 0), rep.wall_s
    return run


@click.command("fleet")
@click.option("--households", default=20_000, show_default=True, help="household nodes (plus the 1,326 stations)")
@click.option("--frames", default=100_000, show_default=True, help="frames per run")
@click.option("--runs", default=5, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True)
def fleet(households, frames, runs, as_json):
    """Frames per second the fleet simulator generates and signs, per core (median of runs)."""
    from gasguard.tools.sim import district
    from gasguard.tools.sim.fleet_transport import NullTransport, UdpTransport

    devs = district.generate(seed=1, scale=1.0, households=households, sim_keys=True)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    cases = [
        ("seal", _seal(devs, frames, False)),
        ("seal+wrap", _seal(devs, frames, True)),
        ("fleet quiet (pty framing)", _fleet(devs, frames, "quiet", lambda: NullTransport(wrap=True))),
        ("storm: steps+frames", _fleet(devs, min(frames, 20_000), "alarm_storm", lambda: NullTransport(wrap=True),
                                       {"count": 2000, "window": 600}, count_steps=True)),
        ("fleet quiet (Semtech UDP)", _fleet(devs, frames, "quiet",
                                             lambda: UdpTransport(f"127.0.0.1:{port}", keepalive_s=3600))),
    ]
    out = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
           "python": platform.python_version(), "gasguard": __version__, "nodes": len(devs), "runs": runs,
           "frames_per_run": frames, "results": {}}
    if not as_json:
        click.echo(f"{len(devs):,} nodes, {frames:,} frames per run, median of {runs}, one core, "
                   f"Python {out['python']} on {out['machine']}")
        click.echo(f"{'case':30} {'frames/s':>10} {'min':>10} {'max':>10}")
    for name, fn in cases:
        med, lo, hi = _median_rate(fn, runs)
        out["results"][name] = {"median": round(med), "min": round(lo), "max": round(hi)}
        if not as_json:
            click.echo(f"{name:30} {med:10,.0f} {lo:10,.0f} {hi:10,.0f}")
    sink.close()
    if as_json:
        click.echo(json.dumps(out, indent=2))
