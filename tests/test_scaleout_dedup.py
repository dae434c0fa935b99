"""Scale-out (issue 8): two gateway processes' worth of daemons hear overlapping nodes (OverlapTransport
over two Semtech UDP forwarders) and publish into one real mosquitto; the command side consumes the
alarms with a shared subscription and a shared FrameDedup, so each alarm frame reaches the command once."""

import random
import threading
from types import SimpleNamespace

import paho.mqtt.client as mqtt

from gasguard.gateway.config import Config
from gasguard.gateway.daemon import Daemon
from gasguard.command.dedup import FrameDedup, frame_key
from gasguard.testing.gateway import DaemonThread
from gasguard.testing.node import Node, make_registry
from gasguard.testing.mosquitto import free_port
from gasguard.testing.waits import wait_until
from gasguard.tools.sim.fleet_node import Radio
from gasguard.tools.sim.fleet_transport import OverlapTransport, UdpTransport

N = 40


class Consumer:
    """One command-side process: a member of the $share/command group, deduping by frame identity."""

    def __init__(self, port, store, name):
        self.raw, self.kept, self.lock = [], [], threading.Lock()
        self.dedup = FrameDedup(store)
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("$share/command/gasguard/v1/d1/+/+/alarm", qos=1)
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_message = self._msg
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert subscribed.wait(5)

    def _msg(self, c, u, m):
        import json
        doc = json.loads(m.payload)
        with self.lock:
            self.raw.append(doc)
            if self.dedup.first(doc):
                self.kept.append(doc)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()
        self.dedup.close()


def test_two_gateways_overlapping_nodes_one_alarm_each_at_the_command(mosquitto, tmp_path):
    nodes = [Node(0x00B00000 + i) for i in range(N)]
    make_registry(tmp_path / "registry.db", nodes)
    gws, ports = [], []
    for gid in ("gw1", "gw2"):
        port = free_port()
        cfg = Config(gateway_id=gid, district="d1", registry=tmp_path / "registry.db", spool=tmp_path / f"{gid}.db",
                     udp_bind=f"127.0.0.1:{port}", mqtt_port=mosquitto.port, mqtt_client_id=gid, batch_delay=0.1)
        gws.append(DaemonThread(Daemon(cfg, plugins=[])))
        ports.append(port)
    consumers = [Consumer(mosquitto.port, str(tmp_path / "dedup.db"), f"cmd{i}") for i in range(2)]
    try:
        wait_until(lambda: all(g.daemon.udp is not None and g.daemon.publisher.connected for g in gws), 10,
                   "gateways start")
        tr = OverlapTransport([UdpTransport(f"127.0.0.1:{p}", keepalive_s=3600) for p in ports], overlap=0.5)
        rng = random.Random(1)
        tr.send([(n.alarm(), SimpleNamespace(dev=n.dev, radio=Radio(rng))) for n in nodes])
        twice = tr.heard_twice
        assert 0 < twice < N

        def done():
            with consumers[0].lock, consumers[1].lock:
                return sum(len(c.raw) for c in consumers) >= N + twice
        # every alarm both gateways accepted is PUBACKed: that is all the broker will ever deliver, so once
        # the consumers hold as many, nothing more can come
        wait_until(lambda: sum(g.daemon.metrics.value("gasguard_gateway_published_total", lane="alarm")
                               for g in gws) == N + twice, 20, "both gateways' alarms PUBACKed")
        wait_until(done, 20, f"{N + twice} messages at the consumers")
        raw = [d for c in consumers for d in c.raw]
        kept = [d for c in consumers for d in c.kept]
        assert len(raw) == N + twice                          # both gateways published the overlapping frames
        assert {d["gateway"] for d in raw} == {"gw1", "gw2"}
        assert sorted(frame_key(d) for d in kept) == sorted({frame_key(d) for d in raw})   # each frame once
        assert len(kept) == N
        assert all(c.raw for c in consumers)                  # the shared subscription spread the load
        tr.close()
    finally:
        for c in consumers:
            c.close()
        for g in gws:
            g.stop()


def test_frame_dedup_is_shared_bounded_and_keyed_on_device_direction_counter(tmp_path):
    t = [1000.0]
    a = FrameDedup(str(tmp_path / "d.db"), keep_s=60, clock=lambda: t[0], prune_every=1)
    b = FrameDedup(str(tmp_path / "d.db"), keep_s=60, clock=lambda: t[0], prune_every=1)
    msg = {"dev": "00b00001", "fcnt": 7, "gateway": "gw1"}
    assert a.first(msg) and not b.first(dict(msg, gateway="gw2"))
    assert b.first({"dev": "00b00001", "fcnt": 8}) and a.first_key((0xB00001, 1, 7))   # downlink: other identity
    assert a.first({"schema": "no identity"}) and a.first({"schema": "no identity"})
    t[0] += 120
    a.first({"dev": "00b00002", "fcnt": 1})                   # prunes what is older than keep_s
    assert a.db.execute("SELECT count(*) FROM seen").fetchone()[0] == 1
    a.close()
    b.close()
