"""Roles and what each may do (issue 14). One table; every check reads it.

Actions are the world-changing requests: `ack`, `input` (operator facts), `resolve` (input that closes an
incident), `shelve`, the node commands `status`, `reset`, `set_param`, `selftest`, and `manage_operators`.
The broker's ACL (broker.py) draws the same lines by topic.
A `console` is not a person: it may only sign *on behalf of* an operator it has authenticated, and only for
the roles listed in its `relays` (issue 16's web console); what is allowed is then the operator's role.
"""

from __future__ import annotations

OPERATOR_ACTIONS = frozenset({"ack", "input", "resolve", "shelve"})
# node commands are engineers' (issue 14); even status spends the node's airtime and battery. reset re-opens
# gas after a leak: the most dangerous act in the system.
ENGINEER_ACTIONS = OPERATOR_ACTIONS | {"status", "reset", "set_param", "selftest"}
ADMIN_ACTIONS = ENGINEER_ACTIONS | {"manage_operators"}

ROLES: dict[str, frozenset] = {
    "operator": OPERATOR_ACTIONS,
    "engineer": frozenset(ENGINEER_ACTIONS),
    "admin": frozenset(ADMIN_ACTIONS),
    "console": frozenset(),        # acts only for someone else (on_behalf_of)
}
PEOPLE = ("operator", "engineer", "admin")
ACTIONS = frozenset(ADMIN_ACTIONS)
DEFAULT_RELAYS = ("operator", "engineer")   # a console relays no admin acts unless the authority says so


def permits(role: str, action: str) -> bool:
    return action in ROLES.get(role, ())


def needed_role(action: str) -> str:
    """The least role allowed `action` (for refusal messages)."""
    for role in PEOPLE:
        if permits(role, action):
            return role
    return "none"
