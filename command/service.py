"""`gasguard command serve`: the district command as a service (issue 15).

    svc = CommandService(cfg, clock=time.time)     # cfg: command/config.py
    svc.start()        # standby at once; leader when it holds the lease (then it consumes and publishes)
    ...
    svc.stop()

Stages, one direction:
  broker (every gateway's alarms, events, reading batches, birth/Will, stats; the console's ack, input, shelve,
  sync)
    -> a bounded inbox (paho's thread; QoS 1 with MANUAL acknowledgement, persistent session)
    -> the grading loop: a batch graded in one store transaction (command/grader.py), THEN the broker
       messages are acknowledged (so a crash before the commit means the broker sends them again)
    -> the outbox: stored revisions not yet PUBACKed are published on the district (and city) topic; what
       is not a revision goes out right after its transaction (sync answers, acts' answers, the gateways'
       state, and the shelves held: retained on command/shelves after every change, a take-over, a sync)
    -> notifications due are sent (command/notify.py), each attempt recorded.

Two copies run against one store: the one holding the leader lease (`lease` table) consumes; the other
polls the lease every `lease_ttl / 5` s and takes over when the lease runs out (a dead leader stops renewing
it). Both use the same MQTT client id, so the new leader inherits the persistent session and every
message the dead one had not acknowledged. A leader whose lease was taken (it was paused, or cut off from
the store) finds out at its next write (`LeaseLost`: fenced) and steps down to standby.

Every thread is supervised: an exception is logged with its stack and the loop carries on after a pause;
a store failure makes the leader step down (and try again), never a crash loop.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time

import paho.mqtt.client as mqtt

from gasguard import logs
from gasguard.brokers import FailoverClient
from gasguard.protocol.topics import ALARM, EVENT, READING, STATS, STATUS, Topics

from . import notify
from .acts import GateActs, Unsigned
from .grader import DistrictGrader
from .metrics import Metrics
from .store import LeaseLost, Retention, open_store

log = logging.getLogger("gasguard.command")


def _drain(q: queue.Queue, n: int) -> list:
    out: list = []
    while len(out) < n:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            break
    return out


class Registry:
    """The district registry, read-only, cached (device rows change rarely; a restart re-reads)."""

    def __init__(self, path: str):
        from gasguard.registry import Registry as Reg
        self.path = path
        self._reg = Reg(path, readonly=True, check_same_thread=False) if path else None
        self._cache: dict[int, dict | None] = {}
        self._down: dict[int, list] = {}
        self.lock = threading.Lock()

    def device(self, dev_id: int) -> dict | None:
        if dev_id not in self._cache:
            with self.lock:
                d = self._reg.get(dev_id) if self._reg else None
                self._cache[dev_id] = d.public() if d is not None and d.active else None
        return self._cache[dev_id]

    def downstream(self, dev_id: int) -> list[dict]:
        if dev_id not in self._down:
            with self.lock:
                self._down[dev_id] = [d.public() for d in self._reg.downstream(dev_id) if d.active] if self._reg else []
        return self._down[dev_id]

    def close(self):
        if self._reg:
            self._reg.close()


class CommandService:
    def __init__(self, cfg, *, clock=time.time, acts=None, notifiers=None, wall=time.time, drill: str | None = None):
        """`clock`: the time deadlines are graded in (virtual in tests); `wall`: the lease's clock (real);
        `acts`: how operators' acts are verified (default: the [authority] table, command/acts.py);
        `drill`: a drill clock's mode: every message published carries "drill": {"clock": mode}."""
        self.cfg = cfg
        self.clock, self.wall = clock, wall
        self.client_class = FailoverClient        # [command.mqtt] brokers: the next node when one fails
        if drill:
            from gasguard.gateway.clock import drill_client
            self.client_class = drill_client(drill, FailoverClient)
        self.store = open_store(cfg.store)
        self.store.migrate()
        self.lease_store = open_store(cfg.store)     # its own connection: renewals never queue behind grading
        self.registry = Registry(cfg.registry)
        if acts is None:
            acts = GateActs.from_config(cfg.authority, cfg.district, cfg.instance) if cfg.authority else Unsigned()
            if not cfg.authority:
                log.warning("no [authority] configured: operators' acts are taken UNSIGNED (a bench or the demo "
                            "only); configure the district's roster for production")
        self.acts = acts
        self.metrics = Metrics()
        self.grader = DistrictGrader(cfg.grading, self.store, devices=self.registry.device,
                                     downstream=self.registry.downstream, notify_routes=notify.routes(cfg.notify),
                                     acts=acts, gateway_silent_s=cfg.gateway_silent_s,
                                     shelve_max_s=cfg.shelve_max_s)
        self.dispatcher = notify.Dispatcher(cfg.notify, open_store(cfg.store), notifiers)
        self.district = cfg.district
        self.topics = Topics(cfg.grading["topic_root"])
        self.cmd = self.topics.command(cfg.district)
        self.fence = None                   # the lease we hold (None: standby)
        self.leader = threading.Event()
        self.stopping = threading.Event()
        self.inbox: queue.Queue = queue.Queue(maxsize=max(100, cfg.batch_max * 4))
        self.urgent: queue.Queue = queue.Queue()     # alarms, events, acts: few, never held back
        self.arrived = threading.Event()
        self.client: mqtt.Client | None = None          # the alarm lane's session; publishes incidents too
        self.bulk_client: mqtt.Client | None = None     # the readings lane's session
        self.connected = threading.Event()
        self.inflight: dict[int, list] = {}            # MQTT mid -> revision seqs awaiting PUBACK
        self.inflight_lock = threading.Lock()
        self.pending_pub: set[int] = set()             # revision seqs published, not yet PUBACKed
        self.acked: list[int] = []                     # revision seqs PUBACKed, not yet marked in the store
        self.early: set[int] = set()                   # mids PUBACKed before they were registered
        self.outbox_after = 0                          # the outbox's cursor: revisions up to it were handed over
        self.kick = threading.Event()
        self.threads: list[threading.Thread] = []
        self.became_leader_at: float | None = None     # wall time of the last take-over
        self.last_tick = float("-inf")               # monotonic time of the last tick; -inf: the first pass ticks
        self.last_prune = 0.0
        self.last_readings_prune = 0.0                 # service-clock time the last readings retention round began
        self.retention: Retention | None = None        # the round being worked off; None: none (store.Retention)
        self.grading_alive = time.monotonic()          # the grading loop's last pass (the lease depends on it)

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "CommandService":
        if self.cfg.metrics_bind:
            self.metrics.serve(self.cfg.metrics_bind)
        for name, fn in (("lease", self._lease_loop), ("grade", self._grade_loop), ("outbox", self._outbox_loop),
                         ("notify", self._notify_loop)):
            t = threading.Thread(target=self._supervise, args=(name, fn), name=f"command-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self, release: bool = True) -> None:
        self.stopping.set()
        self.kick.set()
        for t in self.threads:
            t.join(10)
        self._disconnect()
        if release and self.fence is not None:
            try:
                self.lease_store.release_lease(self.fence)     # a clean stop hands over at once
            except Exception:
                log.exception("could not release the leader lease (the standby takes over when it runs out)")
        self.fence = None
        self.leader.clear()
        self.registry.close()
        self.dispatcher.store.close()
        self.lease_store.close()
        self.store.close()

    def _supervise(self, name, fn) -> None:
        while not self.stopping.is_set():
            try:
                fn()
                return
            except LeaseLost as e:
                log.error("%s: %s; stepping down to standby", name, e)
                self._step_down()
            except Exception:
                self.metrics.task_errors.labels(name).inc()
                log.exception("command %s loop failed; stepping down and carrying on in 1 s", name)
                self._step_down()
                self.stopping.wait(1.0)

    # --- leadership ------------------------------------------------------------------------------
    def _lease_loop(self) -> None:
        ttl = self.cfg.lease_ttl
        while not self.stopping.is_set():
            if self.fence is None:
                fence = self.lease_store.acquire_lease(self.cfg.instance, ttl, self.wall())
                if fence is not None:
                    self._take_over(fence)
            else:
                if time.monotonic() - self.grading_alive > 2 * ttl:
                    # a wedged grading loop must not keep the lease: let it run out, the standby takes over
                    raise LeaseLost(f"{self.cfg.instance}: the grading loop made no progress for "
                                    f"{time.monotonic() - self.grading_alive:.0f} s")
                fence = self.lease_store.acquire_lease(self.cfg.instance, ttl, self.wall())   # renew
                if fence is None or fence.epoch != self.fence.epoch:
                    raise LeaseLost(f"{self.cfg.instance} lost the leader lease")
            self.stopping.wait(ttl / 5)

    def _take_over(self, fence) -> None:
        t0 = time.monotonic()
        self.grading_alive = t0
        self.grader.load()
        self.fence = fence
        self.metrics.leader.set(1)
        self.metrics.takeovers.inc()
        self.became_leader_at = self.wall()
        self.pending_pub.clear()
        self.outbox_after = 0
        self.retention = None           # a round of an earlier leadership starts again (it only removes what goes)
        self._connect()
        self.leader.set()
        self.kick.set()
        log.warning("%s is the leader (epoch %d): %d incidents held, ready in %.2f s", self.cfg.instance,
                    fence.epoch, len(self.grader.engine.incidents), time.monotonic() - t0)

    def _step_down(self) -> None:
        if self.fence is None:
            return
        self.leader.clear()
        self._disconnect()
        fence, self.fence = self.fence, None
        self.metrics.leader.set(0)
        try:
            self.lease_store.release_lease(fence)     # no-op when another copy holds it at a newer epoch
        except Exception:
            log.exception("could not release the leader lease (it runs out by itself)")
        _drain(self.urgent, 1 << 30)    # unacknowledged messages stay with the broker's sessions
        _drain(self.inbox, 1 << 30)

    # --- MQTT ------------------------------------------------------------------------------------
    def _connect(self) -> None:
        # Two persistent sessions, like the gateway's lanes: alarms, events and acts on one, the gateways'
        # reading batches, status and stats on the other, so an alarm never waits behind a backlog of readings
        # (after a take-over the broker hands over everything the dead leader had not acknowledged, in order).
        self.client = self._client(self.cfg.mqtt_client_id, "urgent")
        self.bulk_client = self._client(self.cfg.mqtt_client_id + "-readings", "bulk")

    def _client(self, client_id: str, lane: str):
        c = self.client_class(self.cfg.brokers, mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                              clean_session=False, manual_ack=True, userdata=lane)
        c.max_inflight_messages_set(200)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 30)
        c.connect_timeout = self.cfg.mqtt_connect_timeout
        if self.cfg.mqtt_username:
            c.username_pw_set(self.cfg.mqtt_username, self.cfg.mqtt_password)
        if self.cfg.mqtt_tls_ca:
            c.tls_set(ca_certs=self.cfg.mqtt_tls_ca)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.start(keepalive=self.cfg.mqtt_keepalive)
        return c

    def _disconnect(self) -> None:
        clients = [c for c in (self.client, self.bulk_client) if c is not None]
        self.client = self.bulk_client = None
        for c in clients:          # both first: each network thread may sit out a reconnect wait (up to 1 s)
            c.disconnect()
        for c in clients:
            c.loop_stop()
        self.connected.clear()
        with self.inflight_lock:
            self.inflight.clear()
            self.early.clear()

    def subscriptions(self, lane: str) -> list[str]:
        t, d = self.topics, self.cfg.district
        if lane == "bulk":       # a gateway is found by its birth (status, retained), heard by all it publishes
            return [t.district_gateway_leaf(d, leaf) for leaf in (STATUS, STATS, READING)]
        # the consoles' acts: acknowledgements, input, sync, and shelving (only the service takes that one)
        return [t.district_gateways(d, leaf) for leaf in (ALARM, EVENT)] + list(self.cmd.subscriptions) + \
            [self.cmd.shelve_acts]

    def _on_connect(self, client, lane, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker refused the command's connection: %s (check [command.mqtt])", reason_code)
            return
        # the session persists (clean_session False): subscribing again is harmless and covers a new broker
        client.subscribe([(t, 1) for t in self.subscriptions(lane)])
        if lane == "urgent":
            self.pending_pub.clear()
            self.outbox_after = 0              # a new connection: send again whatever is not PUBACKed
            self.connected.set()
            self.metrics.broker_connected.set(1)
            self.kick.set()

    def _on_disconnect(self, client, lane, flags, reason_code, properties):
        if lane == "urgent":
            self.connected.clear()
            self.metrics.broker_connected.set(0)

    def _on_message(self, client, userdata, m) -> None:
        # paho's thread: parse and queue. A full inbox blocks here, which stops paho reading the socket: the
        # broker then holds the rest (QoS 1 in its session), nothing is dropped.
        try:
            doc = json.loads(m.payload) if m.payload else {}
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            self.metrics.refused.labels("not_json").inc()
            client.ack(m.mid, m.qos)
            return
        (self.urgent if userdata == "urgent" else self.inbox).put((client, m.mid, m.qos, m.topic, doc,
                                                                   time.monotonic(), m.payload))
        self.arrived.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.inflight_lock:
            seqs = self.inflight.pop(mid, None)
            if seqs is None:
                self.early.add(mid)              # PUBACKed before _sent() registered it (paho's thread is fast)
            else:
                self.acked.extend(seqs)          # marked published by the outbox loop, many per transaction

    def _sent(self, info, seqs: list) -> None:
        """Register a publish (its revision seqs, or [] for messages that are not stored revisions)."""
        with self.inflight_lock:
            if info.mid in self.early:
                self.early.discard(info.mid)
                self.acked.extend(seqs)
            else:
                self.inflight[info.mid] = seqs

    # --- grading loop ----------------------------------------------------------------------------
    def _grade_loop(self) -> None:
        while not self.stopping.is_set():
            self.grading_alive = time.monotonic()
            if not self.leader.wait(0.2):
                continue
            self.arrived.wait(min(0.2, self.cfg.tick_interval))
            self.arrived.clear()
            urgent = _drain(self.urgent, self.cfg.batch_max)
            bulk = _drain(self.inbox, self.cfg.batch_max - len(urgent))
            batch = urgent + bulk
            if self.urgent.qsize() or self.inbox.qsize():
                self.arrived.set()                  # more waiting: no pause before the next pass
            fence = self.fence
            if fence is None:
                continue
            now = self.clock()
            # acts submitted through the store by consoles in other processes (the web console)
            reqs = [(getattr(self.cmd, r["kind"])(r["incident_id"]), r["payload"], r["seq"])
                    for r in self.store.pending_requests()]
            if batch or reqs:
                # alarms, events and operators' acts first, in a small transaction of their own, published at
                # once; then the reading batches (a batch of readings can be 200 frames to grade)
                if batch:
                    self.metrics.queue_wait.observe(time.monotonic() - batch[0][5])
                for part in ([(topic, doc, None, raw) for _, _, _, topic, doc, _, raw in urgent] + reqs,
                             [(topic, doc) for _, _, _, topic, doc, _, _ in bulk]):
                    if part:
                        self._account(self.grader.handle(part, now, fence))
                for client, mid, qos, *_ in batch:       # only now: everything of the batch is committed
                    if qos and client in (self.client, self.bulk_client):
                        client.ack(mid, qos)
                self.metrics.inbox_depth.set(self.inbox.qsize() + self.urgent.qsize())
            if time.monotonic() - self.last_tick >= self.cfg.tick_interval:
                self.last_tick = time.monotonic()
                self.acts.reload()          # a changed operator roster is taken up (and audited) by the Gate
                self._account(self.grader.tick(now, fence))
                self._gauges(now)
                if now - self.last_prune > 3600:
                    self.last_prune = now
                    with self.store.write(fence) as tx:
                        tx.prune_frames(now - self.cfg.frames_keep_s)
                # a round with work left goes on at the next tick, not readings_prune_s later
                if self.retention is not None or now - self.last_readings_prune >= self.cfg.readings_prune_s:
                    self.prune_readings(now, fence)

    def prune_readings(self, now: float, fence) -> dict:
        """One pass of the readings' retention: older than `readings_keep_s` goes, and no device keeps more than
        `readings_max_per_device` rows (its oldest go, counted: gasguard_command_readings_removed_total). A pass
        removes at most `readings_prune_rows` rows, so the grading loop it runs in never stalls for long; a round
        with more to remove is carried on by the next passes (`self.retention` says where it stands)."""
        if self.retention is None:
            self.last_readings_prune = now
            self.retention = Retention(now - self.cfg.readings_keep_s, self.cfg.readings_max_per_device)
        r = self.retention
        t0 = time.monotonic()
        with self.store.write(fence) as tx:
            gone = tx.retention_pass(r, self.cfg.readings_prune_rows)
        for reason, n in gone.items():
            self.metrics.readings_removed.labels(reason).inc(n)
        if r.done:
            self.retention = None
            if r.removed["over_bound"]:
                log.warning("%d readings dropped past the bound of %d per device (readings_max_per_device): a "
                            "device reports faster than the bound allows for readings_keep_s",
                            r.removed["over_bound"], r.max_per_device)
        self.metrics.prune_pass.observe(time.monotonic() - t0)       # last: a pass counted here is complete
        return gone

    def tick_now(self) -> None:
        """Tests on a virtual clock: the next grading-loop pass runs the deadline check at once (0.0 would not do
        on a machine up for less than `tick_interval`: monotonic time starts at boot)."""
        self.last_tick = float("-inf")

    def _account(self, out) -> None:
        m = self.metrics
        m.graded.inc(out.graded)
        m.readings_kept.inc(out.kept)
        m.duplicates.inc(out.duplicates)
        m.escalations.inc(out.escalations)
        for _, why in out.refused:
            m.refused.labels(why.split(":")[0][:40]).inc()
        for s in out.acks:
            m.time_to_ack.observe(s)
        if out.lag is not None:
            m.lag.set(out.lag)
        for iid, rev, kind, payload in out.revisions:
            m.revisions.labels(kind).inc()
            log.info("incident %s revision %d: level %s warning %s %s", kind, rev, payload["level"],
                     payload["warning"], payload["status"], extra=logs.fields(incident=iid))
        if out.revisions or out.requests:
            self.kick.set()
        c = self.client
        for topic, payload, retain in out.direct:
            if c is not None:
                self._sent(c.publish(topic, json.dumps(payload, ensure_ascii=False), qos=1, retain=retain), [])

    def _gauges(self, now) -> None:
        by_level: dict = {}
        overdue: dict = {}
        for inc in self.grader.engine.open_incidents():
            lv = str(inc.level or "none")
            by_level[lv] = by_level.get(lv, 0) + 1
            if not inc.acked and now >= inc.detected_at + self.cfg.grading["phone_deadline_s"]:
                overdue[lv] = overdue.get(lv, 0) + 1
        for lv in ("1", "2", "3", "4", "none"):
            self.metrics.open.labels(lv).set(by_level.get(lv, 0))
            self.metrics.overdue.labels(lv).set(overdue.get(lv, 0))
        gws = self.grader.gateways.values()
        self.metrics.gateways.labels("silent").set(sum(1 for g in gws if g["silent"]))
        self.metrics.gateways.labels("offline").set(sum(1 for g in gws if g["online"] is False))
        self.metrics.gateways.labels("online").set(sum(1 for g in gws if g["online"] and not g["silent"]))

    # --- outbox: stored revisions -> district and city topics --------------------------------------
    def _outbox_loop(self) -> None:
        city = self.cfg.grading["city_topic"]
        while not self.stopping.is_set():
            self.kick.wait(0.2)
            self.kick.clear()
            with self.inflight_lock:
                done, self.acked = self.acked, []
            if done:
                self.store.mark_published(done)
                self.pending_pub.difference_update(done)
                self.metrics.published.inc(len(done))
            c = self.client
            if not self.leader.is_set() or c is None or not self.connected.is_set():
                continue
            # only revisions stored after the last one handed to paho (the cursor goes back to 0 on a new
            # connection or leadership: whatever was not PUBACKed is sent again; consoles drop repeats)
            for row in self.store.unpublished(1000, after=self.outbox_after):
                self.outbox_after = max(self.outbox_after, row["seq"])
                if row["seq"] in self.pending_pub:
                    continue
                p = row["payload"]
                body = json.dumps(p, ensure_ascii=False)
                self.pending_pub.add(row["seq"])
                # the revision counts as published when the district copy is PUBACKed
                self._sent(c.publish(self.cmd.incident(p["incident_id"]), body, qos=1), [row["seq"]])
                if "city" in p.get("routes", ()):
                    self._sent(c.publish(self.topics.city_incident(city, p["incident_id"]), body, qos=1), [])

    # --- notifications -----------------------------------------------------------------------------
    def _notify_loop(self) -> None:
        while not self.stopping.is_set():
            self.stopping.wait(0.2)
            fence = self.fence
            if fence is None or not self.leader.is_set():
                continue
            before = self.dispatcher.failures
            self.dispatcher.run_due(self.clock(), fence)
            self.metrics.notify_failures.inc(self.dispatcher.failures - before)
