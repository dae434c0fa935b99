"""`gasguard bench autosave`: how long mosquitto serves nobody while it saves its database (issue 17).

mosquitto (2.0) saves its whole in-memory database - every retained message, every message queued for a
persistent session - every `autosave_interval` seconds, on its one thread. While it writes, no client is
served: an alarm published then waits. The gateway keeps one retained `<dev>/state` per heard device, so a
district's broker holds ~330,000 of them. This bench fills a real mosquitto with N retained state messages
(each the gateway's own, `PresenceTable.state_item`, of a device with its last reading), then publishes a small QoS-1
message every PING_EVERY s for `seconds` and times each PUBACK: once with the broker saving every second (the
test broker's setting) and once with mosquitto's default (1800 s: no save in the window). The longest PUBACK
with saves against without is the save's stall. With `--nats`, the same on the 3-node NATS cluster of the tests
(`testing.nats`: retained messages in a JetStream stream replicated on every node), the states published to one
node and the PUBACKs timed on another; it takes retained messages far more slowly (~600/s here), so give it the
smaller counts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import click

from .gateway import _pct, load

PING_EVERY = 0.002       # s between timed publishes
STALL_MS = 20.0          # a PUBACK slower than this is counted as a stall (the alarm goal's bound)


def _states(now: float):
    """(topic, payload) of each device's retained state, as the gateway's presence table makes it
    (`PresenceTable.state_item`), for a device online with a routine last reading."""
    from types import SimpleNamespace
    from gasguard.gateway.presence import Presence, PresenceTable
    from gasguard.protocol.topics import Topics
    table = PresenceTable(SimpleNamespace(gateway_id="gw1"), Topics().gateway("d1", "gw1"))
    st = Presence()
    st.online, st.last_seen, st.r_t = True, now, now
    st.r_fcnt, st.r_gas, st.r_pressure, st.r_battery, st.r_state = 12345, 0, 2000, 90, 0
    dev = 0x00A00000
    while True:
        item = table.state_item(dev, now, st)
        yield item.topic, item.payload
        dev += 1


def _client(port: int, name: str):
    import paho.mqtt.client as mqtt
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _fill(port: int, retained: int) -> int:
    """N retained state messages on the broker (each PUBACKed); returns the payload bytes."""
    c = _client(port, "gg-bench-fill")
    total = 0
    try:
        infos = []
        for _, (topic, body) in zip(range(retained), _states(time.time())):
            total += len(body)
            infos.append(c.publish(topic, body, qos=1, retain=True))
            if len(infos) >= 900:
                for m in infos:
                    m.wait_for_publish(30)
                infos = []
        for m in infos:
            m.wait_for_publish(30)
    finally:
        c.loop_stop()
        c.disconnect()
    return total


def _pings(port: int, seconds: float) -> list[float]:
    """PUBACK times (ms) of one small QoS-1 message every PING_EVERY s, each sent once the last was acked."""
    c = _client(port, "gg-bench-ping")
    out: list[float] = []
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            c.publish("gg-bench/ping", b"x", qos=1).wait_for_publish(10)
            out.append((time.perf_counter() - t) * 1000)
            time.sleep(max(0.0, t + PING_EVERY - time.perf_counter()))
    finally:
        c.loop_stop()
        c.disconnect()
    return out


def _line(run: dict, seconds: float) -> str:
    where = ("a 3-node NATS cluster" if run["broker"] == "nats"
             else f"mosquitto saving every {run['autosave_s']} s")
    return (f"  {run['retained']:,} retained ({run['payload_mb']:.0f} MB of payload), {where}: {run['pings']} PUBACKs in "
            f"{seconds:.0f} s, p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.1f} ms, max {run['max_ms']:.1f} ms, "
            f"{run['stalls']} over {STALL_MS:.0f} ms  ({load()})")


def _timed(pings: list[float]) -> dict:
    lat = sorted(pings)
    return {"pings": len(lat), "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "max_ms": _pct(lat, 100),
            "stalls": sum(x > STALL_MS for x in lat)}


def autosave_figures(*, retained=(10_000, 50_000, 330_000), seconds=5.0, echo=click.echo, workdir=None,
                     nats: tuple = ()) -> dict:
    """`nats`: the retained counts to time on the NATS cluster as well."""
    from gasguard.testing.mosquitto import Mosquitto
    base = Path(workdir or tempfile.mkdtemp(prefix="gg-bench-autosave-", dir="/var/tmp"))
    out: dict = {"seconds": seconds, "ping_every_ms": PING_EVERY * 1000, "load_before": load(), "runs": []}
    try:
        for n in retained:
            for autosave in (1, None):
                d = base / f"r{n}-{autosave}"
                with Mosquitto(workdir=d, autosave=autosave) as mq:
                    saves = mq.autosave_s
                    t = time.perf_counter()
                    size = _fill(mq.port, n)
                    fill_s = time.perf_counter() - t
                    timed = _timed(_pings(mq.port, seconds))
                db = d / "mosquitto.db"         # (mosquitto saves at a clean stop too: what it held)
                run = {"broker": "mosquitto", "retained": n, "autosave_s": saves, "payload_mb": size / 1e6,
                       "db_mb": db.stat().st_size / 1e6 if db.exists() else 0.0, "fill_s": fill_s, **timed}
                out["runs"].append(run)
                echo(_line(run, seconds))
        for n in nats:
            from gasguard.testing.nats import NatsCluster
            with NatsCluster(workdir=base / f"nats-{n}") as cl:
                t = time.perf_counter()
                size = _fill(cl.mqtt_ports[0], n)
                run = {"broker": "nats", "retained": n, "payload_mb": size / 1e6, "fill_s": time.perf_counter() - t,
                       **_timed(_pings(cl.mqtt_ports[1], seconds))}
            out["runs"].append(run)
            echo(_line(run, seconds))
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    out["load_after"] = load()
    return out


@click.command("autosave")
@click.option("--retained", multiple=True, type=click.IntRange(1), default=(10_000, 50_000, 330_000),
              show_default=True, help="retained state messages on the broker (repeatable)")
@click.option("--seconds", default=5.0, show_default=True, help="timed window per broker")
@click.option("--nats", multiple=True, type=click.IntRange(1),
              help="retained states to time on a 3-node NATS cluster too (repeatable; ~600 retained/s to fill)")
@click.option("--json", "as_json", is_flag=True)
def autosave_bench(retained, seconds, nats, as_json):
    """The broker's stall while it saves its database, by the number of retained states it holds."""
    out = autosave_figures(retained=retained, seconds=seconds, nats=nats,
                           echo=(lambda *_: None) if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(out, indent=2))
