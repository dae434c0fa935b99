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
    client.start(keepalive=30, loop=asyncio_loop)     # or: its network I/O on that asyncio loop (the gateway)

What a client must do on its side is unchanged by a move: paho keeps QoS-1 messages that were in flight and
re-sends them to the new node after its CONNACK (at-least-once: consumers drop copies by message id or
frame identity), and `on_connect` runs again, so subscriptions are renewed there. A consumer that must not
miss what arrived while it moved uses a fixed client id and clean_session=False: a cluster that keeps
sessions (NATS JetStream, EMQX) hands its session to the node it reconnects to (docs/SCALE_OUT.md).
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("gasguard.brokers")

DEFAULT_PORT = 1883
# paho 2.2.0's per-message costs, taken off by FailoverClient below (BENCHMARKS.md, fourteenth pass): a QoS-1
# publish and its PUBACK cost 118-178 us of CPU in paho's threaded loop, 44-50 us without them. The overrides lean on
# paho's internals as 2.2.0 has them, so any other version runs paho unmodified (correct, only slower).
LEAN_PAHO = paho.mqtt.__version__ == "2.2.0"
READ_CHUNK = 65536                   # bytes a socket read takes at most (paho reads a header a byte at a time)
WRITE_CHUNK = 65536                  # bytes a send() takes at most (paho sends each packet with one of its own)
PUBACK_RUN = 256                     # PUBACKs handed over under one hold of paho's message lock (FailoverClient)
MISC_EVERY = 1.0                     # s between loop_misc calls on an asyncio loop (paho's thread: its select timeout)
STOP_WRITE_S = 1.0                   # s loop_stop gives what is queued (a DISCONNECT) on an asyncio loop
_LEFT = (mqtt._ConnectionState.MQTT_CS_DISCONNECTING, mqtt._ConnectionState.MQTT_CS_DISCONNECTED)
_OK = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
# a v3.1.1 PUBACK has no reason code or properties: one shared "Success" and one empty set for all
_PUBACK_OK, _NO_PROPERTIES = ReasonCode(PacketTypes.PUBACK), Properties(PacketTypes.PUBACK)
_PUBLISHED = threading.Condition()   # every lean message info's (_Info): paho makes one per message


class _Info(mqtt.MQTTMessageInfo):
    """paho's MQTTMessageInfo without a threading.Condition of its own (with its RLock, ~4.5 % of the time the GIL
    was held in a gateway publishing a retained state per device heard): all share one, and a PUBACK wakes every
    waiter, each of which looks at its own flag (wait_for_publish and is_published are paho's, unchanged)."""

    __slots__ = ()

    def __init__(self, mid: int):          # (not super().__init__: that is where the Condition is made)
        self.mid, self._published, self._condition, self.rc, self._iterpos = mid, False, _PUBLISHED, _OK, 0

    def _set_as_published(self) -> None:
        with self._condition:
            self._published = True
            self._condition.notify_all()


def publish_packet(topic: bytes, body: bytes, mid: int, retain: bool) -> bytes:
    """A QoS-1 PUBLISH of MQTT 3.1.1 (§3.3) as paho 2.2.0's _send_publish writes it (no DUP: a first sending), in
    one expression instead of paho's bytearray appended to field by field and its debug-log calls."""
    n = 4 + len(topic) + len(body)                 # topic length, topic, message id, payload
    if n < 128:
        length = bytes((n,))
    elif n < 16384:
        length = bytes(((n & 0x7F) | 0x80, n >> 7))
    else:
        out = bytearray()
        while n > 0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        length = bytes(out) + bytes((n,))
    return bytes((0x32 | retain,)) + length + len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + body


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


