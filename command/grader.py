"""District-wide grading: what the gateways published in, stored incident revisions out. No MQTT here.

The command service hands `DistrictGrader.handle` a batch of broker messages (alarms, events, reading
batches, gateway birth/Will/stats, acknowledgements, operator input) and `tick` the time. Each call is ONE
store transaction, fenced by the leader lease: the frame identities graded, the incidents' new state, every
new revision, the journal, escalations, acknowledgements, operator input and the notifications due all
commit together or not at all. The broker message is acknowledged only after that commit (the service
does it), so a SIGKILL at any instant either left nothing (the broker redelivers, at-least-once) or left
everything, and the redelivered copy is then dropped by its frame identity (idempotent): no revision is
lost or stored twice.

One engine (the plan's, `IncidentEngine`) sees the whole district, so:
- households cut off add up across stations on any gateway, each station once (the engine's supply incident);
- a leak cluster spans gateways (the engine clusters by distance and time, not by who heard it);
- an alarm heard by two gateways is graded once (frame identity (device, direction, counter), SPEC 4), so it
  gets one incident id whichever gateway heard it.
Deadlines run from the detection time in the frame (the gateway's receive time minus the alarm's age), never
from when the command got round to it, so a restart or a takeover does not move them (plan 4.1.2).
"""

from __future__ import annotations

import logging
import hashlib
import time
from collections import deque
from dataclasses import dataclass, field

from gasguard.gateway.payloads import request_result
from gasguard.grading import engine as G
from gasguard.grading import report as R
from gasguard.command.dedup import frame_key
from gasguard.grading.incidents import IncidentEngine
from gasguard.protocol.topics import ALARM, EVENT, READING, SHELVE, STATUS, SYNC, Topics

from .acts import Unsigned
from .readings import PLOTTED, readings_of, valve_of
from .shelving import MAX_S, ShelfBook, ShelfError

log = logging.getLogger("gasguard.command")
SHARED_SHOWN_S = 600.0   # s the consoles show a gateway id as shared after the last time two instances alternated


@dataclass
class Outcome:
    """What one batch or tick did, for the service (publishing, acking, metrics)."""
    revisions: list = field(default_factory=list)        # (incident_id, revision, kind, payload)
    direct: list = field(default_factory=list)           # (topic, payload, retain): not stored (sync answers)
    graded: int = 0                                      # frames that reached the engine
    duplicates: int = 0                                  # frame copies dropped by identity
    refused: list = field(default_factory=list)          # (what, why)
    escalations: int = 0
    acks: list = field(default_factory=list)             # seconds from detection to acknowledgement
    lag: float | None = None                             # now - the newest gateway time graded
    requests: int = 0                                    # acts submitted through the store, answered
    shelves: int = 0                                     # shelves made or ended
    kept: int = 0                                        # station readings and valve events stored


