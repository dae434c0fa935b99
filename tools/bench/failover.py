"""`gasguard bench failover`: what a broker node's death costs (issue 17), on a real 3-node NATS cluster.

One gateway (the real daemon: verification, SQLite spool with synchronous=FULL, the failover publisher) is
connected to node 0 and gets a paced stream of readings; a command-side consumer with a persistent session
on node 2 counts distinct frames (FrameDedup). Node 0 is SIGKILLed mid-stream (with --freeze: SIGSTOPped, a
paused VM: its connections stay open and nothing answers, so the gateway finds out by [mqtt] puback_timeout).
Measured:

- failover: SIGKILL (SIGSTOP) -> the gateway's connection accepted by another node (its CONNACK);
- delivery gap: the longest time without a new reading at the consumer, around the kill;
- loss: readings accepted by the gateway that never reached the consumer (waited for up to 60 s);
- copies: readings that arrived more than once (re-sent in flight; dropped by the dedup).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import click

RX = {"transport": "bench"}


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def failover_run(base: Path, *, rate: float, seconds: float, kill_at: float, devices: int,
                 connect_timeout: float = 3.0, freeze: bool = False, puback_timeout: float = 10.0) -> dict:
    from gasguard.brokers import Endpoint
    from gasguard.gateway.config import Config
    from gasguard.gateway.daemon import Daemon
    from gasguard.testing.gateway import DaemonThread
    from gasguard.testing.mosquitto import free_port
    from gasguard.testing.nats import ClusterConsumer, NatsCluster
    from gasguard.testing.node import Node, make_registry

    nodes = [Node(0x00F00000 + i, bytes([i % 251 + 1]) * 16) for i in range(devices)]
    make_registry(base / "registry.db", nodes)
    with NatsCluster(base / "nats") as cl:
        ep = [Endpoint("127.0.0.1", p) for p in cl.mqtt_ports]
        consumer = ClusterConsumer([ep[2], ep[0], ep[1]], str(base / "dedup.db"), "gasguard/v1/d1/+/reading")
        cfg = Config(gateway_id="gw1", district="d1", registry=base / "registry.db", spool=base / "spool.db",
                     udp_bind=f"127.0.0.1:{free_port()}", mqtt_client_id="gw1", mqtt_brokers=ep, batch_delay=0.05,
                     reconnect_min=0.2, reconnect_max=1.0, connect_timeout=connect_timeout, keepalive=10,
                     puback_timeout=puback_timeout,
                     rate_per_min=1e6, rate_burst=100_000, verify_worker=False)
        gw = DaemonThread(Daemon(cfg, plugins=[]))
        d = gw.daemon
        try:
            deadline = time.monotonic() + 20
            while not d.publisher.connected:
                if time.monotonic() > deadline:
                    raise click.ClickException("the gateway did not connect to the cluster in 20 s")
                time.sleep(0.02)
            per_tick, tick = max(1, round(rate * 0.01)), 0.01
            fi, sent, t0, t_kill, t_back = 0, 0, time.monotonic(), None, None
            while time.monotonic() - t0 < seconds:
                frames = [nodes[(fi + k) % devices].reading() for k in range(per_tick)]
                fi += per_tick
                gw.call(lambda b=frames: [d.ingest.deliver_nowait(raw, RX, "bench") for raw in b] and None)
                sent += len(frames)
                now = time.monotonic()
                if t_kill is None and now - t0 >= kill_at:
                    (cl.freeze if freeze else cl.kill)(0)
                    t_kill = time.monotonic()
                if t_kill is not None and t_back is None and d.publisher.connected and d.publisher.broker != ep[0]:
                    t_back = time.monotonic()
                time.sleep(max(0.0, t0 + (fi / per_tick) * tick - time.monotonic()))
            deadline = time.monotonic() + 60
            while consumer.distinct() < d.accepted_count and time.monotonic() < deadline:
                if t_back is None and d.publisher.connected and d.publisher.broker != ep[0]:
                    t_back = time.monotonic()
                time.sleep(0.05)
            time.sleep(0.5)                # the last batches' PUBACKs; then what was accepted is final
            accepted = d.accepted_count
            refused = {k: v for k, v in d.stats()["rejected"].items() if v}   # offered but not accepted: why
            got, copies, times = consumer.distinct(), consumer.copies(), consumer.arrivals()
        finally:
            gw.stop()
            consumer.close()
    gaps = [b - a for a, b in zip(times, times[1:]) if b > t_kill - 1]
    return {"offered": sent, "accepted": accepted, "refused": refused, "received": got, "lost": accepted - got,
            "copies": copies, "failover_s": (t_back - t_kill) if t_back else None,
            "gap_s": max(gaps) if gaps else None, "rate": rate, "load": load()}


def failover_figures(*, runs=2, rate=5000.0, seconds=12.0, kill_at=4.0, devices=500, connect_timeout=3.0,
                     freeze=False, puback_timeout=10.0, echo=click.echo) -> dict:
    out: dict = {"load_before": load(), "connect_timeout": connect_timeout, "freeze": freeze,
                 "puback_timeout": puback_timeout, "runs": []}
    for r in range(runs):
        base = Path(tempfile.mkdtemp(prefix="gg-bench-failover-", dir="/var/tmp"))
        try:
            res = failover_run(base, rate=rate, seconds=seconds, kill_at=kill_at, devices=devices,
                              connect_timeout=connect_timeout, freeze=freeze, puback_timeout=puback_timeout)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        out["runs"].append(res)
        fo = f"{res['failover_s']:.2f} s" if res["failover_s"] is not None else "never"
        how = "SIGSTOPped" if freeze else "SIGKILLed"
        echo(f"  run {r + 1}: node {how} at {rate:,.0f} readings/s: failover {fo}, longest delivery gap "
             f"{res['gap_s']:.2f} s, {res['accepted']:,} accepted, {res['received']:,} at the command, "
             f"{res['lost']} lost, {res['copies']} copies dropped by dedup"
             + (f"; refused by the gateway {res['refused']}" if res["refused"] else "") + f" ({res['load']})")
    ok = [x["failover_s"] for x in out["runs"] if x["failover_s"] is not None]
    out["failover_s_median"] = statistics.median(ok) if ok else None
    out["gap_s_median"] = statistics.median(x["gap_s"] for x in out["runs"])
    out["lost_total"] = sum(x["lost"] for x in out["runs"])
    out["load_after"] = load()
    return out


@click.command("failover")
@click.option("--runs", default=2, show_default=True)
@click.option("--rate", default=5000.0, show_default=True, help="readings/s offered to the gateway")
@click.option("--seconds", default=12.0, show_default=True)
@click.option("--connect-timeout", default=3.0, show_default=True,
              help="the gateway's [mqtt] connect_timeout: a node's TCP connect and CONNACK")
@click.option("--freeze", is_flag=True, help="SIGSTOP the node instead of SIGKILL: a frozen node, found by "
              "[mqtt] puback_timeout")
@click.option("--puback-timeout", default=10.0, show_default=True, help="the gateway's [mqtt] puback_timeout")
@click.option("--json", "as_json", is_flag=True)
def failover_bench(runs, rate, seconds, connect_timeout, freeze, puback_timeout, as_json):
    """A broker node dies under a gateway: failover time, delivery gap and loss on a real 3-node NATS cluster."""
    out = failover_figures(runs=runs, rate=rate, seconds=seconds, connect_timeout=connect_timeout, freeze=freeze,
                           puback_timeout=puback_timeout,
                           echo=(lambda *_: None) if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(f"failover median {out['failover_s_median']} s, delivery gap median {out['gap_s_median']:.2f} s, "
                   f"lost {out['lost_total']} in {len(out['runs'])} runs")
