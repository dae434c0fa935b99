"""`gasguard bench all --quick` runs end to end (real mosquitto, real MicroPython) and gives every figure.
A smoke test of the benchmark code paths, not a timed test: no figure is asserted against a goal."""

import json

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
