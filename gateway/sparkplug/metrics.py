"""What a GasGuard field device is as a Sparkplug B device: its metrics (names, types, units, aliases) and how
one accepted uplink becomes metric values. The mapping is documented in gateway/README.md (Sparkplug B).

Aliases: every metric a node will ever publish is named once, in a birth, with an alias; data messages then
carry the alias alone (Sparkplug 3.0, 6.4.1: aliases must be unique across the edge node). A device's alias
is `dev_id << 8 | index` (the index in DEVICE_METRICS), so it is unique across devices, stable across
restarts and rebirths, and needs no table to be kept anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from gasguard.protocol.const import ALARM_NAMES, EV_FAULT, EV_FAULT_CLEARED, EV_VALVE, PARAM_NAMES
from gasguard.protocol.units import gas_percent_lel

from .schema import BOOLEAN, DOUBLE, FLOAT, INT32, INT64, STRING, UINT8, UINT16, UINT32, Payload

VALVE_NAMES = ("open", "closed", "moving", "unknown")          # SPEC 3.2 state bits 1-0
SENSOR_NAMES = {1: "gas", 2: "pressure", 3: "inlet", 4: "storage"}
FAULT_KINDS = {1: "open", 2: "short", 3: "range", 4: "stuck", 5: "write"}


@dataclass(frozen=True)
class MetricDef:
    name: str
    datatype: int
    unit: str | None = None        # engineering unit, sent as the property "engUnit" in births
    station_only: bool = False     # only regulator stations have it (inlet pressure)
    writable: bool = False         # a host may write it in a DCMD (a node command, under the authority rules)


def _alarm_metric(name: str) -> str:
    return "Alarms/" + name.replace("_", " ").title().replace("Opso", "OPSO").replace("Upso", "UPSO")


DEVICE_METRICS: tuple[MetricDef, ...] = (
    MetricDef("Gas", FLOAT, "%LEL"),                    # SPEC 3.1: 0.1 % LEL on the wire
    MetricDef("Pressure", FLOAT, "Pa"),                 # outlet (station) or service (household) pressure
    MetricDef("Inlet Pressure", FLOAT, "Pa", station_only=True),
    MetricDef("Battery", UINT8, "%"),                   # null on mains power
    MetricDef("Valve", STRING),                         # open / closed / moving / unknown
    MetricDef("Valve Latched", BOOLEAN),                # shut by the node; re-opens only on an authenticated reset
    MetricDef("Gas Level", UINT8),                      # 0 normal, 1 level 1, 2 level 2 (SPEC 3.2)
    MetricDef("Fault", BOOLEAN),
    MetricDef("Over Range", BOOLEAN),
    MetricDef("Pressure Trip", BOOLEAN),
    *(MetricDef(_alarm_metric(ALARM_NAMES[c]), BOOLEAN) for c in sorted(ALARM_NAMES)),   # active / not
    MetricDef("Faults/Last", STRING),                   # "<sensor>:<kind>" of the last fault, "none" when cleared
    MetricDef("Link/RSSI", INT32, "dBm"),
    MetricDef("Link/SNR", FLOAT, "dB"),
    MetricDef("Frame Counter", UINT32),
    MetricDef("Properties/Site Name", STRING),
    MetricDef("Properties/Profile", STRING),
    MetricDef("Properties/Households", UINT32),
    MetricDef("Properties/Latitude", DOUBLE, "deg"),
    MetricDef("Properties/Longitude", DOUBLE, "deg"),
    MetricDef("Properties/Key Area", BOOLEAN),
    MetricDef("Node Control/Reset", BOOLEAN, writable=True),
    MetricDef("Node Control/Selftest", BOOLEAN, writable=True),
    MetricDef("Node Control/Status", BOOLEAN, writable=True),
    *(MetricDef(f"Parameters/{PARAM_NAMES[p]}", UINT16, writable=True) for p in sorted(PARAM_NAMES)),
    MetricDef("Authority/Signed Request", STRING, writable=True),
)
INDEX = {m.name: i for i, m in enumerate(DEVICE_METRICS)}
assert len(DEVICE_METRICS) < 256, "aliases keep 8 bits for the metric index"

NODE_METRICS: tuple[MetricDef, ...] = (
    MetricDef("bdSeq", INT64),
    MetricDef("Node Control/Rebirth", BOOLEAN, writable=True),
    MetricDef("Properties/Gateway Version", STRING),
    MetricDef("Properties/District", STRING),
    MetricDef("Properties/Clock", STRING),              # "real", or the drill clock: a SCADA host must know
)
NODE_INDEX = {m.name: i for i, m in enumerate(NODE_METRICS)}


def alias(dev: int, name: str) -> int:
    return (dev << 8) | INDEX[name]


def node_alias(name: str) -> int:
    return NODE_INDEX[name]


def device_metrics(profile: str) -> tuple[MetricDef, ...]:
    station = profile != "household"
    return tuple(m for m in DEVICE_METRICS if station or not m.station_only)


def static_values(device: dict) -> dict:
    """The registry's facts about a device as metric values (births only: they do not change in a session)."""
    params = (device.get("config") or {})
    out = {"Properties/Site Name": device.get("site_name") or "", "Properties/Profile": device.get("profile") or "",
           "Properties/Households": int(device.get("households") or 0),
           "Properties/Latitude": device.get("lat"), "Properties/Longitude": device.get("lon"),
           "Properties/Key Area": bool(device.get("key_area"))}
    for p in PARAM_NAMES.values():
        v = params.get(p)
        out[f"Parameters/{p}"] = v if isinstance(v, int) and 0 <= v <= 0xFFFF else None
    for m in ("Node Control/Reset", "Node Control/Selftest", "Node Control/Status"):
        out[m] = False
    out["Authority/Signed Request"] = ""
    return out


