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


def gateway_of(mid: str) -> str:
    """The gateway id of a message id (msg_id): a /2 batch's rows leave it out, and their ids are made from it."""
    return mid.rsplit(":", 2)[0]


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


# the state byte's named fields, made once per value (256 of them) instead of once per reading: dicts (a retained
# state's last reading, a batch's row read back by name; never mutated)
_STATE_FIELDS = tuple(frame.state_fields(b) for b in range(256))


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


def reading_entry(mid: str, f: dict, t: float, rx: dict) -> dict:
    """A reading's fields by name (the schema's `reading`): what `reading_fields` makes of a batch's row."""
    return _entry(mid, f, t, rx, frame.state_fields(f["state"]))


# gasguard.readings/2 (issue 17, "fewer bytes per reading"): a batch's reading is an array of these columns, in
# this order, not an object. A /1 entry spent ~280 B on its id (the gateway's id, dev and fcnt again), its keys and
# the state byte spelled out as six named fields; a /2 row is ~100 B with the same facts. The id and the named
# state are derived by whoever reads it (`reading_fields`, the one reader: command/readings.py uses it).
# inlet_pa is there only for a reading that has one (a station's inlet pressure): a row of 8 or 9 items.
# gasguard.readings/3 (issue 17): /2's rows, but the rx of a reading that came over a wire - a serial port or a LoRa
# modem on one: `{"transport": T, "port": P, "rssi": null, "snr": null}`, the same for every reading of the port -
# may be the text "T:P" (rx_cell). It was 60 of a /2 row's ~105 B, written into the spool's rows, the broker's
# messages and every subscriber's reads (BENCHMARKS.md, twenty-first pass). An rx with anything else (a radio's
# rssi and snr, a forwarder's id) stays an object. A /2 row is a /3 row: the readers take both (READINGS_SCHEMAS).
READING_COLUMNS = ("dev", "fcnt", "t", "gas_pct_lel", "pressure_pa", "battery_pct", "state", "rx", "inlet_pa")
READINGS_SCHEMA = "gasguard.readings/3"
READINGS_SCHEMAS = frozenset({"gasguard.readings/2", READINGS_SCHEMA})   # what reading_fields reads
_WIRE_RX = frozenset({"transport", "port", "rssi", "snr"})


def wire_rx(transport: str, port: str) -> dict:
    """The rx of a frame read from a wire (a serial port, a LoRa modem on one): no radio figures. The one place its
    shape is made: the serial transport's rx, and what a row's text of it (rx_cell) reads back as (rx_of)."""
    return {"transport": transport, "port": port, "rssi": None, "snr": None}


def rx_cell(rx: dict):
    """A row's rx: "transport:port" for a wire's (rssi and snr null, nothing else; a transport name without a
    colon, a port that is text), else the object itself. `rx_of` gives the object back."""
    if (rx.keys() == _WIRE_RX and rx["rssi"] is None and rx["snr"] is None and type(rx["port"]) is str
            and type(rx["transport"]) is str and rx["transport"] and ":" not in rx["transport"]):
        return f"{rx['transport']}:{rx['port']}"
    return rx


def rx_of(cell) -> dict:
    """A row's rx cell as the object (rx_cell's inverse). ValueError for text without its colon."""
    if type(cell) is not str:
        return cell
    transport, colon, port = cell.partition(":")
    if not colon or not transport:
        raise ValueError(f"a reading row's rx text is 'transport:port', not {cell!r:.80}")
    return wire_rx(transport, port)


def reading_row(f: dict, t: float, rx: dict) -> list:
    row = [dev_hex(f["dev"]), f["fcnt"], round(t, 3), gas_percent_lel(f["gas"]), f["pressure"], f["battery"],
           f["state"], rx_cell(rx)]
    if f.get("inlet") is not None:
        row.append(f["inlet"])
    return row


def reading_json(f: dict, t: float, rx: dict) -> str:
    """reading_row(...) as JSON text (dumps: an integer past 64 bits in what a forwarder reported goes through
    json.dumps): the general path's; the compiled lane writes the same text (gateway/_lane.c,
    tests/test_fastlane.py)."""
    return dumps(reading_row(f, t, rx))


