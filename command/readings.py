"""The gateways' readings and valve events as the command side reads them (issue 16 item 5: the station page).

ONE place parses a gateway's reading batch (`readings_of`) and a valve event (`valve_of`): the command
service's grader and store, and a console working alone (command/web/source.py `ReadingFeed`), all call these.
The batch format belongs to the gateway (gateway/payloads.py `batch`): `gasguard.readings/3` (and /2, whose rows are
/3 rows), a row of columns per reading (issue 17: ~60 B a reading over a serial port instead of ~280), made into the
reading's fields by name by the gateway's own `payloads.reading_fields`; `gasguard.readings/1`, an object per
reading, from gateways not yet upgraded, as it is.
"""

from __future__ import annotations

from gasguard.gateway.payloads import READINGS_SCHEMAS, reading_fields
from gasguard.protocol import const as C

# EV_VALVE's data: valve u8 (1 closed, 0 open), cause u8 (SPEC 3.3)
VALVE_CAUSES = {C.CAUSE_GAS: "gas", C.CAUSE_OPSO: "opso", C.CAUSE_UPSO: "upso", C.CAUSE_FAULT: "fault",
                C.CAUSE_RESET: "reset", C.CAUSE_SELFTEST: "selftest", C.CAUSE_MANUAL: "manual"}
# what a station's plot keeps of a reading (outlet and inlet pressure, Pa)
PLOTTED = ("pressure_pa", "inlet_pa")


def readings_of(doc: dict) -> list[dict]:
    """The readings of one batch, each a dict with (at least) `dev` (8 hex digits), `fcnt`, `t` (the
    gateway's receive time) and the measured values `pressure_pa`, `inlet_pa` (stations), `gas_pct_lel`,
    `battery_pct`, `state`, `id`. ValueError if the batch has no list of readings, or a /2 batch a row that is not
    one (payloads.reading_fields) or no gateway."""
    rows = doc.get("readings")
    if rows is None:
        return []
    if not isinstance(rows, list):
        raise ValueError("a reading batch whose 'readings' is not a list")
    if doc.get("schema") not in READINGS_SCHEMAS:
        return rows                       # gasguard.readings/1: the objects themselves
    gw = doc.get("gateway")
    if not isinstance(gw, str):
        raise ValueError(f"a {doc['schema']} batch without its gateway (the readings' ids are made from it)")
    return [reading_fields(gw, r) for r in rows]


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
