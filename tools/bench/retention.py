"""`gasguard bench retention`: what keeping the stations' readings costs the command service (issue 16 item 5).

A district's stations reporting once a minute for a day (332 stations: the district simulator's count) are
written into a fresh command store as the grader writes them (`tx.readings`, an hour a transaction here), then:
one station page's read of its 24 h (`store.readings`), one retention pass as the leader runs it every
`readings_prune_s` (the oldest minute expires, nobody over the bound), and a pass where every station is over
a bound (a chattering district: the worst round). The retention runs in the grading loop, so a pass's time is
time an alarm can wait behind it: each round is run as the leader runs it, in passes of at most `--rows` rows
(`readings_prune_rows`), one transaction each, and the longest pass is the grading loop's longest stall.
`--rows 0` runs each round as one unbounded pass (the reference, and what the service did before).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time

import click

from gasguard.command.store import Retention, open_store

DAY = 86_400.0


def _round(s, fence, before: float, bound: int, rows: int) -> dict:
    """One retention round in passes as the leader runs them (command/service.py `prune_readings`), each timed."""
    r = Retention(before, bound)
    passes = []
    while not r.done:
        t0 = time.perf_counter()
        with s.write(fence) as tx:
            tx.retention_pass(r, rows or None)
        passes.append((time.perf_counter() - t0) * 1000)
    return {"removed": r.removed, "passes": len(passes), "longest_ms": max(passes), "total_ms": sum(passes),
            "median_ms": statistics.median(passes)}


def retention_run(url: str, stations: int = 332, every_s: float = 60.0, pass_rows: int = 5000) -> dict:
    s = open_store(url)
    s.migrate()
    fence = s.acquire_lease("bench", ttl=3600)
    t_first = 1_800_000_000.0
    per_station = int(DAY // every_s)
    t0 = time.perf_counter()
    hour = int(3600 // every_s)
    for m in range(0, per_station, hour):
        rows = [(0xA000 + st, t_first + every_s * (m + k), 3000.0, 300_000.0, "gw1")
                for k in range(min(hour, per_station - m)) for st in range(stations)]
        with s.write(fence) as tx:
            tx.readings(rows)
    insert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    page = s.readings(0xA001, t_first)
    read_s = time.perf_counter() - t0
    with s.write(fence) as tx:
        tx.readings([(0xA000 + st, t_first + DAY, 3000.0, 300_000.0, "gw1") for st in range(stations)])
    steady = _round(s, fence, t_first + every_s, 20_000, pass_rows)
    bound = per_station // 3
    worst = _round(s, fence, t_first + every_s, bound, pass_rows)
    s.close()
    n = stations * per_station
    return {"store": url.split(":", 1)[0], "rows": n, "insert_rows_per_s": n / insert_s, "page_rows": len(page),
            "page_read_ms": read_s * 1000, "pass_rows": pass_rows or None,
            "prune_ms": steady["longest_ms"], "prune": steady["removed"], "prune_passes": steady["passes"],
            "bound": bound, "over_bound_prune_ms": worst["longest_ms"], "over_bound": worst["removed"],
            "over_bound_passes": worst["passes"], "over_bound_total_ms": worst["total_ms"],
            "over_bound_median_ms": worst["median_ms"]}


@click.command("retention")
@click.option("--store", type=click.Choice(["sqlite", "postgresql"]), default="sqlite", show_default=True)
@click.option("--stations", default=332, show_default=True, help="stations, each reporting every --every s")
@click.option("--every", "every_s", default=60.0, show_default=True, help="seconds between a station's readings")
@click.option("--rows", default=5000, show_default=True,
              help="rows one retention pass removes at most (readings_prune_rows); 0: one unbounded pass a round")
@click.option("--json", "as_json", is_flag=True)
def retention_bench(store, stations, every_s, rows, as_json):
    """Command store: a day of station readings, a station page's read, the retention pass (issue 16)."""
    if store == "postgresql":
        from gasguard.testing.postgres import Postgres
        with Postgres() as pg:
            out = retention_run(pg.create_database("retention_bench"), stations, every_s, rows)
    else:
        out = retention_run(f"sqlite:///{tempfile.mkdtemp(prefix='gasguard-retention-')}/command.db", stations,
                            every_s, rows)
    if as_json:
        click.echo(json.dumps(out))
        return
    cap = f"passes of at most {rows:,} rows" if rows else "one unbounded pass a round"
    click.echo(f"{out['store']}: {out['rows']:,} readings ({stations} stations x 24 h) written at "
               f"{out['insert_rows_per_s']:,.0f} rows/s; a station page's 24 h: {out['page_rows']} rows in "
               f"{out['page_read_ms']:.1f} ms; retention ({cap}): steady state {out['prune_ms']:.0f} ms "
               f"({out['prune']}); every station over a bound of {out['bound']}: {out['over_bound_passes']} passes, "
               f"{out['over_bound_total_ms']:,.0f} ms in all, median {out['over_bound_median_ms']:.0f} ms, the longest (the "
               f"grading loop's longest stall) "
               f"{out['over_bound_prune_ms']:,.0f} ms ({out['over_bound']})")
