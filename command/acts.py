"""Operators' acts on incidents (acknowledge, operator input, resolve, shelve): verified and audited with the
district's authority (gasguard.authority, issue 14) before the command applies them.

    [authority]                                     # in the command's TOML
    roster = "/etc/gasguard/operators.json"         # the signed operator roster
    trust = "/etc/gasguard/authority.pub.pem"       # the district authority's public key (.pub.pem or hex)
    replay = "/var/lib/gasguard/command-replay.db"  # nonces already used (survives restarts)
    audit = "/var/lib/gasguard/audit-command"       # the hash-chained audit log (IEC 62443-4-2 CR 2.8)

A signed act is the `sign_request` envelope published on `command/ack/<incident>`,
`command/input/<incident>` or `command/shelve/<incident>` (`gasguard command ack/input/watch`), or submitted
through the store by the web console, signed for the same topic. The Gate checks signature, role (ack:
`ack`; input: `input`, or `resolve` when it closes the incident; shelve and unshelve: `shelve`), revocation,
freshness and replay, and records allowed and refused alike; the command then records what the act did
(`done` / `failed`).

Exactly once across a crash: the Gate writes the nonce to its replay store before the command's transaction
commits. If the command dies in between, the broker delivers the act again and the Gate says "replayed";
`check` then looks in the command's own store: an act whose nonce the store does not hold was never applied,
so this is its first application (still signed, still fresh), not a replay.

Without an [authority] table the command takes unsigned acts and says so on every record ("unsigned: no
authority configured") — for a bench or the demo only; a district configures it.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("gasguard.command")

UNSIGNED = "unsigned: no authority configured"


class Unsigned:
    """No authority configured: the act's `by` is taken as given, and the record says it was unsigned."""

    def check(self, kind: str, incident_id: str, doc: dict, topic: str, store) -> tuple[bool, str, str, dict, object]:
        return True, str(doc.get("by") or "command")[:80], UNSIGNED, doc, None

    def done(self, ticket, kind: str, incident_id: str, outcome: str) -> None:
        pass

    def event(self, kind: str, incident_id: str, what: str, detail: dict) -> None:
        pass

    def reload(self) -> None:
        pass


class GateActs:
    """Acts through an authority Gate: (ok, operator id, why, body, ticket) per act."""

    def __init__(self, gate):
        self.gate = gate

    @classmethod
    def from_config(cls, table: dict, district: str, recorder: str) -> "GateActs":
        from gasguard.authority import AuditLog, Gate
        from gasguard.provisioning import keys
        audit = AuditLog(table["audit"], recorder=recorder)
        return cls(Gate(table["roster"], keys.load_public(table["trust"]), table["replay"], audit, district=district))

    def reload(self) -> None:
        self.gate.reload()

    def check(self, kind: str, incident_id: str, doc: dict, topic: str, store):
        from gasguard.authority import Refused, verify_request
        raw = json.dumps(doc, ensure_ascii=False).encode()       # the body is a string inside: bytes unchanged

        try:       # the action decides the role needed: input that closes the incident is "resolve"
            claimed = json.loads(doc["body"]) if isinstance(doc.get("body"), str) else {}
        except ValueError:
            claimed = {}
        action = "resolve" if kind == "input" and isinstance(claimed, dict) and claimed.get("resolved") else kind
        detail = {"incident_id": incident_id}
        try:
            v = self.gate.check(topic, raw, action=action, category="incident", event=kind, detail=detail)
        except Refused as r:
            if r.reason == "replayed" and not store.act_nonce_seen(_nonce(doc)):
                # delivered again after a crash between the Gate's replay record and our commit: first use here
                try:
                    v = verify_request(raw, topic, roster=self.gate.roster, action=action, replay=_FirstUse(),
                                       now=self.gate.wall_clock(), district=self.gate.district,
                                       max_age_s=self.gate.max_age_s, max_skew_s=self.gate.max_skew_s)
                except Refused as r2:
                    return False, r2.operator or "?", f"{r2.reason}: {r2}", {}, None
            else:
                return False, r.operator or _claimed(doc), f"{r.reason}: {r}", {}, None
        return True, v.operator.id, "", dict(v.body, by=v.operator.id), v

    def done(self, ticket, kind: str, incident_id: str, outcome: str) -> None:
        if ticket is not None:
            self.gate.done(ticket, category="incident", event=kind,
                           outcome="done" if outcome == "accepted" else "failed",
                           detail={"incident_id": incident_id, "outcome": outcome})


    def event(self, kind: str, incident_id: str, what: str, detail: dict) -> None:
        """Something the command did of itself to an act's effect (a shelf that expired or ended on an
        upgrade), on the same audit record as the act."""
        self.gate.record("incident", f"{kind}_{what}", "info", {"recorder": "command"}, None, "",
                         dict(detail, incident_id=incident_id))


class _FirstUse:
    def first_use(self, *a) -> bool:
        return True


def _nonce(doc: dict) -> str:
    auth = doc.get("auth") if isinstance(doc, dict) else None
    return str(auth.get("nonce", "")) if isinstance(auth, dict) else ""


def _claimed(doc: dict) -> str:
    auth = doc.get("auth") if isinstance(doc, dict) else None
    return str(auth.get("operator", "?"))[:80] if isinstance(auth, dict) else "?"
