"""Issue 4/8: after a broker outage the spool backlog drains at full speed while new alarms still go first.
The real daemon and a real mosquitto: a backlog of 60,000 spooled readings, alarms arriving during the
drain are PUBACKed while most of the backlog is still waiting (ordering, not timing, is asserted). The
backlog in a row per reading (as spooled before issue 17) and in rows of 200 readings."""

import pytest

from gasguard.tools.bench import gateway as B
from gasguard.testing.mosquitto import Mosquitto


@pytest.mark.parametrize("per_row", [1, 200])
def test_alarms_overtake_a_draining_backlog(tmp_path, per_row):
    backlog = 60_000
    with Mosquitto(workdir=tmp_path / "broker") as broker:
        _, alarm_nodes = B._setup(tmp_path, 10)
        r = B.drain_run(tmp_path, broker.port, backlog, B._alarm_frames(alarm_nodes, 50), per_row)
    assert r["alarms"] >= 1
    assert r["readings_at_alarm"][0] < backlog // 2, r["readings_at_alarm"]
