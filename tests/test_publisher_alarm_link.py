"""The alarms' own MQTT connection (issue 17, `[mqtt] alarm_connection`): alarms and events go on a second
connection to the broker, so an alarm never waits behind the reading batches written before it on the main one.
The real daemon and a real mosquitto, with a TCP hop between them (testing.links.TcpProxy) that clogs or cuts one
of the gateway's connections by its client id while the other goes on."""

import logging

import pytest

from gasguard.gateway import publisher as publisher_mod
from gasguard.gateway.spool import READING
from gasguard.testing.links import TcpProxy
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(60)]


def _alarms(rig, dev):
    """The fcnts of `dev`'s alarms the subscriber got, in arrival order."""
    with rig.sub.lock:
        return [doc["fcnt"] for t, doc, _ in rig.sub.messages if t == rig.cfg.topics.device(dev, "alarm")]


def _start(tmp_path, proxy, **cfg):
    rig = Rig(tmp_path, proxy.port)
    for k, v in cfg.items():
        setattr(rig.cfg, k, v)
    d = rig.start()
    pub = d.publisher
    wait_until(lambda: pub.alarms is None or pub.alarms.connected, 10, "the alarms' connection")
    return rig, d, pub


def _held(rig, pub, proxy, n: int) -> tuple[str, list[int]]:
    """`n` alarms of the first node in flight on the alarms' connection, held at the proxy (never PUBACKed)."""
    a = rig.nodes[0]
    cid = f"{rig.cfg.mqtt_client_id}-alarms"
    proxy.hold(cid)
    sent = []
    for _ in range(n):
        rig.cables[0].send(a.alarm())
        sent.append(a.fcnt)
    wait_until(lambda: rig.runner.call(lambda: len(pub.alarms.inflight)) == n, 10,
               f"{n} alarms in flight on the held connection")
    return cid, sent


def test_an_alarm_is_pubacked_while_the_readings_connection_is_clogged(tmp_path, mosquitto):
    """The main connection's broker side reads nothing (held at the proxy), so its window fills with reading
    batches that are never PUBACKed; an alarm committed then is PUBACKed on the alarms' connection at once,
    overtaking them. (With `alarm_connection = false` it waits behind them: this test then times out.)"""
    with TcpProxy(mosquitto.port) as proxy:
        rig, d, pub = _start(tmp_path, proxy, inflight=4, batch_count=1, batch_delay=0.0)
        try:
            a, b = rig.nodes
            wait_until(lambda: rig.runner.call(lambda: not pub.inflight), 10, "the start's messages PUBACKed")
            proxy.hold(rig.cfg.mqtt_client_id)
            for _ in range(12):
                rig.cables[0].send(b.reading())

            def clogged():       # (the device's retained state may take one of the slots)
                return len(pub.inflight) >= rig.cfg.inflight and any(f.lane == READING for f in pub.inflight.values())
            wait_until(lambda: rig.runner.call(clogged), 10, "the main connection's window full of readings")
            rig.cables[0].send(a.alarm())
            rig.sub.wait(lambda ms: _alarms(rig, a.dev) == [a.fcnt], 5)
            wait_until(lambda: rig.runner.call(lambda: d.spool.depth()["alarm"][0] == 0), 5,
                       "the alarm's row deleted on its PUBACK")
            # it overtook: the readings are still held, in flight on the main connection
            assert rig.runner.call(clogged)
            assert not any(t.endswith("/reading") for t, _, _ in rig.sub.messages)
            proxy.release(rig.cfg.mqtt_client_id)
            rig.sub.wait(lambda ms: len(rig.readings()) == 12, 10)
            assert rig.metric("gasguard_gateway_broker_alarm_connected") == 1
        finally:
            rig.close()


def test_the_alarm_connection_lost_resends_its_alarms_in_order(tmp_path, mosquitto, caplog):
    """Alarms in flight on the alarms' connection when it is cut are re-sent when it is back, before any newer
    alarm (one device's alarms stay in order); nothing is lost, the rows go on their PUBACKs."""
    caplog.set_level(logging.INFO, logger="gasguard.gateway.mqtt")
    with TcpProxy(mosquitto.port) as proxy:
        rig, d, pub = _start(tmp_path, proxy)
        try:
            a = rig.nodes[0]
            cid, sent = _held(rig, pub, proxy, 3)
            assert proxy.cut(cid) == 1
            wait_until(lambda: "(alarms' connection); 3 messages in flight will be re-sent" in caplog.text, 15,
                       "the alarms' connection back, re-sending")
            rig.cables[0].send(a.alarm())
            sent.append(a.fcnt)
            rig.sub.wait(lambda ms: set(sent) <= set(_alarms(rig, a.dev)), 10)
            got = list(dict.fromkeys(_alarms(rig, a.dev)))     # first arrival of each, in order
            assert got == sent, got
            wait_until(lambda: rig.runner.call(lambda: d.spool.depth()["alarm"][0] == 0 and not pub.alarms.inflight),
                       5, "every alarm's row deleted")
            assert rig.runner.call(lambda: pub.main.priority) == 0     # none went on the main connection
        finally:
            rig.close()


def test_alarms_go_on_the_main_connection_while_the_alarm_connection_stays_away(tmp_path, mosquitto, monkeypatch):
    """A broker that refuses only the alarms' client must not hold alarms back: after TAKE_BACK_AFTER the ones
    in flight there are read from the spool again and sent on the main connection, in order, and so are new
    ones; when the alarms' connection is back, alarms go on it again."""
    monkeypatch.setattr(publisher_mod, "TAKE_BACK_AFTER", 0.5)
    with TcpProxy(mosquitto.port) as proxy:
        rig, d, pub = _start(tmp_path, proxy)
        try:
            a = rig.nodes[0]
            cid, sent = _held(rig, pub, proxy, 2)
            proxy.refuse(cid)
            proxy.cut(cid)
            rig.cables[0].send(a.alarm())
            sent.append(a.fcnt)
            rig.sub.wait(lambda ms: _alarms(rig, a.dev) == sent, 10)
            wait_until(lambda: rig.runner.call(lambda: d.spool.depth()["alarm"][0] == 0), 5, "rows deleted")
            assert rig.metric("gasguard_gateway_broker_alarm_connected") == 0
            proxy.release(cid)
            wait_until(lambda: rig.runner.call(lambda: pub.alarms.connected), 15, "the alarms' connection back")
            rig.cables[0].send(a.alarm())
            sent.append(a.fcnt)
            rig.sub.wait(lambda ms: _alarms(rig, a.dev)[-1:] == sent[-1:], 10)
            wait_until(lambda: rig.runner.call(lambda: d.spool.depth()["alarm"][0] == 0
                                               and pub.alarms.priority + pub.main.priority == 0), 5, "PUBACKed")
            assert set(_alarms(rig, a.dev)) == set(sent)    # (paho re-sent the two taken back: copies, same ids)
        finally:
            rig.close()
