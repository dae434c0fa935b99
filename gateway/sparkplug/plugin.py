"""The gateway as a Sparkplug B edge node: a plugin that feeds `EdgeNode` with the gateway's accepted uplinks and
carries its messages over an MQTT session of its own.

Why a session of its own: Sparkplug's Will must be the edge node's NDEATH (with bdSeq), while the gateway's own
session's Will is its retained offline status; one MQTT connection has one Will.

Enable with a `[sparkplug]` table in the gateway config (keys below; gateway/README.md "Sparkplug B"). Threads:
paho's network thread delivers STATE/NCMD/DCMD; the daemon's loop calls observe/tick/on_message. One lock
serialises every EdgeNode call together with its publish, so `seq` goes out in the order it was numbered.
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from gasguard.protocol import topics

from gasguard.brokers import Endpoint, FailoverClient

from ..plugin import Plugin, PluginContext
from .edge import EdgeNode, Msg
from .store import EdgeStore

log = logging.getLogger("gasguard.gateway.sparkplug")

# key -> (type, default, meaning); check-config and run both validate through `check_options`
OPTIONS = {
    "group": (str, None, "Sparkplug group id (default: the district)"),
    "edge_node": (str, None, "edge node id (default: the gateway id)"),
    "primary_host": (str, None, "host id whose spBv1.0/STATE/<id> gates publishing (optional)"),
    "store": (str, None, "SQLite file for bdSeq and held data (default: sparkplug-<gateway>.db beside the spool)"),
    "max_history": (int, 100_000, "held rows kept while no host listens; oldest dropped past it (counted)"),
}


class OptionError(ValueError):
    def __init__(self, key: str, msg: str):
        super().__init__(f"sparkplug.{key}: {msg}")
        self.key = f"sparkplug.{key}"


def check_options(opts: dict) -> dict:
    """Validated options with defaults, or OptionError naming the key and the fix."""
    out = {}
    for k in opts:
        if k not in OPTIONS:
            raise OptionError(k, f"unknown key; known keys: {', '.join(sorted(OPTIONS))}")
    for k, (typ, default, _) in OPTIONS.items():
        v = opts.get(k, default)
        if v is not None and (not isinstance(v, typ) or isinstance(v, bool)):
            raise OptionError(k, f"must be {'a string' if typ is str else 'an integer'}, got {v!r}")
        out[k] = v
    for k in ("group", "edge_node", "primary_host"):
        v = out[k]
        if v is not None and (not v or any(c in v for c in "/+#")):
            raise OptionError(k, f"{v!r} is a topic level: no '/', '+' or '#', not empty")
    if out["max_history"] < 1:
        raise OptionError("max_history", "must be at least 1")
    return out


class SparkplugPlugin(Plugin):
    name = "sparkplug"

    def __init__(self, options: dict, ctx: PluginContext):
        opts = check_options(options)
        m = ctx.mqtt or {}
        store = Path(opts["store"]) if opts["store"] else Path(m.get("spool_dir") or ".") / f"sparkplug-{ctx.gateway_id}.db"
        self.edge = EdgeNode(opts["group"] or ctx.district, opts["edge_node"] or ctx.gateway_id,
                             EdgeStore(store, opts["max_history"]), primary_host=opts["primary_host"],
                             version=m.get("version", ""), district=ctx.district,
                             clock_mode=m.get("clock_mode", "real"), clock=ctx.clock)
        self.topics = topics.GatewayTopics(ctx.root)
        self.subscriptions = [self.topics.devices(topics.STATE)]      # the gateway's own online/offline verdicts
        self.lock = threading.RLock()
        self.client = _client(m, f"{m.get('client_id') or 'gasguard-gw-' + ctx.gateway_id}-spb")
        self.client.on_pre_connect = self._pre_connect
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self._stop = threading.Event()
        self._reconnect = threading.Event()
        self.host, self.port, self.keepalive = m.get("host", "127.0.0.1"), m.get("port", 1883), m.get("keepalive", 30)
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        self._sup = threading.Thread(target=self._supervise, name="sparkplug-reconnect", daemon=True)
        self._sup.start()

    # -- MQTT side (paho's thread) ----------------------------------------------------------------
    def _pre_connect(self, client, _userdata) -> None:
        with self.lock:
            w = self.edge.will()
            client.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain)

    def _on_connect(self, client, _u, _flags, reason, _props) -> None:
        if reason.is_failure:
            log.warning("sparkplug: broker refused the connection: %s", reason)
            return
        for t in self.edge.subscriptions():
            client.subscribe(t, qos=1)
        with self.lock:
            self._send(self.edge.on_connected())
            self._drain_replay()

    def _on_disconnect(self, _c, _u, _flags, reason, _props) -> None:
        with self.lock:
            self.edge.on_disconnected()

    def _on_message(self, _c, _u, msg) -> None:
        with self.lock:
            t = msg.topic
            if t == self.edge.state_topic:
                out, disconnect = self.edge.on_state(msg.payload)
                self._send(out)
                self._drain_replay()
                if disconnect:
                    self._reconnect.set()
            elif t == self.edge.topic("NCMD"):
                self._send(self.edge.on_ncmd(msg.payload))
            elif t.startswith(self.edge.topic("DCMD") + "/"):
                self.edge.on_dcmd(t.rsplit("/", 1)[1], msg.payload)

    def _send(self, msgs: list[Msg]) -> None:
        for m in msgs:
            self.client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)

    def _drain_replay(self) -> None:
        while self.edge.replaying and self.edge.live:
            self._send(self.edge.replay())

    def _supervise(self) -> None:
        """The primary host went offline: NDEATH was sent; disconnect, then connect again (new bdSeq)."""
        while not self._stop.is_set():
            if not self._reconnect.wait(timeout=1.0):
                continue
            self._reconnect.clear()
            if self._stop.is_set():
                return
            self.client.disconnect()
            self.client.loop_stop()
            self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
            self.client.loop_start()

    # -- gateway side (the daemon's loop) ---------------------------------------------------------
    def observe(self, obs: dict) -> list:
        with self.lock:
            self._send(self.edge.observe(obs))
        return []

    def on_message(self, topic: str, payload: dict, now: float) -> list:
        if isinstance(payload, dict) and payload.get("online") is False and isinstance(payload.get("dev"), str):
            try:
                dev = int(payload["dev"], 16)
            except ValueError:
                return []
            with self.lock:
                self._send(self.edge.device_offline(dev))
        return []

    def tick(self, now: float) -> list:
        with self.lock:
            self._drain_replay()
        return []

    def requests(self) -> list[tuple[str, bytes]]:
        """DCMD-born node commands, for the gateway's command dispatcher (authority checked and audited there,
        as for a request over MQTT; in-process, so a walled broker need not let the gateway publish commands)."""
        with self.lock:
            cmds, self.edge.commands = self.edge.commands, []
        return [(self.topics.device(dev, topics.CMD), raw) for dev, raw in cmds]

    def close(self) -> None:
        self._stop.set()
        self._reconnect.set()
        with self.lock:
            if self.edge.live:           # a clean stop says so (the Will is only for an unclean one)
                self.edge.counts["ndeath"] += 1
                info = self.client.publish(self.edge.topic("NDEATH"), self.edge._ndeath_payload(), qos=1)
                try:
                    info.wait_for_publish(timeout=2.0)
                except (RuntimeError, ValueError):
                    pass
        self.client.disconnect()
        self.client.loop_stop()
        self.edge.store.close()


def _client(m: dict, client_id: str) -> mqtt.Client:
    # the gateway's broker list (gasguard.brokers): a reconnect goes to the next cluster node, as the publisher's
    eps = m.get("brokers") or [Endpoint(m.get("host", "127.0.0.1"), m.get("port", 1883))]
    c = FailoverClient(eps, mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.reconnect_delay_set(min_delay=max(1, int(m.get("reconnect_min", 1))), max_delay=int(m.get("reconnect_max", 30)))
    if m.get("username"):
        c.username_pw_set(m["username"], m.get("password"))
    if m.get("tls_ca"):
        c.tls_set(ca_certs=str(m["tls_ca"]), certfile=str(m["tls_cert"]) if m.get("tls_cert") else None,
                  keyfile=str(m["tls_key"]) if m.get("tls_key") else None, cert_reqs=ssl.CERT_REQUIRED)
    return c


def make_plugin(options: dict, ctx: PluginContext) -> SparkplugPlugin:
    return SparkplugPlugin(options, ctx)
