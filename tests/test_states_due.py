"""A device's retained online state is not spooled (issue 17, gateway/presence.py): it is marked due and published
from the device's presence when there is room - after the reading batches ready to go, ahead of them once the
oldest waited publisher.STATE_WAIT - once however often it fell due meanwhile; the offline state is spooled and
reaches the broker before a later online state of the same device.

The real daemon on a real mosquitto held with SIGSTOP, so that no PUBACK comes back while the window
(`[mqtt] inflight` = 2) is full and what waits stays waiting; then let go. The daemon's clock is virtual (the
wait of a due state, the devices' silence); the subscriber sees the messages in the order the gateway sent them
(one connection)."""

import pytest

from gasguard.gateway.publisher import STATE_RUN, STATE_WAIT
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(60)]

RX = {"transport": "serial", "port": "tty0", "rssi": None, "snr": None}


def _rig(tmp_path, port, nodes: int, now: list) -> Rig:
    rig = Rig(tmp_path, port, nodes=nodes)
    rig.cfg.inflight = 2
    rig.cfg.alarm_connection = False      # one connection: one order for everything the subscriber sees
    rig.cfg.puback_timeout = 0            # a broker held with SIGSTOP is not to be left for another
    rig.start(clock=lambda: now[0])
    wait_until(lambda: rig.runner.call(lambda: not rig.daemon.publisher.inflight), 10, "the start's PUBACKs")
    return rig


def _arrivals(rig: Rig) -> list[tuple]:
    """("reading", [fcnt...]) per batch and ("state", dev, online, last reading's fcnt) per state, in order."""
    out = []
    with rig.sub.lock:
        for t, doc, _ in rig.sub.messages:
            if t == f"{rig.root}/reading":
                out.append(("reading", [r[1] for r in doc["readings"]]))
            elif t.endswith("/state"):
                last = doc["last_reading"]
                out.append(("state", int(doc["dev"], 16), doc["online"], last and last["fcnt"]))
    return out


def test_a_state_that_falls_due_again_while_it_waits_is_one_message_with_the_latest_reading(tmp_path, mosquitto):
    now = [1_800_000_000.0]
    rig = _rig(tmp_path, mosquitto.port, 201, now)
    try:
        d = rig.daemon
        first, others = rig.nodes[0], rig.nodes[1:]
        with mosquitto.frozen():
            # 200 first sightings: a full batch and one state take the window; 199 states wait
            rig.runner.call(lambda: d.process([(n.reading(), RX, "serial:tty0") for n in others]))
            # the first node's state falls due three times: first sight, then two new state bytes
            for sbyte in (0, 0x40, 0x08):
                raw = first.reading(state=sbyte)
                rig.runner.call(lambda raw=raw: d.process([(raw, RX, "serial:tty0")]))
            due = rig.runner.call(lambda: dict(d.presence.due))
            assert len(due) == 200 and list(due)[-1] == first.dev, len(due)
            assert rig.runner.call(lambda: d.spool.depth()["state"][0]) == 0, "a device's online state was spooled"
        rig.sub.wait(lambda ms: {a[1] for a in _arrivals(rig) if a[0] == "state"} >= {n.dev for n in rig.nodes}, 20)
        wait_until(lambda: rig.runner.call(lambda: not d.presence.due and not d.publisher.inflight), 10, "all sent")
        states = [a for a in _arrivals(rig) if a[0] == "state"]
        mine = [a for a in states if a[1] == first.dev]
        assert mine == [("state", first.dev, True, first.fcnt)], mine       # once, with the last reading
        assert sorted(a[1] for a in states) == sorted(n.dev for n in rig.nodes)   # every device once
        assert rig.metric("gasguard_gateway_published_total", lane="state") == len(rig.nodes)
    finally:
        rig.close()


@pytest.mark.parametrize("waited", [False, True], ids=["fresh", "overdue"])
def test_due_states_follow_the_ready_readings_until_they_waited_state_wait(tmp_path, mosquitto, waited):
    now = [1_800_000_000.0]
    rig = _rig(tmp_path, mosquitto.port, 200, now)
    try:
        d = rig.daemon
        with mosquitto.frozen():
            # 600 readings, three of each device: three full batches and 200 first sightings' states. The readings
            # go first: two batches take the window, the third and the states wait
            frames = [(n.reading(), RX, "serial:tty0") for _ in range(3) for n in rig.nodes]
            rig.runner.call(lambda: d.process(frames))
            assert rig.runner.call(lambda: len(d.presence.due)) == 200
            if waited:
                now[0] += STATE_WAIT
        rig.sub.wait(lambda ms: sum(len(a[1]) for a in _arrivals(rig) if a[0] == "reading") == 600
                     and sum(1 for a in _arrivals(rig) if a[0] == "state") == 200, 20)
        got = _arrivals(rig)
        third = [i for i, a in enumerate(got) if a[0] == "reading"][2]
        first_state = next(i for i, a in enumerate(got) if a[0] == "state")
        if waited:      # overdue: STATE_RUN states ahead of the waiting batch, then the batch, then the rest
            assert first_state < third and third - first_state == STATE_RUN, (first_state, third)
        else:
            assert third < first_state, (third, first_state)
        # each state carries its device's last reading, whenever it went
        assert all(a[3] == 3 for a in got if a[0] == "state")
    finally:
        rig.close()


