"""The broker as the second wall (issue 14, 3): the real mosquitto runs the configuration that
`gasguard authority broker-config` writes, and refuses an anonymous client, a wrong password, an operator
publishing a node command, and a gateway publishing under another gateway's prefix; what each role may do
still flows."""

import queue
import threading

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gasguard.authority import broker
from gasguard.authority import roster as RO
from gasguard.authority.secretfile import public_hex
from gasguard.testing.mosquitto import Mosquitto

pytestmark = pytest.mark.mosquitto


def _roster(tmp_path):
    auth = Ed25519PrivateKey.generate()
    path = tmp_path / "operators.json"
    RO.init(path, auth, "lixia")
    admin = Ed25519PrivateKey.generate()
    RO.add(path, auth, "root", "admin", public_hex(admin.public_key()))
    for pid, role in (("li.na", "engineer"), ("zhao", "operator"), ("gone", "engineer")):
        RO.add(path, auth, pid, role, public_hex(Ed25519PrivateKey.generate().public_key()), approver=("root", admin))
    RO.revoke(path, auth, "gone", approver=("root", admin))
    return RO.load(path, auth.public_key())


class Client:
    """A paho MQTT 5 client that records what it receives and the reason codes the broker answers."""

    def __init__(self, port, user=None, password=None):
        self.got: queue.Queue = queue.Queue()
        self.connack = threading.Event()
        self.rc = None
        self.acks: dict[int, int] = {}
        self.acked = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if user:
            self.c.username_pw_set(user, password)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.got.put((m.topic, m.payload))
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.got.put(("$suback", [int(r.value) for r in rcs]))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connack.wait(5), "no CONNACK within 5 s"

    def _on_connect(self, c, u, flags, rc, props):
        self.rc = rc
        self.connack.set()

    def _on_publish(self, c, u, mid, rc, props):
        with self.acked:
            self.acks[mid] = int(rc.value)
            self.acked.notify_all()

    def publish(self, topic, payload=b"x") -> int:
        """The PUBACK reason code (0 ok, 135 not authorised)."""
        mid = self.c.publish(topic, payload, qos=1).mid
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.acks, 5), f"no PUBACK for {topic}"
            return self.acks[mid]

    def subscribe(self, topic) -> list[int]:
        self.c.subscribe(topic, qos=1)
        kind, codes = self.got.get(timeout=5)
        assert kind == "$suback"
        return codes

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_generated_config_refuses_anonymous_and_wrong_roles_at_the_real_broker(tmp_path):
    ro = _roster(tmp_path)
    out = tmp_path / "broker"
    rep = broker.write_config(ro, ["gw-1", "gw-2"], out)
    assert rep["users"] == ["gw-gw-1", "gw-gw-2", "li.na", "root", "zhao"]          # the revoked one has no login
    assert (out / "passwd").read_text().count("$7$") == 5 and "gone" not in (out / "acl").read_text()
    pw = {u: (out / "credentials" / f"{u}.password").read_text().strip() for u in rep["users"]}
    assert broker.write_config(ro, ["gw-1", "gw-2"], out)["new_credentials"] == []   # passwords are kept
    with Mosquitto(workdir=tmp_path / "m", extra_config=(out / "gasguard.conf").read_text()) as m:
        anon = Client(m.port)
        assert anon.rc.is_failure and anon.rc.value == 135                              # not authorised
        wrong = Client(m.port, "zhao", "guess")
        assert wrong.rc.is_failure
        gw1 = Client(m.port, "gw-gw-1", pw["gw-gw-1"])
        assert not gw1.rc.is_failure
        assert gw1.subscribe("gasguard/v1/lixia/gw-1/+/cmd") == [1]
        assert gw1.subscribe("gasguard/v1/lixia/command/ack/+") == [1]
        gw1.subscribe("gasguard/v1/lixia/gw-2/+/cmd")      # mosquitto grants it, then delivers nothing (read ACL)
        zhao = Client(m.port, "zhao", pw["zhao"])
        eng = Client(m.port, "li.na", pw["li.na"])
        gw2 = Client(m.port, "gw-gw-2", pw["gw-gw-2"])
        assert zhao.publish("gasguard/v1/lixia/gw-1/00c0ffee/cmd", b"reset") == 135     # an operator: no commands
        assert zhao.publish("gasguard/v1/other/command/ack/L-1") == 135                  # nor another district's acks
        assert gw2.publish("gasguard/v1/lixia/gw-1/00c0ffee/alarm") == 135              # nor another gateway's prefix
        assert zhao.publish("gasguard/v1/lixia/command/ack/L-1", b"ack") == 0
        assert eng.publish("gasguard/v1/lixia/gw-2/0badf00d/cmd", b"for gw-2") == 0     # not for gw-1's eyes
        assert eng.publish("gasguard/v1/lixia/gw-1/00c0ffee/cmd", b"status") == 0
        got = [gw1.got.get(timeout=5) for _ in range(2)]
        assert sorted(got) == [("gasguard/v1/lixia/command/ack/L-1", b"ack"),
                               ("gasguard/v1/lixia/gw-1/00c0ffee/cmd", b"status")]
        assert gw1.got.empty()                              # the refused publications never reached it
        for c in (anon, wrong, gw1, zhao, eng, gw2):
            c.close()