def _state_values(st: int) -> dict:
    return {"Valve": VALVE_NAMES[st & 3], "Valve Latched": bool(st & 4), "Gas Level": (st >> 3) & 3,
            "Fault": bool(st & 0x20), "Over Range": bool(st & 0x40), "Pressure Trip": bool(st & 0x80)}


def values_of(obs: dict) -> dict:
    """One accepted uplink (the daemon's observation) -> {metric name: value}; None is a null value."""
    f = obs["frame"]
    out: dict = {}
    if "fcnt" in f:
        out["Frame Counter"] = f["fcnt"]
    if "state" in f and f["state"] is not None:
        out.update(_state_values(f["state"]))
    rx = obs.get("rx") or {}
    if rx.get("rssi") is not None:
        out["Link/RSSI"] = int(rx["rssi"])
    if rx.get("snr") is not None:
        out["Link/SNR"] = float(rx["snr"])
    kind = obs["type"]
    if kind == "reading":
        out["Gas"] = gas_percent_lel(f.get("gas"))
        out["Pressure"] = None if f.get("pressure") is None else float(f["pressure"])
        out["Battery"] = f.get("battery")
        if f.get("inlet") is not None or "inlet" in f:
            out["Inlet Pressure"] = None if f.get("inlet") is None else float(f["inlet"])
    elif kind == "alarm" and f.get("code") in ALARM_NAMES:
        out[_alarm_metric(ALARM_NAMES[f["code"]])] = not f.get("cleared", False)
    elif kind == "event":
        data = bytes.fromhex(f["data"]) if isinstance(f.get("data"), str) else (f.get("data") or b"")
        if f.get("code") == EV_FAULT and len(data) >= 2:
            out["Faults/Last"] = f"{SENSOR_NAMES.get(data[0], data[0])}:{FAULT_KINDS.get(data[1], data[1])}"
        elif f.get("code") == EV_FAULT_CLEARED:
            out["Faults/Last"] = "none"
        elif f.get("code") == EV_VALVE and len(data) >= 1:
            out["Valve"] = VALVE_NAMES[data[0] & 3]
    return out


def _set_value(m, datatype: int, value) -> None:
    if value is None:
        m.is_null = True
    elif datatype == BOOLEAN:
        m.boolean_value = bool(value)
    elif datatype == STRING:
        m.string_value = str(value)
    elif datatype == FLOAT:
        m.float_value = float(value)
    elif datatype == DOUBLE:
        m.double_value = float(value)
    elif datatype in (INT64, UINT32):
        # Int64 as two's complement in the uint64; UInt32 in long_value too, as Eclipse Tahu (the reference
        # implementation) reads it
        m.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    else:                                                # Int8..Int32, UInt8, UInt16: int_value (uint32)
        m.int_value = int(value) & 0xFFFFFFFF


def add_metric(payload, d: MetricDef, value, *, alias_: int, ts_ms: int, birth: bool, historical: bool = False):
    """Births carry name, alias, datatype and units; data messages the alias, datatype and value."""
    m = payload.metrics.add(alias=alias_, timestamp=ts_ms, datatype=d.datatype)
    if birth:
        m.name = d.name
        if d.unit:
            m.properties.keys.append("engUnit")
            m.properties.values.add(type=STRING, string_value=d.unit)
    if historical:
        m.is_historical = True
    _set_value(m, d.datatype, value)
    return m


def read_value(m):
    """A metric's value from a received payload (DCMD/NCMD): None when null or unset."""
    if m.is_null:
        return None
    which = m.WhichOneof("value")
    return None if which is None else getattr(m, which)


def new_payload(ts_ms: int, seq: int | None):
    p = Payload(timestamp=ts_ms)
    if seq is not None:
        p.seq = seq
    return p
