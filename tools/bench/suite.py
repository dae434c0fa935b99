"""`gasguard bench all`: every issue-8 benchmark in bounded time, then one table of goals and figures.

Default run: a few minutes on a 2-core machine (mostly the 1,000,000-reading drain and the 330,000-device
memory run); `--quick` is a smoke run of the same code paths with small numbers (under a minute).
"""

import json
import os
import platform
import time

import click

from gasguard.tools.bench.firmware import firmware_figures, print_firmware
from gasguard.tools.bench.gateway import gateway_figures, memory_figures, print_gateway, print_memory


def _row(goal, figure, target, ok):
    return (goal, figure, target, "n/a" if ok is None else ("met" if ok else "MISSED"))


def table(air, fw, gw, mem) -> list[tuple]:
    i, la, dr = gw["ingest"], gw["latency"], gw["drain"]
    s = fw["step"]
    hh = air["frames"]["household reading"]
    rows = [
        _row("gateway ingest (verified, spooled, PUBACKed)",
             f"{i['puback_per_s']:,.0f}/s; naive {i['naive_puback_per_s']:,.0f}/s; x{i['ratio']:.1f}",
             ">= 100,000/s", i["puback_per_s"] >= 100_000),
        _row(f"alarm latency p50/p99, {la['accepted_per_s']:,.0f}/s background"
             + (" (max sustained)" if la["capped"] else ""),
             f"{la['p50_ms']:.1f} / {la['p99_ms']:.1f} ms", "p99 <= 20 ms, at 50,000/s",
             la["p99_ms"] <= 20 and not la["capped"]),
        _row(f"drain of {dr['backlog']:,} spooled readings", f"{dr['drain_per_s']:,.0f}/s; alarms meanwhile "
             f"p99 {dr['p99_ms']:.1f} ms", ">= 50,000/s; alarms first (p99 <= 20 ms)",
             dr["drain_per_s"] >= 50_000 and dr["p99_ms"] <= 20),
        _row(f"gateway RSS, {mem['devices']:,} devices ({mem['stations']:,} stations) heard once",
             f"{mem['after_all_heard_mb']} MB (registry alone {mem['registry_loaded_mb']} MB)", "<= 150 MB",
             mem["after_all_heard_mb"] <= 150),
        _row("firmware safety step (MicroPython)", f"{s['per_step_us']:.1f} us = " + (
             f"{s['step_us'] / s['empty_us']:.1f}x the empty loop" if s["empty_us"] else
             "(empty loop under the timer's resolution)"), "figure", None),
        _row("firmware heap per step", f"{s['alloc_per_step']:.3f} B", "0", s["alloc_per_step"] == 0),
    ]
    for prof, t in fw["trip"].items():
        rows.append(_row(f"trip {prof}: crossing sample -> valve", f"debounce + {t['after_debounce_ms']} ms "
                         f"(sample {t['sample_ms']} ms)", "<= debounce + 1 sample",
                         t["after_debounce_ms"] <= t["sample_ms"]))
    rows.append(_row("air: household reading", f"{hh['raw']} B raw ({hh['framed']} framed); SF7/11/12 "
                     f"{hh['sf7_ms']:.1f}/{hh['sf11_ms']:.1f}/{hh['sf12_ms']:.1f} ms", "figure", None))
    rows.append(_row("air: frames/h one node, 1-s rule + LBT", f"SF7 {hh['sf7_per_h']:,}, SF11 {hh['sf11_per_h']:,}, "
                     f"SF12 {hh['sf12_per_h']} (over 1 s)", "figure", None))
    return rows


def print_table(rows, echo=click.echo) -> None:
    w = [max(len(r[k]) for r in rows) for k in range(4)]
    head = ("goal", "measured", "target", "")
    w = [max(a, len(b)) for a, b in zip(w, head)]
    echo("  ".join(h.ljust(n) for h, n in zip(head, w)))
    echo("  ".join("-" * n for n in w))
    for r in rows:
        echo("  ".join(c.ljust(n) for c, n in zip(r, w)))


@click.command("all")
@click.option("--quick", is_flag=True, help="a smoke run: small numbers, same code paths (under a minute)")
@click.option("--json", "as_json", is_flag=True, help="all figures as JSON")
def bench_all(quick, as_json):
    """Run every benchmark (air, firmware, gateway, memory) in bounded time; print a table of the goals."""
    from gasguard.tools.bench.cli import air_figures, print_air

    echo = (lambda *_: None) if as_json else click.echo
    t0 = time.monotonic()
    out = {"machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                       "platform": platform.platform()}, "quick": quick, "load_start": os.getloadavg()}
    echo("== air")
    out["air"] = air_figures()
    print_air(out["air"], echo)
    echo("== firmware")
    out["firmware"] = firmware_figures(steps=5000 if quick else 10000, realtime=not quick)
    print_firmware(out["firmware"], echo)
    echo("== gateway")
    if quick:
        gw = gateway_figures(readings=10_000, runs=1, rate=50_000, seconds=1.0, backlog=20_000, echo=echo)
    else:
        gw = gateway_figures(readings=200_000, runs=3, rate=50_000, seconds=5.0, backlog=1_000_000, echo=echo)
    out["gateway"] = gw
    print_gateway(gw, echo)
    echo("== memory")
    out["memory"] = memory_figures(households=5_000 if quick else None, echo=echo)
    print_memory(out["memory"], echo)
    out["load_end"] = os.getloadavg()
    out["wall_s"] = round(time.monotonic() - t0, 1)
    rows = table(out["air"], out["firmware"], gw, out["memory"])
    out["table"] = rows
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
    echo("")
    echo(f"== summary ({'quick smoke run: figures not representative' if quick else 'default run'}; "
         f"{out['wall_s']} s; load {out['load_start'][0]:.2f} -> {out['load_end'][0]:.2f} on "
         f"{out['machine']['nproc']} cores)")
    print_table(rows, echo)
