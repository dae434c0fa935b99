"""The gateway daemon: transports -> verify -> spool (durable, with counters) -> ack -> publish.

Order of effects for one accepted frame (the invariants the fault test checks):
  1. verify (MIC, counter, registry, policy);
  2. one SQLite transaction: the messages + the device's uplink counter + the downlink counter of the ack;
  3. the ack downlink (alarms, events) - only after 2, so an acked alarm is never lost;
  4. plugins observe it (their outputs are spooled in turn);
  5. the publisher sends it; the rows are deleted on PUBACK.
Frames are processed in arrival order, in groups that share one transaction (group commit), so a fsync
is paid per group, not per frame.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path

from gasguard import __version__, logs
from gasguard.authority import AuditLog, Gate, Refused
from gasguard.authority.errors import AuthorityError
from gasguard.authority.secretfile import load_public
from gasguard.firmware import bounds
from gasguard.protocol import frame
from gasguard.protocol.const import ACK, ALARM as T_ALARM, DOWN, EVENT as T_EVENT, R_OK, UP

from . import payloads
from .burstlog import BurstLog
from .commands import BadCommand, Commands, parse_request
from .config import ConfigError
from .metrics import Metrics
from .plugin import PLUGINS, Plugin, PluginContext, normalise
from .publisher import Publisher
from .spool import ALARM, EVENT, LANE_NAMES, LANE_OF, READING, STATE, Item, Spool, SpoolFull
from .supervisor import supervise
from .transports.semtech_udp import listen
from .transports.serial import SerialTransport
from .verify import Rejected, RegistryCache, Verifier
from .watchdog import Heartbeats, Watchdog

log = logging.getLogger("gasguard.gateway")

QUEUE_MAX = 10_000     # frames waiting for verification; a UDP burst past this is counted, not buffered
GROUP_MAX = 512        # frames per transaction
THIN_REPORT_S = 10.0   # at most one published "thinned" event this often (counts accumulate between)
EVENT_KIND = 0x100     # seqs table: (dev, alarm code | cleared<<7) for alarms, (dev, EVENT_KIND) for events


def _mtopic_match(sub: str, topic: str) -> bool:
    s, t = sub.split("/"), topic.split("/")
    for i, part in enumerate(s):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(s) == len(t)


def alarms_first(group: list) -> tuple[list, list]:
    """Alarm priority at ingest (a header peek, no verification): an alarm whose device has no earlier
    frame in this group moves to a group of its own, committed and published before the rest. Nothing
    else moves, so readings keep their arrival order and each device its frame order (counters verify as
    they would). ([], group) when no alarm can move."""
    heads = [frame.peek(raw) if raw is not None else None for raw, _, _ in group]
    if not any(h is not None and h[0] == T_ALARM for h in heads):
        return [], group
    first, rest, seen = [], [], set()
    for g, h in zip(group, heads):
        if h is not None:
            if h[1] not in seen and h[0] == T_ALARM:
                first.append(g)
                seen.add(h[1])
                continue
            seen.add(h[1])
        rest.append(g)
    return first, rest


async def _cancelled(tasks: list, what: str, timeout: float = 5.0) -> None:
    """Wait for cancelled tasks to end, bounded: a task that ignores its cancel must not hang the stop."""
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=timeout)
    if stuck:
        log.error("%d %s task(s) did not stop within %.0f s; stopping without them", len(stuck), what, timeout)


def _hexify(f: dict) -> dict:
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in f.items()}


def _sha256_file(path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except OSError:
        return None


def offline_timeout(cfg, device) -> float:
    """Seconds of silence before a device is published offline: `limits.offline_after`, or
    `limits.offline_missed_reports` of the device's own report periods if that is longer. A household meter
    on battery reports every 900 s; one fixed timeout either calls it offline between two reports or
    notices a dead regulator station far too late."""
    if device is None:
        return cfg.offline_after
    report_s = (device.config or {}).get("report_s") or bounds.DEFAULTS[device.profile]["report_s"]
    return max(cfg.offline_after, cfg.offline_missed * float(report_s))


def _command_action(body: dict) -> str:
    """The authority action of a node-command body: its cmd, once the request's form is checked."""
    return parse_request(body)["cmd"]


