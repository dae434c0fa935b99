"""Many gateways on a real clustered broker (issue 17): a 3-node NATS cluster (JetStream, MQTT listener,
everything replicated on the 3 nodes) on loopback. Two gateways on different nodes hear overlapping nodes;
a command-side consumer on the third node keeps a persistent session and drops copies by frame identity.
The node a gateway is connected to is SIGKILLed during a storm: the gateway moves to the next node, and
every reading reaches the consumer exactly once after dedup, each gateway's in per-device order."""

import time

from gasguard.brokers import Endpoint
from gasguard.gateway.config import Config
from gasguard.gateway.daemon import Daemon
from gasguard.protocol.const import UP
from gasguard.testing.gateway import DaemonThread
from gasguard.testing.node import Node, make_registry
from gasguard.testing.mosquitto import free_port
from gasguard.testing.nats import ClusterConsumer
from gasguard.testing.waits import wait_until

RX = {"transport": "test"}
DEVICES = 60            # gw1 hears 0..39, gw2 hears 20..59: 20 devices heard by both
ROUNDS = 120            # readings per device
KILL_AT = 40            # the round after which gw1's node dies



def test_gateway_node_dies_in_a_storm_nothing_lost_exactly_once_at_the_command(tmp_path, nats_cluster):
    nodes = [Node(0x00D00000 + i) for i in range(DEVICES)]
    make_registry(tmp_path / "registry.db", nodes)
    cl = nats_cluster
    ep = [Endpoint("127.0.0.1", p) for p in cl.mqtt_ports]
    consumer = ClusterConsumer([ep[2], ep[0], ep[1]], str(tmp_path / "dedup.db"), "gasguard/v1/d1/+/reading")
    gws = {}
    for gid, order in (("gw1", [ep[0], ep[1], ep[2]]), ("gw2", [ep[1], ep[2], ep[0]])):
        cfg = Config(gateway_id=gid, district="d1", registry=tmp_path / "registry.db",
                     spool=tmp_path / f"{gid}.db", udp_bind=f"127.0.0.1:{free_port()}", mqtt_client_id=gid,
                     mqtt_brokers=order, batch_delay=0.05, reconnect_min=0.2, reconnect_max=1.0,
                     connect_timeout=3.0, keepalive=10, rate_per_min=1e6, rate_burst=10_000,
                     verify_worker=gid == "gw1")           # one gateway with the second-core worker, one without
        gws[gid] = DaemonThread(Daemon(cfg, plugins=[]))
    heard = {"gw1": nodes[:40], "gw2": nodes[20:]}
    try:
        wait_until(lambda: all(g.daemon.publisher.connected for g in gws.values()), 15, "both gateways to connect")
        assert gws["gw1"].daemon.publisher.broker == ep[0] and gws["gw2"].daemon.publisher.broker == ep[1]
        t_kill = None
        for r in range(ROUNDS):
            frames = {n.dev: n.reading(pressure=2000 + r) for n in nodes}   # one frame: both gateways hear it
            for gid, g in gws.items():
                batch = [frames[n.dev] for n in heard[gid]]
                g.call(lambda d=g.daemon, b=batch: [d._deliver_nowait(raw, RX, "test") for raw in b])
            if r == KILL_AT:
                cl.kill(0)                      # gw1's node, mid-storm
                t_kill = time.monotonic()
            # the storm's pace: the next round once both gateways took this one (their queues are empty)
            wait_until(lambda: all(g.daemon.ingest.queue.empty() for g in gws.values()), 10,
                       "the gateways to take the round", step=0.002)
        want = {(n.dev, UP, fc) for n in nodes for fc in range(1, ROUNDS + 1)}

        def complete():
            with consumer.lock:
                return len(set(consumer.kept)) >= len(want)
        wait_until(complete, 40, "every reading at the command consumer")
        gw1 = gws["gw1"].daemon
        assert gw1.publisher.broker != ep[0]
        assert gw1.metrics.value("gasguard_gateway_broker_failovers_total") >= 1
        for g in gws.values():
            assert g.daemon.stats()["rejected"].get("ingest_overflow", 0) == 0
        with consumer.lock:
            kept, raw = list(consumer.kept), list(consumer.raw)
        assert sorted(kept) == sorted(want)              # nothing lost, exactly once after dedup
        assert len(raw) > len(kept)                      # overlapping devices (and re-sends) came twice
        # per-device order, per gateway: first copies of one gateway's messages arrive in counter order
        for gid in gws:
            seen, last = set(), {}
            for e in raw:
                if e["gateway"] != gid or e["id"] in seen:
                    continue
                seen.add(e["id"])
                assert e["fcnt"] > last.get(e["dev"], 0), f"{gid} {e['dev']}: {e['fcnt']} after {last[e['dev']]}"
                last[e["dev"]] = e["fcnt"]
        print(f"gw1 on {gw1.publisher.broker}, gw2 on {gws['gw2'].daemon.publisher.broker}; all readings at the "
              f"command {time.monotonic() - t_kill:.1f} s after the kill; {len(raw) - len(kept)} copies dropped")
    finally:
        for g in gws.values():
            g.stop()
        consumer.close()