def call_soon_from(loop: asyncio.AbstractEventLoop, loop_thread: int, fn, *args) -> None:
    """fn on `loop` (whose thread is `loop_thread`): call_soon from that thread itself - no self-pipe byte, no
    wake-up - and call_soon_threadsafe from any other (paho's network thread, a connect's worker thread). Raises
    RuntimeError if the loop is closed."""
    if threading.get_ident() == loop_thread:
        loop.call_soon(fn, *args)
    else:
        loop.call_soon_threadsafe(fn, *args)


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
        self._rbuf, self._rpos = b"", 0           # bytes read from the socket, not yet handed to paho (LEAN_PAHO)
        # what is queued has a write on its way (LEAN_PAHO): a wake-up byte to paho's thread, or on an asyncio loop
        # a flush scheduled there (_packet_queue)
        self._wake_pending = False
        # start(loop=...): the network I/O on an asyncio loop instead of paho's thread (below)
        self._aio: asyncio.AbstractEventLoop | None = None
        self._aio_tid = 0                         # the loop's thread
        self._aio_task: asyncio.Task | None = None
        self._aio_wake: asyncio.Event | None = None   # the connection was lost, or stop: _aio_run looks now
        self._aio_stopped = False
        # called with the ids of a run of PUBACKs (a list), instead of on_publish once for each (LEAN_PAHO, MQTT
        # 3.1.1, no paho in-flight bound): the gateway's publisher takes them as one hand-over (_puback_run)
        self.on_published_many = None

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self.index]

    def start(self, keepalive: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """connect_async to the first endpoint, then paho's network thread (loop_start); with `loop` (called on
        that loop's thread), the network I/O on that asyncio loop instead (_aio_run)."""
        first = self.endpoints[0]
        self.connect_async(first.host, first.port, keepalive=keepalive)
        if loop is None:
            self.loop_start()
            return
        self._aio, self._aio_tid, self._aio_stopped = loop, threading.get_ident(), False
        self._aio_wake = asyncio.Event()
        self.on_socket_register_write = self._aio_want_write
        self.on_socket_unregister_write = self._aio_done_write
        self._aio_task = loop.create_task(self._aio_run(), name=f"mqtt {self._client_id.decode(errors='replace')}")

    # -- the network I/O on an asyncio loop (start(loop=...): the gateway's publisher) ------------------------
    # The publisher hands every paho callback to its event loop anyway. With paho's thread beside that loop, the
    # two took turns at the GIL for every burst of PUBACKs and every publish: a select, a socket-pair byte, a
    # self-pipe byte and two thread switches each time (two gateways on the workload, 6 alternated pairs:
    # gateway CPU medians 13.55 -> 12.7 µs a reading; BENCHMARKS.md, eighteenth pass). On the loop, a readable
    # socket is read by loop_read, what is queued is written once per turn of the loop (_aio_flush) and loop_misc
    # runs every MISC_EVERY s. Only the blocking TCP/TLS connect runs on a worker thread (the loop's default
    # executor), so a dead or silent node never holds the loop; paho's backoff between attempts is kept.

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._aio_tid

    async def _aio_run(self) -> None:
        loop, first = self._aio, True
        while not self._aio_stopped:
            if self._sock is None:
                if self._state in _LEFT:
                    return                                 # disconnect(): paho's loop_forever ends there too
                if not first:                              # (a wake-up from the loss itself is not the end of it)
                    self._aio_wake.clear()
                    await self._aio_sleep(self._next_delay())
                    if self._aio_stopped or self._state in _LEFT:
                        return
                first = False
                attempt = loop.run_in_executor(None, self.reconnect)
                try:
                    await asyncio.shield(attempt)
                except asyncio.CancelledError:             # stopped during the attempt: its socket is closed
                    attempt.add_done_callback(lambda _f: self._sock_close())
                    raise
                except Exception:  # noqa: BLE001 - OSError as paho's loop has it; anything else must not end the
                    # retries either (paho's thread would die of it, and the gateway never reconnect)
                    self._handle_on_connect_fail()         # (inside the except: the callback reads exc_info)
                    continue
                if self._aio_stopped:
                    self._sock_close()
                    return
                sock = self._sock
                if sock is not None:
                    loop.add_reader(sock, self._aio_read)
                    self._aio_flush()                      # the CONNECT
            self._aio_wake.clear()
            if self._sock is None:
                continue
            await self._aio_sleep(MISC_EVERY)
            if self._sock is not None:
                self._aio_check(self.loop_misc())          # keepalive, and the CONNACK's deadline (cut)

    async def _aio_sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._aio_wake.wait()
        except TimeoutError:
            pass

    def _next_delay(self) -> float:
        """paho's backoff between attempts (_reconnect_wait: min, doubled each time, up to max; reset by a
        CONNACK), without its sleep."""
        with self._reconnect_delay_mutex:
            d = self._reconnect_delay
            self._reconnect_delay = self._reconnect_min_delay if d is None else min(d * 2, self._reconnect_max_delay)
            return self._reconnect_delay

    def _aio_check(self, rc) -> None:
        if rc != _OK or self._sock is None:
            self._aio_wake.set()                           # lost: _aio_run reconnects

    def _aio_read(self) -> None:
        try:
            rc = self.loop_read()
            sock = self._sock
            # TLS: bytes already decrypted are not in the socket, so epoll would not say so
            while rc == _OK and sock is not None and getattr(sock, "pending", None) and sock.pending():
                rc = self.loop_read()
                sock = self._sock
        except Exception as e:  # noqa: BLE001 - the reader would be called again at once, and raise again
            rc = self._aio_failed("reading", e)
        self._aio_check(rc)

    def _aio_write(self) -> None:
        try:
            rc = self.loop_write()
        except Exception as e:  # noqa: BLE001 - as in _aio_read
            rc = self._aio_failed("writing", e)
        self._aio_check(rc)

    def _aio_failed(self, what: str, e: Exception) -> mqtt.MQTTErrorCode:
        """An exception out of paho (or a callback) on the loop: the connection is dropped and made again, as
        after a lost one, instead of a reader raising at every turn of the loop."""
        log.error("mqtt %s: %s failed (%s: %s); dropping the connection and connecting again", self.endpoint, what,
                  type(e).__name__, e)
        if self._sock is None:
            return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
        return self._loop_rc_handle(mqtt.MQTTErrorCode.MQTT_ERR_UNKNOWN)

    def _aio_flush(self) -> None:
        self._wake_pending = False                         # (before the write: a packet queued after it schedules one)
        if self._sock is not None and self._out_packet:
            self._aio_write()

    def write_now(self) -> None:
        """On an asyncio loop: what is queued goes out now, not at the loop's next turn (the publisher, after a
        fill: an alarm is not held behind the rest of a turn)."""
        if self._aio is not None:
            self._aio_flush()

    def _aio_want_write(self, _c, _u, sock) -> None:
        """loop_write could not write everything: the rest when the socket can take it."""
        if self._on_loop():
            self._aio.add_writer(sock, self._aio_write)
        else:      # paho's own queueing (not LEAN_PAHO) of reconnect()'s CONNECT, on the worker thread: _aio_run
            self._registered_write = False                 # writes it once the attempt returns

    def _aio_done_write(self, _c, _u, sock) -> None:
        if self._on_loop():
            self._aio.remove_writer(sock)

    def _aio_forget(self, sock) -> None:
        """The socket leaves the loop's selector before it is closed (a closed socket's descriptor can be reused
        by the next one, which the selector would then take for the old)."""
        try:
            self._aio.remove_reader(sock)
            self._aio.remove_writer(sock)
        except (ValueError, OSError, RuntimeError):        # (closed loop or socket: nothing left registered)
            pass

    def wait_published(self, info: mqtt.MQTTMessageInfo, timeout: float) -> bool:
        """info.wait_for_publish(timeout). On an asyncio loop, whose turn this is, the socket is driven here
        meanwhile: nothing else would read the PUBACK. Raises as is_published does (not sent, no connection)."""
        if self._aio is None:
            info.wait_for_publish(timeout)
            return info.is_published()
        deadline = time.monotonic() + timeout
        while not info.is_published():
            sock, left = self._sock, deadline - time.monotonic()
            if sock is None or left <= 0:
                return False
            readable, writable, _ = select.select([sock], [sock] if self._out_packet else [], [], left)
            if writable:
                self._aio_write()
            if readable and self._sock is not None:
                self._aio_read()
        return True

    def loop_stop(self) -> mqtt.MQTTErrorCode:
        """paho's, or on an asyncio loop: what is queued (disconnect()'s DISCONNECT, after which paho closes the
        socket) written now, for up to STOP_WRITE_S - the loop may not turn again - and the socket closed."""
        if self._aio is None:
            return super().loop_stop()
        self._aio_stopped = True
        deadline = time.monotonic() + STOP_WRITE_S
        while self._sock is not None and self._out_packet and time.monotonic() < deadline:
            select.select([], [self._sock], [], max(0.0, deadline - time.monotonic()))
            self._aio_write()
        self._sock_close()
        if self._aio_wake is not None:
            self._aio_wake.set()
        task = self._aio_task
        if task is not None and not task.done() and not self._aio.is_closed():
            task.cancel()
        return _OK

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

    # -- paho 2.2.0's per-message costs (LEAN_PAHO). Each override keeps paho's behaviour; only the work goes.

    def publish(self, topic, payload=None, qos=0, retain=False, properties=None) -> mqtt.MQTTMessageInfo:
        """paho's publish for the gateway's case - QoS 1 over MQTT 3.1.1, a str or bytes payload, paho's own in-flight
        and queue bounds off (the publisher keeps its own) - without MQTTMessage's constructor and a Condition per
        message (_Info): the same message, state and packet. Anything else is paho's publish."""
        if (not LEAN_PAHO or qos != 1 or properties is not None or self._max_inflight_messages
                or self._max_queued_messages or self._protocol == mqtt.MQTTProtocolVersion.MQTTv5
                or type(topic) is not str or not topic or not isinstance(payload, (bytes, str))):
            return super().publish(topic, payload, qos, retain, properties)
        topic_bytes = topic.encode("utf-8")
        self._raise_for_invalid_topic(topic_bytes)
        body = payload.encode("utf-8") if isinstance(payload, str) else payload
        if len(body) > 268435455:
            raise ValueError("Payload too large.")
        mid = self._mid_generate()
        m = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)
        m.timestamp, m.state, m.dup, m.mid, m._topic = mqtt.time_func(), mqtt.mqtt_ms_wait_for_puback, False, mid, \
            topic_bytes
        m.payload, m.qos, m.retain, m.info, m.properties = body, 1, retain, _Info(mid), None
        with self._out_message_mutex:
            if mid in self._out_messages:
                m.info.rc = mqtt.MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
                return m.info
            self._out_messages[mid] = m
            self._inflight_messages += 1
            if self._sock is None:                             # (as _send_publish: not connected)
                rc = mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
            else:
                rc = self._packet_queue(mqtt.PUBLISH, publish_packet(topic_bytes, body, mid, retain), mid, 1, m.info)
            if rc == mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN:      # sent after the next CONNACK, as paho does
                self._inflight_messages -= 1
                m.state = mqtt.mqtt_ms_publish
            m.info.rc = rc
            return m.info

    def _sock_recv(self, bufsize: int) -> bytes:
        """paho reads a packet's command byte, each byte of its length and then its body with one recv() each: 3-4
        system calls a PUBACK. Read up to READ_CHUNK at once and hand paho slices of that."""
        if not LEAN_PAHO:
            return super()._sock_recv(bufsize)
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            data = super()._sock_recv(READ_CHUNK)      # raises BlockingIOError when there is nothing, as before
            if len(data) <= bufsize:
                return data                            # (b"" is the peer's close: paho sees it as before)
            buf, pos = self._rbuf, self._rpos = data, 0
        self._rpos = pos + bufsize
        return buf[pos:pos + bufsize]

    def _sock_close(self) -> None:
        # what was read ahead belongs to the connection that is closing: never to the next one
        self._rbuf, self._rpos = b"", 0
        if self._aio is not None and self._sock is not None:
            self._aio_forget(self._sock)
        super()._sock_close()

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """paho's loop calls this when select() finds the socket readable; bytes already read ahead are not in
        the socket any more, so they are read to the end here (as paho does for TLS's pending bytes).

        A run of PUBACKs at a packet boundary - what a broker sends back for a burst of QoS-1 messages - is
        decoded here in one loop (_pubacks) instead of paho's three reads, state machine, new packet dict and two
        locks per packet: 20-22 -> 10 µs of paho's thread per retained state the gateway publishes (BENCHMARKS.md,
        seventeenth pass). Every other packet, and one split across reads, is paho's."""
        if not LEAN_PAHO:
            return super().loop_read(max_packets)
        if (self._max_inflight_messages or self._protocol == mqtt.MQTTProtocolVersion.MQTTv5
                or self._callback_api_version != mqtt.CallbackAPIVersion.VERSION2):
            rc = super().loop_read(max_packets)            # paho's packet by packet, to the read-ahead's end
            while rc == _OK and self._rpos < len(self._rbuf) and self._sock is not None:
                rc = super().loop_read(max_packets)
            return rc
        if self._sock is None:
            return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
        if self._in_packet["command"] == 0 and self._rpos >= len(self._rbuf):
            try:
                data = mqtt.Client._sock_recv(self, READ_CHUNK)
            except BlockingIOError:
                return _OK
            except OSError as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                return self._loop_rc_handle(mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST)
            if not data:                                   # the peer's close
                return self._loop_rc_handle(mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST)
            self._rbuf, self._rpos = data, 0
        while True:
            if self._in_packet["command"] == 0:            # at a packet boundary
                buf, pos = self._rbuf, self._rpos
                end = len(buf)
                start = pos
                while pos + 4 <= end and buf[pos] == 0x40 and buf[pos + 1] == 2:     # PUBACK, remaining length 2
                    pos += 4
                if pos > start:
                    self._rpos = pos
                    self._pubacks(buf, start, pos)
                if pos >= end:
                    return _OK
            rc = self._packet_read()                       # one packet of paho's, from the read-ahead on
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN or self._sock is None:
                return _OK                                 # (the read-ahead used up: select() says when more came)

    def _pubacks(self, buf: bytes, start: int, end: int) -> None:
        """The PUBACKs in buf[start:end] (4 bytes each), each handed to paho's own _do_on_publish as
        _handle_pubackcomp hands one (an id not in flight is ignored). paho's message lock is let go every
        PUBACK_RUN of them: a publish from another thread (an alarm, on a client without an alarms' connection)
        waits for at most that many, not for a whole reconnect's worth."""
        for at in range(start, end, 4 * PUBACK_RUN):
            self._puback_run(buf, at, min(end, at + 4 * PUBACK_RUN))
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()

    def _puback_run(self, buf: bytes, start: int, end: int) -> None:
        out, many = self._out_messages, self.on_published_many
        if many is None or self._max_inflight_messages:
            done = self._do_on_publish
            with self._out_message_mutex:
                for p in range(start, end, 4):
                    mid = (buf[p + 2] << 8) | buf[p + 3]
                    if mid in out:                               # (else not in flight: ignored, as paho does)
                        done(mid, _PUBACK_OK, _NO_PROPERTIES)
            return
        # what paho's _do_on_publish does per message, for the run at once: each message out of flight and its
        # info published (one wake-up of the waiters on the shared condition), then one callback with every id
        mids, own, qos1 = [], [], 0
        with self._out_message_mutex:
            for p in range(start, end, 4):
                mid = (buf[p + 2] << 8) | buf[p + 3]
                m = out.pop(mid, None)
                if m is not None:                                # (else not in flight: ignored, as paho does)
                    mids.append(mid)
                    qos1 += m.qos > 0
                    info = m.info
                    if type(info) is _Info:
                        info._published = True
                    else:
                        own.append(info)                         # paho's own (its publish: a Condition each)
            self._inflight_messages -= qos1
        if mids:
            with _PUBLISHED:
                _PUBLISHED.notify_all()
            for info in own:
                info._set_as_published()
            many(mids)

    def _handle_pubackcomp(self, cmd):
        """A v3.1.1 PUBACK is a 2-byte message id: paho 2.2 decodes it into a new ReasonCode and Properties each
        (~6 % of the time the GIL was held in a gateway publishing a retained state per device heard). Handled
        here without paho's debug log line for it; anything else goes to paho."""
        packet = self._in_packet["packet"]
        if (not LEAN_PAHO or cmd != "PUBACK" or len(packet) != 2
                or self._protocol == mqtt.MQTTProtocolVersion.MQTTv5):
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_OK, _NO_PROPERTIES)
        return _OK

    def _loop(self, timeout: float = 1.0) -> mqtt.MQTTErrorCode:
        # cleared before paho looks at what waits to be written (want_write) and selects: a packet queued
        # after this clear either sends a wake-up itself or is behind one that was sent after it (_packet_queue)
        self._wake_pending = False
        return super()._loop(timeout)

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        """paho writes each queued packet with a send() of its own: a system call, and a pass through loopback TCP
        to the broker, per message (a gateway publishing a retained state per device heard queues hundreds at a
        time). Packets whose writing completes nothing - all but a QoS-0 PUBLISH (its on_publish) and a DISCONNECT
        - go out joined, up to WRITE_CHUNK bytes a send(); what a short send() leaves stays at the head of the
        queue, as paho keeps a packet it has not finished. The others are paho's, one at a time."""
        if not LEAN_PAHO:
            return super()._packet_write()
        q = self._out_packet
        while True:
            batch, size = [], 0
            while size < WRITE_CHUNK:
                try:
                    p = q.popleft()
                except IndexError:
                    break
                if p["command"] & 0xF0 == mqtt.DISCONNECT or (p["command"] & 0xF0 == mqtt.PUBLISH and not p["qos"]):
                    q.appendleft(p)
                    break
                batch.append(p)
                size += p["to_process"]
            if not batch:
                if q:                                  # a packet with something to complete: paho's own write
                    return super()._packet_write()
                break
            data = b"".join(p["packet"][p["pos"]:] for p in batch)
            try:
                n = self._sock_send(data)
            except (AttributeError, ValueError):       # no socket (closed meanwhile): kept, as paho keeps it
                q.extendleft(reversed(batch))
                return _OK
            except BlockingIOError:
                q.extendleft(reversed(batch))
                return mqtt.MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                q.extendleft(reversed(batch))
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to send on socket: %s", err)
                return mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST
            if n <= 0:                                 # nothing written (paho stops there too)
                q.extendleft(reversed(batch))
                break
            for i, p in enumerate(batch):            # the bytes written, packet by packet
                if n >= p["to_process"]:
                    n -= p["to_process"]
                    p["pos"] += p["to_process"]
                    p["to_process"] = 0
                    continue
                p["pos"] += n
                p["to_process"] -= n
                q.extendleft(reversed(batch[i:]))      # not finished: at the head, in order
                break
        with self._msgtime_mutex:
            self._last_msg_out = mqtt.time_func()
        return _OK

    def _packet_queue(self, command, packet, mid, qos, info=None):
        """paho wakes its network thread with one byte through a socket pair for every packet queued: a system
        call, and a wake-up of that thread, per publish. One write on its way is enough until the queue has been
        looked at again (_loop clears the flag before it does; on an asyncio loop, _aio_flush), however many
        packets are queued meanwhile. On a loop that write is a flush at its next turn; paho's own queueing (any
        other paho version) asks for the socket's writability through _aio_want_write instead."""
        on_loop = self._aio is not None
        if not LEAN_PAHO or (not on_loop and (self._sockpairW is None or self._thread is None)):
            return super()._packet_queue(command, packet, mid, qos, info)
        self._out_packet.append({"command": command, "mid": mid, "qos": qos, "pos": 0,
                                 "to_process": len(packet), "packet": packet, "info": info})
        if not self._wake_pending:
            self._wake_pending = True
            if on_loop:
                try:                           # (from the worker thread: reconnect()'s CONNECT)
                    call_soon_from(self._aio, self._aio_tid, self._aio_flush)
                except RuntimeError:           # the loop is closed: loop_stop writes what it can
                    self._wake_pending = False
            else:
                try:
                    self._sockpairW.send(b"0")
                except BlockingIOError:
                    pass                       # the pair is full of wake-ups already
        if not on_loop:
            self._call_socket_register_write()
        return _OK