def _request_id(payload: bytes) -> str:
    """The request_id of a refused request, signed or not, for its answer (best effort, never raises)."""
    try:
        doc = json.loads(payload)
        if isinstance(doc, dict) and isinstance(doc.get("body"), str):
            doc = json.loads(doc["body"])
        return str(doc.get("request_id", ""))[:128] if isinstance(doc, dict) else ""
    except ValueError:
        return ""


def authorise_act(gate: Gate, topics, gateway_id: str, topic: str, payload: bytes, action, now: float):
    """An acknowledgement or operator input checked by `gate` (issue 14): (the verified body with "by" the
    verified operator and "via" the console that signed for them, or None when refused; the answer for the
    request-result topic; the refusal reason or None). Used by the daemon and by test harnesses that drive a
    plugin the way the daemon does."""
    sha = hashlib.sha256(payload).hexdigest()
    try:
        v = gate.check(topic, payload, action=action, category="incident",
                       detail={"incident_id": topic.rsplit("/", 1)[-1]})
    except Refused as r:
        return None, (topics.request_result, payloads.request_result(
            gateway_id, now, topic, sha, "refused", r.reason, str(r), r.operator), "event", False), r.reason
    doc = dict(v.body, by=v.operator.id)
    if v.signer.id != v.operator.id:
        doc["via"] = v.signer.id
    return doc, (topics.request_result, payloads.request_result(
        gateway_id, now, topic, sha, "allowed", "", v.action, v.operator.id), "event", False), None


def open_authority(cfg, clock, on_warning=None) -> Gate:
    """The audit log and the Gate of `[authority]`; ConfigError (exit 2) names what is wrong."""
    spool = Path(cfg.spool)
    try:
        audit = AuditLog(cfg.audit_dir or spool.parent / "audit", recorder=cfg.gateway_id,
                         segment_bytes=cfg.audit_segment_bytes, capacity_bytes=cfg.audit_capacity_bytes,
                         warn_fraction=cfg.audit_warn_fraction, clock=clock, on_warning=on_warning)
        trusted = load_public(cfg.trust) if cfg.trust else None
        return Gate(cfg.roster, trusted, cfg.replay or spool.with_name(spool.name + ".replay.db"), audit,
                    district=cfg.district, max_age_s=cfg.max_age_s, max_skew_s=cfg.max_skew_s)
    except AuthorityError as e:
        raise ConfigError("authority", str(e)) from None