def reading_fields(gateway_id: str, row: list) -> dict:
    """A /2 or /3 batch's row as the reading's fields by name (`reading_entry`'s dict: the id derived, the state
    byte's named fields, the rx an object). ValueError for a row that is not one (too short or long, a dev that is
    not hex, a state that is not a byte, rx text without its colon)."""
    if not isinstance(row, list) or not 8 <= len(row) <= 9:
        raise ValueError(f"a reading row of gasguard.readings/2 or /3 is a list of 8 or 9 items, not {row!r:.80}")
    e = dict(zip(READING_COLUMNS, row))        # (zip stops at the row's end: inlet_pa only where there is one)
    state = e["state"]
    if not isinstance(state, int) or not 0 <= state <= 255:
        raise ValueError(f"a reading row's state is a byte, not {state!r}")
    e["state"] = _STATE_FIELDS[state]
    e["rx"] = rx_of(e["rx"])
    return {"id": msg_id(gateway_id, int(e["dev"], 16), e["fcnt"]), **e}


# the state byte of each named-fields dict (the first byte that has them: later ones are written over by earlier),
# for a /1 object made into a /2 row
_STATE_BYTE = {json.dumps(f, sort_keys=True): b for b, f in reversed(list(enumerate(_STATE_FIELDS)))}


def row_of_entry(e: dict) -> list:
    """A /1 batch's reading object as a /3 row: what a spool written before the upgrade holds is published as /3
    (gateway/spool.py converts it at start). ValueError/KeyError for an object that is not a reading's."""
    st = _STATE_BYTE.get(json.dumps(e["state"], sort_keys=True))
    if st is None:
        raise ValueError(f"a reading whose state is not one the state byte spells: {e['state']!r:.80}")
    fields = {**e, "state": st, "rx": rx_cell(e.get("rx", {}))}
    return [fields[c] for c in READING_COLUMNS if c != "inlet_pa" or c in fields]


BATCH_HEAD = 320   # bytes a batch message spends beyond its entries (schema, gateway, district, t, columns): an upper
#                    bound for ids and names of up to ~60 characters
_COLUMNS_JSON = orjson.dumps(READING_COLUMNS).decode()


def batch(gateway_id: str, district: str, t: float, entries_json: list[str]) -> str:
    """The aggregated reading message; entries are already JSON (joined, not re-encoded: hot path)."""
    head = dumps({"schema": READINGS_SCHEMA, "gateway": gateway_id, "district": district, "t": round(t, 3)})
    return head[:-1] + ',"columns":' + _COLUMNS_JSON + ',"readings":[' + ",".join(entries_json) + "]}"


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


# gasguard.state/1 (schemas/state.schema.json) as text: a gateway publishes one per device heard (first sight, a
# new state byte, back online, the refresh), ~5 % of the messages of a cold start and nearly one per reading in a
# district's 15-minute cycle, so it is written from pieces, not built as two dicts and encoded (9 -> ~4 µs; issue
# 17). It is the object json.dumps would write, key for key and value for value (tests/test_payload_encoding.py):
# the times are written with their 3 decimals ("%.3f" reads back as round(t, 3): both round the exact value
# correctly, and repr(round(...)) cost ~1 µs each), the other numbers as json writes them; the id is the gateway's
# quoted id with ":<dev>:<fcnt>" added, which needs no escaping.
_STATE_JSON = tuple(json.dumps(f, separators=(",", ":")) for f in _STATE_FIELDS)


def _num(x) -> str:
    return "null" if x is None else repr(x)


def state_text(gateway_json: str, dev: int, t: float, online: bool, last_seen: float | None,
               r_fcnt: int | None = None, r_t: float | None = None, gas=None, pressure=None, battery=None,
               state: int = 0, inlet=None) -> str:
    """A device's retained state (`gateway_json`: the gateway's id as JSON text, made once); `r_t` None: no
    reading yet, else the last reading's fields (state: its byte; inlet None: none), which it carries as a
    batch's entry does by name, without rx."""
    h = f"{dev:08x}"
    last = "null" if r_t is None else (
        f'{{"id":{gateway_json[:-1]}:{h}:{r_fcnt}","dev":"{h}","fcnt":{r_fcnt},"t":{r_t:.3f},'
        f'"gas_pct_lel":{_num(gas_percent_lel(gas))},"pressure_pa":{_num(pressure)},"battery_pct":{_num(battery)},'
        f'"state":{_STATE_JSON[state]}' + ("}" if inlet is None else f',"inlet_pa":{inlet!r}}}'))
    return (f'{{"schema":"gasguard.state/1","gateway":{gateway_json},"dev":"{h}","t":{t:.3f},'
            f'"online":{"true" if online else "false"},"last_seen":'
            f'{"null" if last_seen is None else f"{last_seen:.3f}"},"last_reading":{last}}}')


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

