"""A paho MQTT 5 client for tests of the broker's access rules: it keeps what it receives and the reason
codes the broker answers (CONNACK, PUBACK, SUBACK), so a refusal at the broker is seen, not guessed."""

import queue
import threading

import paho.mqtt.client as mqtt


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

    def publish(self, topic, payload=b"x", retain=False) -> int:
        """The PUBACK reason code (0 ok, 135 not authorised)."""
        mid = self.c.publish(topic, payload, qos=1, retain=retain).mid
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
