"""`gasguard bench retention`: what keeping the stations' readings costs the command service (issue 16 item 5).

A district's stations reporting once a minute for a day (332 stations: the district simulator's count) are
written into a fresh command store as the grader writes them (`tx.readings`, an hour a transaction here), then:
one station page's read of its 24 h (`store.readings`), one retention pass as the leader runs it every
`readings_prune_s` (the oldest minute expires, nobody over the bound), and a pass where every station is over
a bound (a chattering district: the worst pass). The retention pass runs in the grading loop, so its time is
time an alarm can wait behind it.
"""

from __future__ import annotations

import json
import tempfile
import time

import click

from gasguard.command.store import open_store

DAY = 86_400.0


def retention_run(url: str, stations: int = 332, every_s: float = 60.0) -> dict:
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
    t0 = time.perf_counter()
    with s.write(fence) as tx:
        steady = tx.prune_readings(t_first + every_s, 20_000)
    prune_s = time.perf_counter() - t0
    bound = per_station // 3
    t0 = time.perf_counter()
    with s.write(fence) as tx:
        worst = tx.prune_readings(t_first + every_s, bound)
    worst_s = time.perf_counter() - t0
    s.close()
    n = stations * per_station
    return {"store": url.split(":", 1)[0], "rows": n, "insert_rows_per_s": n / insert_s, "page_rows": len(page),
            "page_read_ms": read_s * 1000, "prune_ms": prune_s * 1000, "prune": steady,
            "bound": bound, "over_bound_prune_ms": worst_s * 1000, "over_bound": worst}


@click.command("retention")
@click.option("--store", type=click.Choice(["sqlite", "postgresql"]), default="sqlite", show_default=True)
@click.option("--stations", default=332, show_default=True, help="stations, each reporting every --every s")
@click.option("--every", "every_s", default=60.0, show_default=True, help="seconds between a station's readings")
@click.option("--json", "as_json", is_flag=True)
def retention_bench(store, stations, every_s, as_json):
    """Command store: a day of station readings, a station page's read, the retention pass (issue 16)."""
    if store == "postgresql":
        from gasguard.testing.postgres import Postgres
        with Postgres() as pg:
            out = retention_run(pg.create_database("retention_bench"), stations, every_s)
    else:
        out = retention_run(f"sqlite:///{tempfile.mkdtemp(prefix='gasguard-retention-')}/command.db", stations,
                            every_s)
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"{out['store']}: {out['rows']:,} readings ({stations} stations x 24 h) written at "
               f"{out['insert_rows_per_s']:,.0f} rows/s; a station page's 24 h: {out['page_rows']} rows in "
               f"{out['page_read_ms']:.1f} ms; retention pass: {out['prune_ms']:.0f} ms ({out['prune']}); every "
               f"station over a bound of {out['bound']}: {out['over_bound_prune_ms']:.0f} ms ({out['over_bound']})")
