"""The readings' retention worked off in bounded passes (command/store.py `Retention`, `retention_pass`;
command/service.py `prune_readings`), on both stores: a backlog larger than one pass goes over several, each
within `readings_prune_rows`, and ends exactly where one unbounded pass ends, with the same counts; a SIGKILL
between (or in) passes loses nothing that should stay. Expected states come from `_oracle`, written from the
rule (README: older than readings_keep_s goes, then each device's newest readings_max_per_device stay, ties at
the cut too), not from the store's code."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from gasguard.command import config as cconfig
from gasguard.command.service import CommandService
from gasguard.command.store import Retention, open_store
from gasguard.testing.waits import wait_until

T0 = 1_800_000_000.0
BEFORE = T0 + 4.0          # the round's expiry cut
BOUND = 12                 # readings_max_per_device
SLICE = 37                 # readings_prune_rows: rows one pass removes at most (odd: passes end mid-device)


def _backlog() -> dict[str, list[tuple]]:
    """24 stations with 10..79 readings each (some with every time twice: ties at the cut), 6 devices' valve
    moves, some of each expired: 20 of the stations over the bound, more than a pass trims together (store._BATCH)."""
    readings, valves = [], []
    for d in range(24):
        dev = 0xA000 + d
        for k in range(10 + 3 * d):
            t = T0 + (k // 2 if d % 2 else k) * 0.75
            readings.append((dev, t, 3000.0 + d * 1000 + k, 300_000.0, "gw1"))
    for d in range(6):
        for k in range(5 + 4 * d):
            valves.append((0xB000 + d, T0 + k, "closed" if k % 2 else "open", "manual", "gw2"))
    return {"readings": readings, "valve_events": valves}


def _fill(url: str) -> None:
    data = _backlog()
    with open_store(url) as s:
        s.migrate()
        fence = s.acquire_lease("filler", ttl=60)
        with s.write(fence) as tx:
            tx.readings(data["readings"])
            for row in data["valve_events"]:
                tx.valve_event(*row)
        s.release_lease(fence)


def _key(table: str, row) -> tuple:
    """What identifies a stored row in the comparisons: (dev, t, a value unique to the row)."""
    return (row[0], row[1], row[2])


def _oracle(before=BEFORE, bound=BOUND) -> tuple[dict[str, Counter], dict[str, int]]:
    """The rows that stay and the counts, by the rule."""
    kept, counts = {}, {"expired": 0, "over_bound": 0}
    for table, rows in _backlog().items():
        kept[table] = Counter()
        for dev in sorted({r[0] for r in rows}):
            mine = [r for r in rows if r[0] == dev]
            live = [r for r in mine if r[1] >= before]
            counts["expired"] += len(mine) - len(live)
            if len(live) > bound:
                cut = sorted((r[1] for r in live), reverse=True)[bound - 1]
                stay = [r for r in live if r[1] >= cut]
            else:
                stay = live
            counts["over_bound"] += len(live) - len(stay)
            kept[table].update(_key(table, r) for r in stay)
    return kept, counts


def _held(s) -> dict[str, Counter]:
    return {"readings": Counter(_key("readings", (r["dev"], r["t"], r["pressure_pa"])) for r in s._rows(
                "SELECT dev, t, pressure_pa FROM readings")),
            "valve_events": Counter(_key("valve_events", (r["dev"], r["t"], r["valve"])) for r in s._rows(
                "SELECT dev, t, valve FROM valve_events"))}


def _nothing_that_should_stay_is_gone(held: dict[str, Counter]) -> None:
    """Every row that stays at the end is still there, and each device lost only its oldest rows so far."""
    kept, _ = _oracle()
    everything = {t: Counter(_key(t, r) for r in rows) for t, rows in _backlog().items()}
    for table in kept:
        assert not kept[table] - held[table], f"{table}: rows that should stay are gone"
        gone = everything[table] - held[table]
        for dev in {k[0] for k in everything[table]}:
            left = [k[1] for k in held[table] if k[0] == dev]
            lost = [k[1] for k in gone if k[0] == dev]
            assert not (left and lost) or max(lost) <= min(left), f"{table} {dev:#x}: a newer row went first"


@pytest.fixture
def two_stores(store_url, request, tmp_path):
    """The store under test and a second one of the same kind, both holding the same backlog."""
    if store_url.startswith("sqlite"):
        ref = f"sqlite:///{tmp_path / 'reference.db'}"
    else:
        ref = request.getfixturevalue("postgres_server").create_database(f"reference_{os.getpid()}")
    _fill(store_url)
    _fill(ref)
    return store_url, ref


def test_a_backlog_goes_in_bounded_passes_and_ends_as_one_unbounded_pass(two_stores):
    url, ref = two_stores
    kept, counts = _oracle()
    assert counts["over_bound"] + counts["expired"] > 10 * SLICE        # a backlog of many passes

    with open_store(ref) as s:                                          # the unbounded pass, as before
        fence = s.acquire_lease("ref", ttl=60)
        with s.write(fence) as tx:
            assert tx.prune_readings(BEFORE, BOUND) == counts
        assert _held(s) == kept

    with open_store(url) as s:
        fence = s.acquire_lease("leader", ttl=60)
        r = Retention(BEFORE, BOUND)
        total, passes = Counter(), 0
        held = _held(s)
        while not r.done:
            with s.write(fence) as tx:
                gone = tx.retention_pass(r, SLICE)
            passes += 1
            now = _held(s)
            removed = sum((held[t] - now[t]).total() for t in held)
            assert removed == sum(gone.values()) <= SLICE                  # counted as removed, and within the bound
            assert not any(now[t] - held[t] for t in held)                 # nothing added
            _nothing_that_should_stay_is_gone(now)
            total.update(gone)
            held = now
            assert passes < 200, "the round does not end"
        assert passes > (counts["expired"] + counts["over_bound"]) // SLICE
        assert held == kept and dict(total) == counts == r.removed
        with s.write(fence) as tx:                                         # a new round finds nothing to do
            assert tx.retention_pass(Retention(BEFORE, BOUND), SLICE) == {"expired": 0, "over_bound": 0}


CHILD = """
import sys
from gasguard.command.store import Retention, open_store
s = open_store(sys.argv[1])
fence = s.acquire_lease("doomed", ttl=3600)
r = Retention(float(sys.argv[2]), int(sys.argv[3]))
while not r.done:
    with s.write(fence) as tx:
        gone = tx.retention_pass(r, int(sys.argv[4]))
    print(gone["expired"], gone["over_bound"], flush=True)
    sys.stdin.readline()                 # the test says when the next pass starts
