"""Acting as a logged-in operator: who they are, what their role allows, the signature on their requests,
and the audit record of every act and refusal (IEC 62443-4-2 CR 2.8: time, source, category, type, event
id, outcome). The web console is a `console` principal of the authority's roster: it signs *on behalf of*
the operator it authenticated, and the side that acts checks the operator's role (issue 14).

`Acting` is the interface the web layer uses; `authority_acting` builds it from `gasguard.authority`.
"""

from __future__ import annotations

from typing import Protocol


class Acting(Protocol):
    def operator(self, operator_id: str) -> dict | None: ...    # {"id", "name", "role", "active"}
    def may(self, operator_id: str, action: str) -> bool: ...
    def sign(self, operator_id: str, topic: str, body: dict, *, client_id: str = "",
             address: str = "") -> bytes: ...                             # the MQTT payload to publish
    # categories and outcomes are the authority's (audit.py): access/incident; allowed, refused, done, failed, info
    def audit(self, *, category: str, type: str, operator: str | None, address: str | None,
              outcome: str, reason: str = "", **detail) -> None: ...


class AuthorityActing:
    """`Acting` over gasguard.authority: the signed roster says who the operators are; this console signs
    as its own `console` principal on their behalf; the hash-chained audit log records every act."""

    def __init__(self, roster_path, trusted_key, console_id: str, console_key, audit, *, reload_s: float = 5.0,
                 clock=None):
        import time

        from gasguard.authority import roster as RO
        self._RO, self.roster_path, self.trusted = RO, roster_path, trusted_key
        self.console_id, self.console_key, self.audit_log = console_id, console_key, audit
        self.clock = clock or time.time
        self.reload_s = reload_s
        self._loaded_at = 0.0
        self.roster = RO.load(roster_path, trusted_key)
        me = self.roster.get(console_id)
        if me is None or me.role != "console" or not me.active:
            from gasguard.authority import BadInput
            raise BadInput(f"{console_id!r} is not an active console in the roster {roster_path}: add it with "
                           f"'gasguard authority add {console_id} --role console'")

    def _fresh(self):
        """The roster as on disk (a revocation stops a logged-in operator within `reload_s`)."""
        now = self.clock()
        if now - self._loaded_at >= self.reload_s:
            self._loaded_at = now
            try:
                self.roster = self._RO.load(self.roster_path, self.trusted)
            except Exception as e:  # noqa: BLE001 - a damaged new roster: keep the one verified before
                self.audit(category="authority", type="roster_reload", operator=None, address=None,
                           outcome="failed", reason=str(e)[:300])
        return self.roster

    def operator(self, operator_id):
        p = self._fresh().get(operator_id or "")
        if p is None or p.role == "console":
            return None
        return {"id": p.id, "name": p.name, "role": p.role, "active": p.active}

    def may(self, operator_id, action):
        ro = self._fresh()
        p, me = ro.get(operator_id or ""), ro.get(self.console_id)
        return bool(p and me and me.active and p.role in me.relays and p.may(action))

    def sign(self, operator_id, topic, body, *, client_id="", address=""):
        from gasguard.authority import sign_request
        return sign_request(self.console_key, self.console_id, topic, body, on_behalf_of=operator_id,
                            client_id=client_id, address=address)

    def audit(self, *, category, type, operator, address, outcome, reason="", **detail):
        src = {"console": self.console_id, "address": address}
        if operator:
            src["operator"] = operator
        self.audit_log.record(category=category, type=type, outcome=outcome, source=src, reason=reason,
                              detail={k: v for k, v in detail.items() if v is not None})
