"""The check where a request acts (the gateway today, the command service of issue 15 too): the roster
(taken up again when its file changes), the replay guard and the audit log, behind one call.

    gate = Gate(roster_path, trusted_pub, replay_path, audit, district="lixia")
    try:
        v = gate.check(topic, raw, action="reset", category="command", event="reset", detail={...})
    except Refused as r:
        ...answer r.reason on the result topic (gate.check already counted and recorded it)...
    ...act, then gate.done(v, ...) if the outcome is worth its own record...

Every allowed request is one audit record; an act whose record cannot be written (AuditFull) is refused
with reason `audit_full` instead of being done unrecorded. Every refused request is counted and, up to
`refusal_burst` per reason in each `refusal_window_s`, one record; past that a flood (someone on the broker
publishing garbage or replaying captures) is one `refusals_summarised` record per window with the counts, so
it can neither fill the audit storage nor stall the gateway on an fsync per message (tick() closes a window).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import roster as RO
from .audit import AuditLog
from .envelope import Verified, peek_ids, verify_request
from .errors import AuditFull, BadInput, Refused
from .replay import ReplayGuard

log = logging.getLogger("gasguard.authority")
SERIAL_KEY = "roster_serial"


class Gate:
    def __init__(self, roster_path: str | Path | None, trusted: Ed25519PublicKey | None, replay_path: str | Path,
                 audit: AuditLog, *, district: str, max_age_s: float = 120.0, max_skew_s: float = 30.0,
                 wall_clock: Callable[[], float] = time.time, refusal_burst: int = 20,
                 refusal_window_s: float = 60.0):
        """`wall_clock` judges freshness: a signer's time is wall time, even when the daemon runs on a virtual
        clock in tests (the audit log has its own clock)."""
        self.roster_path = Path(roster_path) if roster_path else None
        self.trusted = trusted
        self.audit = audit
        self.district = district
        self.max_age_s, self.max_skew_s = max_age_s, max_skew_s
        self.wall_clock = wall_clock
        self.replay = ReplayGuard(replay_path, keep_s=max_age_s + max_skew_s)
        self.roster: RO.Roster | None = None
        self._stamp: tuple | None = None
        self.counts: dict[str, int] = {}         # refusal reason -> count since start
        self.refusal_burst, self.refusal_window_s = refusal_burst, refusal_window_s
        self._window_start: float | None = None  # wall time the current refusal window began; None: none yet
        self._window: dict[str, int] = {}        # reason -> refusals in the current window
        self._suppressed: dict[str, int] = {}    # reason -> refusals past the burst, not yet summarised
        if self.roster_path is not None:
            self.reload(initial=True)

    # -- the roster ------------------------------------------------------------------------------------
    def reload(self, initial: bool = False) -> bool:
        """Take up the roster file if it changed. A bad or older roster is refused and recorded; the one in
        force stays. Returns True when a new roster was taken up."""
        if self.roster_path is None:
            return False
        try:
            st = os.stat(self.roster_path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            new = RO.load(self.roster_path, self.trusted)
            last = int(self.replay.meta_get(SERIAL_KEY) or 0)
            if new.district != self.district:
                raise BadInput(f"{self.roster_path} is the roster of district {new.district}, this is {self.district}")
            if new.serial < last:
                raise BadInput(f"{self.roster_path} has serial {new.serial}, older than the {last} already taken up: "
                               "an old roster could un-revoke someone; refused")
        except BadInput as e:
            log.error("operator roster refused, keeping the one in force: %s", e)
            self.record("authority", "roster_refused", "refused", {}, None, str(e), {"path": str(self.roster_path)})
            if initial and self.roster is None:
                log.critical("no valid operator roster: every operator request will be refused until one is installed")
            return False
        changes = RO.diff(self.roster, new)
        if self.roster is not None and new.serial == self.roster.serial and not changes:
            return False
        old_serial = self.roster.serial if self.roster else None
        self.roster = new
        self.replay.meta_set(SERIAL_KEY, str(new.serial))
        self.record("authority", "roster_loaded" if old_serial is None else "operators_changed", "done", {}, None, "",
                     {"serial": new.serial, "previous_serial": old_serial, "changes": changes if old_serial is not None
                      else [], "principals": len(new.principals),
                      "active": sum(1 for p in new.principals.values() if p.active)})
        log.info("operator roster serial %s taken up (%d principals, %d changes)", new.serial, len(new.principals),
                 len(changes))
        return True

    # -- requests ----------------------------------------------------------------------------------------
    def check(self, topic: str, raw: bytes, *, action: str | Callable[[dict], str], category: str,
              event: str | Callable[[dict], str] | None = None, detail: dict | None = None) -> Verified:
        """Verify and record. Returns Verified, or raises Refused after counting and recording it."""
        try:
            v = verify_request(raw, topic, roster=self.roster, action=action, replay=self.replay,
                               now=self.wall_clock(), district=self.district, max_age_s=self.max_age_s,
                               max_skew_s=self.max_skew_s)
        except Refused as r:
            self.refuse(r, topic, raw, category=category, event=r.action or (action if isinstance(action, str) else
                                                                              "request"), detail=detail)
            raise
        typ = event(v.body) if callable(event) else (event or v.action)
        try:
            self.audit.record(category=category, type=typ, outcome="allowed", source=v.source(), event_id=v.nonce,
                              detail=dict(detail or {}, topic=topic, payload_sha256=v.payload_sha256,
                                          signed_at=v.t))
        except AuditFull as e:
            r = Refused("audit_full", str(e), operator=v.operator.id, signer=v.signer.id, action=v.action)
            self._count(r.reason)
            log.critical("REFUSED %s by %s: %s", v.action, v.operator.id, e)
            raise r from None
        return v

    def refuse(self, r: Refused, topic: str, raw: bytes, *, category: str, event: str, detail: dict | None = None) -> None:
        self._count(r.reason)
        self.tick()
        n = self._window[r.reason] = self._window.get(r.reason, 0) + 1
        if n > self.refusal_burst:
            self._suppressed[r.reason] = self._suppressed.get(r.reason, 0) + 1
            return
        src = {"operator": r.operator, "signer": r.signer} if r.operator else peek_ids(raw)
        log.warning("refused %s on %r: %s (%r)", event, topic, r.reason, str(r))   # %r: the sender's text, escaped
        self.record(category, event, "refused", {k: v for k, v in src.items() if v}, None, f"{r.reason}: {r}",
                     dict(detail or {}, topic=topic, reason_code=r.reason))

    def done(self, v: Verified, *, category: str, event: str, outcome: str = "done", detail: dict | None = None) -> None:
        """A later outcome of an allowed request (e.g. the node's ack of a reset)."""
        self.record(category, event, outcome, v.source(), v.nonce, "", detail)

    def tick(self) -> None:
        """Close the refusal window once it has run: one record summarising what was not recorded singly."""
        now = self.wall_clock()
        if self._window_start is not None and now - self._window_start < self.refusal_window_s:
            return
        if self._suppressed:
            log.warning("refusals past %d per %.0f s, summarised: %s", self.refusal_burst, self.refusal_window_s,
                        self._suppressed)
            self.record("access", "refusals_summarised", "refused", {}, None,
                        f"more than {self.refusal_burst} refusals of one reason in {self.refusal_window_s:.0f} s",
                        {"suppressed": dict(self._suppressed), "window_start": self._window_start,
                         "window_s": self.refusal_window_s})
        self._window_start, self._window, self._suppressed = now, {}, {}

    def _count(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def record(self, category, typ, outcome, source, event_id, reason, detail) -> dict | None:
        try:
            return self.audit.record(category=category, type=typ, outcome=outcome, source=source, event_id=event_id,
                                     reason=reason, detail=detail)
        except AuditFull as e:
            log.critical("AUDIT FULL, not recorded: %s %s %s (%s)", category, typ, outcome, e)
            return None

    def close(self) -> None:
        if self._suppressed:
            self._window_start = -1e18       # summarise what is pending before the record closes
            self.tick()
        self.replay.close()
        self.audit.close()
