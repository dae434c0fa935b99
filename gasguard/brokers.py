"""MQTT broker endpoints and failover: one definition for every GasGuard MQTT client (the gateway's
publisher, the district command service).

A site names one broker or the nodes of a cluster; a client connects to the first, and when a connect
attempt fails or an established connection is lost it moves to the next (round robin), with paho's
exponential backoff between attempts (mqtt.reconnect_min .. reconnect_max), so a dead node costs one
attempt, never a wait for that node to come back:

    [mqtt]
    brokers = ["10.1.0.11:1883", "10.1.0.12:1883", "10.1.0.13:1883"]   # the cluster's nodes, in order
    # or the single-broker form (still accepted):  host = "10.1.0.11"  port = 1883

    endpoints = endpoints_from(table)                 # -> [Endpoint]; EndpointError(key, fix) if wrong
    client = FailoverClient(endpoints, mqtt.CallbackAPIVersion.VERSION2, client_id=..., clean_session=...)
    client.start(keepalive=30)                        # connect_async to the first + loop_start

What a client must do on its side is unchanged by a move: paho keeps QoS-1 messages that were in flight and
re-sends them to the new node after its CONNACK (at-least-once: consumers drop copies by message id or
frame identity), and `on_connect` runs again, so subscriptions are renewed there. A consumer that must not
miss what arrived while it moved uses a fixed client id and clean_session=False: a cluster that keeps
sessions (NATS JetStream, EMQX) hands its session to the node it reconnects to (docs/SCALE_OUT.md).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt

DEFAULT_PORT = 1883


class EndpointError(ValueError):
    """A bad broker address: `key` is the configuration key (e.g. "mqtt.brokers[1]"), the message the fix."""

    def __init__(self, key: str, msg: str):
        super().__init__(f"{key}: {msg}")
        self.key, self.fix = key, msg


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(v, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 65536:
        raise EndpointError(key, f"{v!r} is not a TCP port (1883, or 8883 with TLS)")
    return v


def parse_endpoint(text: str, key: str, default_port: int = DEFAULT_PORT) -> Endpoint:
    """"host", "host:port" or "[v6 address]:port" -> Endpoint."""
    if not isinstance(text, str) or not text.strip():
        raise EndpointError(key, f"{text!r}: give a broker as \"host:port\", e.g. \"10.1.0.11:1883\"")
    text = text.strip()
    if text.startswith("["):                       # [::1]:1883
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise EndpointError(key, f"{text!r}: an IPv6 broker is written \"[::1]:1883\"")
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""                      # a bare name, or a bare IPv6 address
    if not host:
        raise EndpointError(key, f"{text!r} has no host: \"host:port\", e.g. \"10.1.0.11:1883\"")
    if port and not port.isdigit():
        raise EndpointError(key, f"{text!r}: the port must be a number, e.g. \"{host}:1883\"")
    return Endpoint(host, _port(int(port), key) if port else default_port)


def endpoints_from(table: dict, prefix: str = "mqtt", default_port: int = DEFAULT_PORT) -> list[Endpoint]:
    """The `[mqtt]` table's brokers: `brokers = ["host:port", ...]`, or the single `host` / `port` form.

    Both forms at once is refused (which one would win is a guess); so is an empty list or a node named
    twice (it would be tried twice in a row while the others wait)."""
    if "brokers" in table:
        if "host" in table or "port" in table:
            raise EndpointError(f"{prefix}.brokers", "give either brokers = [\"host:port\", ...] or host/port, "
                                                     "not both (put the single broker in the list)")
        raw = table["brokers"]
        if not isinstance(raw, list) or not raw:
            raise EndpointError(f"{prefix}.brokers", "must be a non-empty list, e.g. [\"10.1.0.11:1883\", "
                                                     "\"10.1.0.12:1883\"]")
        eps = [parse_endpoint(v, f"{prefix}.brokers[{i}]", default_port) for i, v in enumerate(raw)]
        for i, ep in enumerate(eps):
            if ep in eps[:i]:
                raise EndpointError(f"{prefix}.brokers[{i}]", f"{ep} is listed twice; name each node once")
        return eps
    host = table.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise EndpointError(f"{prefix}.host", f"must be a host name or address, got {host!r}")
    return [Endpoint(host, _port(table.get("port", default_port), f"{prefix}.port"))]


class FailoverClient(mqtt.Client):
    """A paho client over a list of endpoints. Every (re)connect paho makes after the first goes to the
    next endpoint: the last one either refused, timed out (`connect_timeout`) or dropped us.

    paho calls `reconnect()` from its network thread for every attempt (the first after `connect_async`
    too), so moving there is the one place that sees every attempt. The endpoint is changed through
    `connect_async` (public API: it only sets host/port and the state; queued and in-flight messages stay).
    `endpoint` is written by the network thread only; callbacks run on that thread and may read it.
    """

    def __init__(self, endpoints: list[Endpoint], *args, **kwargs):
        if not endpoints:
            raise ValueError("FailoverClient needs at least one endpoint")
        super().__init__(*args, **kwargs)
        self.endpoints = list(endpoints)
        self.index = 0              # the endpoint of the current / next attempt
        self.attempts = 0           # connect attempts so far (0: none yet)
        self.moves = 0              # times an attempt went to a different endpoint than the one before
        # paho's connect_timeout bounds only the TCP/TLS connect; the wait for the CONNACK is bounded by nothing
        # shorter than keepalive (30 s by default). A cluster node re-electing its stream leaders takes the
        # CONNECT and answers nothing for that long (NATS, BENCHMARKS.md eighth pass), so the CONNACK has
        # connect_timeout too: past it the socket is shut down and paho moves on as from a lost connection.
        # A broker that is merely slow must still get in: after a whole round of the list cut so, the wait doubles
        # (up to keepalive, what paho alone would have waited), and it is back to connect_timeout once connected
        self.connack_due: float | None = None     # monotonic deadline of the CONNACK of the current attempt
        self.connack_timeouts = 0                 # attempts cut for want of a CONNACK
        self.cut_in_a_row = 0                     # consecutive attempts cut so (0 after a CONNACK or another failure)
        self.timed_out = False                    # the last attempt was cut so (read by on_disconnect)

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self.index]

    def start(self, keepalive: int) -> None:
        first = self.endpoints[0]
        self.connect_async(first.host, first.port, keepalive=keepalive)
        self.loop_start()

    def reconnect(self) -> mqtt.MQTTErrorCode:
        if self.attempts and len(self.endpoints) > 1:
            self.index = (self.index + 1) % len(self.endpoints)
            self.moves += 1
        self.attempts += 1
        ep = self.endpoints[self.index]
        self.connect_async(ep.host, ep.port, keepalive=self.keepalive)
        if not self.timed_out:
            self.cut_in_a_row = 0
        self.connack_due, self.timed_out = None, False
        rc = super().reconnect()                  # raises when the TCP/TLS connect fails: no CONNACK to wait for
        self.connack_due = time.monotonic() + self.connack_wait()      # the CONNECT is sent
        return rc

    def connack_wait(self) -> float:
        """connect_timeout, doubled after every whole round of the list cut for want of a CONNACK, up to
        keepalive."""
        rounds = self.cut_in_a_row // len(self.endpoints)
        return min(self.connect_timeout * 2 ** min(rounds, 16), max(self.connect_timeout, float(self.keepalive)))

    def cut(self) -> None:
        """Shut the connection down (any thread): paho's next read sees it lost and moves on to the next
        endpoint, re-sending what was in flight there, as after a lost connection."""
        sock = self.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def loop_misc(self) -> mqtt.MQTTErrorCode:
        """paho's network thread calls this at least once a second: cut an attempt whose CONNACK is late."""
        due = self.connack_due
        if due is not None:
            if self.is_connected():
                self.connack_due, self.cut_in_a_row = None, 0
            elif time.monotonic() >= due:
                self.connack_due, self.timed_out = None, True
                self.connack_timeouts += 1
                self.cut_in_a_row += 1
                self.cut()
        return super().loop_misc()
