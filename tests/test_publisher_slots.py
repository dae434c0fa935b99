"""The publisher's in-flight window (issue 17): PRIORITY_SLOTS slots past `[mqtt] inflight` are the alarms'.
Readings and retained states never take them, events take at most half, so an alarm goes out at once however
many other messages wait for their PUBACKs. (One connection: `[mqtt] alarm_connection = false`, or the alarms'
connection down; with it, tests/test_publisher_alarm_link.py.) The real daemon, a real mosquitto held with
SIGSTOP so that no PUBACK comes back while the window fills, then let go: every message arrives once."""

import pytest

from gasguard.gateway.publisher import PRIORITY_SLOTS
from gasguard.gateway.spool import ALARM, EVENT, STATE
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(60)]


def test_states_and_events_leave_the_last_slots_to_alarms(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port)
    try:
        rig.cfg.inflight = 2
        rig.cfg.alarm_connection = False
        d = rig.start()
        root, pub = rig.root, d.publisher
        # no alarms' connection, no gauge of it: GasGuardAlarmConnectionDown is for gateways that have one
        assert d.metrics.registry.get_sample_value("gasguard_gateway_broker_alarm_connected") is None

        def lanes():
            return sorted(f.lane for f in pub.inflight.values())

        def put(lane: str, n: int, kind: str):
            outs = [(f"{root}/test/{kind}/{i}", {"id": f"t:{kind}:{i}", "n": i}, lane, False) for i in range(n)]
            rig.runner.call(lambda: d.outbox.put(outs, d.clock()))

        wait_until(lambda: rig.runner.call(lambda: not pub.inflight), 10, "the start's messages PUBACKed")
        with mosquitto.frozen():                          # no PUBACK meanwhile: what goes out stays in flight
            put("state", 3 * PRIORITY_SLOTS, "state")
            put("event", PRIORITY_SLOTS, "event")
            held = rig.runner.call(lanes)
            # states only up to [mqtt] inflight, events up to half the priority slots past it
            assert held.count(STATE) == 2 and held.count(EVENT) == PRIORITY_SLOTS // 2, held
            put("alarm", 3, "alarm")
            held = rig.runner.call(lanes)
            assert held.count(ALARM) == 3, f"alarms waiting for a slot: {held}"
        # let go: everything arrives, once
        want = {f"t:{k}:{i}" for k, n in (("state", 3 * PRIORITY_SLOTS), ("event", PRIORITY_SLOTS),
                                            ("alarm", 3)) for i in range(n)}

        def got():
            with rig.sub.lock:
                return [doc.get("id") for t, doc, _ in rig.sub.messages if "/test/" in t]
        rig.sub.wait(lambda ms: want <= set(got()), 20)
        assert sorted(x for x in got() if x in want) == sorted(want)
    finally:
        rig.close()


def test_a_flood_of_states_lets_a_batch_of_readings_through(tmp_path, mosquitto):
    """Retained states outrank readings, but not absolutely: after STATE_RUN states in a row a ready batch of
    readings goes out (a backlog of states - one per device per refresh after an outage - held every reading back
    until the last state was PUBACKed). Nothing is lost or duplicated either way."""
    from gasguard.gateway.publisher import STATE_RUN
    rig = Rig(tmp_path, mosquitto.port, nodes=20)
    try:
        rig.cfg.inflight = 50
        rig.cfg.alarm_connection = False
        d = rig.start()
        root, pub = rig.root, d.publisher
        wait_until(lambda: rig.runner.call(lambda: not pub.inflight), 10, "the start's messages PUBACKed")
        n_states = 12 * STATE_RUN
        outs = [(f"{root}/test/state/{i}", {"id": f"t:state:{i}", "n": i}, "state", False) for i in range(n_states)]
        rx = {"transport": "serial", "port": "tty0", "rssi": None, "snr": None}
        frames = [(n.reading(pressure=2000 + k), rx, "serial:tty0") for k in range(10) for n in rig.nodes]

        def backlog():
            d.outbox.put(outs, d.clock())          # the states first: they fill the window at once
            d.process(frames)                      # then 200 readings: a full batch
        rig.runner.call(backlog)

        def arrivals():
            with rig.sub.lock:
                return [("state", doc["id"]) if "/test/state/" in t else ("reading", len(doc["readings"]))
                        for t, doc, _ in rig.sub.messages if "/test/state/" in t or t.endswith("/reading")]
        rig.sub.wait(lambda ms: sum(1 for k, _ in arrivals() if k == "state") == n_states
                     and sum(n for k, n in arrivals() if k == "reading") >= len(frames), 20)
        got = arrivals()
        states = [x for k, x in got if k == "state"]
        assert sorted(states) == sorted(f"t:state:{i}" for i in range(n_states))       # each once
        assert sum(n for k, n in got if k == "reading") == len(frames)
        first_reading = next(i for i, (k, _) in enumerate(got) if k == "reading")
        last_state = max(i for i, (k, _) in enumerate(got) if k == "state")
        assert first_reading < last_state, f"the readings waited for all {n_states} states"
        assert first_reading <= rig.cfg.inflight + STATE_RUN + 1, first_reading
    finally:
        rig.close()
