"""MQTT side: drains the spool in lane order, aggregates readings, deletes rows on PUBACK.

Each connection's network I/O runs on the gateway's asyncio loop (FailoverClient.start(loop=...): paho's
callbacks come on the loop's thread, only the blocking TCP/TLS connect on a worker thread), or with `[mqtt]
network_thread` on paho's own thread, whose callbacks are handed to the loop with call_soon_threadsafe. Either
way all bookkeeping (mid -> spool rows) happens on one thread. paho keeps QoS 1
messages that were in flight when the connection dropped and re-sends them on reconnect, so the mid map
survives reconnects; after a restart the spool itself is re-sent (at-least-once, ids make it harmless).

Failover: `[mqtt] brokers` names a cluster's nodes; `gasguard.brokers.FailoverClient` moves to the next
node after a failed attempt or a lost connection. Nothing else changes on a move: the in-flight messages are
re-sent to the new node before any new row (`resending`, per-device order), and the rest is still in the
spool, so the new node gets everything the old one did not PUBACK.

The alarms' connection (`[mqtt] alarm_connection`, on by default): lanes ALARM and EVENT go on a second
connection to the same broker or cluster (client id `<client_id>-alarms`, the same login, TLS and nodes), so an
alarm never waits behind the reading batches written before it on one TCP connection. Measured (issue 17,
BENCHMARKS.md): with 8 reading batches written back to back, a small message's PUBACK on the batches'
connection took p50 16 ms (mosquitto holds the later PUBACKs of a burst until the gateway's delayed TCP ACK:
Nagle on the broker's socket), 0.5 ms on a second connection; at saturation p50 14-19 against 0.8-0.9 ms (one
packet a connection per pass of mosquitto's loop). Each connection is a `Link`: its own paho client, so its own
mid space, in-flight map and re-send on reconnect. The main one keeps everything else: the gateway's status
and Will, subscriptions, states, readings. A lane is in flight on one connection at a time (per-device order):
alarms move to the alarms' connection once the main one has none in flight, and back to the main one while the
alarms' connection is down with nothing in flight, or has been down for TAKE_BACK_AFTER with some (those are
fetched from the spool again and re-sent on the main connection; paho may send them again when the alarms'
connection comes back: at-least-once, consumers drop copies by message id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import sys
import threading
import time
from collections import deque
from typing import NamedTuple

import paho.mqtt.client as mqtt

from gasguard.brokers import FailoverClient, call_soon_from

from . import payloads
from .clock import drill_client
from .identity import IdentityWatch
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
STATE_RUN = 64        # retained states sent in a row while readings wait; then a batch of readings (issue 17). A
#                       flood of states (a backlog after an outage: one per device per refresh, most superseded;
#                       a tiny offline timeout) held every reading back: 142,467 states ahead of 300,000 spooled
#                       readings, none of which went out in the run (BENCHMARKS.md, eleventh pass). At most one
#                       batch of readings per STATE_RUN states while both wait; alarms and events are not affected
STATE_WAIT = 2.0      # s a device's due online state (presence.due: not spooled) waits behind reading batches that
#                       are ready; then it goes ahead of them, STATE_RUN at a time. Readings are the facts the command
#                       grades on; the state is a summary of them that can wait a moment, and one message carries
#                       however often it fell due meanwhile (issue 17: a burst of first sightings - a gateway's
#                       start, the bench's 5,000 devices - no longer competes with its own readings)
FILL_STATES = 32      # due online states a fill pass builds and sends; then the rest on a later pass. The message
#                       is built here now, not in ingest (its text 12.45 µs, timeit, and its publish 12.9-15.8 µs
#                       in-process: BENCHMARKS.md thirteenth and eighteenth passes): at those costs a window's worth
#                       (200) in one pass would hold the loop, and a new alarm, ~5-6 ms; 32 ~1 ms
TAKE_BACK_AFTER = 5.0  # s the alarms' connection may stay down holding alarms while the main one is up; then
#                        the main connection re-sends them (a broker that kicks or refuses only that client
#                        must not hold alarms back; a restarted broker takes both back within ~a reconnect)
PRIORITY_LANES = (ALARM, EVENT)   # the lanes of the alarms' connection: alarms, and the events an operator
#                                   waits for (command results, device acks, security events); few and small


class Flight(NamedTuple):
    """A message awaiting its PUBACK: its spool rows are seq first..last of `lane` (consecutive); first = 0 for a
    device's online state, which has none (presence.due)."""
    first: int
    last: int
    nbytes: int           # what its rows count in the spool's size (Spool.size)
    lane: int
    readings: int         # readings in it (1 for a message that is not a reading batch)
    oldest: float         # receive time of its oldest reading or message
    sent: float           # time.monotonic() at publish


