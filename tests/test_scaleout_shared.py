"""Scale-out (issue 8): command-side consumers share the incident stream with an MQTT shared subscription
($share/<group>/<filter>) on a real mosquitto: every message goes to exactly one member of the group, the
load is spread, and when a member leaves the others take its share."""

import json
import threading

import paho.mqtt.client as mqtt

from gasguard.testing.waits import wait_until

TOPIC = "gasguard/v1/d1/command/incident"


class Member:
    def __init__(self, port, name):
        self.got, self.lock = [], threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        ok = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"$share/console/{TOPIC}/#", qos=1)
        self.c.on_subscribe = lambda *a: ok.set()
        self.c.on_message = self._msg
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ok.wait(5)

    def _msg(self, c, u, m):
        with self.lock:
            self.got.append(json.loads(m.payload)["n"])

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def _publish(port, numbers):
    p = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{numbers[0]}")
    p.connect("127.0.0.1", port)
    p.loop_start()
    infos = [p.publish(f"{TOPIC}/d1-leak-{n:08x}", json.dumps({"n": n}), qos=1) for n in numbers]
    for i in infos:
        i.wait_for_publish(5)
    p.loop_stop()
    p.disconnect()


def _wait(members, total, timeout=10.0):
    # exactly `total` and then the set compared: a copy delivered twice leaves one missing at this count
    wait_until(lambda: sum(len(m.got) for m in members) >= total, timeout,
               f"{total} messages (have {[len(m.got) for m in members]})")


def test_shared_subscription_spreads_incidents_over_consumers_each_once(mosquitto):
    members = [Member(mosquitto.port, f"console{i}") for i in range(3)]
    try:
        _publish(mosquitto.port, list(range(300)))
        _wait(members, 300)
        got = [n for m in members for n in m.got]
        assert sorted(got) == list(range(300))          # each incident message once, none lost
        assert all(len(m.got) >= 30 for m in members)     # mosquitto round-robins the group
        members[0].close()                                # a console goes away: the others take its share
        left = members[1:]
        before = sum(len(m.got) for m in left)
        _publish(mosquitto.port, list(range(300, 400)))
        _wait(left, before + 100)
        got = sorted(n for m in left for n in m.got if n >= 300)
        assert got == list(range(300, 400))
    finally:
        for m in members[1:]:
            m.close()