class DistrictGrader:
    def __init__(self, cfg: dict, store, *, devices, downstream, notify_routes=None, acts=None,
                 gateway_silent_s: float = 180.0, shelve_max_s: float = MAX_S):
        """`cfg`: the validated [grading] table (district, deadlines, levels); `devices(dev_id) -> dict|None`
        and `downstream(dev_id) -> [dict]` read the registry; `notify_routes(level, reason) -> [(channel,
        recipient)]`; `acts` verifies and audits acknowledgements and operator input (command/acts.py; None:
        unsigned acts are taken, and every record says so)."""
        self.cfg = cfg
        self.store = store
        self.devices = devices
        self.routes = notify_routes or (lambda level, reason: [])
        self.acts = acts or Unsigned()
        self.gateway_silent_s = gateway_silent_s
        self.shelves = ShelfBook(shelve_max_s)   # the store's `shelves` table, held for the upgrade and expiry checks
        self.shelf_seq = 0                       # the store's last shelf_log row we know: orders the published shelves
        self.shelves_unsent = True               # shelves not yet published since this copy took over
        self.engine = IncidentEngine(cfg, downstream=downstream)
        self.topics = Topics(cfg["topic_root"])
        self.cmd = self.topics.command(cfg["district"])
        self.base = f"{self.topics.root}/{cfg['district']}/"      # every gateway of the district under it
        self.timeline_n: dict[str, int] = {}     # engine timeline entries already journaled, per incident
        self.levels: dict[str, tuple] = {}       # (level, warning) last notified, per incident
        self.gateways: dict[str, dict] = {}      # gateway id -> {"last_seen", "online", "silent"}
        self.births: dict[str, list] = {}        # gateway id -> [(instance, host, t)] by latest birth (_births)
        self.shared_ids: dict[str, set] = {}     # gateway id -> pairs of instances journaled as sharing it
        self.shared: dict[str, tuple] = {}       # gateway id -> (last birth of a shared pair, {instance: host})
        self.inlet_dirty: set[int] = set()       # stations whose inlet samples changed since the checkpoint
        self.inlet_saved = time.monotonic()
        # Inlet samples feed the "still falling" trend (plan 3.3.x(2)) over a 10-minute window; they are
        # checkpointed every inlet_checkpoint_s rather than rewritten with each reading. A crash loses at most
        # inlet_checkpoint_s of samples from the trend (never a revision: those commit with their frames).
        self.inlet_checkpoint_s = 5.0

    # --- state -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Take over: the engine's incidents and state as the store has them (a new leader, a restart)."""
        incs, extra = self.store.engine_state()
        self.engine.restore({"schema": "gasguard.grading-state/1", "incidents": incs,
                             "inlet": {k.split(":", 1)[1]: v for k, v in extra.items() if k.startswith("inlet:")}})
        self.engine._seen_alarms = deque([tuple(x) for x in extra.get("seen_alarms", [])], maxlen=4096)
        self.timeline_n = self.store.timeline_counts()
        self.levels = {i.id: (i.level, i.warning) for i in self.engine.incidents.values()}
        self.gateways = {g["gateway_id"]: {"last_seen": g["last_seen"], "online": g["online"], "silent": g["silent"]}
                         for g in self.store.gateways()}
        self.shelves = ShelfBook(self.shelves.max_s, self.store.shelves())
        self.shelf_seq = self.store.shelf_seq()
        self.shelves_unsent = True      # a new leader publishes them again: the last one may have died before it did

    # --- inputs ----------------------------------------------------------------------------------
    def handle(self, msgs: list[tuple[str, dict]], now: float, fence) -> Outcome:
        """One transaction for a batch of broker messages; raises LeaseLost if another instance leads."""
        out = Outcome()
        with self.store.write(fence) as tx:
            tx.known_frames(self._frame_keys(msgs))      # one lookup for the batch, not one per frame
            changed: list = []
            inlet_changed: set = set()
            self._keep: list = []                   # station readings to store (the station page's plot)
            alarms = False
            for topic, doc, *more in msgs:
                req = more[:1] if more and more[0] is not None else []
                raw = more[1] if len(more) > 1 else None
                try:
                    alarms |= self._one(tx, topic, doc, now, out, changed, inlet_changed, req[0] if req else None,
                                        raw)
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    # a malformed message is refused and counted; it does not stop the batch
                    out.refused.append((topic, f"malformed: {e!r}"[:200]))
                    if req:
                        tx.request_done(req[0], f"refused: malformed: {e!r}"[:200], now)
            self._persist(tx, changed, now, out)
            tx.readings(self._keep)
            out.kept += len(self._keep)
            self.inlet_dirty |= {d for d in inlet_changed if d in self.engine.inlet}
            self._checkpoint(tx)
            if alarms:
                tx.engine("seen_alarms", list(self.engine._seen_alarms))
        self._publish_shelves(now, out)         # after the commit: only what the store holds is published
        return out

    def _frame_keys(self, msgs) -> list:
        """The frame identities `_one` will ask `first_frame` about: the alarms', the events' and those of the
        readings that reach the engine (as `_graded` decides now; one it misses is looked up on its own)."""
        keys = []
        for topic, doc, *_ in msgs:
            if not topic.startswith(self.base):
                continue
            leaf = topic.rsplit("/", 1)[-1]
            try:
                if leaf in (ALARM, EVENT):
                    keys.append(frame_key(doc))
                elif leaf == READING:
                    keys.extend(frame_key(e) for e in readings_of(doc) if self._graded(int(e["dev"], 16)))
            except (KeyError, TypeError, ValueError, AttributeError):
                continue                    # malformed: `_one` refuses it and says why
        return [k for k in keys if k is not None]

    def _graded(self, did: int) -> dict | None:
        """The device, if its readings can change an incident (stations: supply and network pressure; a
        household in an open leak: its valve). The rest are the gateways' business, not the command's."""
        dev = self.devices(did)
        if dev is None or (dev.get("profile") != "station" and not self.engine.in_open_leak(did)):
            return None
        return dev

    def _one(self, tx, topic: str, doc: dict, now: float, out: Outcome, changed: list, inlet_changed: set,
             request: int | None = None, raw: bytes | None = None) -> bool:
        """`raw`: an act's MQTT payload as sent (the console matches the answer by its SHA-256)."""
        act = self.cmd.parse(topic)
        if act is not None:
            outcome = self._command(tx, act[0], act[1], doc, now, out, changed)
            if raw is not None and outcome is not None:
                self._answer(topic, raw, outcome, now, out)
            if request is not None:
                tx.request_done(request, outcome or "refused: not an act", now)
                out.requests += 1
            return False
        if not topic.startswith(self.base) or topic.startswith(self.cmd.base + "/"):
            return False
        parts = topic[len(self.base):].split("/")
        gid, leaf = parts[0], parts[-1]
        if len(parts) == 2 and leaf == STATUS:
            self._gateway_status(tx, gid, doc, now, out)
            return False
        self._heard(tx, gid, now, out)
        if len(parts) == 2 and leaf == READING:
            for entry in readings_of(doc):
                self._reading(tx, gid, entry, now, out, changed, inlet_changed)
            return False
        if len(parts) == 3 and leaf in (ALARM, EVENT):
            key = frame_key(doc)
            if key is None or not tx.first_frame(key, gid, float(doc["t"])):
                out.duplicates += key is not None
                return False
            dev = self._device(doc)
            if dev is None:
                out.refused.append((topic, f"device {doc.get('dev')} is not in the registry"))
                return False
            obs = _alarm_obs(doc, dev) if leaf == ALARM else _event_obs(doc, dev)
            self._observe(obs, now, out, changed)
            valve = valve_of(doc) if leaf == EVENT else None
            if valve is not None:        # the valve's history, kept for the station page (bounded: prune_readings)
                tx.valve_event(dev["dev_id"], valve["t"], valve["valve"], valve["cause"], valve["gateway"] or gid)
                out.kept += 1
            return leaf == ALARM
        return False

    def _reading(self, tx, gid, e: dict, now, out, changed, inlet_changed) -> None:
        did = int(e["dev"], 16)
        dev = self._graded(did)
        if dev is None:
            return
        key = frame_key(e)
        if key is None or not tx.first_frame(key, gid, float(e["t"])):
            out.duplicates += key is not None
            return
        if e.get("inlet_pa") is not None:
            inlet_changed.add(did)
        if dev.get("profile") == "station" and any(e.get(k) is not None for k in PLOTTED):
            self._keep.append((did, float(e["t"]), e.get("pressure_pa"), e.get("inlet_pa"), gid))
        self._observe(_reading_obs(e, dev), now, out, changed)

    def _observe(self, obs, now, out, changed) -> None:
        out.graded += 1
        out.lag = max(out.lag or 0.0, now - obs["t"])
        changed.extend(self.engine.observe(obs))

    def _device(self, doc) -> dict | None:
        did = int(doc["dev"], 16)
        dev = self.devices(did)
        if dev is None and isinstance(doc.get("site"), dict):
            dev = {"dev_id": did, "dev": doc["dev"], **doc["site"]}    # the gateway's copy of its registry row
        return dev

    def _checkpoint(self, tx, force: bool = False) -> None:
        if self.inlet_dirty and (force or time.monotonic() - self.inlet_saved >= self.inlet_checkpoint_s):
            for did in self.inlet_dirty:
                tx.engine(f"inlet:{did}", list(self.engine.inlet.get(did, ())))
            self.inlet_dirty.clear()
            self.inlet_saved = time.monotonic()

    # --- gateways --------------------------------------------------------------------------------
    def _gateway_status(self, tx, gid, doc, now, out) -> None:
        online = bool(doc.get("online"))
        g = self.gateways.setdefault(gid, {"last_seen": now, "online": None, "silent": False})
        was = (g["online"], g["silent"])
        g.update(last_seen=now, online=online, silent=False)
        tx.gateway(gid, doc.get("district") or self.cfg["district"], now, online=online, silent=False,
                   status_t=doc.get("t"), version=doc.get("version"))
        if was != (online, False):
            text = f"gateway {gid} " + ("online (birth)" if online else "OFFLINE (its Last Will or a clean stop)")
            tx.journal(now, "gateway", text, who=gid, data={"online": online})
        if online and isinstance(doc.get("instance"), str):
            self._births(tx, gid, doc, now)
        out.direct.append(self._gateway_msg(gid, now))      # births and Wills are rare: always shown

    def _births(self, tx, gid, doc, now) -> None:
        """Two gateways with one id (gateway/identity.py): each process has its own `instance`, and a restart
        never brings an earlier one back, so a birth from an instance whose place another one's birth took is
        a second process publishing as this gateway. Journaled once per pair of instances (in memory: a restart of
        the service sees the next alternation again)."""
        seen = self.births.setdefault(gid, [])          # (instance, host, t) by latest birth, the newest last
        inst, host = doc["instance"], str(doc.get("host") or "?")
        pairs = self.shared_ids.setdefault(gid, set())
        if seen and seen[-1][0] != inst and any(i == inst for i, _h, _t in seen):
            other, other_host, other_t = seen[-1]
            pair = frozenset((inst, other))
            # the consoles show it until SHARED_SHOWN_S after the last return from a recent birth of the other:
            # once the copy is gone, the remaining gateway's next birth (a reconnect, days later) changes nothing
            if now - other_t < SHARED_SHOWN_S:
                self.shared[gid] = (now, {**self.shared.get(gid, (0, {}))[1], inst: host, other: other_host})
            if pair not in pairs:
                pairs.add(pair)
                log.warning("gateway %s: two gateways publish as this id (instances %s on %s and %s on %s)",
                            gid, inst, host, other, other_host)
                tx.journal(now, "gateway", f"gateway {gid}: TWO GATEWAYS publish as this id (instance {inst} on "
                           f"{host}, instance {other} on {other_host}); their devices are mixed under one name. "
                           "Give each gateway its own [gateway] id", who=gid,
                           data={"shared_id": True, "instances": {inst: host, other: other_host}})
        seen[:] = [e for e in seen if e[0] != inst][-3:] + [(inst, host, now)]

    def _heard(self, tx, gid, now, out) -> None:
        g = self.gateways.get(gid)
        if g is None or g["silent"] or now - g["last_seen"] > 1.0:     # write at most once a second per gateway
            back = g is not None and g["silent"]
            new = g is None                     # heard before its birth was graded (alarms go first)
            g = self.gateways.setdefault(gid, {"last_seen": now, "online": True, "silent": False})
            g.update(last_seen=now, silent=False)
            tx.gateway(gid, self.cfg["district"], now, online=True if new else None, silent=False)
            if new:
                out.direct.append(self._gateway_msg(gid, now))
            if back:
                tx.journal(now, "gateway", f"gateway {gid} heard again", who=gid)
                out.direct.append(self._gateway_msg(gid, now))

    def _gateway_msg(self, gid, now) -> tuple:
        g = self.gateways[gid]
        msg = {"schema": "gasguard.command-gateway/1", "gateway": gid, "online": g["online"], "silent": g["silent"],
               "last_seen": g["last_seen"], "t": now}
        shared = self.shared.get(gid)
        if shared is not None and now - shared[0] < SHARED_SHOWN_S:
            msg["shared_by"] = sorted(shared[1].values())       # the host of each process using the id
        return (self.cmd.gateway(gid), msg, True)

    # --- the command's own inputs ----------------------------------------------------------------
    def _command(self, tx, kind: str, iid: str | None, doc: dict, now, out, changed) -> str | None:
        """An act from a console (ack, input) or a sync request; returns the act's outcome."""
        if kind == SYNC:
            out.direct.extend((t, p, False) for t, p in self.engine.sync(now))
            out.direct.extend(self._gateway_msg(g, now) for g in self.gateways)
            out.direct.append(self._shelves_msg(now))    # retained already; again in case the broker lost it
            return None
        topic = getattr(self.cmd, kind)(iid)
        ok, who, why, body, ticket = self.acts.check(kind, iid, doc, topic, self.store)
        known = iid in self.engine.incidents
        res: list = []
        nonce = getattr(ticket, "nonce", None)
        record = dict(body)        # what the record keeps: the request, and the console that signed for the person
        if ticket is not None and ticket.signer.id != ticket.operator.id:
            record.update(console=ticket.signer.id, client_id=ticket.client_id, address=ticket.address)
        if kind == SHELVE:
            outcome = self._shelve(tx, iid, ok, why, who, body, record, nonce, now, out)
            self.acts.done(ticket, kind, iid, outcome)
            if not ok:
                out.refused.append((f"{kind}/{iid}", why))
            return outcome
        if not ok:
            outcome = f"refused: {why}"
        elif not known:
            outcome = "refused: unknown incident"
        elif kind == "ack":
            res = self.engine.acknowledge(iid, body, now)
            outcome = "accepted" if res else "refused: acknowledges a revision before the last upgrade"
        else:
            problems = R.validate_operator_input(body)
            res = self.engine.operator_input(iid, body, now)
            outcome = "refused: " + "; ".join(problems) if problems else "accepted"
        note = f" ({why})" if why and ok else ""      # e.g. unsigned: no authority configured
        if kind == "ack":
            tx.ack(iid, body.get("revision"), who, now, outcome, record, nonce)
            tx.journal(now, "ack", (f"acknowledged by {who}" if res else f"acknowledgement by {who} {outcome}") + note,
                       incident_id=iid, revision=body.get("revision"), who=who,
                       data={"outcome": outcome, "signed": ticket is not None})
            if res:
                out.acks.append(now - self.engine.incidents[iid].detected_at)
        else:
            fields = {k: v for k, v in record.items() if k != "by"}
            tx.operator_input(iid, who, now, outcome, fields, nonce)
            tx.journal(now, "input", f"operator input by {who}: {outcome}{note}", incident_id=iid, who=who,
                       data={"fields": sorted(k for k in fields if k in R.OPERATOR_FIELDS or k == "note"),
                             "signed": ticket is not None})
        self.acts.done(ticket, kind, iid, outcome)
        if not ok:
            out.refused.append((f"{kind}/{iid}", why))
        changed.extend(res)
        return outcome

    # --- shelving (ISA-18.2; the rules in shelving.py) ------------------------------------------------
    def _shelve(self, tx, iid, ok, why, who, body, record, nonce, now, out) -> str:
        """A shelving act (body {"reason", "duration_s"}) or its undoing ({"unshelve": true}), checked by the
        authority as the `shelve` action; applied, logged (`shelf_log`) and journaled in this transaction."""
        undo = bool(body.get("unshelve"))
        inc = self.engine.incidents.get(iid)
        shelf = None
        if not ok:
            outcome = f"refused: {why}"
        elif inc is None:
            outcome = "refused: unknown incident"
        elif undo:
            outcome = "accepted" if self.shelves.unshelve(iid) else "refused: not shelved"
        elif inc.status != "open":
            outcome = "refused: the incident is resolved: nothing to shelve"
        else:
            try:
                shelf = self.shelves.shelve(iid, who, body.get("reason"), body.get("duration_s"), now,
                                            {"revision": inc.revision, "warning": inc.warning, "level": inc.level})
                outcome = "accepted"
            except ShelfError as e:
                outcome = f"refused: {e}"
        reason = str(body.get("reason") or "")[:500]
        seq = tx.shelf_log(iid, "unshelve" if undo else "shelve", who, now, outcome, reason=reason,
                           until=shelf["until"] if shelf else None, request=record, nonce=nonce)
        self.shelf_seq = max(self.shelf_seq, seq)
        if shelf is not None:
            tx.shelve(iid, shelf, seq)
            text = f"shelved by {who} until {_hhmm(self.cfg, shelf['until'])}: {shelf['reason']}"
        elif undo and outcome == "accepted":
            tx.unshelve(iid)
            text = f"unshelved by {who}"
        else:
            text = f"{'unshelving' if undo else 'shelving'} by {who} {outcome}"
        tx.journal(now, "shelve", text, incident_id=iid, who=who,
                   data={"outcome": outcome, "reason": reason, "until": shelf["until"] if shelf else None})
        out.shelves += outcome == "accepted"
        return outcome

    def _end_shelves(self, tx, now: float, out: Outcome, only: str | None = None) -> None:
        """Shelves past their expiry, or below their incident's new grade, end: logged, journaled, audited."""
        grades = {i.id: {"warning": i.warning, "level": i.level} for i in self.engine.incidents.values()
                  if only is None or i.id == only}
        if only is not None and only not in self.shelves.items():
            return
        for iid, shelf, why in self.shelves.due(now, grades):
            tx.unshelve(iid)
            self.shelf_seq = max(self.shelf_seq, tx.shelf_log(iid, why, "command", now, "ended",
                                                              reason=shelf["reason"], until=shelf["until"]))
            text = (f"shelf by {shelf['by']} expired" if why == "expired" else
                    f"shelf by {shelf['by']} ended: upgraded beyond the grade shelved (it must be seen)")
            tx.journal(now, "shelve", text, incident_id=iid, who="command",
                       data={"ended": why, "by": shelf["by"], "until": shelf["until"]})
            self.acts.event("shelve", iid, why, {"shelved_by": shelf["by"], "until": shelf["until"],
                                                 "reason": shelf["reason"]})
            out.shelves += 1

    def _shelves_msg(self, now: float) -> tuple:
        """Every shelf held now, as the store's `shelves` table has it, for `command/shelves` (retained): what a
        console on the broker shows (`gasguard command watch`; the web console reads the store itself). `seq`
        is the store's shelf_log sequence: a console keeps the snapshot with the highest (a deposed leader's
        late message loses). One message for all, so a new leader's snapshot replaces any stale one whole."""
        return (self.cmd.shelves, {"schema": "gasguard.command-shelves/1", "district": self.cfg["district"],
                                   "seq": self.shelf_seq, "t": now, "shelves": self.shelves.items()}, True)

    def _publish_shelves(self, now: float, out: Outcome) -> None:
        if out.shelves or self.shelves_unsent:
            out.direct.append(self._shelves_msg(now))
            self.shelves_unsent = False

    def _answer(self, topic: str, raw: bytes, outcome: str, now: float, out: Outcome) -> None:
        """The answer a console waits for (`gasguard command ack/input`, issue 14's request result), on the
        command's own result topic: allowed once the act is applied, refused with the reason otherwise."""
        ok = outcome == "accepted"
        reason = "" if ok else outcome.split(": ", 1)[-1]
        out.direct.append((self.cmd.result(self.cfg["gateway_id"]), request_result(
            self.cfg["gateway_id"], now, topic, hashlib.sha256(raw).hexdigest(), "allowed" if ok else "refused",
            reason.split(":", 1)[0] if not ok else "", reason), False))

    # --- time ------------------------------------------------------------------------------------
    def tick(self, now: float, fence) -> Outcome:
        """Deadlines (plan 4.1.2: escalate at 20 and 45 min until acknowledged), 24-h re-grades, silences."""
        out = Outcome()
        with self.store.write(fence) as tx:
            self._persist(tx, self.engine.tick(now), now, out)
            self._end_shelves(tx, now, out)
            self._checkpoint(tx)
            for gid, (last, _who) in list(self.shared.items()):
                if now - last >= SHARED_SHOWN_S and gid in self.gateways:     # the copy stopped: say so once
                    del self.shared[gid]
                    out.direct.append(self._gateway_msg(gid, now))
            for gid, g in self.gateways.items():
                if not g["silent"] and now - g["last_seen"] > self.gateway_silent_s:
                    g["silent"] = True
                    tx.gateway(gid, self.cfg["district"], now, silent=True)
                    tx.journal(now, "gateway", f"gateway {gid} SILENT: nothing heard for "
                               f"{now - g['last_seen']:.0f} s", who=gid, data={"last_seen": g["last_seen"]})
                    out.direct.append(self._gateway_msg(gid, now))
        self._publish_shelves(now, out)
        return out

    # --- output: every revision stored with what goes with it ------------------------------------
    def _persist(self, tx, outputs: list, now: float, out: Outcome) -> None:
        district_prefix = self.cmd.incident("")
        pubs = []
        for topic, payload in outputs:
            if not topic.startswith(district_prefix):
                continue                     # the city copy of the same payload: one stored revision
            inc = self.engine.incidents.get(payload["incident_id"])
            if inc is None:
                continue
            tx.save_incident(inc.to_dict(), payload, inc.timeline_dropped + len(inc.timeline))
            pubs.append((inc, payload))
        # every revision stored at once (one wait on PostgreSQL), then what goes with each new one, in order
        added = tx.add_revisions([(p["incident_id"], p["revision"], p["kind"], now, p) for _, p in pubs])
        new = [pub for pub, a in zip(pubs, added) if a]
        # whom each new revision notifies: queued all at once too, each journaled below in its revision's place
        notes = [self._notes(payload) for _, payload in new]
        queued = iter(tx.notifications([(p["incident_id"], p["revision"], reason, channel, recipient, now, p)
                                        for (_, p), ns in zip(new, notes) for reason, channel, recipient in ns]))
        for (inc, payload), ns in zip(new, notes):
            iid, rev, kind = payload["incident_id"], payload["revision"], payload["kind"]
            n = inc.timeline_dropped + len(inc.timeline)
            prev = self.timeline_n.get(iid, 0)
            out.revisions.append((iid, rev, kind, payload))
            self._end_shelves(tx, now, out, only=iid)     # an upgrade ends a shelf at once
            for entry in list(inc.timeline)[-(n - prev):] if n > prev else []:
                tx.journal(entry["t"], "site", entry["text"], incident_id=iid, revision=rev,
                           data={k: v for k, v in entry.items() if k not in ("t", "text")})
            self.timeline_n[iid] = n
            lv = G.LEVEL_NAMES.get(payload["level"], "-")
            tx.journal(now, "revision", f"revision {rev} ({kind}): level {lv}"
                       f"{' (projected)' if payload['projected'] else ''}, warning {payload['warning'] or '-'}, "
                       f"{payload['status']}", incident_id=iid, revision=rev,
                       data={"level": payload["level"], "warning": payload["warning"], "routes": payload["routes"]})
            if kind == "escalation":
                esc = payload["escalation"]
                tx.escalation(iid, rev, esc["stage"], esc["count"], now, esc["overdue_s"])
                tx.journal(now, "escalation", f"{esc['stage']} report overdue by {esc['overdue_s']:.0f} s and not "
                           f"acknowledged: escalation {esc['count']}", incident_id=iid, revision=rev)
                out.escalations += 1
            for reason, channel, recipient in ns:
                if next(queued):
                    tx.journal(now, "notification", f"{reason}: {channel} to {recipient} queued",
                               incident_id=iid, revision=rev)

    def _notes(self, payload: dict) -> list[tuple]:
        """(reason, channel, recipient) for each notification a new revision makes: its overdue report's stage
        (an escalation), a new incident, a change of level (plan 4.1: a new report). Called once a revision, in
        order: it moves the level last notified."""
        iid = payload["incident_id"]
        reasons = [payload["escalation"]["stage"]] if payload["kind"] == "escalation" else []
        before = self.levels.get(iid)
        level_now = (payload["level"], payload["warning"])
        if before is None and payload["status"] == "open":
            reasons.append("new")
        elif before is not None and before != level_now and payload["status"] == "open":
            reasons.append("level")
        self.levels[iid] = level_now
        return [(reason, channel, recipient) for reason in reasons
                for channel, recipient in self.routes(payload["level"], reason)]

