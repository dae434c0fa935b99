"""Builders shared by the grading, incident and console tests: registry-shaped devices and observations."""

from gasguard.protocol import frame

T0 = 1_795_400_000.0          # 2026-11-23 10:13:20 +08:00, a virtual clock start


def device(dev_id, profile="station", households=0, pressure_class="medium_a", key_area=False, lat=36.66,
           lon=117.06, site=None, upstream=None, address="历下区测试路1号"):
    return {"dev_id": dev_id, "dev": f"{dev_id:08x}", "profile": profile, "site_name": site or f"site-{dev_id:x}",
            "address": address, "lat": lat, "lon": lon, "households": households, "user_class": "residential",
            "pressure_class": pressure_class, "key_area": key_area, "upstream": upstream}


def alarm(dev, t, code, *, cleared=False, aseq=1, age=0, value=0, valve=1, ptrip=False, gas_level=0):
    st = frame.make_state(valve, valve == 1, gas_level, False, False, ptrip)
    return {"id": f"{dev['dev']}-a{aseq}-{cleared}", "t": t, "dev": dev["dev_id"], "type": "alarm",
            "frame": {"code": code, "cleared": cleared, "aseq": aseq, "age": age, "value": value, "state": st},
            "state": frame.state_fields(st), "device": dev, "rx": {}}


def reading(dev, t, *, pressure=None, inlet=None, gas=0, valve=0, ptrip=False):
    st = frame.make_state(valve, False, 0, False, False, ptrip)
    fr = {"gas": gas, "pressure": pressure, "battery": None, "state": st}
    if inlet is not None:
        fr["inlet"] = inlet
    return {"id": f"{dev['dev']}-r{t}", "t": t, "dev": dev["dev_id"], "type": "reading", "frame": fr,
            "state": frame.state_fields(st), "device": dev, "rx": {}}


def valve_event(dev, t, valve, cause=5, eseq=1):
    return {"id": f"{dev['dev']}-e{eseq}", "t": t, "dev": dev["dev_id"], "type": "event",
            "frame": {"code": 5, "eseq": eseq, "data": bytes([valve, cause]).hex()}, "state": None,
            "device": dev, "rx": {}}


def payloads(out, topic_part=""):
    return [p for t, p in out if topic_part in t]


class PluginHarness:
    """Drives a plugin through a real broker the way the daemon does: publishes its outputs at QoS 1 and
    feeds it the messages of its subscriptions, with a virtual clock. For tests without the full daemon."""

    def __init__(self, plugin, port, clock, authority=None, workdir=None):
        """`authority`: a bootstrapped district (gasguard.authority.bootstrap): acts are then checked and
        answered as the daemon does (gateway.daemon.authorise_act), with the replay store and audit log in
        `workdir`."""
        import json
        import queue
        import threading

        import paho.mqtt.client as mqtt
        self.plugin, self.clock, self.json = plugin, clock, json
        self.gate = None
        if authority is not None:
            from gasguard.authority import AuditLog, Gate
            from gasguard.authority.secretfile import load_public
            from gasguard.protocol.topics import Topics
            self.gate = Gate(authority.roster, load_public(authority.trust), workdir / "replay.db",
                             AuditLog(workdir / "audit"), district=authority.district)
            self.answer_topic = Topics().command(authority.district).result("harness")
        self.inbox = queue.Queue()
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gg-test-gateway")

        def on_connect(c, u, f, rc, p):
            for s in plugin.subscriptions:
                c.subscribe(s, qos=1)
            self.ready.set()
        self.c.on_connect = on_connect
        self.c.on_message = lambda c, u, m: self.inbox.put((m.topic, m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(10), "harness could not connect to mosquitto"
        self.published = []

    def _checked(self, topic, payload):
        """What the daemon hands the plugin: acts only verified (None: refused, the plugin never sees it), answered."""
        action = self.plugin.action_of(topic)
        if action is None or self.gate is None:
            return self.json.loads(payload)
        from gasguard.gateway.authority import authorise_act
        doc, (rtopic, answer, _, _), _ = authorise_act(self.gate, self.answer_topic, "harness", topic, payload,
                                                       action, self.clock())
        self.c.publish(rtopic, self.json.dumps(answer), qos=1).wait_for_publish(5)
        return doc

    def _send(self, outs):
        for topic, payload, lane in outs:
            assert lane == "alarm"
            self.c.publish(topic, self.json.dumps(payload, ensure_ascii=False), qos=1).wait_for_publish(5)
            self.published.append((topic, payload))
        return outs

    def observe(self, obs):
        return self._send(self.plugin.observe(obs))

    def tick(self):
        return self._send(self.plugin.tick(self.clock()))

    def pump(self, timeout=5.0, until=None):
        """Feed command messages to the plugin until `until(topic)` matched one (or timeout)."""
        import queue
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                topic, payload = self.inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            doc = self._checked(topic, payload)
            if doc is not None:
                self._send(self.plugin.on_message(topic, doc, self.clock()))
            if until is None or until(topic):
                return topic
        raise AssertionError("no command message reached the gateway harness in time")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()

    def pump_in_background(self):
        """Serve command messages from a thread (while a CLI command runs in the test's thread)."""
        import threading
        self._stop = threading.Event()

        def run():
            while not self._stop.is_set():
                try:
                    self.pump(timeout=0.2)
                except AssertionError:
                    pass
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop_pumping(self):
        self._stop.set()
        self._thread.join(5)