class Daemon:
    def __init__(self, cfg, *, clock=time.time, plugins: list[Plugin] | None = None, spool_max_pages=None):
        self.cfg, self.clock = cfg, clock
        self.metrics = Metrics()
        self.metrics.spool_max_bytes.set(cfg.spool_max_bytes)
        self.metrics.info.labels(cfg.gateway_id, cfg.district, "real").set(1)
        self.metrics.clock_speed.set(1)
        self.gate = open_authority(cfg, clock, on_warning=lambda msg, usage: self.metrics.audit_warnings.inc())
        self.gate.audit.record(category="config", type="start", outcome="done", source={"recorder": cfg.gateway_id},
                               detail={"version": __version__, "config": str(cfg.source or ""),
                                       "config_sha256": _sha256_file(cfg.source), "roster": str(cfg.roster or ""),
                                       "roster_serial": self.gate.roster.serial if self.gate.roster else None})
        if self.gate.roster is None:
            log.warning("no operator roster ([authority] roster/trust): every node command, acknowledgement and "
                        "operator input will be refused and recorded")
        self._registry_sig = None
        self.beats = Heartbeats()                  # progress of ingest and ticker, for the systemd watchdog
        self.burst = BurstLog(log)
        self.spool = Spool(cfg.spool, synchronous=cfg.spool_sync, max_bytes=cfg.spool_max_bytes,
                           audit=cfg.spool_audit, max_pages=spool_max_pages)
        self.registry = RegistryCache(cfg.registry)
        counters = self.spool.counters()
        self.verifier = Verifier(self.registry, counters, rate_per_min=cfg.rate_per_min, burst=cfg.rate_burst)
        self.seqs = self.spool.seqs()
        self.topics = payloads.Topics(cfg.root)
        self.publisher = Publisher(cfg, self.spool, self.metrics, clock, __version__, on_message=self._on_mqtt)
        self.commands = Commands(cfg.command_timeout, cfg.command_retry)
        self.queue: asyncio.Queue | None = None
        # per heard device: route, online, last_seen, last state publish (with the verifier's: one object each)
        self.devstate = self.verifier.states
        self.serial = [SerialTransport(sp, self._deliver, self.metrics) for sp in cfg.serial]
        self.udp = None
        self.held: list[Item] = []                   # plugin/command outputs waiting for disk space
        self.stopping = False
        if plugins is None:
            ctx = PluginContext(cfg.gateway_id, cfg.district, cfg.root, str(cfg.registry), clock, mqtt={
                "host": cfg.mqtt_host, "port": cfg.mqtt_port, "client_id": cfg.mqtt_client_id,
                "username": cfg.mqtt_username, "password": cfg.mqtt_password, "tls_ca": cfg.tls_ca,
                "tls_cert": cfg.tls_cert, "tls_key": cfg.tls_key, "keepalive": cfg.keepalive,
                "reconnect_min": cfg.reconnect_min, "reconnect_max": cfg.reconnect_max,
                "spool_dir": str(cfg.spool.parent), "version": __version__})
            plugins = [PLUGINS[name](opts, ctx) for name, opts in cfg.plugins.items()]
        self.plugins = plugins
        for p in plugins:
            self.publisher.subscriptions.extend(p.subscriptions)
        self.accepted_count = 0
        self.thinned_acc: dict[int, int] = {}      # dev -> readings thinned since the last published report
        self.thinned_reported = -1e18

    # -- ingest ----------------------------------------------------------------------------------
    async def _deliver(self, raw, rx, route) -> None:
        await self.queue.put((raw, rx, route))

    def _deliver_nowait(self, raw, rx, route) -> None:
        try:
            self.queue.put_nowait((raw, rx, route))
        except asyncio.QueueFull:
            self._reject("ingest_overflow", None, rx, "verification queue full")

    def _reject(self, reason: str, dev, rx, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        self.burst.event("reject:" + reason, "rejected %s frame from %s via %s: %s", reason,
                         "?" if dev is None else f"{dev:08x}", rx.get("transport") if rx else "?", detail)

    async def ingest(self) -> None:
        while True:
            group = [await self.queue.get()]
            while len(group) < GROUP_MAX and not self.queue.empty():
                group.append(self.queue.get_nowait())
            first, rest = alarms_first(group)
            if first:
                self.process(first)    # its own, small transaction: on disk and published before the rest
            if rest:
                self.process(rest)
            self.beats.beat("ingest")

    def process(self, group: list) -> None:
        """Verify a group of frames and commit what is accepted in one transaction."""
        now = self.clock()
        cfg, gid, dist = self.cfg, self.cfg.gateway_id, self.cfg.district
        items: list[Item] = []
        counters: dict = {}
        seqs: dict = {}
        undo: list = []
        acks: list = []          # (dev, ack fields) to seal after commit
        accepted: list = []      # (mid, f, device, rx, route, dup_retransmission)
        results: list = []
        down = {}
        per_transport: dict = {}
        for _raw, rx, _route in group:   # counted per group, not per frame (hot path)
            t = rx.get("transport", "?")
            per_transport[t] = per_transport.get(t, 0) + 1
        for t, n in per_transport.items():
            self.metrics.frames_in.labels(t).inc(n)
        for raw, rx, route in group:
            if raw is None:
                self._reject(route if isinstance(route, str) else "noise", None, rx, "line noise")
                continue
            try:
                v = self.verifier.check(raw, now)
            except Rejected as r:
                self._reject(r.reason, r.dev, rx, str(r))
                continue
            f, dev = v.f, v.f["dev"]
            undo.append((dev, self.verifier.accept(v)))
            counters[(dev, UP)] = f["fcnt"]
            mid = payloads.msg_id(gid, dev, f["fcnt"])
            typ = f["type"]
            repeat = False
            if typ == "reading":
                entry = payloads.reading_entry(mid, f, now, rx)
                items.append(Item(READING, dev, payloads.dumps(entry), mid, now, routine=(f["state"] & 0xF8) == 0))
            elif typ in ("alarm", "event"):
                kind = (f["code"] | (0x80 if f["cleared"] else 0)) if typ == "alarm" else EVENT_KIND
                sq = f["aseq"] if typ == "alarm" else f["eseq"]
                key = (dev, kind)
                # SPEC 3.4: a retransmission has a new counter and the same aseq: ack it, publish once
                repeat = seqs.get(key, self.seqs.get(key)) == sq
                if not repeat:
                    seqs[key] = sq
                    if typ == "alarm":
                        body = payloads.alarm(gid, dist, mid, f, now, rx, v.device)
                        items.append(Item(ALARM, dev, payloads.dumps(body), mid, now,
                                          topic=self.topics.device(dev, "alarm")))
                    else:
                        body = payloads.event(gid, dist, mid, f, now, rx)
                        items.append(Item(EVENT, dev, payloads.dumps(body), mid, now,
                                          topic=self.topics.device(dev, "event")))
                dfc = down.get(dev, self.verifier.down.get(dev, 0)) + 1
                down[dev] = dfc
                counters[(dev, DOWN)] = dfc
                acks.append((dev, {"type": "ack", "dev": dev, "fcnt": dfc, "ref_type": T_ALARM if typ == "alarm"
                                   else T_EVENT, "ref": sq, "result": R_OK}))
            elif typ == "ack":
                p = self.commands.acked(dev, f)
                if p is not None:
                    res = payloads.result_name(f["result"])
                    results.append((p, res))
                    log.info("command %s (cid %d) answered: %s", p.cmd, p.cid, res,
                             extra=logs.fields(device=dev, request=p.request_id))
                    items.append(Item(EVENT, dev, payloads.dumps(payloads.command_result(
                        gid, dev, now, p.request_id, p.cmd, p.cid, res,
                        operator=p.auth.operator.id if p.auth else None)), mid, now,
                        topic=self.topics.device(dev, "cmd/result")))
            items.extend(self._state_items(dev, f, now, mid, v.device))
            accepted.append((mid, f, v.device, rx, route, repeat))
        if not accepted:
            return
        self.publisher.flush_acked()   # PUBACKed rows leave first: their space is free for this commit
        try:
            self.spool.commit(items, counters, seqs)
        except SpoolFull as e:
            for dev, prev in reversed(undo):
                self.verifier.rollback(dev, prev)
            self.metrics.spool_errors.inc()
            self.metrics.rejected.labels("spool_full").inc(len(accepted))
            log.critical("SPOOL WRITE FAILED, %d frames NOT accepted (devices will retransmit alarms): %s",
                         len(accepted), e)
            return
        self.seqs.update(seqs)
        for dev, dfc in down.items():
            self.verifier.down[dev] = dfc
        for p, r in results:
            self.metrics.commands.labels(r).inc()
            self._command_outcome(p, r)   # a node's own refusal (e.g. gas still present) is on the record too
        # routes first: a device's first frame may be the alarm we are about to ack
        for mid, f, device, rx, route, repeat in accepted:
            st = self.devstate[f["dev"]]
            st.via, st.rx = route, rx
            self.metrics.accepted.labels(f["type"]).inc()
        # acks only now: the alarm is on disk
        for dev, fields in acks:
            self._send(dev, frame.seal(fields, self.verifier.registry.get(dev).key, DOWN), "ack")
        self.accepted_count += len(accepted)
        self.publisher.notify({it.lane for it in items})
        self.publisher.kick()
        if self.plugins:
            self._observe(accepted, now)
        if self.spool.over():
            self._thin(now)

    def _state_items(self, dev: int, f: dict, now: float, mid: str, device=None) -> list[Item]:
        """Retained <dev>/state: on first sight, on a change of the state byte or back online, else at most
        every third of the device's offline timeout (so the retained last reading stays fresh without one
        message per reading)."""
        st = self.verifier.state(dev)      # new: online False, never published
        if not st.silence:
            st.silence = offline_timeout(self.cfg, device)
        sbyte = f.get("state")
        st.last_seen = now
        if f["type"] == "reading":
            # the entry is built only when a state message is (hot path); the fields, not the frame (memory)
            st.r_fcnt, st.r_gas, st.r_pressure, st.r_battery, st.r_state, st.r_inlet, st.r_t = (
                f["fcnt"], f["gas"], f["pressure"], f["battery"], f["state"], f.get("inlet"), now)
        changed = sbyte is not None and sbyte != st.sbyte
        if sbyte is not None:
            st.sbyte = sbyte
        if st.online and not changed and now - st.pub < st.silence / 3:
            return []
        st.online, st.pub = True, now
        return [self._state_item(dev, now, st)]

    def _state_item(self, dev: int, now: float, st) -> Item:
        last = None
        if st.r_t is not None:
            f = {"dev": dev, "fcnt": st.r_fcnt, "gas": st.r_gas, "pressure": st.r_pressure, "battery": st.r_battery,
                 "state": st.r_state, "inlet": st.r_inlet}
            last = payloads.reading_entry(payloads.msg_id(self.cfg.gateway_id, dev, st.r_fcnt), f, st.r_t, {})
            last.pop("rx")
        body = payloads.state(self.cfg.gateway_id, dev, now, st.online, st.last_seen, last)
        return Item(STATE, dev, payloads.dumps(body), f"{self.cfg.gateway_id}:{dev:08x}:state:{now:.3f}", now,
                    topic=self.topics.device(dev, "state"), retain=True)

    def _send(self, dev: int, buf: bytes, kind: str) -> bool:
        st = self.devstate.get(dev)
        if st is None or not hasattr(st.via, "send"):
            return False
        ok = st.via.send(buf, st.rx)
        if ok:
            self.metrics.downlinks.labels(kind).inc()
        return ok

    # -- plugins -------------------------------------------------------------------------------
    def _observe(self, accepted, now) -> None:
        out = []
        for mid, f, device, rx, route, repeat in accepted:
            if repeat:
                continue
            st = frame.state_fields(f["state"]) if "state" in f else None
            obs = {"id": mid, "t": now, "dev": f["dev"], "type": f["type"], "frame": _hexify(f), "state": st,
                   "device": device.public(), "rx": dict(rx)}
            if f["type"] not in ("reading", "alarm", "event"):
                continue
            for p in self.plugins:
                out.extend(self._call(p, "observe", obs))
        self._spool_outputs(out, now)

    def _call(self, plugin, method, *args) -> list:
        try:
            res = getattr(plugin, method)(*args) or []
            return [normalise(o) for o in res]
        except Exception:
            log.exception("plugin %s.%s failed; the gateway carries on without its output",
                          getattr(plugin, "name", plugin), method)
            return []

    def _spool_outputs(self, outs, now) -> None:
        items = self.held
        for topic, payload, lane, retain in outs:
            mid = payload.get("id") or f"{self.cfg.gateway_id}:plugin:{now:.6f}:{len(items)}"
            items.append(Item(LANE_OF[lane], 0, payloads.dumps(payload), str(mid), now, topic=topic, retain=retain))
        if not items:
            return
        try:
            self.spool.commit(items)
            self.held = []
        except SpoolFull as e:
            self.held = items   # retried on every tick: plugin alarms are never dropped
            self.metrics.spool_errors.inc()
            log.critical("SPOOL WRITE FAILED for %d plugin/command messages, holding them in memory: %s",
                         len(items), e)
            return
        self.publisher.notify({it.lane for it in items})
        self.publisher.kick()

    def _thin(self, now) -> None:
        dropped = self.spool.thin(self.publisher.loaded_upto())
        n = sum(dropped.values())
        if n:
            self.metrics.thinned.inc(n)
            for d, c in dropped.items():
                self.thinned_acc[d] = self.thinned_acc.get(d, 0) + c
            self.burst.event("thinned", "spool past %d bytes: thinned %d routine readings of %d devices "
                             "(alarms and events kept)", self.cfg.spool_max_bytes, n, len(dropped))
        self._report_thinned(now)

    def _report_thinned(self, now) -> None:
        """One published `thinned` event per THIN_REPORT_S with the counts since the last one: an event per
        thinning pass would itself fill the spool it is trying to keep bounded (events are never dropped)."""
        if not self.thinned_acc or now - self.thinned_reported < THIN_REPORT_S:
            return
        acc, self.thinned_acc, self.thinned_reported = self.thinned_acc, {}, now
        body = payloads.gateway_event(self.cfg.gateway_id, now, "thinned",
                                      {"readings": sum(acc.values()), "devices": {f"{d:08x}": c for d, c in acc.items()},
                                       "spool_max_bytes": self.cfg.spool_max_bytes})
        self._spool_outputs([(self.topics.event, body, "event", False)], now)

    # -- MQTT in: commands and plugin subscriptions ------------------------------------------------
    def _on_mqtt(self, topic: str, payload: bytes) -> None:
        now = self.clock()
        dev = self.topics.dev_of_cmd(topic) if topic.startswith(self.topics.root + "/") else None
        if dev is not None:
            self._command(dev, topic, payload, now)
            return
        plugins = [p for p in self.plugins if any(_mtopic_match(s, topic) for s in p.subscriptions)]
        if not plugins:
            return
        action = next((a for a in (getattr(p, "action_of", lambda t: None)(topic) for p in plugins) if a), None)
        outs = []
        if action is not None:
            doc = self._authorised(topic, payload, action, now, outs)
            if doc is None:
                self._spool_outputs(outs, now)
                return
        else:
            try:
                doc = json.loads(payload)
            except ValueError:
                self.burst.event("plugin_json", "non-JSON message on %s ignored", topic)
                return
        for p in plugins:
            outs.extend(self._call(p, "on_message", topic, doc, now))
        self._spool_outputs(outs, now)

    def _authorised(self, topic: str, payload: bytes, action, now: float, outs: list) -> dict | None:
        doc, answer, reason = authorise_act(self.gate, self.topics, self.cfg.gateway_id, topic, payload, action, now)
        outs.append(answer)
        if reason:
            self.metrics.refused.labels(reason).inc()
        return doc

    def _command(self, dev: int, topic: str, payload: bytes, now: float) -> None:
        v = None
        try:
            v = self.gate.check(topic, payload, action=_command_action, category="command",
                                detail={"dev": f"{dev:08x}"})
            req = parse_request(v.body)
            device = self.registry.get(dev)
            if device is None or device.state != "commissioned":
                raise BadCommand(f"device {dev:08x} is not a commissioned device of this gateway")
            p = self.commands.add(dev, req, now)
            p.auth = v
        except (Refused, BadCommand) as e:
            reason = e.reason if isinstance(e, Refused) else None
            rid = _request_id(payload)
            if reason:
                self.metrics.refused.labels(reason).inc()
            elif v is not None:     # allowed by authority, then not doable: that outcome is recorded as well
                self.gate.done(v, category="command", event=v.action, outcome="failed",
                               detail={"dev": f"{dev:08x}", "error": str(e)})
            self.metrics.commands.labels("rejected").inc()
            log.warning("command rejected: %s%s", f"{reason}: " if reason else "", e,
                        extra=logs.fields(device=dev, request=rid or None, operator=v.operator.id if v else None))
            body = payloads.command_result(self.cfg.gateway_id, dev, now, rid, v.action if v else "?", None,
                                           "rejected", f"{reason}: {e}" if reason else str(e), reason=reason,
                                           operator=v.operator.id if v else None)
            self._spool_outputs([(self.topics.device(dev, "cmd/result"), body, "event", False)], now)
            return
        log.info("command %s (cid %d) queued", p.cmd, p.cid,
                 extra=logs.fields(device=dev, request=p.request_id, operator=v.operator.id))
        self._commands_due(now)

    def _command_outcome(self, p, result: str) -> None:
        if p.auth is not None:
            self.gate.done(p.auth, category="command", event=p.cmd, outcome="done" if result == "ok" else "failed",
                           detail={"dev": f"{p.dev:08x}", "cid": p.cid, "request_id": p.request_id, "result": result})

    def _commands_due(self, now: float) -> None:
        send, dead = self.commands.due(now)
        for p in send:
            device = self.registry.get(p.dev)
            if device is None:
                continue
            # SPEC 1: the downlink counter is persisted before it is used
            dfc = self.verifier.down.get(p.dev, 0) + 1
            try:
                self.spool.commit([], {(p.dev, DOWN): dfc})
            except SpoolFull as e:
                log.critical("cannot persist a downlink counter (%s); command waits", e)
                continue
            self.verifier.down[p.dev] = dfc
            buf = frame.seal(dict(self.commands.fields(p), fcnt=dfc), device.key, DOWN)
            if not self._send(p.dev, buf, "command"):
                self.burst.event("no_route", "command for %08x waits: the device was not heard on any transport yet",
                                 p.dev)
        outs = []
        for p in dead:
            self.metrics.commands.labels("timeout").inc()
            self._command_outcome(p, "timeout")
            log.warning("command %s (cid %d) timed out after %d tries", p.cmd, p.cid, p.tries,
                        extra=logs.fields(device=p.dev, request=p.request_id))
            outs.append((self.topics.device(p.dev, "cmd/result"), payloads.command_result(
                self.cfg.gateway_id, p.dev, now, p.request_id, p.cmd, p.cid, "timeout",
                f"no ack after {p.tries} tries", operator=p.auth.operator.id if p.auth else None), "event", False))
        if outs:
            self._spool_outputs(outs, now)

    # -- periodic --------------------------------------------------------------------------------
    async def ticker(self) -> None:
        last_stats = last_gauges = -1e18
        while True:
            await asyncio.sleep(self.cfg.tick_interval)
            self.tick(self.clock())
            self.beats.beat("ticker")
            if self.queue.empty():
                self.beats.beat("ingest")     # waiting for frames is healthy; a queue that does not drain is not
            mono = time.monotonic()
            if mono - last_gauges >= 5:
                last_gauges = mono
                self.update_gauges()
            if mono - last_stats >= self.cfg.stats_interval:
                last_stats = mono
                self.publisher.publish_direct(self.topics.stats, self.stats())

    def tick(self, now: float) -> None:
        """Everything time-driven, with the daemon clock (tests call this with virtual time)."""
        self.burst.flush()
        items = []
        for dev, st in self.devstate.items():
            if st.online and now - st.last_seen > st.silence:   # set with the first online state
                st.online, st.pub = False, now
                log.warning("device offline: nothing heard for %.0f s", now - st.last_seen, extra=logs.fields(device=dev))
                items.append(self._state_item(dev, now, st))
        if items:
            try:
                self.spool.commit(items)
                self.publisher.notify({STATE})
                self.publisher.kick()
            except SpoolFull as e:
                log.critical("spool full, offline state not recorded: %s", e)
        self._commands_due(now)
        self._report_thinned(now)
        self._authority_tick()
        outs = []
        for p in self.plugins:
            outs.extend(self._call(p, "tick", now))
        self._spool_outputs(outs, now)

    def _authority_tick(self) -> None:
        """A changed roster is taken up (and audited by the Gate); a registry change the cache took up is
        recorded (what changed in it - key rotations, decommissioning - is recorded by import-registry)."""
        try:
            self.gate.reload()
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
        depth = self.spool.depth()
        oldest = [t for _, t in depth.values() if t is not None]
        for lane, (n, _) in depth.items():
            self.metrics.spool_depth.labels(lane).set(n)
        self.metrics.spool_age.set(self.clock() - min(oldest) if oldest else 0)
        self.metrics.spool_bytes.set(self.spool.size)
        self.metrics.audit_used.set(self.gate.audit.usage()["fraction"])
        online = sum(1 for st in self.devstate.values() if st.online)
        self.metrics.devices_online.set(online)
        self.metrics.devices_offline.set(sum(1 for st in self.devstate.values() if st.last_seen) - online)
        sums: dict = {}
        for p in self.plugins:
            try:
                gauges = getattr(p, "gauges", None)
                for name, values in ((gauges and gauges(self.clock())) or {}).items():
                    for label, v in values.items():
                        sums[(name, label)] = sums.get((name, label), 0) + v
            except Exception:
                log.exception("plugin %s.gauges failed", getattr(p, "name", p))
        for (name, label), v in sums.items():
            getattr(self.metrics, name).labels(label).set(v)

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
                "authority": {"refused": dict(self.gate.counts), "audit_head": f"{head[0]}:{head[1]}" if head else None,
                              "audit_used": self.gate.audit.usage()["fraction"],
                              "roster_serial": self.gate.roster.serial if self.gate.roster else None}}

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.queue = asyncio.Queue(QUEUE_MAX)
        if self.cfg.metrics_bind:
            self.metrics.serve(self.cfg.metrics_bind)
            log.info("prometheus metrics on http://%s/metrics", self.cfg.metrics_bind)
        depth = self.spool.depth()
        log.info("gateway %s (%s) starting; spool %s holds %s", self.cfg.gateway_id, self.cfg.district,
                 self.cfg.spool, ", ".join(f"{k} {v[0]}" for k, v in depth.items()))
        self.publisher.start()
        udp_transport = None
        if self.cfg.udp_bind:
            udp_transport, self.udp = await listen(self.cfg.udp_bind, self._deliver_nowait, self.metrics, self.burst)
        ingest_tasks = [asyncio.create_task(supervise(t.name, t.run, metrics=self.metrics)) for t in self.serial]
        core = [asyncio.create_task(supervise("ingest", self.ingest, metrics=self.metrics)),
                asyncio.create_task(supervise("publisher", self.publisher.run, metrics=self.metrics)),
                asyncio.create_task(supervise("ticker", self.ticker, metrics=self.metrics))]
        for name in ("ingest", "ticker"):
            self.beats.beat(name)
        watchdog = Watchdog(self.beats, self.cfg.stall_after)
        watchdog.ready(f"gateway {self.cfg.gateway_id}: {len(self.serial)} serial port(s)"
                       f"{', UDP ' + self.cfg.udp_bind if self.cfg.udp_bind else ''}")
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
            rest = []
            while not self.queue.empty():
                rest.append(self.queue.get_nowait())
            if rest:
                self.process(rest)
            self.beats.beat("ingest")
            deadline = time.monotonic() + 3.0
            while self.publisher.connected and self.publisher.inflight and time.monotonic() < deadline:
                self.publisher.fill()
                await asyncio.sleep(0.05)
            for t in core:
                t.cancel()
            await _cancelled(core, "core")
            self.publisher.stop()
            for p in self.plugins:
                self._call(p, "close")
            left = self.spool.depth()
            log.info("stopped; left in spool: %s", ", ".join(f"{k} {v[0]}" for k, v in left.items()))
            self.spool.close()
            self.registry.close()      # its read-only connection to the registry file
            self.gate.audit.record(category="config", type="stop", outcome="done", source={"recorder": self.cfg.gateway_id})
            self.gate.close()
