"""`gasguard bench spool-commit`: CPU per reading of `Spool.commit` alone (issue 17, the counter log).

Groups of `group` readings (a serial read: ~170) from `devices` devices are committed as ingest commits them:
the readings in rows of half a batch (spool.Item) and the group's uplink counters, on a real SQLite spool on
this machine's disk (`/var/tmp`), `synchronous=FULL`. The spool starts in the steady state of a running
gateway, every device's counter already in it (`--first-cycle`: empty, a new gateway's first cycle).
Devices are heard in a shuffled order, each once per cycle (a district's 15-minute cycle when `devices` is
large; with few devices each repeats within the counter log).

The figure is the process's CPU time (time.process_time: user + system, the fsync's kernel work included)
per reading over every commit and the closing `close()` (which folds what is left of the counter log), since
the machine is shared and a rate moves with its load. With `--against REV`, `gateway/spool.py` as of that
git revision is loaded beside the current one and the two run alternately, A B B A ..., each on a fresh
spool, in the same minute.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[2]


def _spool_at(rev: str, workdir: Path):
    """gateway/spool.py as of git revision `rev`, imported as a module of its own."""
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:gateway/spool.py"], check=True,
                             capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        raise click.ClickException(f"git show {rev}:gateway/spool.py failed ({e.stderr.strip()}): "
                                   "give a revision of this repository (e.g. main~1 or a commit id)") from None
    name = "gg_bench_spool_" + re.sub(r"\W", "_", rev)
    path = workdir / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod       # (dataclasses look their module up by name)
    spec.loader.exec_module(mod)
    return mod


def workload(devices: int, group: int, groups: int, seed: int = 1):
    """[(items, counters)] for `groups` groups: each device once per cycle, in a shuffled order per cycle."""
    from gasguard.gateway import payloads
    from gasguard.gateway.spool import READING, Item
    from gasguard.protocol.const import UP
    rng = random.Random(seed)
    devs = list(range(0x100000, 0x100000 + devices))
    order: list[int] = []
    rx = {"transport": "serial", "port": "bench", "rssi": None, "snr": None}
    now = 1_700_000_000.0
    out, cycle = [], 1
    for _ in range(groups):
        take: list[int] = []
        while len(take) < group:
            if not order:
                order = devs[:]
                rng.shuffle(order)
                cycle += 1
            take.append(order.pop())
        counters, items, run = {}, [], []
        for dev in take:
            mid = payloads.msg_id("bench", dev, cycle)
            run.append(payloads.reading_json({"dev": dev, "fcnt": cycle, "gas": 0, "pressure": 2000, "battery": 90,
                                              "state": 0}, now, rx))
            counters[(dev, UP)] = cycle
            if len(run) == 100:           # half of batch.count's 200: a row as ingest writes it
                items.append(Item(READING, dev, ",".join(run), mid, now, routine=True, count=len(run)))
                run = []
        if run:
            items.append(Item(READING, take[-1], ",".join(run), mid, now, routine=True, count=len(run)))
        out.append((items, counters))
    return out


def run_once(mod, work, devices: int, base: Path, sync: str = "FULL", known: bool = True) -> dict:
    """Commit `work` through `mod.Spool` on a fresh spool holding every device's counter (`known`) or none;
    the figures."""
    d = Path(tempfile.mkdtemp(prefix="spool-", dir=base))
    try:
        sp = mod.Spool(d / "spool.db", synchronous=sync, max_bytes=8 << 30)
        sp.db.execute("BEGIN")        # the steady state: every device's counter is known
        sp.db.executemany("INSERT INTO counters VALUES (?, 0, 1)",
                          ((dev,) for dev in range(0x100000, 0x100000 + devices) if known))
        sp.db.execute("COMMIT")
        sp.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        items = [(it, c, sum(i.count for i in it)) for it, c in work]
        # (Item is a dataclass of the module under test: rebuilt from its fields)
        items = [([mod.Item(**vars(i)) for i in it], c, n) for it, c, n in items]
        readings, spikes = 0, []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for it, c, n in items:
            t = time.perf_counter()
            sp.commit(it, c)
            spikes.append(time.perf_counter() - t)
            readings += n
        sp.close()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        spikes.sort()
        return {"cpu_us": cpu / readings * 1e6, "wall_us": wall / readings * 1e6, "readings": readings,
                "commit_p50_ms": spikes[len(spikes) // 2] * 1e3,
                "commit_p99_ms": spikes[int(len(spikes) * 0.99)] * 1e3, "commit_max_ms": spikes[-1] * 1e3}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def figures(*, devices=60_000, group=170, groups=1500, rounds=3, against=None, first_cycle=False,
            echo=click.echo) -> dict:
    from gasguard.gateway import spool as current
    base = Path(tempfile.mkdtemp(prefix="gg-bench-spool-", dir="/var/tmp"))
    try:
        variants = {"this tree": current}
        if against:
            variants = {against: _spool_at(against, base), "this tree": current}
        work = workload(devices, group, groups)
        runs: dict[str, list[dict]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):     # A B, B A, ...: drift falls on both
                f = run_once(variants[name], work, devices, base, known=not first_cycle)
                runs[name].append(f)
                echo(f"  round {r + 1} {name:>12}: {f['cpu_us']:.2f} µs CPU, {f['wall_us']:.2f} µs wall a reading; "
                     f"commit p50 {f['commit_p50_ms']:.2f} ms, p99 {f['commit_p99_ms']:.2f}, "
                     f"max {f['commit_max_ms']:.1f}")
        out = {"devices": devices, "group": group, "groups": groups, "first_cycle": first_cycle,
               "load": os.getloadavg(), "variants": {}}
        for name, fs in runs.items():
            out["variants"][name] = {"cpu_us": [round(f["cpu_us"], 2) for f in fs],
                                     "wall_us": [round(f["wall_us"], 2) for f in fs],
                                     "cpu_us_median": round(statistics.median(f["cpu_us"] for f in fs), 2),
                                     "wall_us_median": round(statistics.median(f["wall_us"] for f in fs), 2),
                                     "commit_max_ms": round(max(f["commit_max_ms"] for f in fs), 1)}
            v = out["variants"][name]
            echo(f"{name:>12}: Spool.commit {v['cpu_us_median']:.2f} µs CPU a reading (median of "
                 f"{', '.join(map(str, v['cpu_us']))}), {v['wall_us_median']:.2f} µs wall; {devices:,} devices, "
                 f"{groups:,} groups of {group}")
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


@click.command("spool-commit")
@click.option("--devices", default=60_000, show_default=True, help="devices, each heard once per cycle")
@click.option("--group", default=170, show_default=True, help="readings per commit (a 4 KB serial read: ~170)")
@click.option("--groups", default=1500, show_default=True, help="commits per run")
@click.option("--rounds", default=3, show_default=True, help="runs of each variant, alternated")
@click.option("--against", default=None, help="a git revision: its gateway/spool.py runs alternately with this one")
@click.option("--first-cycle", is_flag=True, help="the spool starts with no counter (a new gateway)")
@click.option("--json", "as_json", is_flag=True)
def spool_commit_bench(devices, group, groups, rounds, against, first_cycle, as_json):
    """CPU per reading of Spool.commit (readings + their counters, synchronous=FULL), optionally A/B."""
    out = figures(devices=devices, group=group, groups=groups, rounds=rounds, against=against,
                  first_cycle=first_cycle, echo=(lambda *_: None) if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(out, indent=2))
