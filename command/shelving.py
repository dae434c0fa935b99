"""Shelving after ISA-18.2 / IEC 62682 §5.7: an operator hides an active alarm for a while, with a reason.
The rules, pure (time is passed in):

- a shelf needs a reason (at least 3 characters) and an expiry: 1 minute up to `max_s` (a shift by default:
  nobody hides an alarm past the people who can answer for it);
- it ends at its expiry, when an operator unshelves it, or at once when the incident is upgraded to a higher
  grade than the one shelved (a new level is a new report, plan 4.1: it must be seen).

In a district the command service holds the shelves: a signed, authorised operator act (`shelve` role action,
gasguard.authority) applied by the leader and kept in its store (`shelves`, `shelf_log`; command/grader.py),
so a restart of a console or of the service unshelves nothing. `ShelfBook` is the same rules over a dict:
the leader's working copy (loaded from the store at take-over), and the whole of it for a console working
alone against one substation's grading plugin.
"""

from __future__ import annotations

# most severe first: the board's order and how an upgrade is spotted (plan 3.3 warning colours)
WARNING_RANK = {"red": 0, "orange": 1, "yellow": 2, "blue": 3, None: 4}
MAX_S = 8 * 3600.0
MIN_S = 60.0

EXPIRED, UPGRADED, UNSHELVED = "expired", "upgraded", "unshelved"


class ShelfError(ValueError):
    """A shelving request that cannot be honoured; the message says what to change."""


def grade(msg: dict) -> list:
    """Smaller is more severe: [warning rank, level] (level 1 = I, the gravest; ungraded last)."""
    return [WARNING_RANK.get(msg.get("warning"), 4), msg.get("level") or 9]


def new_shelf(by: str, reason, duration_s, now: float, msg: dict, max_s: float = MAX_S) -> dict:
    """The shelf an operator asks for, or ShelfError saying what to fix. `msg`: the incident as shelved
    (its revision and grade: {"revision", "warning", "level"})."""
    reason = str(reason or "").strip()
    if len(reason) < 3:
        raise ShelfError("write why the alarm is shelved (at least 3 characters)")
    try:
        duration_s = float(duration_s)
    except (TypeError, ValueError):
        raise ShelfError(f"shelve for 1 minute up to {max_s / 3600:g} hours (minutes as a number)") from None
    if not MIN_S <= duration_s <= max_s:
        raise ShelfError(f"shelve for 1 minute up to {max_s / 3600:g} hours")
    return {"by": str(by)[:80], "reason": reason[:500], "at": now, "until": now + duration_s,
            "revision": msg.get("revision"), "grade": grade(msg)}


def ended(shelf: dict, now: float, msg: dict | None = None) -> str | None:
    """Why this shelf no longer holds ("expired", "upgraded"), or None while it does."""
    if now >= shelf["until"]:
        return EXPIRED
    if msg is not None and grade(msg) < list(shelf["grade"]):
        return UPGRADED
    return None


class ShelfBook:
    """Shelves by incident id, bounded by the incidents held (one shelf each)."""

    def __init__(self, max_s: float = MAX_S, shelves: dict | None = None):
        self.max_s = max_s
        self._shelves: dict[str, dict] = dict(shelves or {})

    def shelve(self, iid: str, by: str, reason, duration_s, now: float, msg: dict) -> dict:
        shelf = self._shelves[iid] = new_shelf(by, reason, duration_s, now, msg, self.max_s)
        return shelf

    def unshelve(self, iid: str) -> dict | None:
        return self._shelves.pop(iid, None)

    def get(self, iid: str, now: float, msg: dict | None = None) -> dict | None:
        """The shelf while it holds; an ended one is dropped here (the caller records why, if it must)."""
        shelf = self._shelves.get(iid)
        if shelf is not None and ended(shelf, now, msg):
            del self._shelves[iid]
            return None
        return shelf

    def due(self, now: float, incidents: dict) -> list[tuple[str, dict, str]]:
        """Shelves that ended, removed: (incident id, shelf, why). `incidents`: id -> its latest grade."""
        out = []
        for iid, shelf in list(self._shelves.items()):
            why = ended(shelf, now, incidents.get(iid))
            if why:
                out.append((iid, self._shelves.pop(iid), why))
        return out

    def items(self) -> dict[str, dict]:
        return dict(self._shelves)