def test_an_offline_state_reaches_the_broker_before_the_devices_next_online_state(tmp_path, mosquitto):
    """The offline state is spooled (nothing would publish it again after a restart); the device heard again is
    due online. Both wait behind a full window; the offline one, older, must arrive first, or the broker would
    keep `online: false` for a device that is talking."""
    now = [1_800_000_000.0]
    rig = _rig(tmp_path, mosquitto.port, 201, now)
    try:
        d = rig.daemon
        first, others = rig.nodes[0], rig.nodes[1:]
        rig.runner.call(lambda: d.process([(first.reading(), RX, "serial:tty0")]))
        rig.sub.wait(lambda ms: ("state", first.dev, True, first.fcnt) in _arrivals(rig), 10)
        mark = len(_arrivals(rig))
        with mosquitto.frozen():
            rig.runner.call(lambda: d.process([(n.reading(), RX, "serial:tty0") for n in others for _ in (0, 1)]))
            now[0] += 100_000                      # every device silent past its timeout: offline, spooled
            wait_until(lambda: rig.runner.call(lambda: d.presence.counts()[0]) == 0, 10, "all offline")
            rig.runner.call(lambda: d.process([(first.reading(), RX, "serial:tty0")]))   # and back online: due
            assert rig.runner.call(lambda: list(d.presence.due)) == [first.dev]
            assert rig.runner.call(lambda: d.spool.depth()["state"][0]) == len(rig.nodes)
        rig.sub.wait(lambda ms: ("state", first.dev, True, first.fcnt) in _arrivals(rig)[mark:], 20)
        mine = [a for a in _arrivals(rig)[mark:] if a[0] == "state" and a[1] == first.dev]
        assert mine == [("state", first.dev, False, first.fcnt - 1), ("state", first.dev, True, first.fcnt)], mine
    finally:
        rig.close()


def test_due_states_leave_oldest_first_and_one_dropped_as_its_device_goes_quiet_is_skipped():
    """PresenceTable's due states without a broker: next_due hands them over in the order they fell due, once each,
    and oldest_due is the head's time; one dropped because its device went offline meanwhile (gone_quiet) is skipped,
    and one dropped and due again since is handed over once, with its new time."""
    from gasguard.gateway.config import Config
    from gasguard.gateway.presence import PresenceTable
    from gasguard.protocol.topics import GatewayTopics
    cfg = Config(gateway_id="gw-7", district="d", registry="r.db", spool="s.db", mqtt_port=1)
    table = PresenceTable(cfg, GatewayTopics("gasguard/v1/d/gw-7"))
    f = {"type": "reading", "fcnt": 1, "gas": 0, "pressure": 2000, "battery": 90, "state": 0}
    for t, dev in enumerate((1, 2, 3, 4), 100):
        table.heard(dev, f, float(t), "")
        table.fell_due([dev], float(t))
    table.fell_due([1], 200.0)                       # already due: keeps its place and its time
    assert table.oldest_due() == 100.0 and list(table.due) == [1, 2, 3, 4]
    table.devices[1].last_seen = table.devices[2].last_seen = -1e9   # silent past their timeout: offline
    assert [dev for dev, *_ in table.gone_quiet(150.0)] == [1, 2]
    assert list(table.due) == [3, 4]
    table.heard(2, f, 160.0, "")                     # back online: due again before its old place was reached
    table.fell_due([2], 160.0)
    assert list(table.due) == [3, 4, 2]
    assert table.oldest_due() == 160.0               # 1's place skipped; 2 at its old place, with its new time
    got = [table.next_due() for _ in range(4)]
    # in the order they fell due, each once; the one due again goes at its old place (no later than its turn), and
    # its new place is skipped
    assert [(since, topic.split("/")[-2]) for since, topic, _text in got[:3]] == [
        (160.0, "00000002"), (102.0, "00000003"), (103.0, "00000004")]
    assert got[3] is None and table.oldest_due() is None and not table.due and not table.due_order
