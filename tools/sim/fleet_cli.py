"""`gasguard sim fleet`: play a scenario with the simulated fleet against a gateway (tools/sim/fleet.py)."""

import json
import signal

import click

from gasguard.tools.sim.scenarios import SCENARIOS


def _param(items):
    """--param k=v pairs -> dict; ints (0x.. allowed) and floats are converted."""
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"{item!r}: write NAME=VALUE, e.g. count=100", param_hint="--param")
        for conv in (lambda s: int(s, 0), float):
            try:
                v = conv(v)
                break
            except ValueError:
                pass
        out[k.strip()] = v
    return out


@click.command("fleet")
@click.option("--registry", "path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="registry with the devices (and keys) to simulate, e.g. from 'gasguard sim district'")
@click.option("--transport", type=click.Choice(["pty", "udp"]), default="pty", show_default=True)
@click.option("--target", "targets", multiple=True,
              help="pty: a path to symlink to the pty's slave device (optional); udp: 127.0.0.1:PORT of the "
                   "gateway's packet-forwarder port (required; repeat it for several gateways, see --overlap)")
@click.option("--overlap", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="udp with several --target: share of the nodes heard by two gateways")
@click.option("--scenario", type=click.Choice(sorted(SCENARIOS)), default="quiet", show_default=True)
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="scenario parameter, repeatable: target=0x03000001, count=100, pclass=subhigh_a, start=30 ...")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="virtual seconds to play [default: the scenario's]")
@click.option("--speed", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="virtual seconds per wall second")
@click.option("--fast", is_flag=True, help="no wall-clock pacing: jump from one frame to the next")
@click.option("--rate", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="at most this many frames per wall second (0: no limit)")
@click.option("--households", type=click.IntRange(0), default=None, help="load at most this many household nodes")
@click.option("--seed", default=0, show_default=True, help="same seed, same noise and scenario targets")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="append one JSON line per frame sent (dev, fcnt, type, aseq, time) to this file")
@click.option("--state", "state_path", type=click.Path(dir_okay=False), default=None,
              help="keep the nodes' frame counters in this file across runs (else every run starts at 1 and a "
                   "gateway that saw an earlier run refuses the frames as replays)")
@click.option("--delay", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="wall seconds to wait before starting (time to start a gateway on the pty)")
@click.option("--wall-timeout", default=600.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="stop after this many wall seconds whatever the duration")
@click.option("--max-frames", type=click.IntRange(1), default=None, help="stop after sending this many frames")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def fleet(path, transport, targets, overlap, scenario, params, duration, speed, fast, rate, households, seed, log_path,
          state_path, delay, wall_timeout, max_frames, as_json):
    """Simulated household and station nodes speaking protocol v1 to a gateway, playing a scenario.

    \b
    Examples:
      gasguard sim fleet --registry /tmp/district.db --transport udp --target 127.0.0.1:1700 \\
          --scenario single_leak --speed 60
      gasguard sim fleet --registry /tmp/district.db --transport pty --target /tmp/gasguard-modem \\
          --scenario station_trip --delay 5 --log /tmp/frames.jsonl
    """
    import time

    from gasguard.tools.sim import scenarios
    from gasguard.tools.sim.fleet import Fleet
    from gasguard.tools.sim.fleet_transport import OverlapTransport, PtyTransport, TransportError, UdpTransport

    try:
        scen = scenarios.make(scenario, **dict(_param(params), seed=seed))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--param")
    if transport == "udp" and not targets:
        raise click.BadParameter("udp needs the gateway's port, e.g. --target 127.0.0.1:1700", param_hint="--target")
    if transport == "pty" and len(targets) > 1:
        raise click.BadParameter("a pty takes one --target (the symlink to make)", param_hint="--target")
    target = targets[0] if targets else None
    links = []
    try:
        if transport == "pty":
            link = PtyTransport(link=target)
        else:
            links = [UdpTransport(t) for t in targets]
            link = OverlapTransport(links, overlap) if len(links) > 1 else links[0]
    except TransportError as e:
        for t in links:
            t.close()
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2 if transport == "udp" else 1)
    try:
        fl = Fleet.from_registry(path, link, households=households, seed=seed, speed=speed, rate=rate, log=log_path)
        resumed = fl.load_counters(state_path) if state_path else 0
    except (ValueError, OSError) as e:
        link.close()
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2)
    where = f"pty {link.port}" + (f" (linked from {target})" if target else "") \
        if transport == "pty" else f"udp {', '.join(targets)}" + (f", overlap {overlap}" if len(targets) > 1 else "")
    click.echo(f"{len(fl.nodes):,} nodes, scenario {scen.name}, {where}"
               + (f", counters resumed for {resumed:,}" if resumed else ""), err=True)
    signal.signal(signal.SIGTERM, lambda *_: fl.stop())
    try:
        if delay:
            time.sleep(delay)
        rep = fl.run(scen, duration, realtime=not fast, wall_timeout=wall_timeout, max_frames=max_frames)
    finally:
        if state_path:
            fl.save_counters(state_path)
        link.close()
    d = rep.as_dict()
    d.update(scen.describe())
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    s = d["sent"]
    click.echo(f"sent {d['frames']:,} frames in {d['wall_s']:.1f} s wall / {d['virtual_s']:.0f} s virtual "
               f"({d['stopped_by']}): readings {s['reading']:,}, alarms {s['alarm']:,}, events {s['event']:,}, "
               f"acks {s['ack']:,}")
    a = d["alarms"]
    click.echo(f"alarms: raised {a['raised']}, retransmitted {a['retransmitted']}, acked {a['acked']}, "
               f"unacked {a['unacked']}; by code {json.dumps(d['alarm_codes'])}")
    click.echo(f"downlinks: {json.dumps(d['downlinks'])}; transport: {json.dumps(d['transport'])}")
    if not fast and d["max_lag_s"] > 1.0:
        click.echo(f"warning: sending fell {d['max_lag_s']:.1f} s behind the schedule: lower --speed or load fewer "
                   "--households", err=True)
    if scen.targets:
        click.echo(f"targets: {', '.join(d['targets'][:10])}{' ...' if len(d['targets']) > 10 else ''}")
