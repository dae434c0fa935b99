"""`gasguard bench ...`: benchmarks. They print figures; they are not timed tests."""

import json

import click

from gasguard.protocol import airtime
from gasguard.protocol.const import UP
from gasguard.protocol import frame, framing
from gasguard.tools.bench.command import command_bench
from gasguard.tools.bench.command_store import command_store_bench
from gasguard.tools.bench.deframe import deframe_bench
from gasguard.tools.bench.authority import authority_bench
from gasguard.tools.bench.firmware import firmware_bench
from gasguard.tools.bench.fleet import fleet as fleet_bench
from gasguard.tools.bench.suite import bench_all
from gasguard.tools.bench.gateway import alarms_bench, gateway_bench, memory_bench, misses_bench
from gasguard.tools.bench.spool_commit import spool_commit_bench
from gasguard.tools.bench.udp import udp_bench
from gasguard.tools.bench.provisioning import provisioning_bench
from gasguard.tools.bench.web import web_bench
from gasguard.tools.bench.retention import retention_bench
from gasguard.tools.bench.failover import failover_bench
from gasguard.tools.bench.peers import peers_bench
from gasguard.tools.bench.buses import buses_bench
from gasguard.tools.bench.autosave import autosave_bench
from gasguard.tools.bench.lane import lane_bench


@click.group()
def bench():
    """Benchmarks that print figures (see BENCHMARKS.md)."""


LBT_MS = 5.0          # listen before talk: channel sensed idle this long before each transmission
TURNAROUND_MS = 1.0   # radio RX -> TX after the listen


