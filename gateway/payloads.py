"""JSON payloads the gateway publishes (schemas in gateway/schemas/; topics: protocol/topics.py).

Units are explicit in the names: gas in % LEL (SPEC 3.1, 0.1 % LEL on the wire), pressures in Pa.
"""

from __future__ import annotations

import json

import orjson

from gasguard.protocol import frame
from gasguard.protocol.const import ALARM_NAMES, EVENT_NAMES, RESULT_NAMES
from gasguard.protocol.topics import dev_hex
from gasguard.protocol.units import gas_percent_lel

SITE_FIELDS = ("site_name", "address", "profile", "households", "user_class", "pressure_class", "key_area",
               "lat", "lon", "upstream")


def msg_id(gateway_id: str, dev: int, fcnt: int) -> str:
    """Stable across restarts and retransmissions of one frame: consumers drop duplicates by it."""
    return f"{gateway_id}:{dev:08x}:{fcnt}"


def dumps(d: dict) -> str:
    """Compact JSON text. orjson (a C encoder, ~3x json.dumps here) writes the same text as
    json.dumps(separators=(",", ":")) for what the gateway publishes, except non-ASCII: UTF-8, not \\u escapes
    (both are JSON; MQTT payloads are bytes either way). Non-string keys become strings, as json.dumps does.
    orjson refuses integers past 64 bits, which a district message may carry (an operator's input echoed in
    an incident): those documents go through json.dumps, same text but for non-ASCII escapes."""
    try:
        return orjson.dumps(d, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(d, separators=(",", ":"))


# the state byte's named fields, made once per value (256 of them) instead of once per reading: as dicts (the
# retained state's last reading, which either encoder may write; never mutated) and as JSON (the hot path)
_STATE_FIELDS = tuple(frame.state_fields(b) for b in range(256))
_STATE_JSON = [orjson.Fragment(orjson.dumps(f)) for f in _STATE_FIELDS]


def _reading(mid: str, dev: int, fcnt: int, t: float, gas, pressure, battery, state) -> dict:
    """A reading's fields as the entries of a batch and a retained state's last reading carry them, in order."""
    return {"id": mid, "dev": dev_hex(dev), "fcnt": fcnt, "t": round(t, 3), "gas_pct_lel": gas_percent_lel(gas),
            "pressure_pa": pressure, "battery_pct": battery, "state": state}


def _entry(mid: str, f: dict, t: float, rx: dict, state) -> dict:
    e = _reading(mid, f["dev"], f["fcnt"], t, f["gas"], f["pressure"], f["battery"], state)
    e["rx"] = rx
    if f.get("inlet") is not None:
        e["inlet_pa"] = f["inlet"]
    return e


def last_reading(mid: str, dev: int, fcnt: int, t: float, gas, pressure, battery, state: int, inlet) -> dict:
    """A retained state's last reading: the reading's entry without its rx (presence.PresenceTable.state_item,
    from the fields it keeps per device)."""
    e = _reading(mid, dev, fcnt, t, gas, pressure, battery, _STATE_FIELDS[state])
    if inlet is not None:
        e["inlet_pa"] = inlet
    return e


def reading_entry(mid: str, f: dict, t: float, rx: dict) -> dict:
    return _entry(mid, f, t, rx, frame.state_fields(f["state"]))


def reading_json(mid: str, f: dict, t: float, rx: dict) -> str:
    """reading_entry(...) as JSON text: the ingest hot path (same text, the state fields pre-encoded)."""
    try:
        return orjson.dumps(_entry(mid, f, t, rx, _STATE_JSON[f["state"]]), option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:      # an integer past 64 bits in what a forwarder reported (rx): see dumps
        return dumps(reading_entry(mid, f, t, rx))


BATCH_HEAD = 200   # bytes a batch message spends beyond its entries (schema, gateway, district, t): an upper bound


def batch(gateway_id: str, district: str, t: float, entries_json: list[str]) -> str:
    """The aggregated reading message; entries are already JSON (joined, not re-encoded: hot path)."""
    head = dumps({"schema": "gasguard.readings/1", "gateway": gateway_id, "district": district, "t": round(t, 3)})
    return head[:-1] + ',"readings":[' + ",".join(entries_json) + "]}"


def site(device) -> dict:
    pub = device.public()
    return {k: pub.get(k) for k in SITE_FIELDS}


def alarm(gateway_id: str, district: str, mid: str, f: dict, t: float, rx: dict, device) -> dict:
    code = f["code"]
    pressure = code in (3, 4)
    return {"schema": "gasguard.alarm/1", "id": mid, "gateway": gateway_id, "district": district,
            "dev": dev_hex(f["dev"]), "fcnt": f["fcnt"], "t": round(t, 3), "code": code,
            "name": ALARM_NAMES.get(code, f"code_{code}"), "cleared": f["cleared"], "aseq": f["aseq"],
            "aid": f.get("aid"),
            "age_s": f["age"], "value": f["value"] if pressure or code not in (1, 2) else gas_percent_lel(f["value"]),
            "value_unit": "Pa" if pressure else ("pct_lel" if code in (1, 2) else "raw"),
            "state": frame.state_fields(f["state"]), "rx": rx, "site": site(device)}


def event(gateway_id: str, district: str, mid: str, f: dict, t: float, rx: dict) -> dict:
    return {"schema": "gasguard.event/1", "id": mid, "gateway": gateway_id, "district": district,
            "dev": dev_hex(f["dev"]), "fcnt": f["fcnt"], "t": round(t, 3), "code": f["code"],
            "name": EVENT_NAMES.get(f["code"], f"code_{f['code']}"), "eseq": f["eseq"], "aid": f.get("aid"),
            "data_hex": f["data"].hex(),
            "rx": rx}


def state(gateway_id: str, dev: int, t: float, online: bool, last_seen: float | None, last: dict | None) -> dict:
    return {"schema": "gasguard.state/1", "gateway": gateway_id, "dev": dev_hex(dev), "t": round(t, 3),
            "online": online, "last_seen": None if last_seen is None else round(last_seen, 3), "last_reading": last}


def status(gateway_id: str, district: str, t: float, online: bool, version: str, instance: str | None = None,
           host: str | None = None) -> dict:
    """`instance`, `host`: the publishing process (gateway/identity.py: two gateways with one id)."""
    out = {"schema": "gasguard.gateway-status/1", "gateway": gateway_id, "district": district,
           "online": online, "t": round(t, 3), "version": version}
    if instance is not None:
        out["instance"], out["host"] = instance, host
    return out


def gateway_event(gateway_id: str, t: float, name: str, detail: dict) -> dict:
    return {"schema": "gasguard.gateway-event/1", "gateway": gateway_id, "t": round(t, 3), "event": name,
            "detail": detail}


def command_result(gateway_id: str, dev: int, t: float, request_id: str, cmd: str, cid: int | None,
                   result: str, detail: str = "", reason: str | None = None, operator: str | None = None) -> dict:
    """`reason`: the authority's refusal code when the gateway refused the request (issue 14);
    `operator`: who the verified request came from."""
    out = {"schema": "gasguard.command-result/1", "gateway": gateway_id, "dev": dev_hex(dev), "t": round(t, 3),
           "request_id": request_id, "cmd": cmd, "cid": cid, "result": result, "detail": detail}
    if reason:
        out["reason"] = reason
    if operator:
        out["operator"] = operator
    return out


def request_result(gateway_id: str, t: float, topic: str, request_sha256: str, outcome: str, reason: str = "",
                   detail: str = "", operator: str | None = None) -> dict:
    """The answer to an acknowledgement or operator input (issue 14): allowed, or refused with the reason.
    `request_sha256` is the SHA-256 of the MQTT payload as sent, so the sender can match it."""
    return {"schema": "gasguard.request-result/1", "gateway": gateway_id, "t": round(t, 3), "topic": topic,
            "request_sha256": request_sha256, "outcome": outcome, "reason": reason, "detail": detail,
            "operator": operator}


def result_name(code: int) -> str:
    return RESULT_NAMES[code] if 0 <= code < len(RESULT_NAMES) else f"code_{code}"

