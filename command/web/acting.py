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
