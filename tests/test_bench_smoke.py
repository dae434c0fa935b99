"""`gasguard bench all --quick` runs end to end (real mosquitto, real MicroPython) and gives every figure.
A smoke test of the benchmark code paths, not a timed test: no figure is asserted against a goal."""

import json
import math

import pytest
from click.testing import CliRunner

from gasguard.tools.bench.cli import bench


@pytest.mark.micropython
def test_bench_all_quick_prints_every_figure():
    r = CliRunner().invoke(bench, ["all", "--quick", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    gw = out["gateway"]
    assert gw["ingest"]["puback_per_s"] > 0 and gw["ingest"]["naive_puback_per_s"] > 0
    assert gw["latency"]["alarms"] > 0 and gw["drain"]["drain_per_s"] > 0
    assert out["memory"]["heard"] == out["memory"]["devices"]
    assert out["firmware"]["step"]["alloc_per_step"] == 0
    assert all(t["after_debounce_ms"] <= t["sample_ms"] for t in out["firmware"]["trip"].values())
    assert out["air"]["frames"]["household reading"]["raw"] == 19
    assert len(out["table"]) >= 10


def test_bench_retention_runs_and_its_passes_remove_what_they_say():
    """The readings-retention bench at a tiny size: the expired minute and the rows over the bound go, the
    latter in passes of at most --rows rows."""
    r = CliRunner().invoke(bench, ["retention", "--stations", "3", "--every", "900", "--rows", "50", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["rows"] == 3 * 96 and out["page_rows"] == 96
    assert out["prune"] == {"expired": 3, "over_bound": 0}
    assert out["over_bound"] == {"expired": 0, "over_bound": 3 * (96 - out["bound"])}
    assert out["over_bound_passes"] > 3 * (96 - out["bound"]) // 50


def test_bench_command_store_times_each_pass_and_counts_postgresqls_round_trips():
    """The command-store bench at a tiny size on PostgreSQL: every kind of pass timed, its wire counted."""
    r = CliRunner().invoke(bench, ["command-store", "--passes", "6", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["store"] == "postgresql" and set(out["passes_ms"]) == {"alarm", "alarms", "readings"}
    assert all(p["median"] > 0 and p["statements"] > 0 and p["round_trips"] > 0 for p in out["passes_ms"].values())


def test_bench_misses_runs_every_reading_through_a_registry_miss(tmp_path):
    from gasguard.tools.bench.gateway import misses_figures
    out = misses_figures(devices=600, group=170, echo=lambda *_: None, workdir=tmp_path)
    assert out["accepted"] == 600 and out["cpu_us_per_reading"] > 0


def test_bench_spool_commit_runs_both_spools_alternately():
    """`gasguard bench spool-commit --against REV` at a tiny size: this tree's spool and REV's, each run."""
    from gasguard.tools.bench.spool_commit import figures
    out = figures(devices=500, group=50, groups=30, rounds=2, against="HEAD", echo=lambda *_: None)
    assert set(out["variants"]) == {"HEAD", "this tree"}
    assert all(len(v["cpu_us"]) == 2 and min(v["cpu_us"]) > 0 for v in out["variants"].values())


@pytest.mark.mosquitto
def test_bench_gateway_stages_split_each_alarm_and_leave_the_event_loop_as_it_was():
    """`bench gateway --stages`: every timed alarm is split into its four stages (they add up to no more than
    its end-to-end latency), the loop's callbacks are named, and asyncio's Handle._run is restored after."""
    import asyncio.events
    run = asyncio.events.Handle._run
    r = CliRunner().invoke(bench, ["gateway", "--quick", "--stages", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    la = json.loads(r.output[r.output.index("{"):])["latency"]
    st = la["stages"]
    assert {s["n"] for k, s in st.items() if k != "loop"} == {la["alarms"]}
    assert 0 < la["puback_per_s"] and la["accepted_per_s"] > 0
    assert sum(s["p50"] for k, s in st.items() if k != "loop") <= la["max_ms"]
    assert any(c["callback"] == "task ingest" for c in st["loop"]), st["loop"]
    assert asyncio.events.Handle._run is run


@pytest.mark.mosquitto
@pytest.mark.parametrize("broker", ["district", "default"])
def test_bench_alarms_repeats_the_goal_run_on_the_broker_asked_for(tmp_path, broker):
    """`bench alarms`: each run timed on its own and judged against the goal; `--broker district` is mosquitto
    with the district's PUBACK setting (authority.broker.PUBACK_AT_ONCE), `default` without it."""
    from gasguard.tools.bench.gateway import ALARM_GOAL_MS, alarm_figures
    out = alarm_figures(rate=2_000, seconds=0.5, runs=2, broker=broker, echo=lambda *_: None, workdir=tmp_path)
    rs = out["runs"]
    assert len(rs) == 2 and all(x["alarms"] > 0 and x["accepted_per_s"] > 0 for x in rs)
    assert out["met"] == sum(x["p99_ms"] <= ALARM_GOAL_MS for x in rs)
    assert out["full_rate_runs"] == sum(x["offered_per_s"] >= 0.9 * 2_000 for x in rs)
    conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
    assert ("set_tcp_nodelay true" in conf) == (broker == "district")
    assert "autosave_interval" not in conf and out["autosave_s"] == 1800     # a district's: mosquitto's default


def test_bench_lane_times_both_lanes_on_readings_each_takes(tmp_path):
    """`bench lane` at a tiny size: both lanes timed, on readings each of them took (the run fails otherwise)."""
    from gasguard.tools.bench.lane import lane_figures
    out = lane_figures(devices=50, rounds=2, repeats=2, echo=lambda *_: None, workdir=tmp_path)
    assert sorted(out["us_per_take"]) == ["compiled", "python"]
    assert all(len(v) == 2 and min(v) > 0 for v in out["us_per_take"].values())
    assert out["ratio"] == out["median_us"]["python"] / out["median_us"]["compiled"]


@pytest.mark.mosquitto
def test_bench_autosave_times_pubacks_on_brokers_saving_every_second_and_not(tmp_path):
    """`bench autosave` at a tiny size: the retained states reach the broker (its saved database holds them), and
    the PUBACKs are timed on a broker saving every second and on one with mosquitto's default."""
    from gasguard.tools.bench.autosave import autosave_figures
    out = autosave_figures(retained=(300,), seconds=1.2, echo=lambda *_: None, workdir=tmp_path, nats=(100,))
    assert [(r["broker"], r.get("autosave_s")) for r in out["runs"]] == [("mosquitto", 1), ("mosquitto", 1800),
                                                                          ("nats", None)]
    assert "autosave_interval 1\n" in (tmp_path / "r300-1" / "mosquitto.conf").read_text()
    assert "autosave_interval" not in (tmp_path / "r300-None" / "mosquitto.conf").read_text()
    for r in out["runs"]:
        assert r["pings"] > 50 and 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"], r
    for r in out["runs"][:2]:
        assert r["db_mb"] >= 0.9 * r["payload_mb"] > 0, r       # saved at the latest when the broker stopped


def test_bench_peers_two_buses_splits_the_devices_and_counts_both_gateways(tmp_path):
    """`bench peers`' GasGuard on two buses (`gasguard-2`): each device on one bus only, every reading once,
    and the subscriber counts what both gateway processes published (the run fails if either is missing)."""
    from gasguard.tools.bench import peers
    wl = peers.Workload(20, 200)
    one, buses = wl.frames(), [wl.frames(0, 2), wl.frames(1, 2)]
    frames = lambda data: [f for f in data.split(b"\0") if f]      # noqa: E731 - COBS: 0 only between frames
    assert sorted(frames(one)) == sorted(frames(buses[0]) + frames(buses[1])) and len(frames(one)) == 200
    expected = {(d, fc) for d, fc, *_ in wl.fields}
    res = peers.run_gasguard(wl, tmp_path, buses, expected)
    assert res["received"] == len(expected) == 200 and res["lost"] == 0, res
    # (CPU from clock ticks of 10 ms: 200 readings may take none, the compiled gateway's included; a process
    # whose /proc could not be read gives NaN, which fails here)
    assert res["cpu_us_per_reading"] >= 0 and res["bench_cpu_us_per_reading"] >= 0
    # every device's retained state (and the probe's, one for each gateway) at the broker once the gateways were
    # idle, and the CPU until then read (NaN where /proc could not be)
    assert res["states"] == res["states_expected"] == 22, res
    assert res["idle_after_s"] is not None and math.isfinite(res["cpu_us_until_idle"]), res
    logs = [tmp_path / "peer.log", tmp_path / "peer-1.log"]
    assert all("starting; spool" in p.read_text() for p in logs)


def test_bench_buses_times_alarms_over_the_lines_of_one_and_two_gateways():
    """`bench buses` at a tiny size: both bus counts run, every alarm written to a line reaches the subscriber,
    and the background is what the lines took."""
    r = CliRunner().invoke(bench, ["buses", "--runs", "1", "--seconds", "1", "--rate", "2000", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert sorted(out["by_buses"], key=int) == ["1", "2"]
    for run in out["runs"]:
        assert run["alarms"] == 50 and run["arrived"] == run["alarms"], run
        assert 1000 < run["offered_per_s"] <= 2100 and 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"], run


def test_bench_peers_warm_hears_every_device_before_the_clock(tmp_path):
    """`bench peers --warm`: every device's first reading goes through the gateway before the clock starts,
    the timed readings follow it on each device's counters (a replay would be refused and counted lost), and
    the figure counts only the timed ones."""
    from gasguard.tools.bench import peers
    wl = peers.Workload(20, 200, warm=True)
    assert sorted(wl.warm) == sorted((nd.dev, 1, 0, 2000, 90, 0) for nd in wl.nodes)
    assert min(fc for _d, fc, *_ in wl.fields) == 2 and len(wl.fields) == 200
    expected = {(d, fc) for d, fc, *_ in wl.fields}
    keys = {(d, fc) for d, fc, *_ in wl.warm}
    res = peers.run_gasguard(wl, tmp_path, [wl.frames()], expected, ([wl.frames(warm=True)], keys))
    assert res["received"] == len(expected) == 200 and res["lost"] == 0, res
    assert res["warmed"] == 20, res       # delivered, all of them, before _measure started the clock


def test_bench_lane_states_times_readings_that_each_publish_their_state(tmp_path):
    """`bench lane --states` at a tiny size: both paths run, every timed reading published its retained state
    (the run fails otherwise), a figure for each."""
    from gasguard.tools.bench.lane import states_figures
    out = states_figures(devices=40, rounds=2, repeats=1, echo=lambda *_: None, workdir=tmp_path)
    assert sorted(out["us_per_reading"]) == ["general", "lane"]
    assert all(v[0] > 0 for v in out["us_per_reading"].values()), out