KEEPALIVE_TIMEOUT = 141   # the reason code paho gives its own keepalive's close (MQTT_ERR_KEEPALIVE)


class _ClosedBeforeConnack(ConnectionError):
    """The TCP/TLS connection was made, then closed by the broker before its CONNACK."""


class _NoConnack(TimeoutError):
    """The TCP/TLS connection was made and CONNECT sent; no CONNACK came within mqtt.connect_timeout."""


class Link:
    """One MQTT connection of the publisher. A paho client of its own: its own message ids, so its own
    in-flight map (mid -> Flight), and paho re-sends its own in-flight messages when it reconnects."""

    def __init__(self, name: str, gauge):
        self.name = name                          # "main" or "alarms": the logs'
        self.label = "" if name == "main" else f" ({name}' connection)"
        self.gauge = gauge                        # 1 while connected
        self.client: FailoverClient | None = None
        self.connected = False
        self.inflight: dict[int, Flight] = {}     # mid -> what it carries
        self.priority = 0                         # of them, messages of PRIORITY_LANES (one connection at a time)
        self.resending: set[int] = set()          # mids paho re-sends after a reconnect (see _on_connect)
        self.resend_deadline = 0.0
        self.broker = None                        # the endpoint of the last accepted connection (failover count)
        self.fail_logged: tuple = (None, 0.0)     # (reason, when) of the last connect failure logged
        self.down_since = 0.0                     # time.monotonic() of the last loss
        self.progress = 0.0                       # time.monotonic() of the last PUBACK or accepted connection