def air_figures(lbt_ms=LBT_MS) -> dict:
    key = bytes(16)
    samples = {
        "household reading": {"type": "reading", "dev": 1, "fcnt": 1, "gas": 0, "pressure": 2000, "battery": 90,
                              "state": 0},
        "station reading (inlet)": {"type": "reading", "dev": 1, "fcnt": 1, "gas": 0, "pressure": 300000,
                                    "battery": None, "state": 0, "inlet": 1200000},
        "alarm": {"type": "alarm", "dev": 1, "fcnt": 1, "code": 2, "aseq": 1, "age": 0, "value": 260, "state": 5},
        "ack": {"type": "ack", "dev": 1, "fcnt": 1, "ref_type": 1, "ref": 1, "result": 0},
    }
    out = {"lbt_ms": lbt_ms, "turnaround_ms": TURNAROUND_MS, "frames": {}}
    for name, f in samples.items():
        raw = frame.seal(f, key, UP)
        row = {"raw": len(raw), "framed": len(framing.wrap(raw)) - 1}
        for sf in (7, 11, 12):
            ms = airtime.airtime_us(len(raw), sf) / 1000
            row[f"sf{sf}_ms"] = ms
            # the 1-second rule: a transmission longer than 1 s is not allowed at all; otherwise back to back,
            # each preceded by the listen and the turnaround (an idle channel: the upper bound)
            row[f"sf{sf}_per_h"] = int(3_600_000 // (ms + lbt_ms + TURNAROUND_MS)) if ms <= 1000 else 0
        out["frames"][name] = row
    out["max_payload_1s"] = {"sf11": airtime.max_payload_under(1_000_000, 11),
                             "sf12": airtime.max_payload_under(1_000_000, 12)}
    return out


def print_air(out, echo=click.echo) -> None:
    echo(f"{'frame':24} {'raw B':>5} {'framed B':>8} {'SF7 ms':>7} {'SF11 ms':>8} {'SF12 ms':>8} "
         f"{'SF7 /h':>7} {'SF11 /h':>7} {'SF12 /h':>7}")
    for name, r in out["frames"].items():
        echo(f"{name:24} {r['raw']:5d} {r['framed']:8d} {r['sf7_ms']:7.1f} {r['sf11_ms']:8.1f} {r['sf12_ms']:8.1f} "
             f"{r['sf7_per_h']:7,d} {r['sf11_per_h']:7,d} {r['sf12_per_h']:7,d}")
    echo(f"125 kHz, CR 4/5, 8-symbol preamble, explicit header, CRC. Frames per hour: one node, idle channel, "
         f"each transmission <= 1 s (0 where it is longer: SF12) after a {out['lbt_ms']:g} ms listen-before-talk and "
         f"{out['turnaround_ms']:g} ms RX->TX turnaround; a busy channel's back-off lowers it. Largest payload "
         f"under 1 s: SF11 {out['max_payload_1s']['sf11']} B, SF12 {out['max_payload_1s']['sf12']} B")


@bench.command("air")
@click.option("--lbt-ms", default=LBT_MS, show_default=True, help="listen-before-talk time per transmission")
@click.option("--json", "as_json", is_flag=True)
def air(lbt_ms, as_json):
    """Bytes on air per signed frame, LoRa airtime at SF7/SF11/SF12 (125 kHz, CR 4/5), and frames per hour
    one node may send under the 1-second-per-transmission rule with listen-before-talk."""
    out = air_figures(lbt_ms)
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        print_air(out)


@bench.command("fuzz")
@click.option("--inputs", default=2_000_000, show_default=True, help="inputs over the five ingest paths")
@click.option("--seed", default=1, show_default=True)
@click.option("--lane", is_flag=True, help="without the grading plugin, so the reading lane takes the common "
                                           "readings (a plugin turns it off); no incident topics")
@click.option("--json", "as_json", is_flag=True)
def fuzz(inputs, seed, lane, as_json):
    """Fuzz the whole ingest path in-process (deframer, verifier, Semtech UDP, command and incident topics):
    prints counts; exit 1 on any unexpected exception type or wrongly accepted frame (issue 12 item 11)."""
    from gasguard.tools.bench.fuzz import print_report, run_fuzz
    r = run_fuzz(inputs, seed, lane=lane, progress=None if as_json else
                 lambda n, s: click.echo(f"  {n:,} inputs, {s:.0f} s", err=True) if n % 262_144 < 8192 else None)
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        print_report(r, click.echo)
    if r["unexpected"] or r["wrongly_accepted"]:
        raise SystemExit(1)


bench.add_command(fleet_bench)
bench.add_command(command_bench)
bench.add_command(command_store_bench)
bench.add_command(authority_bench)
bench.add_command(firmware_bench)
bench.add_command(gateway_bench)
bench.add_command(alarms_bench)
bench.add_command(autosave_bench)
bench.add_command(lane_bench)
bench.add_command(memory_bench)
bench.add_command(misses_bench)
bench.add_command(spool_commit_bench)
bench.add_command(udp_bench)
bench.add_command(bench_all)
bench.add_command(provisioning_bench)
bench.add_command(web_bench)
bench.add_command(retention_bench)
bench.add_command(peers_bench)
bench.add_command(buses_bench)
bench.add_command(failover_bench)
bench.add_command(deframe_bench)


@bench.command("dashboard")
@click.option("--out", type=click.Path(dir_okay=False), default="docs/img/dashboard.png", show_default=True,
              help="the PNG to write")
@click.option("--seconds", type=float, default=150.0, show_default=True, help="wall seconds of the drill")
@click.option("--keep", is_flag=True, help="keep the work folder (gateway and Prometheus logs, TSDB)")
def dashboard_cmd(out, seconds, keep):
    """Render monitoring/grafana/gasguard-dashboard.json with a real gateway drill scraped by a real
    Prometheus (no Grafana: see tools/bench/dashboard.py), into a PNG for the operations guide."""
    from pathlib import Path

    from gasguard.tools.bench.dashboard import capture
    try:
        rep = capture(Path(out), seconds, keep, log=lambda m: click.echo(m, err=True))
    except RuntimeError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(1)
    empty = [t for t, n in rep["panels"].items() if not n]
    click.echo(json.dumps(rep, indent=1))
    click.echo(f"{len(rep['panels']) - len(empty)} of {len(rep['panels'])} panels with data; without: "
               f"{', '.join(empty) or 'none'}", err=True)
