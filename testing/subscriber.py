"""An MQTT subscriber that collects what the gateway publishes, and waits on it (never on time)."""

from __future__ import annotations

import json
import os
import threading
import time

import paho.mqtt.client as mqtt

from gasguard.command.readings import readings_of


class Subscriber:
    """Collects every message under a topic filter (QoS 1, persistent session so a broker restart loses
    nothing that was queued for it)."""

    def __init__(self, port: int, topic: str = "gasguard/#", client_id: str | None = None, clean: bool = True,
                 username: str | None = None, password: str | None = None):
        self.messages: list[tuple[str, dict, bool]] = []
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"sub-{os.getpid()}-{id(self)}",
                             clean_session=clean)
        if username:                    # a broker with logins (gasguard authority broker-config)
            self.c.username_pw_set(username, password)
        self.c.on_connect = lambda c, u, fl, rc, p: c.subscribe(topic, qos=1)
        self.c.on_message = self._msg
        self.c.reconnect_delay_set(1, 1)
        self.subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not self.subscribed.wait(5):
            raise TimeoutError("subscriber: no SUBACK in 5 s")

    def _msg(self, c, u, m) -> None:
        try:
            doc = json.loads(m.payload) if m.payload else {}
        except ValueError:
            doc = {"_raw": m.payload.decode(errors="replace")}
        with self.cond:
            self.messages.append((m.topic, doc, m.retain))
            self.cond.notify_all()

    def wait(self, pred, timeout: float = 10.0) -> list:
        """Block until pred(messages) is truthy; returns it. Raises with what arrived on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                r = pred(self.messages)
                if r:
                    return r
                left = deadline - time.monotonic()
                if left <= 0:
                    topics = sorted({t for t, _, _ in self.messages})
                    raise TimeoutError(f"condition not met in {timeout} s; got {len(self.messages)} messages on {topics}")
                self.cond.wait(left)

    def on(self, suffix: str) -> list[dict]:
        with self.lock:
            return [d for t, d, _ in self.messages if t.endswith(suffix)]

    def reading_ids(self) -> set[str]:
        with self.lock:
            return {r["id"] for t, d, _ in self.messages if t.endswith("/reading") for r in readings_of(d)}

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
