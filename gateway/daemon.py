"""The gateway daemon: the pipeline, wired once and read in one direction.

    transports ─▶ ingest ─▶ outbox ─▶ (MQTT broker)
    (serial, UDP)  verify,    spool +
                   commit,    publisher
                   ack           │
                     │           ▼
                     └─▶ observers (plugins: grading, Sparkplug) ─▶ outbox
    (MQTT in) ─▶ dispatcher (commands; owns downlink counters) ─▶ transports

Each stage is a module named for what it does: transports/, ingest.py, outbox.py (spool.py, publisher.py),
observe.py, dispatch.py (commands.py), with presence.py (online/offline, retained state) beside ingest and
verify.py's replay state inside it. This file builds them, runs their tasks and the ticker, and stops them
in order (ingest first, then a bounded flush).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from gasguard import __version__, logs
from gasguard.protocol.const import UP

from .authority import authorise_act, open_gate, result_topic, sha256_file
from .burstlog import BurstLog
from .config import ConfigError
from .dispatch import Dispatcher
from .gcpause import Collector
from .ingest import Ingest
from .metrics import Metrics
from .micwatch import MicWatch
from .observe import Observers
from .outbox import Outbox
from .plugin import Plugin
from .presence import PresenceTable
from .preverify import PreVerifier
from .publisher import Publisher
from .spool import Spool, SpoolError
from .startup import build_plugins
from .supervisor import supervise
from .transports.semtech_udp import listen
from .transports.serial import SerialTransport
from .verify import RegistryCache, Verifier
from .watchdog import Heartbeats, Watchdog

log = logging.getLogger("gasguard.gateway")


async def _cancelled(tasks: list, what: str, timeout: float = 5.0) -> None:
    """Wait for cancelled tasks to end, bounded: a task that ignores its cancel must not hang the stop."""
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=timeout)
    if stuck:
        log.error("%d %s task(s) did not stop within %.0f s; stopping without them", len(stuck), what, timeout)


class Daemon:
    def __init__(self, cfg, *, clock=time.time, plugins: list[Plugin] | None = None, spool_max_pages=None,
                 collector: Collector | None = None):
        """`collector`: the garbage collector's pauses kept off the alarm path (gateway/gcpause.py). It freezes
        the whole process's objects, so only a process that is the gateway passes one (`gasguard gateway run`)."""
        self.cfg, self.clock = cfg, clock
        self.collector = collector
        self.topics = cfg.topics
        self.metrics = Metrics()
        self.metrics.spool_max_bytes.set(cfg.spool_max_bytes)
        self.metrics.info.labels(cfg.gateway_id, cfg.district, getattr(clock, "mode", "real")).set(1)
        self.metrics.clock_speed.set(getattr(clock, "speed", 1.0))
        if not cfg.alarm_connection:   # no alarms' connection: no gauge of it, so no alert that it is down
            self.metrics.registry.unregister(self.metrics.alarm_connected)
        self.beats = Heartbeats()                  # progress of ingest and ticker, for the systemd watchdog
        self.burst = BurstLog(log, cfg.log_window, on_suppressed=lambda key, n: self.metrics.log_suppressed.labels(
            key.split(":", 1)[0]).inc(n))
        # what can refuse the start (gateway/startup.py: exit 2), cheapest first; the spool last, so a refused
        # start creates no spool
        self.registry = RegistryCache(cfg.registry)
        if plugins is None:
            plugins = build_plugins(cfg, clock)     # bad options: ConfigError
        self.spool = Spool(cfg.spool, synchronous=cfg.spool_sync, max_bytes=cfg.spool_max_bytes,
                           audit=cfg.spool_audit, max_pages=spool_max_pages, deferred_sync=cfg.commit_thread)
        # the spool's durable counters: uplink ones are the replay protection (verify), downlink ones the
        # dispatcher's (SPEC 4: each direction its own counter)
        counters = self.spool.counters()
        up = {dev: c for (dev, direction), c in counters.items() if direction == UP}
        down = {dev: c for (dev, direction), c in counters.items() if direction != UP}
        self.verifier = Verifier(self.registry, up, rate_per_min=cfg.rate_per_min, burst=cfg.rate_burst,
                                 duplicate_window=cfg.duplicate_window)
        self.plugins = plugins
        self.observers = Observers(plugins, self.burst)
        subscriptions = [self.topics.cmd_sub, *self.observers.subscriptions]
        if hasattr(clock, "advance"):                 # a virtual drill clock moves by messages (gateway/clock.py)
            subscriptions.append(self.topics.drill_clock)
        self.presence = PresenceTable(cfg, self.topics)
        self.publisher = Publisher(cfg, self.spool, self.metrics, clock, __version__, subscriptions=subscriptions,
                                   on_message=self._on_mqtt, presence=self.presence)
        self.outbox = Outbox(cfg, self.spool, self.publisher, self.metrics, self.burst, self.observers.snapshot)
        # issue 14: who may command nodes and act on incidents, and the audit record of every act and refusal
        # (opened after the spool and registry, whose refusals at start come first)
        self.gate = open_gate(cfg, on_warning=lambda msg, usage: self.metrics.audit_warnings.inc())
        self.result_topic = result_topic(cfg)
        self._registry_sig = None      # the registry file's signature last audited (None: not yet seen)
        self.dispatcher = Dispatcher(cfg, self.registry, self.presence, self.outbox, self.metrics, self.burst, down,
                                     self.gate)
        # the second core (ingest.verify_worker): decode + MIC + entry JSON of the next group in a worker
        self.pre = PreVerifier(cfg.registry, up) if cfg.verify_worker else None
        self.ingest = Ingest(cfg, self.verifier, self.outbox, self.dispatcher, self.presence, self.observers,
                             self.spool.idents(), self.metrics, self.burst, clock,
                             beat=lambda: self.beats.beat("ingest"),
                             mic=MicWatch(cfg.mic_failures, cfg.mic_window), pre=self.pre)
        self.serial = [SerialTransport(sp, self.ingest.deliver_many, self.metrics, self.burst,
                                       node_lines=cfg.node_log_lines) for sp in cfg.serial]
        self.udp = None
        self.stopping = False

    # what tests and benchmarks read or drive
    @property
    def accepted_count(self) -> int:
        return self.ingest.accepted_count

    def process(self, group: list) -> None:
        self.ingest.process(group)

    def _deliver(self, raw, rx, route):
        return self.ingest.deliver(raw, rx, route)

    def _deliver_nowait(self, raw, rx, route) -> None:
        self.ingest.deliver_nowait(raw, rx, route)

    # -- MQTT in: commands to the dispatcher, the rest to the observers that subscribed ----------------
    def _on_mqtt(self, topic: str, payload: bytes) -> None:
        if topic == self.topics.drill_clock and hasattr(self.clock, "advance"):
            self._drill_clock(payload)
            return
        now = self.clock()
        dev = self.topics.dev_of_cmd(topic)
        if dev is not None:
            self.dispatcher.request(dev, topic, payload, now)
            return
        action = self.observers.action_of(topic)
        if action is None:                # e.g. a sync request: changes nothing
            self.outbox.put(self.observers.on_message(topic, payload, now), now, observed=True)
            return
        doc, answer, reason = authorise_act(self.gate, self.result_topic, self.cfg.gateway_id, topic, payload,
                                            action, now)
        if reason:
            # a refusal's answer goes straight out (QoS 0): a flood of garbage must not cost a spool commit each;
            # the refusal itself is counted and on the audit record
            self.metrics.refused.labels(reason).inc()
            self.outbox.publish_now(answer[0], answer[1])
            return
        self.outbox.put([answer] + self.observers.deliver(topic, doc, now), now, observed=True)

    def _drill_clock(self, payload: bytes) -> None:
        """{"advance_s": N} or {"t": epoch}: move the virtual clock, then run what fell due."""
        try:
            doc = json.loads(payload)
            before = self.clock()
            now = self.clock.advance(float(doc["advance_s"])) if "advance_s" in doc else self.clock.set(float(doc["t"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("drill clock message refused (%s): send {\"advance_s\": 1200} or {\"t\": epoch}", e)
            return
        log.info("drill clock moved %.0f s to %.3f", now - before, now)
        self.tick(now)

    def _loop_exception(self, loop, context) -> None:
        """asyncio's handler for an exception in a callback (a paho message, a datagram): logged with its
        traceback once per burst and counted, not 6,648 tracebacks for 60,000 bad datagrams (issue 12.7)."""
        e = context.get("exception")
        where = str(context.get("message", "callback")).split("(")[0][:80]   # not the arguments: one key per site
        self.burst.exception(f"loop:{type(e).__name__}:{where}", "unexpected error in %s: %r", where, e, exc=e)

    # -- periodic --------------------------------------------------------------------------------
    async def ticker(self) -> None:
        last_stats = last_gauges = -1e18
        while True:
            await asyncio.sleep(self.cfg.tick_interval)
            self.tick(self.clock())
            self.beats.beat("ticker")
            idle = self.ingest.queue.empty()
            if idle:
                self.beats.beat("ingest")     # waiting for frames is healthy; a queue that does not drain is not
            if self.collector is not None:
                self.collector.tick(idle)
            if self.udp is not None:
                self.udp.transport.poll_drops()   # the kernel's drops, also when no datagram followed them
            mono = time.monotonic()
            if mono - last_gauges >= 5:
                last_gauges = mono
                self.update_gauges()
            if mono - last_stats >= self.cfg.stats_interval:
                last_stats = mono
                self.outbox.publish_now(self.topics.stats, self.stats())

    def tick(self, now: float) -> None:
        """Everything time-driven, with the daemon clock (tests call this with virtual time)."""
        self.burst.flush()
        self.spool.retry_deletes()        # rows whose delete failed on a full disk (issue 12)
        items = []
        for dev, silent, item in self.presence.gone_quiet(now):
            log.warning("device offline: nothing heard for %.0f s", silent, extra=logs.fields(device=dev))
            items.append(item)
        if items:
            try:
                self.outbox.commit(items)
            except SpoolError as e:
                self.burst.event("offline_spool", "offline state not recorded: %s", e, level=logging.CRITICAL)
        for topic, raw in self.observers.requests():     # e.g. Sparkplug DCMDs: checked as if over MQTT
            dev = self.topics.dev_of_cmd(topic)
            if dev is not None:
                self.dispatcher.request(dev, topic, raw, now)
        self.dispatcher.due(now)
        self.outbox.report_thinned(now)
        self._authority_tick()
        self.outbox.put(self.observers.tick(now), now, observed=True)

    def _settle_journal(self) -> None:
        """Restore the plugins' state from the spool, then observe again what the last run journalled and never
        settled (it died between an alarm's ack and the commit of its incident, issue 12)."""
        self.observers.restore(self.spool.plugin_states())
        pending = self.spool.journal()
        if not pending:
            return
        self.outbox.journaled = len(pending)
        log.warning("%d alarms/events the last run accepted had not reached its plugins when it stopped: "
                    "observed now", len(pending))
        now = self.clock()
        self.outbox.put(self.observers.observe([json.loads(doc) for doc in pending]), now, observed=True)

    def _authority_tick(self) -> None:
        """A changed roster is taken up (and audited by the Gate); a registry change the cache took up is
        recorded (what changed in it - key rotations, decommissioning - is recorded by import-registry)."""
        try:
            self.gate.reload()
            self.gate.tick()
        except Exception:
            log.exception("operator roster reload failed; the roster in force stays")
        sig = self.registry.sig
        if sig != self._registry_sig:
            first = self._registry_sig is None
            self._registry_sig = sig
            if not first:
                issued = self.registry.db.meta_get("bundle_issued_at") if self.registry.db else None
                self.gate.record("registry", "registry_changed", "done", {"recorder": self.cfg.gateway_id}, None, "",
                                 {"registry": str(self.cfg.registry), "bundle_issued_at": issued})

    def update_gauges(self) -> None:
        try:
            depth = self.spool.depth()
        except SpoolError as e:
            self.metrics.storage_errors.labels("spool", e.kind).inc()
            self.burst.event("gauges", "spool gauges not updated: %s", e, level=logging.CRITICAL)
            return
        oldest = [t for _, t in depth.values() if t is not None]
        for lane, (n, _) in depth.items():
            self.metrics.spool_depth.labels(lane).set(n)
        self.metrics.spool_age.set(self.clock() - min(oldest) if oldest else 0)
        self.metrics.spool_bytes.set(self.spool.size)
        self.metrics.states_due.set(len(self.presence.due))
        online, offline = self.presence.counts()
        self.metrics.devices_online.set(online)
        self.metrics.devices_offline.set(offline)
        for (name, label), v in self.observers.gauges(self.clock()).items():
            getattr(self.metrics, name).labels(label).set(v)
        self.metrics.audit_used.set(self.gate.audit.usage()["fraction"])

    def stats(self) -> dict:
        m = self.metrics
        rej = {}
        for metric in m.rejected.collect():
            for s in metric.samples:
                if s.name.endswith("_total") and s.value:
                    rej[s.labels["reason"]] = int(s.value)
        head = self.gate.audit.head
        return {"schema": "gasguard.gateway-stats/1", "gateway": self.cfg.gateway_id, "t": round(self.clock(), 3),
                "accepted": self.accepted_count, "rejected": rej, "spool_bytes": self.spool.size,
                "connected": self.publisher.connected, "thinned": int(m.value("gasguard_gateway_thinned_readings_total")),
                # issue 14: refusals since start, the audit head (gasguard audit verify --head), its fill
                "authority": {"refused": dict(self.gate.counts), "audit_head": f"{head[0]}:{head[1]}" if head else None,
                              "audit_used": self.gate.audit.usage()["fraction"],
                              "roster_serial": self.gate.roster.serial if self.gate.roster else None}}

    # -- lifecycle -------------------------------------------------------------------------------
    def _started(self) -> None:
        """Running: on the audit record with the configuration taken up (after every refusal at start, which
        must stay the one line it is)."""
        cfg = self.cfg
        self.gate.audit.record(category="config", type="start", outcome="done", source={"recorder": cfg.gateway_id},
                               detail={"version": __version__, "config": str(cfg.source or ""),
                                       "config_sha256": sha256_file(cfg.source), "roster": str(cfg.roster or ""),
                                       "roster_serial": self.gate.roster.serial if self.gate.roster else None,
                                       "clock": getattr(self.clock, "mode", "real")})
        if self.gate.roster is None:
            log.warning("no operator roster ([authority] roster/trust): every node command, acknowledgement and "
                        "operator input will be refused and recorded")

    async def run(self, stop: asyncio.Event) -> None:
        self.ingest.start()
        asyncio.get_running_loop().set_exception_handler(self._loop_exception)
        if self.cfg.metrics_bind:
            try:
                self.metrics.serve(self.cfg.metrics_bind)
            except OSError as e:        # a refusal at start (exit 2), not a traceback
                raise ConfigError("metrics.bind", f"{self.cfg.metrics_bind}: cannot listen ({e.strerror}); "
                                                  "stop what holds the port or choose another") from None
            log.info("prometheus metrics on http://%s/metrics", self.cfg.metrics_bind)
        depth = self.spool.depth()
        log.info("gateway %s (%s) starting; spool %s holds %s", self.cfg.gateway_id, self.cfg.district,
                 self.cfg.spool, ", ".join(f"{k} {v[0]}" for k, v in depth.items()))
        if self.ingest.lane is not None:
            log.info("reading lane: %s", self.ingest.lane.describe())
        if self.pre is not None:
            self.pre.start()
        self.publisher.start()
        self._settle_journal()          # before the first new frame: what the last run acked but never graded
        if self.collector is not None:
            self.collector.start()      # the state loaded at start, frozen before the first frame
        udp_transport = None
        if self.cfg.udp_bind:
            try:
                udp_transport, self.udp = await listen(self.cfg.udp_bind, self.ingest.deliver_nowait, self.metrics,
                                                       self.burst, allow=self.cfg.udp_forwarders,
                                                       rcvbuf=self.cfg.udp_rcvbuf)
            except OSError as e:        # a refusal at start (exit 2), not a traceback
                self.publisher.stop()
                raise ConfigError("udp.bind", f"{self.cfg.udp_bind}: cannot listen ({e.strerror}); stop what "
                                              "holds the port or choose another") from None
        ingest_tasks = [asyncio.create_task(supervise(t.name, t.run, metrics=self.metrics)) for t in self.serial]
        core = [asyncio.create_task(supervise("ingest", self.ingest.run, metrics=self.metrics)),
                asyncio.create_task(supervise("publisher", self.publisher.run, metrics=self.metrics)),
                asyncio.create_task(supervise("ticker", self.ticker, metrics=self.metrics))]
        for name in ("ingest", "ticker"):
            self.beats.beat(name)
        watchdog = Watchdog(self.beats, self.cfg.stall_after)
        watchdog.ready(f"gateway {self.cfg.gateway_id}: {len(self.serial)} serial port(s)"
                       f"{', UDP ' + self.cfg.udp_bind if self.cfg.udp_bind else ''}")
        self._started()
        try:
            await stop.wait()
        finally:
            watchdog.stopping()
            log.info("stopping: ingest first, then flushing what the broker takes in 3 s")
            self.stopping = True
            for t in ingest_tasks:
                t.cancel()
            if udp_transport:
                udp_transport.close()
            await _cancelled(ingest_tasks, "ingest")
            self.ingest.drain()
            self.beats.beat("ingest")
            deadline = time.monotonic() + 3.0
            while self.publisher.pending() and time.monotonic() < deadline:
                self.publisher.fill()
                await asyncio.sleep(0.05)
            for t in core:
                t.cancel()
            await _cancelled(core, "core")
            self.publisher.stop()
            self.observers.close()
            try:
                left = ", ".join(f"{k} {v[0]}" for k, v in self.spool.depth().items())
            except SpoolError as e:
                left = f"unknown ({e})"
            log.info("stopped; left in spool: %s", left)
            self.spool.close()
            self.registry.close()      # its read-only connection to the registry file
            if self.pre is not None:
                self.pre.close()
            self.gate.audit.record(category="config", type="stop", outcome="done",
                                   source={"recorder": self.cfg.gateway_id})
            self.gate.close()
