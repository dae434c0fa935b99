"""MQTT side: drains the spool in lane order, aggregates readings, deletes rows on PUBACK.

paho-mqtt 2.x runs its network loop in its own thread; every callback is handed to the asyncio loop with
call_soon_threadsafe, so all bookkeeping (mid -> spool rows) happens on one thread. paho keeps QoS 1
messages that were in flight when the connection dropped and re-sends them on reconnect, so the mid map
survives reconnects; after a restart the spool itself is re-sent (at-least-once, ids make it harmless).

Failover: `[mqtt] brokers` names a cluster's nodes; `gasguard.brokers.FailoverClient` moves to the next
node after a failed attempt or a lost connection. Nothing else changes on a move: the in-flight messages are
re-sent to the new node before any new row (`resending`, per-device order), and the rest is still in the
spool, so the new node gets everything the old one did not PUBACK.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import sys
import time
from collections import deque
from typing import NamedTuple

import paho.mqtt.client as mqtt

from gasguard.brokers import FailoverClient

from . import payloads
from .clock import drill_client
from .spool import ALARM, EVENT, LANE_NAMES, READING, ROW_OVERHEAD, STATE, Item, Row, Spool

log = logging.getLogger("gasguard.gateway.mqtt")

PAGE = 1000           # rows read from the spool at a time per lane (bounded memory with hours of backlog) ...
PAGE_READINGS = 2000  # ... and at most this many readings (a row may hold many: spool.Item) ...
PAGE_BYTES = 1 << 20  # ... and payload characters, past the first row
PRIORITY_SLOTS = 16   # in-flight slots past [mqtt] inflight that readings and states never take and events take
#                       half of, so an alarm always goes out at once. (They were open to every lane but readings:
#                       at ~45,000 readings/s of 10,000 devices the state messages filled all 16, and an alarm
#                       committed waited for a PUBACK to free one: up to 24-37 ms, `bench gateway --stages`)
FILL_BATCHES = 8      # reading batches per fill pass: a drain never holds the event loop for a whole window


class Flight(NamedTuple):
    """A spooled message awaiting its PUBACK: its rows are seq first..last of `lane` (consecutive)."""
    first: int
    last: int
    nbytes: int           # what its rows count in the spool's size (Spool.size)
    lane: int
    readings: int         # readings in it (1 for a message that is not a reading batch)
    oldest: float         # receive time of its oldest reading or message
    sent: float           # time.monotonic() at publish


class _ClosedBeforeConnack(ConnectionError):
    """The TCP/TLS connection was made, then closed by the broker before its CONNACK."""


class Publisher:
    def __init__(self, cfg, spool: Spool, metrics, clock, version: str, *, subscriptions: list[str] = (),
                 on_message=None):
        """`subscriptions`: the topic filters whose messages go to `on_message(topic, payload bytes)` (on the
        event loop), subscribed on every connect; fixed when the pipeline is built."""
        self.cfg, self.spool, self.metrics, self.clock = cfg, spool, metrics, clock
        self.topics = cfg.topics
        self.version = version
        self.on_message_cb = on_message
        self.subscriptions: tuple[str, ...] = tuple(subscriptions)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connected = False
        self.inflight: dict[int, Flight] = {}    # mid -> what it carries
        self.cursor = {lane: 0 for lane in range(4)}
        self.buf: dict[int, deque[Row]] = {lane: deque() for lane in range(4)}
        self.exhausted = {lane: False for lane in range(4)}
        self.batch_wait_since: float | None = None
        self.batch_timer: asyncio.TimerHandle | None = None
        self.acked: list[tuple] = []             # PUBACKed (lane, first, last seq), deleted once per loop pass
        self.acked_bytes = 0
        self.wake = asyncio.Event()
        self.fail_logged: tuple = (None, 0.0)     # (reason, when) of the last connect failure logged
        self.stopping = False
        self.resending: set[int] = set()          # mids paho re-sends after a reconnect (see _on_connect)
        self.resend_deadline = 0.0
        self.broker = None                        # the endpoint of the last accepted connection (failover count)
        self.client = self._client()

    def _client(self) -> FailoverClient:
        mode = getattr(self.clock, "mode", "real")     # a drill clock marks every message (gateway/clock.py)
        client = FailoverClient if mode == "real" else drill_client(mode, FailoverClient)
        c = client(self.cfg.brokers, mqtt.CallbackAPIVersion.VERSION2, client_id=self.cfg.mqtt_client_id,
                   clean_session=True)
        c.max_inflight_messages_set(self.cfg.inflight + PRIORITY_SLOTS)
        c.max_queued_messages_set(0)
        # a dead cluster node costs one reconnect_min and the next node is tried; a node that takes the TCP
        # connection but gives no CONNACK (e.g. still electing its stream leaders) costs connect_timeout
        c.reconnect_delay_set(min_delay=self.cfg.reconnect_min, max_delay=self.cfg.reconnect_max)
        c.connect_timeout = self.cfg.connect_timeout
        if self.cfg.mqtt_username:
            c.username_pw_set(self.cfg.mqtt_username, self.cfg.mqtt_password)
        if self.cfg.tls_ca:
            c.tls_set(ca_certs=str(self.cfg.tls_ca), certfile=str(self.cfg.tls_cert) if self.cfg.tls_cert else None,
                      keyfile=str(self.cfg.tls_key) if self.cfg.tls_key else None, cert_reqs=ssl.CERT_REQUIRED)
        # Last Will: the command sees a dead gateway (retained, so late subscribers see it too)
        c.will_set(self.topics.status, payloads.dumps(payloads.status(
            self.cfg.gateway_id, self.cfg.district, 0, False, self.version)), qos=1, retain=True)
        # called by paho's thread inside its `except OSError`: exc_info is the reason (TLS, refused, DNS)
        c.on_connect_fail = lambda _c, _u: self._threadsafe(self._on_connect_fail, sys.exc_info()[1], c.endpoint)
        c.on_connect = lambda *a: self._threadsafe(self._on_connect, a[3], c.endpoint)
        c.on_disconnect = lambda *a: self._threadsafe(self._on_disconnect, a[3], c.endpoint)
        c.on_publish = lambda _c, _u, mid, rc, _p: self._threadsafe(self._on_puback, mid, rc)
        c.on_message = lambda _c, _u, m: self._threadsafe(self._on_message, m.topic, m.payload)
        return c

    def _threadsafe(self, fn, *args):
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass  # loop shutting down

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        log.info("connecting to mqtt %s%s", ", then ".join(map(str, self.cfg.brokers)),
                 " (TLS)" if self.cfg.tls_ca else "")
        self.client.start(self.cfg.keepalive)

    def stop(self, timeout: float = 2.0) -> None:
        """Graceful: say offline (so the Will is not needed), wait briefly for PUBACKs, disconnect."""
        self.stopping = True
        if self.connected:
            try:
                self.client.publish(self.topics.status, payloads.dumps(payloads.status(
                    self.cfg.gateway_id, self.cfg.district, self.clock(), False, self.version)), qos=1,
                    retain=True).wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self.loop = None
        self.flush_acked()

    def _on_connect(self, rc, endpoint) -> None:
        if rc.is_failure:
            log.error("broker %s refused the connection: %s (check mqtt.username/password/TLS)", endpoint, rc)
            return
        self.connected = True
        self.fail_logged = (None, 0.0)
        self.metrics.connected.set(1)
        if self.broker is not None and endpoint != self.broker:
            self.metrics.failovers.inc()
        self.broker = endpoint
        log.info("connected to mqtt broker %s; %d messages in flight will be re-sent", endpoint, len(self.inflight))
        # paho re-sends what was in flight when the link dropped, but only after its on_connect returns, from
        # its own thread: rows published now could overtake them and break the per-device order. New rows
        # wait for those PUBACKs (one round trip), at most a keepalive.
        self.resending = set(self.inflight)
        self.resend_deadline = time.monotonic() + self.cfg.keepalive
        self.client.publish(self.topics.status, payloads.dumps(payloads.status(
            self.cfg.gateway_id, self.cfg.district, self.clock(), True, self.version)), qos=1, retain=True)
        for t in self.subscriptions:
            self.client.subscribe(t, qos=1)
        self.kick()

    def _on_connect_fail(self, err, endpoint) -> None:
        """paho retries by itself with backoff (mqtt.reconnect_min..max); say why and what to do, once per
        reason and then at most once a minute, so a broker that stays away does not flood the log."""
        if isinstance(err, ssl.SSLCertVerificationError):
            hint = ("the broker's certificate does not verify against mqtt.tls_ca: give the CA that signed it, "
                    "and check that mqtt.host is a name or address in the certificate")
        elif isinstance(err, ssl.SSLError):
            hint = ("TLS handshake failed: check that mqtt.port is the broker's TLS listener and, if it asks for "
                    "client certificates, mqtt.tls_cert / mqtt.tls_key")
        elif isinstance(err, _ClosedBeforeConnack):
            hint = ("the broker closed the connection before accepting it: check mqtt.username / mqtt.password, "
                    "and whether the listener requires a client certificate (mqtt.tls_cert / mqtt.tls_key)"
                    + ("; a cluster node also does this for a few seconds after another node died (it is "
                       "re-electing its stream leaders)" if len(self.cfg.brokers) > 1 else ""))
        elif isinstance(err, ConnectionRefusedError):
            hint = "connection refused: is the broker running, and is mqtt.port right?"
        else:
            hint = "check mqtt.host / mqtt.port and the network"
        key, now = (type(err).__name__, hint), time.monotonic()
        if key != self.fail_logged[0] or now - self.fail_logged[1] >= 60:
            self.fail_logged = (key, now)
            others = " on the next broker" if len(self.cfg.brokers) > 1 else ""
            log.error("cannot connect to mqtt %s (%s); %s. Retrying%s with backoff up to %.0f s, spooling meanwhile",
                      endpoint, err, hint, others, self.cfg.reconnect_max)

    def _on_disconnect(self, rc, endpoint) -> None:
        if self.stopping:
            log.info("disconnected from the mqtt broker %s (%s)", endpoint, rc)
        elif self.connected:
            nxt = " (next: the following broker in mqtt.brokers)" if len(self.cfg.brokers) > 1 else ""
            log.warning("lost the mqtt broker %s (%s); spooling, reconnecting with backoff up to %.0f s%s",
                        endpoint, rc, self.cfg.reconnect_max, nxt)
        else:
            # TLS 1.3 reports a refused client certificate only here, after the handshake: not silent either
            self._on_connect_fail(_ClosedBeforeConnack(str(rc)), endpoint)
        self.connected = False
        self.metrics.connected.set(0)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self.on_message_cb:
            self.on_message_cb(topic, payload)

    def _on_puback(self, mid: int, rc) -> None:
        entry = self.inflight.pop(mid, None)
        self.resending.discard(mid)
        if entry is None:
            return   # birth/status/stats, not from the spool
        if not self.acked and self.loop is not None:
            self.loop.call_soon(self.flush_acked)   # after every PUBACK already queued: one transaction
        # a message's rows are consecutive in its lane (batches are taken in seq order, thinning never
        # touches rows in flight): deleted as a range, not row by row
        self.acked.append((entry.lane, entry.first, entry.last))
        self.acked_bytes += entry.nbytes
        now = self.clock()
        name = LANE_NAMES[entry.lane]
        self.metrics.published.labels(name).inc()
        # one observation per message: a batch of readings counts once, with its oldest reading (the worst
        # latency in it) - per reading it cost more than building the batch
        self.metrics.publish_latency.labels(name).observe(max(0.0, now - entry.oldest))
        self.wake.set()   # refill once per loop pass (run()), not per PUBACK: ingest gets every other turn

    def _batch_due(self) -> None:
        self.batch_timer = None
        self.wake.set()

    def flush_acked(self) -> None:
        if self.acked:
            ranges, nbytes, self.acked, self.acked_bytes = self.acked, self.acked_bytes, [], 0
            self.spool.delete_ranges(ranges, nbytes)

    # -- draining --------------------------------------------------------------------------------
    def _peek(self, lane: int) -> Row | None:
        b = self.buf[lane]
        if not b and not self.exhausted[lane]:
            rows = self.spool.fetch(lane, self.cursor[lane], PAGE, readings=PAGE_READINGS, nbytes=PAGE_BYTES)
            if rows:
                self._load(lane, rows)
            else:
                self.exhausted[lane] = True
        return b[0] if b else None

    def _load(self, lane: int, rows: list[Row]) -> None:
        self.buf[lane].extend(rows)
        self.cursor[lane] = rows[-1].seq

    def take(self, items: list[Item], last: int, before: list[int]) -> None:
        """`items` were just committed as the rows ending at seq `last` (Spool.commit); `before`: each lane's
        last seq before that commit (Spool.lane_last). A lane whose every earlier row is loaded (the cursor at
        `before`) gets its new rows here, in memory, instead of reading them back with fetch (issue 17: a page
        read took up to 14-20 ms of the event loop at 25,000 devices, ~4-5 % of its time). Otherwise - a
        backlog, rows not yet durable (deferred sync: fetch reads only up to durable_upto), no broker or one
        still taking the re-sent messages, a buffer that would pass a page's bounds - the rows stay for fetch,
        from the cursor, as before: the order is the lane's seq order either way, and what is loaded is never
        more than a page."""
        if not items or last > self.spool.durable_upto or not self.connected or self.resending:
            # (not synced: fetched once synced() let them out. Offline: what is loaded is out of thinning's
            # reach (loaded_upto), and an outage's readings must stay thinnable)
            return
        lanes: dict[int, list[tuple[int, Item]]] = {}
        for seq, it in enumerate(items, last - len(items) + 1):
            lanes.setdefault(it.lane, []).append((seq, it))
        for lane, new in lanes.items():
            if self.cursor[lane] < before[lane]:
                continue            # rows of the lane not loaded yet come first: fetch, from the cursor
            b = self.buf[lane]      # (caught up, it holds the few rows waiting for a batch's company)
            if (len(b) + len(new) > PAGE
                    or sum(r.count for r in b) + sum(it.count for _, it in new) > PAGE_READINGS
                    or sum(len(r.payload) for r in b) + sum(len(it.payload) for _, it in new) > PAGE_BYTES):
                continue            # past a page: the cursor stays, fetch reads them when the buffer ran out
            self._load(lane, [Row(seq, lane, it.dev, it.topic, it.payload, it.msg_id, it.t, it.retain, it.count)
                              for seq, it in new])

    def notify(self, lanes) -> None:
        """New rows were committed in these lanes: to be fetched, unless every row of the lane is loaded
        already (handed over by take, or fetched) - an empty fetch per commit is what take saves."""
        last = self.spool.lane_last
        for lane in lanes:
            if self.cursor[lane] < last[lane]:
                self.exhausted[lane] = False

    def loaded_upto(self) -> int:
        """Reading rows at or below this seq may be in memory or in flight (thinning leaves them alone)."""
        return self.cursor[READING]

    def kick(self) -> None:
        if self.connected:
            self.fill()
        else:
            self.wake.set()

    def fill(self) -> None:
        if self.resending:
            if time.monotonic() < self.resend_deadline:
                return
            log.warning("%d re-sent messages not acknowledged within %d s; publishing on (order may slip)",
                        len(self.resending), self.cfg.keepalive)
            self.resending = set()
        window = self.cfg.inflight + PRIORITY_SLOTS
        # what each lane may fill the in-flight window up to: the last slots are the alarms' alone
        upto = ((ALARM, window), (EVENT, self.cfg.inflight + PRIORITY_SLOTS // 2), (STATE, self.cfg.inflight))
        batches = 0
        while self.connected and len(self.inflight) < window:
            row = None
            n = len(self.inflight)
            for lane, limit in upto:
                if n >= limit:
                    continue
                row = self._peek(lane)
                if row is not None:
                    self.buf[lane].popleft()
                    self._send_one(row)
                    break
            if row is not None:
                continue
            if batches >= FILL_BATCHES:
                if self.loop is not None:   # the rest on a later pass: ingest (and a new alarm) go in between
                    self.loop.call_soon(self.wake.set)
                break
            if len(self.inflight) >= self.cfg.inflight or not self._send_readings():
                break
            batches += 1

    def _send_one(self, row: Row) -> None:
        info = self.client.publish(row.topic, row.payload, qos=1, retain=row.retain)
        self.inflight[info.mid] = Flight(row.seq, row.seq, len(row.payload) + ROW_OVERHEAD, row.lane, row.count,
                                         row.t, time.monotonic())

    def _send_readings(self) -> bool:
        """Publish one batch if it is full, or its oldest reading waited batch.delay. False if nothing sent.

        A batch is consecutive reading rows (each of one or many readings: spool.Item) while their readings
        stay within batch.count and the message within batch.bytes; a row past either alone goes alone. It is
        full at batch.count readings, or when more rows wait behind it."""
        b = self.buf[READING]
        first = self._peek(READING)
        if first is None:
            self.batch_wait_since = None
            return False
        if first.topic is not None:       # a plugin's message in the reading lane: alone, in order
            b.popleft()
            self._send_one(first)
            return True
        cap, cap_bytes = self.cfg.batch_count, self.cfg.batch_bytes
        rows, n, size = [], 0, 200        # (200: the message's head, an estimate)
        while n < cap:
            row = self._peek(READING)
            if row is None or row.topic is not None:
                break
            if rows and (n + row.count > cap or size + len(row.payload) + 1 > cap_bytes):
                break
            b.popleft()
            rows.append(row)
            n += row.count
            size += len(row.payload) + 1
        more = self._peek(READING) is not None
        full = more or n >= cap
        now = time.monotonic()
        if not full:
            if self.batch_wait_since is None:
                self.batch_wait_since = now
            if now - self.batch_wait_since < self.cfg.batch_delay:
                b.extendleft(reversed(rows))      # not yet: put them back (in order) and wait for company
                # a timer, not wake.set(): run() would spin on a set event until the delay ran out
                if self.batch_timer is None and self.loop is not None:
                    self.batch_timer = self.loop.call_later(self.cfg.batch_delay - (now - self.batch_wait_since),
                                                            self._batch_due)
                return False
        self.batch_wait_since = None
        body = payloads.batch(self.cfg.gateway_id, self.cfg.district, self.clock(), [r.payload for r in rows])
        info = self.client.publish(self.topics.reading, body, qos=1)
        self.inflight[info.mid] = Flight(rows[0].seq, rows[-1].seq, size - 200 - len(rows) + ROW_OVERHEAD * len(rows),
                                         READING, n, min(r.t for r in rows), now)
        return True

    async def run(self) -> None:
        """Periodic drain: batches waiting for company, and a reconnect that found a backlog."""
        tick = max(0.01, min(0.25, self.cfg.batch_delay / 2 or 0.05))
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands while the event
            # is being set, and the graceful stop then waits for this task forever
            try:
                async with asyncio.timeout(tick):
                    await self.wake.wait()
            except TimeoutError:
                pass
            self.wake.clear()
            if self.connected:
                self.fill()

    def publish_direct(self, topic: str, payload: dict, qos: int = 0, retain: bool = False) -> None:
        """Best-effort messages that are not worth spooling (periodic stats)."""
        if self.connected:
            self.client.publish(topic, json.dumps(payload), qos=qos, retain=retain)