class Publisher:
    def __init__(self, cfg, spool: Spool, metrics, clock, version: str, *, subscriptions: list[str] = (),
                 on_message=None, presence=None):
        """`subscriptions`: the topic filters whose messages go to `on_message(topic, payload bytes)` (on the
        event loop), subscribed on every connect; fixed when the pipeline is built. `presence`: the devices'
        states due (presence.PresenceTable: due, next_due), published on the main connection."""
        self.cfg, self.spool, self.metrics, self.clock = cfg, spool, metrics, clock
        self.presence = presence
        self.topics = cfg.topics
        self.version = version
        self.on_message_cb = on_message
        self.subscriptions: tuple[str, ...] = tuple(subscriptions)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = 0          # the loop's thread (callbacks from it need no call_soon_threadsafe)
        self.main = Link("main", metrics.connected)
        self.alarms = Link("alarms", metrics.alarm_connected) if cfg.alarm_connection else None
        self.cursor = {lane: 0 for lane in range(4)}
        self.buf: dict[int, deque[Row]] = {lane: deque() for lane in range(4)}
        self.exhausted = {lane: False for lane in range(4)}
        self.batch_wait_since: float | None = None
        self.batch_timer: asyncio.TimerHandle | None = None
        self.states_in_row = 0                   # states sent since the last batch of readings (STATE_RUN)
        self.acked: list[tuple] = []             # PUBACKed (lane, first, last seq), deleted once per loop pass
        self.pubacks: deque = deque()            # (link, [mid]) from paho's callbacks, not yet handled (_drain_pubacks)
        self.puback_pending = False              # a _drain_pubacks is scheduled on the loop
        self.published_n = [0] * len(LANE_NAMES)      # PUBACKed per lane, not yet in the counters (_count_published)
        self.lane_metrics = {lane: (metrics.published.labels(name), metrics.publish_latency.labels(name))
                             for lane, name in enumerate(LANE_NAMES)}
        self.acked_bytes = 0
        self.wake = asyncio.Event()
        self.stopping = False
        self.identity = IdentityWatch()          # another process publishing as this gateway (gateway/identity.py)
        self.connects = 0                        # connections the main link had accepted (IdentityWatch's)
        self.conflict_logged = 0.0               # time.monotonic() of the last "two gateways share this id" line
        self.main.client = self._client(self.main, self.cfg.mqtt_client_id)
        if self.alarms is not None:
            self.alarms.client = self._client(self.alarms, f"{self.cfg.mqtt_client_id}-alarms")

    # the main connection, as the rest of the gateway (and its tests) knew the publisher's one connection
    @property
    def client(self) -> FailoverClient:
        return self.main.client

    @property
    def connected(self) -> bool:
        return self.main.connected

    @connected.setter
    def connected(self, v: bool) -> None:
        self.main.connected = v

    @property
    def inflight(self) -> dict[int, Flight]:
        return self.main.inflight

    @inflight.setter
    def inflight(self, v: dict[int, Flight]) -> None:
        self.main.inflight = v

    @property
    def resending(self) -> set[int]:
        return self.main.resending

    @property
    def broker(self):
        return self.main.broker

    def links(self) -> tuple[Link, ...]:
        return (self.main,) if self.alarms is None else (self.main, self.alarms)

    def pending(self) -> bool:
        """Messages in flight on a connection that is up (a graceful stop waits a little for their PUBACKs)."""
        return any(link.connected and link.inflight for link in self.links())

    def _client(self, link: Link, client_id: str) -> FailoverClient:
        mode = getattr(self.clock, "mode", "real")     # a drill clock marks every message (gateway/clock.py)
        client = FailoverClient if mode == "real" else drill_client(mode, FailoverClient)
        c = client(self.cfg.brokers, mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        # paho's own bound off: the publisher bounds what is in flight itself (inflight + PRIORITY_SLOTS, and a few
        # messages not from the spool: status, birth). A bounded paho walks every message in flight at each
        # PUBACK looking for one it queued (3 % of the time the GIL was held, BENCHMARKS.md fourteenth pass)
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        # a dead cluster node costs one reconnect_min and the next node is tried; a node that takes the TCP
        # connection but gives no CONNACK (e.g. still electing its stream leaders) costs connect_timeout
        # (FailoverClient bounds the CONNACK too; paho alone bounds only the TCP/TLS connect)
        c.reconnect_delay_set(min_delay=self.cfg.reconnect_min, max_delay=self.cfg.reconnect_max)
        c.connect_timeout = self.cfg.connect_timeout
        if self.cfg.mqtt_username:
            c.username_pw_set(self.cfg.mqtt_username, self.cfg.mqtt_password)
        if self.cfg.tls_ca:
            c.tls_set(ca_certs=str(self.cfg.tls_ca), certfile=str(self.cfg.tls_cert) if self.cfg.tls_cert else None,
                      keyfile=str(self.cfg.tls_key) if self.cfg.tls_key else None, cert_reqs=ssl.CERT_REQUIRED)
        if link is self.main:
            # Last Will: the command sees a dead gateway (retained, so late subscribers see it too). The alarms'
            # connection has none: the gateway's status is the main connection's
            c.will_set(self.topics.status, self._status(0, False), qos=1, retain=True)
            c.on_message = lambda _c, _u, m: self._threadsafe(self._on_message, m.topic, m.payload, m.retain)
        # called by paho's thread (or FailoverClient's loop) inside its `except OSError`: exc_info is the reason
        c.on_connect_fail = lambda _c, _u: self._threadsafe(self._on_connect_fail, link, sys.exc_info()[1],
                                                            c.endpoint)
        c.on_connect = lambda *a: self._threadsafe(self._on_connect, link, a[3], c.endpoint)
        c.on_disconnect = lambda *a: self._threadsafe(self._on_disconnect, link, a[3], c.endpoint, c.timed_out)
        c.on_publish = lambda _c, _u, mid, _rc, _p: self._puback_threadsafe(link, (mid,))
        c.on_published_many = lambda mids: self._puback_threadsafe(link, mids)   # a run of PUBACKs at once
        return c

    def _puback_threadsafe(self, link: Link, mids) -> None:
        """From paho's callback (one id) or FailoverClient's (a run of them): PUBACKs are queued and handed over as
        one call for all that came meanwhile, not a call_soon_threadsafe each (a write to the loop's self-pipe, a
        wake-up and a handle per PUBACK: ~4 % of the gateway's CPU with a retained state every fifth reading,
        BENCHMARKS.md twelfth pass). Order against the other callbacks holds: a PUBACK queued behind a pending
        hand-over is drained by it, and that was scheduled before anything paho handed over after the PUBACK."""
        self.pubacks.append((link, mids))
        if not self.puback_pending:
            self._schedule_drain()

    def _schedule_drain(self) -> None:
        """(either thread) One _drain_pubacks on the loop. Without a running loop the PUBACKs stay queued and
        start() drains them: `puback_pending` is set only for a drain that was scheduled."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        self.puback_pending = True
        try:
            call_soon_from(loop, self.loop_thread, self._drain_pubacks)
        except RuntimeError:          # closed meanwhile
            self.puback_pending = False

    def _drain_pubacks(self) -> None:
        # cleared first: a PUBACK queued after this line either finds it clear and schedules another drain,
        # or was queued before it and is drained below
        self.puback_pending = False
        q, on_puback = self.pubacks, self._on_puback
        try:
            while q:
                link, mids = q.popleft()
                it = iter(mids)
                try:
                    for mid in it:
                        on_puback(link, mid)
                except BaseException:
                    rest = list(it)                  # (the one that raised is the loop handler's)
                    if rest:
                        q.appendleft((link, rest))
                    raise
        finally:
            self._count_published()
            if q and not self.puback_pending:     # one raised: the loop's handler has it; the rest go on
                self._schedule_drain()

    def _count_published(self) -> None:
        """The messages PUBACKed since the last call, added to each lane's counter at once (an inc per message cost
        ~0.8 µs, timeit: a retained state's PUBACK is one message)."""
        n = self.published_n
        for lane, k in enumerate(n):
            if k:
                self.lane_metrics[lane][0].inc(k)
                n[lane] = 0

    def _threadsafe(self, fn, *args):
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                call_soon_from(loop, self.loop_thread, fn, *args)   # (the I/O on the loop: no self-pipe byte)
            except RuntimeError:
                pass  # loop shutting down

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.puback_pending = False          # a drain scheduled on an earlier loop died with it
        if self.pubacks:
            self._schedule_drain()
        log.info("connecting to mqtt %s%s%s", ", then ".join(map(str, self.cfg.brokers)),
                 " (TLS)" if self.cfg.tls_ca else "", "; alarms and events on a second connection"
                 if self.alarms is not None else "")
        # each connection's network I/O on this loop ([mqtt] network_thread false, the default) or on paho's thread
        io_loop = None if self.cfg.network_thread else self.loop
        for link in self.links():
            link.client.start(self.cfg.keepalive, io_loop)

    def stop(self, timeout: float = 2.0) -> None:
        """Graceful: say offline (so the Will is not needed), wait briefly for PUBACKs, disconnect."""
        self.stopping = True
        if self.connected:
            try:
                self.client.wait_published(self.client.publish(self.topics.status, self._status(self.clock(), False),
                                                               qos=1, retain=True), timeout)
            except (RuntimeError, ValueError):
                pass
        if self.presence is not None and self.presence.due:
            log.info("%d devices' online states were not yet published: each is published when its device is "
                     "next heard after the next start", len(self.presence.due))
        for link in self.links():     # every one disconnects first: each loop_stop may sit out a reconnect wait
            link.client.disconnect()
        for link in self.links():
            link.client.loop_stop()
        self.loop = None
        self.flush_acked()

    def _said(self, link: Link) -> bool:
        """The alarms' connection failing while the main one is down too fails for the main one's reason, which
        its own line says: said once, not once per connection."""
        return link is not self.main and not self.main.connected

    def _on_connect(self, link: Link, rc, endpoint) -> None:
        if rc.is_failure:
            log.log(logging.DEBUG if self._said(link) else logging.ERROR, "broker %s refused the connection%s: %s "
                    "(check mqtt.username/password/TLS)", endpoint, link.label, rc)
            return
        link.connected = True
        link.progress = time.monotonic()
        link.fail_logged = (None, 0.0)
        link.gauge.set(1)
        if link is self.main and link.broker is not None and endpoint != link.broker:
            self.metrics.failovers.inc()      # (the main connection's moves; the alarms' one follows it)
        link.broker = endpoint
        log.info("connected to mqtt broker %s%s; %d messages in flight will be re-sent", endpoint, link.label,
                 len(link.inflight))
        # paho re-sends what was in flight when the link dropped, but only after its on_connect returns, from
        # its own thread: rows published now could overtake them and break the per-device order. New rows
        # wait for those PUBACKs (one round trip), at most a keepalive.
        link.resending = set(link.inflight)
        link.resend_deadline = time.monotonic() + self.cfg.keepalive
        if link is self.main:
            # its own status topic first, then the birth: what comes there before the birth's echo is what was
            # retained while this process was away (IdentityWatch)
            self.connects += 1
            link.client.subscribe(self.topics.status, qos=1)
            link.client.publish(self.topics.status, self._status(self.clock(), True), qos=1, retain=True)
            for t in self.subscriptions:
                link.client.subscribe(t, qos=1)
        self.kick()

    def _on_connect_fail(self, link: Link, err, endpoint) -> None:
        """paho retries by itself with backoff (mqtt.reconnect_min..max); say why and what to do, once per
        reason and then at most once a minute, so a broker that stays away does not flood the log."""
        if isinstance(err, ssl.SSLCertVerificationError):
            hint = ("the broker's certificate does not verify against mqtt.tls_ca: give the CA that signed it, "
                    "and check that mqtt.host is a name or address in the certificate")
        elif isinstance(err, ssl.SSLError):
            hint = ("TLS handshake failed: check that mqtt.port is the broker's TLS listener and, if it asks for "
                    "client certificates, mqtt.tls_cert / mqtt.tls_key")
        elif isinstance(err, _NoConnack):
            hint = ("the broker took the connection but did not accept it in mqtt.connect_timeout: an overloaded "
                    "broker, or a listener that is not MQTT" + ("; a cluster node does this while it re-elects its "
                    "stream leaders after another node died" if len(self.cfg.brokers) > 1 else ""))
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
        if self._said(link):
            log.debug("cannot connect to mqtt %s%s either (%s)", endpoint, link.label, err)
        elif key != link.fail_logged[0] or now - link.fail_logged[1] >= 60:
            link.fail_logged = (key, now)
            others = " on the next broker" if len(self.cfg.brokers) > 1 else ""
            log.error("cannot connect to mqtt %s%s (%s); %s. Retrying%s with backoff up to %.0f s, spooling "
                      "meanwhile", endpoint, link.label, err, hint, others, self.cfg.reconnect_max)

    def _on_disconnect(self, link: Link, rc, endpoint, late: bool = False) -> None:
        """`late`: FailoverClient cut the attempt for want of a CONNACK (read on paho's thread, at the time)."""
        if self.stopping:
            log.info("disconnected from the mqtt broker %s%s (%s)", endpoint, link.label, rc)
        elif link.connected:
            nxt = " (next: the following broker in mqtt.brokers)" if len(self.cfg.brokers) > 1 else ""
            log.warning("lost the mqtt broker %s%s (%s); spooling, reconnecting with backoff up to %.0f s%s",
                        endpoint, link.label, rc, self.cfg.reconnect_max, nxt)
        else:
            # TLS 1.3 reports a refused client certificate only here, after the handshake: not silent either.
            # paho's own keepalive ending a wait for the CONNACK (141) is no answer, not a closed connection
            if late or getattr(rc, "value", None) == KEEPALIVE_TIMEOUT:
                err = _NoConnack(f"no CONNACK in {self.cfg.connect_timeout:g} s" if late else str(rc))
            else:
                err = _ClosedBeforeConnack(str(rc))
            self._on_connect_fail(link, err, endpoint)
        if link.connected:
            link.down_since = time.monotonic()
        link.connected = False
        link.gauge.set(0)

    def _status(self, t: float, online: bool) -> bytes:
        return payloads.dumps(payloads.status(self.cfg.gateway_id, self.cfg.district, t, online, self.version,
                                              self.identity.instance, self.identity.host))

    def _on_message(self, topic: str, payload: bytes, retained: bool = False) -> None:
        if topic == self.topics.status:
            self._on_status(payload, retained)
            return
        if self.on_message_cb:
            self.on_message_cb(topic, payload)

    def _on_status(self, payload: bytes, retained: bool) -> None:
        """A message on this gateway's own status topic: its birth's echo, or another process's status."""
        try:
            doc = json.loads(payload)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not self.identity.observe(doc, retained, self.connects):
            return
        self.metrics.id_conflicts.inc()
        now = time.monotonic()
        if now - self.conflict_logged >= 60 or not self.conflict_logged:
            self.conflict_logged = now
            inst, host = self.identity.other
            log.error("another gateway is publishing as gateway id %r (instance %s on host %s; this one is instance "
                      "%s on %s): with one [mqtt] client_id the broker hands the connection from one to the other "
                      "at every reconnect, and the command sees both gateways' devices under one name. Give each "
                      "gateway its own [gateway] id (gateway.toml) and restart the one that was copied",
                      self.cfg.gateway_id, inst, host, self.identity.instance, self.identity.host)

    def _on_puback(self, link: Link, mid: int) -> None:
        entry = link.inflight.pop(mid, None)
        link.resending.discard(mid)
        link.progress = time.monotonic()
        if entry is None:
            return   # birth/status/stats, not from the spool (or taken back: _take_back)
        if entry.lane in PRIORITY_LANES:
            link.priority -= 1
        if entry.first:       # (a device's online state has no rows)
            if not self.acked and self.loop is not None:
                self.loop.call_soon(self.flush_acked)   # after every PUBACK already queued: one transaction
            # a message's rows are consecutive in its lane (batches are taken in seq order, thinning never
            # touches rows in flight): deleted as a range, not row by row
            self.acked.append((entry.lane, entry.first, entry.last))
            self.acked_bytes += entry.nbytes
        self.published_n[entry.lane] += 1       # (the counters: once per hand-over, _count_published)
        # one observation per message: a batch of readings counts once, with its oldest reading (the worst
        # latency in it) - per reading it cost more than building the batch
        self.lane_metrics[entry.lane][1].observe(max(0.0, self.clock() - entry.oldest))
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

    def up(self) -> bool:
        """Some connection is up: something may be published."""
        return any(link.connected for link in self.links())

    def kick(self) -> None:
        if self.up():
            self.fill()
        else:
            self.wake.set()

    def fill(self) -> None:
        window = self.cfg.inflight + PRIORITY_SLOTS
        prio = self._priority_link()
        if prio is self.main:
            # what each lane may fill the in-flight window up to: the last slots are the alarms' alone
            upto = ((ALARM, window), (EVENT, self.cfg.inflight + PRIORITY_SLOTS // 2), (STATE, self.cfg.inflight))
        else:
            if prio is not None:     # the alarms' connection: events up to [mqtt] inflight, the rest alarms'
                self._fill(prio, ((ALARM, window), (EVENT, self.cfg.inflight)), window, readings=False)
            upto = ((STATE, self.cfg.inflight),)
        self._fill(self.main, upto, window, readings=True)
        for link in self.links():     # (on the loop: out now, as paho's thread would have sent them)
            link.client.write_now()

    def _priority_link(self) -> Link | None:
        """The connection that carries alarms and events now; None: neither, for now. One at a time, so that
        a device's alarms stay in order: a message re-sent on one connection must not come after a newer one
        sent on the other."""
        a = self.alarms
        if a is None:
            return self.main
        if a.connected:
            # alarms sent on the main connection while this one was away are PUBACKed first (one round trip)
            return None if self.main.priority else a
        if not a.inflight:
            return self.main          # away (refused, not yet connected, lost) with nothing paho would re-send
        if self.main.connected and time.monotonic() - a.down_since >= TAKE_BACK_AFTER:
            self._take_back(a)
            return self.main
        return None                   # its in-flight alarms go first, re-sent when it is back

    def _take_back(self, link: Link) -> None:
        """`link` stayed down with messages in flight: forget them there and read their rows from the spool
        again (they are deleted only on a PUBACK), from the oldest, for the main connection to send in order."""
        first = {}
        for f in link.inflight.values():
            first[f.lane] = min(f.first, first.get(f.lane, f.first))
        log.warning("the alarms' connection has been down %.0f s with %d messages in flight: sending them on the "
                    "main connection", time.monotonic() - link.down_since, len(link.inflight))
        link.inflight, link.resending, link.priority = {}, set(), 0
        for lane, seq in first.items():
            self.buf[lane].clear()    # loaded rows are after the cursor's new place: read again, in order
            self.cursor[lane] = seq - 1
            self.exhausted[lane] = False

    def _resent(self, link: Link) -> bool:
        """False while `link` waits for the PUBACKs of what paho re-sends after a reconnect (_on_connect)."""
        if link.resending:
            if time.monotonic() < link.resend_deadline:
                return False
            log.warning("%d re-sent messages not acknowledged within %d s%s; publishing on (order may slip)",
                        len(link.resending), self.cfg.keepalive, link.label)
            link.resending = set()
        return True

    def _fill(self, link: Link, upto: tuple, window: int, *, readings: bool) -> None:
        if not link.connected or not self._resent(link):
            return
        batches = states = 0
        ready = True          # a batch of readings may be ready (_send_readings said no: not again this pass)
        while link.connected and len(link.inflight) < window:
            row = None
            n = len(link.inflight)
            # after STATE_RUN states in a row, a batch of readings first if one is ready (STATE_RUN)
            readings_turn = (readings and ready and self.states_in_row >= STATE_RUN and batches < FILL_BATCHES
                             and n < self.cfg.inflight and self._peek(READING) is not None)
            if readings_turn:
                self.states_in_row = 0          # (a batch waiting for company is tried again after the next run)
                if self._send_readings():
                    batches += 1
                    continue
                ready = False
            for lane, limit in upto:
                if n >= limit:
                    continue
                row = self._peek(lane)
                if row is not None:
                    self.buf[lane].popleft()
                    self._send_one(row, link)
                    if lane == STATE:
                        self.states_in_row += 1
                    break
            if row is not None:
                continue
            if not readings:
                break
            if batches >= FILL_BATCHES:
                if self.loop is not None:   # the rest on a later pass: ingest (and a new alarm) go in between
                    self.loop.call_soon(self.wake.set)
                break
            if len(link.inflight) >= self.cfg.inflight:
                break
            # the devices' due states: after the spooled lanes above (a spooled offline state is older than a due
            # online one, and must reach the broker first), behind the readings ready to go until the oldest waited
            # STATE_WAIT, then ahead of them (STATE_RUN at a time: readings_turn above), and whenever no batch is
            # ready; FILL_STATES a pass
            due = self.presence.due if self.presence is not None and states < FILL_STATES else None
            if due and self.clock() - self.presence.oldest_due() >= STATE_WAIT and self._send_due_states(link, 1):
                states += 1
                continue
            if ready and self._send_readings():
                self.states_in_row = 0
                batches += 1
                continue
            ready = False
            # no batch is ready: due states while there is room, in one run (nothing is added to the lanes above
            # during a pass: ingest runs between passes)
            room = min(FILL_STATES - states, window - len(link.inflight), self.cfg.inflight - len(link.inflight))
            sent = self._send_due_states(link, room) if due else 0
            if not sent:
                break
            states += sent
        if states >= FILL_STATES and self.presence.due and self.loop is not None:
            self.loop.call_soon(self.wake.set)  # the rest on a later pass: ingest (and a new alarm) go in between

    def _send_one(self, row: Row, link: Link) -> None:
        info = link.client.publish(row.topic, row.payload, qos=1, retain=row.retain)
        link.inflight[info.mid] = Flight(row.seq, row.seq, len(row.payload) + ROW_OVERHEAD, row.lane, row.count,
                                         row.t, time.monotonic())
        if row.lane in PRIORITY_LANES:
            link.priority += 1

    def _send_due_states(self, link: Link, most: int) -> int:
        """Publish up to `most` due online states on `link`, oldest first; how many were."""
        next_due, publish, inflight = self.presence.next_due, link.client.publish, link.inflight
        n = 0
        while n < most:
            nxt = next_due()
            if nxt is None:
                break
            since, topic, text = nxt
            inflight[publish(topic, text, qos=1, retain=True).mid] = Flight(0, 0, 0, STATE, 1, since, time.monotonic())
            n += 1
        self.states_in_row += n
        return n

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
            self._send_one(first, self.main)
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
            self.hung(time.monotonic())
            if self.up():
                self.fill()

    def hung(self, now: float) -> None:
        """A connection with messages in flight and no PUBACK for mqtt.puback_timeout is cut, and paho moves to
        the next node with them. A node that is frozen (a paused VM, SIGSTOP, a link that drops every packet)
        keeps the TCP connection open and answers nothing: before, the gateway noticed only by keepalive, up to
        twice mqtt.keepalive (60 s by default) of alarms held, with another node of the cluster ready."""
        limit = self.cfg.puback_timeout
        if not limit:
            return
        for link in self.links():
            if not link.connected or not link.inflight:
                continue
            since = max(link.progress, next(iter(link.inflight.values())).sent)   # (dicts keep send order)
            if now - since < limit:
                continue
            link.progress = now                  # once per deadline: the cut takes effect at the next read
            self.metrics.broker_stalls.labels(link.name).inc()
            log.warning("no PUBACK from mqtt broker %s%s for %.0f s with %d messages in flight: taking the connection "
                        "as lost%s (mqtt.puback_timeout; a frozen node, or a link dropping every packet)",
                        link.client.endpoint, link.label, now - since, len(link.inflight),
                        "; next: the following broker in mqtt.brokers" if len(self.cfg.brokers) > 1 else "")
            link.client.cut()

    def publish_direct(self, topic: str, payload: dict, qos: int = 0, retain: bool = False) -> None:
        """Best-effort messages that are not worth spooling (periodic stats)."""
        if self.connected:
            self.client.publish(topic, json.dumps(payload), qos=qos, retain=retain)
