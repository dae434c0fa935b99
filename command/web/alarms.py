"""What an operator's board shows of an incident, after ISA-18.2 / IEC 62682. Pure: time is passed in.

Used by the web board and by `gasguard command watch`, so both say the same thing about one incident:
- `alarm_state`: unacknowledged (active, not seen), acknowledged (active, seen), returned-to-normal-
  unacknowledged (it cleared before anyone saw it: still needs a look), normal (cleared and seen), shelved
  (hidden by an operator with a reason until an expiry);
- `deadline_view`: the plan 4.1.2 deadlines (20' phone, 45' written) counting down, turning overdue, and no
  longer counting once the incident is acknowledged (the report is then the operator's, not the machine's);
- shelving itself (who, why, until when; the rules in `gasguard.command.shelving`) is held by the command
  service as a signed, audited act; a board only shows a shelf while it holds;
- `FloodDetector`: a flood starts above 10 alarms in 10 minutes and ends below 5 (EEMUA 191 / ISA-18.2
  figures in shared/domain/COMMAND.md); every figure is configuration. It counts alarms (annunciations), not
  incidents: `annunciations` says how many a revision brings, a new incident's and every device that joins
  an existing one (a leak cluster of twelve homes is twelve alarms in one incident).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gasguard.command.shelving import WARNING_RANK, ended

UNACKED = "unacknowledged"
ACKED = "acknowledged"
RTN_UNACKED = "returned-to-normal-unacknowledged"
NORMAL = "normal"
SHELVED = "shelved"
STATES = (UNACKED, ACKED, RTN_UNACKED, NORMAL, SHELVED)
# board order: what needs an operator first (ISA-18.2 annunciation priority of unacknowledged states)
STATE_ORDER = {UNACKED: 0, RTN_UNACKED: 1, ACKED: 2, SHELVED: 3, NORMAL: 4}
WARNING_ORDER = WARNING_RANK


def is_acked(msg: dict) -> bool:
    """The latest revision carries an acknowledgement (the gateway/service clears it on an upgrade)."""
    return bool(msg.get("acked"))


def alarm_state(msg: dict, shelf: dict | None = None, now: float | None = None) -> str:
    # a shelf shows only while it holds: past its expiry or below the incident's new grade it is over at
    # once on the screen, whenever the service gets round to recording that
    if shelf is not None and msg.get("status") == "open" and (now is None or not ended(shelf, now, msg)):
        return SHELVED
    active = msg.get("status") == "open"
    if active:
        return ACKED if is_acked(msg) else UNACKED
    return NORMAL if is_acked(msg) else RTN_UNACKED


def _mmss(s: float) -> str:
    s = int(abs(s))
    return f"{s // 60:d}:{s % 60:02d}"


def deadline_view(msg: dict, stage: str, now: float) -> dict:
    """{"text", "overdue", "counting"} for deadline `stage` ("phone" or "written").

    Counting stops once acknowledged or resolved: an acknowledged incident shows when it was acknowledged
    relative to the deadline, never a growing "OVERDUE" (the field console did that; issue 16)."""
    deadline = msg["deadlines"][stage]
    acked = msg.get("acked") or None
    if acked:
        late = acked["t"] - deadline
        return {"text": ("acked " + _mmss(late) + " late") if late > 0 else "acked in time",
                "overdue": False, "counting": False, "late": late > 0}
    if msg.get("status") != "open":
        return {"text": "resolved", "overdue": False, "counting": False, "late": False}
    left = deadline - now
    if left >= 0:
        return {"text": _mmss(left), "overdue": False, "counting": True, "late": False}
    return {"text": "OVERDUE " + _mmss(left), "overdue": True, "counting": True, "late": True}


def affected_devices(msg: dict) -> list[str]:
    """Device ids (8 hex digits) the incident touches: its place, and for supply the stations fed."""
    rep = msg.get("report") or {}
    out = [d["dev"] for d in (rep.get("place") or {}).get("devices", [])]
    for s in (rep.get("what_happened") or {}).get("stations", []) or []:
        out += [s["dev"], *s.get("downstream_stations", [])]
    return list(dict.fromkeys(out))


def site_name(msg: dict) -> str:
    """The full site name (never cut: one regulator station must not look like every other)."""
    place = (msg.get("report") or {}).get("place") or {}
    return place.get("site_name") or msg.get("title") or msg["incident_id"]


def annunciations(seen: set | None, msg: dict) -> tuple[int, set]:
    """(alarms this revision annunciates, the incident's alarm devices now). `seen`: the devices already
    counted for this incident, None when this console has not seen it before. The alarms of an incident are
    its source devices (the stations cut off, the homes of a leak cluster, the pressure point: the report's
    `source.devices`): a new incident annunciates each (at least one), a later revision each device that
    joined; an acknowledgement, an escalation or operator input annunciates nothing."""
    devs = set(((msg.get("report") or {}).get("source") or {}).get("devices") or ())
    if seen is None:
        # an incident already held when this console started (or a resent revision) is not a new alarm
        return (max(1, len(devs)) if msg.get("kind") == "new" else 0), devs
    return len(devs - seen), seen | devs


@dataclass(frozen=True)
class FloodConfig:
    window_s: float = 600.0     # COMMAND.md: a flood starts above 10 alarms in 10 minutes ...
    start_above: int = 10
    end_below: int = 5          # ... and ends below 5


class FloodDetector:
    """Counts alarms in a sliding window; hysteresis between start and end (ISA-18.2 flood)."""

    def __init__(self, cfg: FloodConfig | None = None, maxlen: int = 10_000):
        self.cfg = cfg or FloodConfig()
        self._times: deque = deque(maxlen=maxlen)    # arrival times of alarms; bound: a flood this size
        self.flooding = False                         # is counted in full by any window we use
        self.since: float | None = None               # when the current flood started (None: no flood)

    def _expire(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.cfg.window_s:
            self._times.popleft()

    def add(self, t: float, n: int = 1) -> None:
        self._times.extend([t] * n)

    def state(self, now: float) -> dict:
        self._expire(now)
        n = len(self._times)
        if not self.flooding and n > self.cfg.start_above:
            self.flooding, self.since = True, now
        elif self.flooding and n < self.cfg.end_below:
            self.flooding, self.since = False, None
        return {"flood": self.flooding, "count": n, "window_s": self.cfg.window_s, "since": self.since,
                "start_above": self.cfg.start_above}


def board_row(msg: dict, now: float, shelf: dict | None = None) -> dict:
    """The incident as one board row: everything a screen needs, already decided."""
    state = alarm_state(msg, shelf, now)
    return {
        "incident_id": msg["incident_id"], "revision": msg["revision"], "status": msg["status"],
        "state": state, "warning": msg.get("warning"), "level": msg.get("level"),
        "projected": bool(msg.get("projected")), "category": msg.get("category"),
        "site": site_name(msg), "households": msg.get("households") or 0,
        "phone": deadline_view(msg, "phone", now), "written": deadline_view(msg, "written", now),
        "deadlines": msg["deadlines"], "acked": msg.get("acked"), "escalation": msg.get("escalation"),
        "shelf": shelf if state == SHELVED else None, "detected_at": msg.get("detected_at"), "title": msg.get("title"),
        "devices": affected_devices(msg),
    }


def sort_key(row: dict):
    return (STATE_ORDER[row["state"]], WARNING_ORDER.get(row["warning"], 4), row["level"] or 9,
            row["detected_at"] or 0)
