"""`gasguard bench command-store`: what one grading pass costs the command store, in-process (no MQTT).

The command service grades each batch of broker messages in one store transaction (`DistrictGrader.handle`).
This bench runs the grader itself on a fresh store (SQLite, or a throwaway PostgreSQL) with a small registry
(20 stations, households ~330 m apart so each alarm is a leak incident of its own, every incident notified
by e-mail as a district would route it) and times three kinds of pass, each `passes` times:

- 1 alarm: one new incident (what the latency probe of `gasguard bench command` costs the store);
- 20 alarms: 20 new incidents in one batch (a storm);
- 100 station readings: a gateway's reading batch from 20 stations (the background, graded and kept).

On PostgreSQL it also counts, from libpq's trace of one more pass of each kind, the statements executed and
the round trips (each time the service waited for the server): the figure a loaded machine multiplies.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click

DISTRICT = "lixia"
T0 = 1_795_400_000.0
GAS_L2 = 2
WARMUP = 5          # passes not counted: statements prepared, caches filled


def _alarm(gw: str, dev, t: float) -> tuple[str, dict]:
    """A household's gas alarm (level 2, valve shut) as gateway `gw` publishes it."""
    from gasguard.gateway import payloads
    from gasguard.protocol import frame
    f = {"dev": dev.dev_id, "fcnt": 1, "code": GAS_L2, "cleared": False, "aseq": 1, "age": 3, "value": 260,
         "state": frame.make_state(1, True, 2, False, False, False)}
    return (f"gasguard/v1/{DISTRICT}/{gw}/{dev.dev_id:08x}/alarm",
            payloads.alarm(gw, DISTRICT, payloads.msg_id(gw, dev.dev_id, 1), f, t, {}, dev))


def _readings(gw: str, rows: list[tuple]) -> tuple[str, dict]:
    """A gateway's reading batch as its daemon publishes it: rows of (dev, fcnt, t)."""
    from gasguard.gateway import payloads
    entries = [payloads.reading_json({"dev": dev, "fcnt": fcnt, "gas": 0, "pressure": 3000, "battery": None, "state": 0,
                                      "inlet": 300_000}, t, {}) for dev, fcnt, t in rows]
    return f"gasguard/v1/{DISTRICT}/{gw}/reading", json.loads(payloads.batch(gw, DISTRICT, rows[-1][2], entries))


def store_figures(url: str, passes: int = 40, workdir: Path | None = None) -> dict:
    from gasguard.command import config as cconfig
    from gasguard.registry import Device, Registry
    from gasguard.testing.grader import district_grader

    d = Path(workdir or tempfile.mkdtemp(prefix="gg-bench-command-store-"))
    homes = [Device(dev_id=0x03E00000 + i, key=bytes(16), profile="household", households=1, site_name=f"home {i}",
                    lat=37.0 + 0.003 * (i // 100), lon=117.0 + 0.004 * (i % 100), state="commissioned")
             for i in range(21 * (passes + 1) + 1)]
    stations = [Device(dev_id=0xA000 + i, key=bytes(16), profile="station", site_name=f"station {i}",
                       households=8_000, pressure_class="medium_a", lat=36.659, lon=117.062 + 0.001 * i,
                       state="commissioned") for i in range(20)]
    with Registry(d / "registry.db") as r:
        r.add_many(stations + homes)
    cfg = cconfig.load(None, district=DISTRICT, store=url, registry=str(d / "registry.db"),
                       notify={"route": [{"levels": "any", "email": ["duty@lixia.example"]}]})
    g, store, fence = district_grader(cfg, holder="bench")
    t = T0
    home = iter(homes)
    fcnt = 1

    def batch(kind: str) -> list:
        nonlocal t, fcnt
        t += 2
        if kind == "readings":
            rows = [(s.dev_id, fcnt + k, t + k) for s in stations for k in range(5)]
            fcnt += 5
            return [_readings("gw1", rows)]
        return [_alarm(f"gw{k % 3 + 1}", next(home), t) for k in range(1 if kind == "alarm" else 20)]

    kinds = {"alarm": "1 alarm (a new incident)", "alarms": "20 alarms (20 new incidents)",
             "readings": "100 station readings"}
    ms: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(passes):
        for kind in kinds:
            msgs = batch(kind)
            t0 = time.perf_counter()
            g.handle(msgs, t, fence)
            ms[kind].append((time.perf_counter() - t0) * 1000)
    out: dict = {"store": store.dialect, "passes": passes, "warmup": WARMUP, "passes_ms": {}}
    for kind, label in kinds.items():
        xs = sorted(ms[kind][WARMUP:])
        out["passes_ms"][kind] = {"label": label, "median": statistics.median(xs),
                                  "p90": xs[int(0.9 * (len(xs) - 1))]}
    if store.dialect == "postgresql":
        from gasguard.testing.postgres import WireTrace
        for kind in kinds:
            msgs = batch(kind)
            with WireTrace(store.db.conn, d / f"{kind}.trace") as w:
                g.handle(msgs, t, fence)
            out["passes_ms"][kind].update(statements=w.statements, round_trips=w.round_trips)
    store.close()
    return out


@click.command("command-store")
@click.option("--store", type=click.Choice(["sqlite", "postgresql"]), default="postgresql", show_default=True)
@click.option("--passes", default=40, show_default=True, help="passes of each kind (the first 5 not counted)")
@click.option("--json", "as_json", is_flag=True)
def command_store_bench(store, passes, as_json):
    """Command store: wall time of a grading pass in-process (1 alarm, 20 alarms, 100 station readings); on
    PostgreSQL its statements and round trips."""
    if passes <= WARMUP:
        raise click.BadParameter(f"more than {WARMUP} (the first {WARMUP} are not counted)", param_hint="--passes")
    if store == "postgresql":
        from gasguard.testing.postgres import Postgres
        with Postgres() as pg:
            out = store_figures(pg.create_database("command_store_bench"), passes)
    else:
        out = store_figures(f"sqlite:///{tempfile.mkdtemp(prefix='gg-bench-command-store-')}/command.db", passes)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"{out['store']}: a grading pass, median / p90 of {passes - WARMUP} (after {WARMUP} not counted)")
    for f in out["passes_ms"].values():
        wire = (f"; {f['statements']} statements, {f['round_trips']} round trips" if "round_trips" in f else "")
        click.echo(f"  {f['label']:30s} {f['median']:6.1f} / {f['p90']:6.1f} ms{wire}")
