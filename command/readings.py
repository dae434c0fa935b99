"""The gateways' readings and valve events as the command side reads them (issue 16 item 5: the station page).

ONE place parses a gateway's reading batch (`readings_of`) and a valve event (`valve_of`): the command
service's grader and store, and a console working alone (command/web/source.py `ReadingFeed`), all call these.
The batch format belongs to the gateway (gateway/payloads.py `batch`, schema `gasguard.readings/1`); when it
changes (say columns instead of one object per reading, for speed), adapt `readings_of` here and nothing else.
"""

from __future__ import annotations

from gasguard.protocol import const as C

# EV_VALVE's data: valve u8 (1 closed, 0 open), cause u8 (SPEC 3.3)
VALVE_CAUSES = {C.CAUSE_GAS: "gas", C.CAUSE_OPSO: "opso", C.CAUSE_UPSO: "upso", C.CAUSE_FAULT: "fault",
                C.CAUSE_RESET: "reset", C.CAUSE_SELFTEST: "selftest", C.CAUSE_MANUAL: "manual"}
# what a station's plot keeps of a reading (outlet and inlet pressure, Pa)
PLOTTED = ("pressure_pa", "inlet_pa")


def readings_of(doc: dict) -> list[dict]:
    """The readings of one batch, each a dict with (at least) `dev` (8 hex digits), `fcnt`, `t` (the
    gateway's receive time) and the measured values `pressure_pa`, `inlet_pa` (stations), `gas_pct_lel`,
    `battery_pct`, `state`, `id`. ValueError if the batch has no list of readings."""
    rows = doc.get("readings")
    if rows is None:
        return []
    if not isinstance(rows, list):
        raise ValueError("a reading batch whose 'readings' is not a list")
    return rows


def valve_of(doc: dict) -> dict | None:
    """A valve event as {"dev", "t", "valve": "closed" | "open", "cause", "gateway"}; None for any other event
    (or a valve event without data)."""
    if doc.get("code") != C.EV_VALVE:
        return None
    data = bytes.fromhex(doc.get("data_hex") or "")
    if not data:
        return None
    return {"dev": doc["dev"], "t": float(doc["t"]), "valve": "closed" if data[0] == C.VALVE_CLOSED else "open",
            "cause": VALVE_CAUSES.get(data[1], str(data[1])) if len(data) > 1 else None,
            "gateway": doc.get("gateway")}