def _hhmm(cfg: dict, t: float) -> str:
    return G.local_time(cfg, t).strftime("%H:%M")


# --- broker payloads -> the engine's observations (the inverse of gateway/payloads.py) -------------------
def _gas_raw(v):
    return None if v is None else round(v * 10)          # % LEL -> 0.1 % LEL on the wire (SPEC 3.1)


def _alarm_obs(doc: dict, dev: dict) -> dict:
    code = doc["code"]
    value = doc.get("value")
    if code in (1, 2):
        value = _gas_raw(value)
    # aid: the alarm's identity (SPEC 3.4, the counter of its first copy): a retransmission heard by another
    # gateway has a new counter (so a new frame identity) but the same aid, and the engine takes it once
    fr = {"code": code, "cleared": bool(doc.get("cleared")), "aseq": doc.get("aseq"), "aid": doc.get("aid"),
          "age": doc.get("age_s") or 0, "value": value, "fcnt": doc.get("fcnt")}
    return {"id": doc.get("id"), "t": float(doc["t"]), "dev": dev["dev_id"], "type": "alarm", "frame": fr,
            "state": doc.get("state"), "device": dev, "rx": {"gateway": doc.get("gateway")}}


def _event_obs(doc: dict, dev: dict) -> dict:
    fr = {"code": doc["code"], "eseq": doc.get("eseq"), "aid": doc.get("aid"), "data": doc.get("data_hex") or "",
          "fcnt": doc.get("fcnt")}
    return {"id": doc.get("id"), "t": float(doc["t"]), "dev": dev["dev_id"], "type": "event", "frame": fr,
            "state": None, "device": dev, "rx": {"gateway": doc.get("gateway")}}


def _reading_obs(e: dict, dev: dict) -> dict:
    fr = {"gas": _gas_raw(e.get("gas_pct_lel")), "pressure": e.get("pressure_pa"), "battery": e.get("battery_pct"),
          "fcnt": e.get("fcnt")}
    if e.get("inlet_pa") is not None:
        fr["inlet"] = e["inlet_pa"]
    return {"id": e.get("id"), "t": float(e["t"]), "dev": dev["dev_id"], "type": "reading", "frame": fr,
            "state": e.get("state") or {}, "device": dev, "rx": {}}