print("done", flush=True)
"""


def test_a_sigkill_in_a_round_loses_nothing_that_should_stay_and_the_next_round_finishes_it(store_url):
    """The leader is SIGKILLed as its fourth pass starts (between passes, or inside one: whichever instant the
    signal lands on); the next leader knows nothing of the round and starts its own, which ends where one
    unbounded pass would have."""
    _fill(store_url)
    kept, counts = _oracle()
    child = subprocess.Popen([sys.executable, "-c", CHILD, store_url, repr(BEFORE), str(BOUND), str(SLICE)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            line = child.stdout.readline()
            assert line and line != "done\n", f"the leader's round ended early: {line!r}"
            child.stdin.write("next\n")
            child.stdin.flush()
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with open_store(store_url) as s:
        assert s.lease()["holder"] == "doomed"           # died holding it
        held = _held(s)
        _nothing_that_should_stay_is_gone(held)
        assert held != kept                              # the round was cut short: work left for the next leader
        fence = s.acquire_lease("next", ttl=60, now=time.time() + 7200)     # once the dead one's lease ran out
        assert fence is not None
        r = Retention(BEFORE, BOUND)
        while not r.done:
            with s.write(fence) as tx:
                tx.retention_pass(r, SLICE)
        assert _held(s) == kept
        assert sum(r.removed.values()) == sum((held[t] - kept[t]).total() for t in held) <= sum(counts.values())


def test_the_service_works_a_backlog_off_at_consecutive_ticks_counting_exactly(mosquitto, store_url):
    """The leader's grading loop runs one bounded pass a tick while a round has work left (not one a
    readings_prune_s: that is an hour here, and the virtual clock never moves), and counts what one unbounded
    pass would have (gasguard_command_readings_removed_total)."""
    _fill(store_url)
    kept, counts = _oracle()
    cfg = cconfig.load(None, district="lixia", store=store_url, mqtt_port=mosquitto.port, instance="cmd-a",
                       tick_interval=3600.0, readings_prune_s=3600.0, readings_keep_s=3600.0,
                       readings_max_per_device=BOUND, readings_prune_rows=SLICE)
    svc = CommandService(cfg, clock=lambda: BEFORE + 3600.0).start()
    m = svc.metrics

    def removed():
        return {why: m.value("gasguard_command_readings_removed_total", reason=why) for why in counts}

    def passes():
        return m.value("gasguard_command_readings_prune_seconds_count")

    try:
        wait_until(lambda: passes() >= 1, 30, "the leader's first tick and its retention pass")   # ticks at once
        seen = [removed()]
        while svc.retention is not None:
            n = passes()
            svc.tick_now()
            wait_until(lambda: passes() > n, 10, f"retention pass {n + 1} at the next tick")
            seen.append(removed())
            assert len(seen) < 200, "the round does not end"
        steps = [sum(b.values()) - sum(a.values()) for a, b in zip([dict.fromkeys(counts, 0.0)] + seen, seen)]
        assert len(steps) > 2 and max(steps) <= SLICE
        assert seen[-1] == counts
        with open_store(store_url) as s:
            assert _held(s) == kept
    finally:
        svc.stop()


def test_readings_prune_rows_is_checked_at_load(tmp_path):
    conf = tmp_path / "command.toml"
    conf.write_text("[command]\nreadings_prune_rows = 0\n")
    with pytest.raises(cconfig.ConfigError, match="readings_prune_rows = 0: at least 1"):
        cconfig.load(conf)
    conf.write_text("[command]\nreadings_prune_rows = 250\n")
    assert cconfig.load(conf).readings_prune_rows == 250
