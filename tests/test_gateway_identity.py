"""Two gateways with one [gateway] id (issue 17): each process says who it is in its status (`instance`,
`host`) and watches its own status topic (gateway/identity.py). A copy of a gateway.toml started on a second
machine is named in the log and counted, by both gateways; a gateway's own restarts, its previous run's Will and
broker reconnects are not."""

import json
import logging
from contextlib import contextmanager

import paho.mqtt.client as mqtt
import pytest

from gasguard.gateway.identity import IdentityWatch
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

CONFLICTS = "gasguard_gateway_id_conflicts_total"


# -- the rule alone ----------------------------------------------------------------------------------------
def status(instance, online=True, host="h2"):
    doc = {"gateway": "gw1", "online": online, "t": 1.0}
    if instance is not None:
        doc.update(instance=instance, host=host)
    return doc


def test_another_instance_retained_at_the_first_connect_is_the_previous_run():
    w = IdentityWatch()
    assert not w.observe(status("prev", online=False), True, 1)        # the previous run's Will
    assert not w.observe(status(None), True, 1)                        # an older gateway's, without an instance
    assert not w.observe(status(w.instance), False, 1)                 # the birth's echo
    assert w.armed and w.echoes == 1 and w.conflicts == 0


def test_another_instance_retained_at_two_later_connections_is_a_second_gateway():
    w = IdentityWatch()
    w.observe(status(w.instance), False, 1)
    assert not w.observe(status("b", online=False), True, 2)           # once: a lagging cluster node may do it
    assert not w.observe(status("b", online=False), True, 2)           # the same connection again: still once
    assert w.observe(status("b"), True, 3)                             # at another connection: a second gateway
    assert w.other == ("b", "h2") and w.conflicts == 1


def test_another_instance_live_online_is_a_second_gateway_but_a_live_will_is_not():
    w = IdentityWatch()
    assert not w.observe(status("old", online=False), False, 1)        # a dead session's Will, published late
    assert w.observe(status("b"), False, 1)                            # a birth while this one is subscribed
    assert w.observe(status(None), False, 1)                           # an older gateway's birth, too
    assert w.other == ("?", "?")


def test_instances_differ():
    assert IdentityWatch().instance != IdentityWatch().instance


# -- on a real mosquitto -----------------------------------------------------------------------------------


def conflicts(rig) -> float:
    return rig.metric(CONFLICTS)


@contextmanager
def two_gateways(tmp_path, port: int, second_mqtt: str = ""):
    """Two rigs with one [gateway] id (gw1), each with its own registry, spool and cables."""
    rigs = []
    try:
        for name, extra in (("a", ""), ("b", second_mqtt)):
            (tmp_path / name).mkdir()
            rigs.append(Rig(tmp_path / name, port, sub=False, mqtt_extra=extra))
        yield rigs
    finally:
        for r in reversed(rigs):
            r.close()


@pytest.mark.mosquitto
@pytest.mark.timeout(90)
def test_a_copied_configuration_is_caught_by_both_gateways(tmp_path, mosquitto, caplog):
    """Same gateway id, same client id (a copied gateway.toml): the broker hands the connection back and forth;
    both gateways name the other in their log within a few reconnects, and count it."""
    caplog.set_level(logging.ERROR, logger="gasguard.gateway.mqtt")
    with two_gateways(tmp_path, mosquitto.port) as (a, b):
        a.start()
        b.start(wait=False)
        wait_until(lambda: conflicts(a) >= 1 and conflicts(b) >= 1, 60, "both gateways see the other")
        ia, ib = a.daemon.publisher.identity, b.daemon.publisher.identity
        assert ia.other[0] == ib.instance and ib.other[0] == ia.instance
        lines = [r.getMessage() for r in caplog.records if "another gateway is publishing as" in r.getMessage()]
        assert any(ib.instance in m and "its own [gateway] id" in m for m in lines), lines
        assert any(ia.instance in m for m in lines), lines


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_two_client_ids_under_one_gateway_id_are_caught_at_once(tmp_path, mosquitto):
    """With its own [mqtt] client_id a copy is not thrown off the broker: both stay connected and publish under one
    topic root. The first one sees the second's birth arrive while it is subscribed."""
    with two_gateways(tmp_path, mosquitto.port, 'client_id = "copied-gw1"\n') as (a, b):
        a.start()
        wait_until(lambda: a.daemon.publisher.identity.echoes >= 1, 10, "the first gateway's birth echoed")
        b.start()
        wait_until(lambda: conflicts(a) >= 1, 10, "the first gateway sees the second's birth")
        assert a.daemon.publisher.identity.other[0] == b.daemon.publisher.identity.instance
        assert a.daemon.publisher.connected and b.daemon.publisher.connected


@pytest.mark.mosquitto
@pytest.mark.timeout(90)
def test_restarts_wills_and_reconnects_are_not_a_second_gateway(tmp_path, mosquitto):
    """The previous run's Will (a SIGKILLed gateway's, published by the broker) and clean stop, and the broker
    going away twice under a running gateway: no conflict."""
    rig = Rig(tmp_path, mosquitto.port, sub=False)
    try:
        # what a killed previous run leaves: its Will, retained
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="prev-run")
        c.connect("127.0.0.1", mosquitto.port)
        c.loop_start()
        c.publish(rig.cfg.topics.status, json.dumps({"schema": "gasguard.gateway-status/1", "gateway": "gw1",
                                                     "district": "d1", "online": False, "t": 0, "version": "x",
                                                     "instance": "0badc0ffee00", "host": "here"}),
                  qos=1, retain=True).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()
        for run in range(2):                # then a clean stop and a start again
            d = rig.start()
            pub = d.publisher
            wait_until(lambda: pub.identity.echoes >= 1, 10, "the birth echoed")
            if run == 1:
                for n in (2, 3):            # the broker restarted under it: reconnects with their retained birth
                    mosquitto.restart()
                    wait_until(lambda: pub.connects >= n and pub.identity.echoes >= n, 30, f"connection {n}")
            assert conflicts(rig) == 0 and pub.identity.conflicts == 0
            rig.stop()
    finally:
        rig.close()
