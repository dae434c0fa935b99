"""The command dispatcher: everything that goes down to a device. It owns the downlink counters (one per
device, SPEC 4: persisted before use, never reused), seals acks and commands, sends them on the route the
device was last heard on, and turns district requests and device answers into command results.

Requests come from the district over MQTT (`request`), signed: the Gate (authority.py) checks signature,
role (node commands are engineers'), revocation, freshness and replay before anything is queued, and records
allowed and refused requests and each command's outcome at the node in the audit log (issue 14). Answers
come in accepted uplinks (`answered`, from ingest), retries and timeouts with the daemon clock (`due`). Bookkeeping of pending commands is
commands.Commands; this is where it meets the wire.
"""

from __future__ import annotations

import logging

from gasguard import logs
from gasguard.authority import Gate, Refused
from gasguard.protocol import frame, topics
from gasguard.protocol.const import DOWN

from . import payloads
from .authority import command_action, request_id_of
from .burstlog import BurstLog, untrusted
from .commands import BadCommand, Commands, parse_request
from .outbox import Outbox
from .presence import PresenceTable
from .spool import EVENT, Item, SpoolError
from .transports import Transport
from .verify import RegistryUnreadable

log = logging.getLogger("gasguard.gateway")


class Dispatcher:
    def __init__(self, cfg, registry, presence: PresenceTable, outbox: Outbox, metrics, burst: BurstLog,
                 down: dict[int, int], gate: Gate):
        self.cfg, self.registry, self.presence, self.outbox = cfg, registry, presence, outbox
        self.gate = gate
        self.metrics, self.burst = metrics, burst
        self.topics = cfg.topics
        self.down = down                  # dev -> highest downlink counter used (durable in the spool)
        self.commands = Commands(cfg.command_timeout, cfg.command_retry)

    # -- counters ----------------------------------------------------------------------------------
    def reserve(self, dev: int, reserved: dict[int, int]) -> int:
        """The next downlink counter for `dev` within a group not yet committed (`reserved`: dev -> last
        counter handed out in it). The caller commits `counters_of(reserved)` with its group."""
        dfc = reserved.get(dev, self.down.get(dev, 0)) + 1
        reserved[dev] = dfc
        return dfc

    @staticmethod
    def counters_of(reserved: dict[int, int]) -> dict:
        return {(dev, DOWN): c for dev, c in reserved.items()}

    def committed(self, reserved: dict[int, int]) -> None:
        """The group holding these counters is on disk: they are used."""
        self.down.update(reserved)

    # -- the wire ------------------------------------------------------------------------------------
    def send(self, dev: int, fields: dict, kind: str, key: bytes | None = None) -> bool:
        """Seal `fields` (with their counter) for `dev` and send them where the device was last heard."""
        st = self.presence.get(dev)
        if st is None or not isinstance(st.via, Transport):
            return False
        if key is None:
            device = self.registry.get(dev)
            if device is None:
                return False
            key = device.key
        ok = st.via.send(frame.seal(fields, key, DOWN), st.rx)
        if ok:
            self.metrics.downlinks.labels(kind).inc()
        return ok

    # -- answers (from ingest) ----------------------------------------------------------------------
    def answered(self, dev: int, f: dict, now: float, mid: str) -> tuple[Item | None, str | None]:
        """An ack frame from `dev`: the result item for the pending command it answers (committed with the
        group) and its result name (counted once committed); (None, None) when it answers nothing pending."""
        p = self.commands.acked(dev, f)
        if p is None:
            return None, None
        res = payloads.result_name(f["result"])
        log.info("command %s (cid %d) answered: %s", p.cmd, p.cid, res,
                 extra=logs.fields(device=dev, request=p.request_id))
        self.outcome(p, res)      # a node's own refusal (e.g. gas still present) is on the record too
        body = payloads.command_result(self.cfg.gateway_id, dev, now, p.request_id, p.cmd, p.cid, res,
                                       operator=p.auth.operator.id if p.auth else None)
        return Item(EVENT, dev, payloads.dumps(body), mid, now, topic=self.topics.device(dev, topics.CMD_RESULT)), res

    # -- requests (from the district) ---------------------------------------------------------------
    def request(self, dev: int, topic: str, payload: bytes, now: float) -> None:
        v = None
        try:
            v = self.gate.check(topic, payload, action=command_action, category="command",
                                detail={"dev": f"{dev:08x}"})
            req = parse_request(v.body)
            try:
                device = self.registry.get(dev)
            except RegistryUnreadable as e:
                raise BadCommand(str(e)) from None
            if device is None or device.state != "commissioned":
                raise BadCommand(f"device {dev:08x} is not a commissioned device of this gateway")
            p = self.commands.add(dev, req, now)
            p.auth = v
        except (Refused, BadCommand) as e:
            reason = e.reason if isinstance(e, Refused) else None
            rid = request_id_of(payload)
            if reason:
                self.metrics.refused.labels(reason).inc()
            elif v is not None:     # allowed by authority, then not doable: that outcome is recorded as well
                self.gate.done(v, category="command", event=v.action, outcome="failed",
                               detail={"dev": f"{dev:08x}", "error": str(e)})
            self.metrics.commands.labels("rejected").inc()
            who = v.operator.id if v else None
            # the district's text, escaped; a flood of bad requests is a count, not a flood (issue 12 item 7)
            self.burst.event("cmd_rejected", "command rejected: %s", untrusted(f"{reason}: {e}" if reason else str(e)),
                             allow=20, extra=logs.fields(device=dev, request=untrusted(rid) if rid else None,
                                                         operator=who))
            body = payloads.command_result(self.cfg.gateway_id, dev, now, rid, v.action if v else "?", None,
                                           "rejected", f"{reason}: {e}" if reason else str(e), reason=reason,
                                           operator=who)
            self.outbox.put([(self.topics.device(dev, topics.CMD_RESULT), body, "event", False)], now)
            return
        log.info("command %s (cid %d) queued", p.cmd, p.cid,
                 extra=logs.fields(device=dev, request=untrusted(p.request_id), operator=v.operator.id))
        self.due(now)

    def outcome(self, p, result: str) -> None:
        """What became of an allowed command at the node: its own record, with the request's source."""
        if p.auth is not None:
            self.gate.done(p.auth, category="command", event=p.cmd, outcome="done" if result == "ok" else "failed",
                           detail={"dev": f"{p.dev:08x}", "cid": p.cid, "request_id": p.request_id, "result": result})

    def due(self, now: float) -> None:
        """Send what is due (first tries and retries); publish a timeout result for what ran out of time."""
        send, dead = self.commands.due(now)
        for p in send:
            try:
                device = self.registry.get(p.dev)
            except RegistryUnreadable as e:
                self.burst.event("cmd_registry", "commands wait: %s", e)
                continue
            if device is None:
                continue
            # SPEC 1: the downlink counter is persisted before it is used
            dfc = self.down.get(p.dev, 0) + 1
            try:
                self.outbox.counters({(p.dev, DOWN): dfc})
            except SpoolError as e:
                self.burst.event("cmd_spool", "cannot persist a downlink counter (%s); command waits", e,
                                 level=logging.CRITICAL)
                continue
            self.down[p.dev] = dfc
            if not self.send(p.dev, dict(self.commands.fields(p), fcnt=dfc), "command", device.key):
                self.burst.event("no_route", "command for %08x waits: the device was not heard on any transport yet",
                                 p.dev)
        outs = []
        for p in dead:
            self.metrics.commands.labels("timeout").inc()
            self.outcome(p, "timeout")
            log.warning("command %s (cid %d) timed out after %d tries", p.cmd, p.cid, p.tries,
                        extra=logs.fields(device=p.dev, request=p.request_id))
            outs.append((self.topics.device(p.dev, topics.CMD_RESULT), payloads.command_result(
                self.cfg.gateway_id, p.dev, now, p.request_id, p.cmd, p.cid, "timeout",
                f"no ack after {p.tries} tries", operator=p.auth.operator.id if p.auth else None), "event", False))
        if outs:
            self.outbox.put(outs, now)
