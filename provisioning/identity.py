"""A device's identity: its id, key, profile and site data in the registry, and what the board carries.

`node_config(device)` is the one place that turns a registry entry into /gg_config.json (the layout the
firmware reads, firmware/README.md "Device filesystem layout").
"""

from __future__ import annotations

import secrets

from gasguard.registry import PRESSURE_CLASSES, PROFILES, USER_CLASSES, Device, Registry, RegistryError

from . import keys, settings
from .errors import BadInput

MAX_ID = 0xFFFFFFFE


def parse_dev_id(text: str | int) -> int:
    """'00c0ffee', '0xC0FFEE' or '12648430' -> int. Listings print ids as 8 hex digits."""
    if isinstance(text, int):
        v = text
    else:
        t = text.strip().lower()
        try:
            v = int(t, 16) if (t.startswith("0x") or len(t) == 8) else int(t, 10)
        except ValueError:
            raise BadInput(f"device id {text!r}: write it as on the label (8 hex digits, e.g. 00c0ffee)") from None
    if not 0 < v <= MAX_ID:
        raise BadInput(f"device id {text!r} outside 00000001..fffffffe")
    return v


def get(reg: Registry, dev_id: int, *, active: bool = True) -> Device:
    dev = reg.get(dev_id)
    if dev is None:
        raise BadInput(f"device {dev_id:08x} is not in the registry {reg.path}: list them with 'gasguard device list'")
    if active and not dev.active:
        raise BadInput(f"device {dev_id:08x} is decommissioned: a retired identity is never reused; "
                       "create a new one with 'gasguard device new'")
    return dev


def new(reg: Registry, *, profile: str, board: str = "esp32", dev_id: int | None = None, site_name: str = "",
        address: str = "", lat: float | None = None, lon: float | None = None, households: int = 0,
        user_class: str = "residential", pressure_class: str = "low", key_area: bool = False,
        upstream: int | None = None, params: dict | None = None, radio: dict | None = None) -> Device:
    """Create the identity and key and add it to the registry; raises BadInput before writing anything."""
    settings.check_board(board)
    if profile not in PROFILES:
        raise BadInput(f"profile {profile!r}: choose household (meter) or station (regulator station)")
    if user_class not in USER_CLASSES:
        raise BadInput(f"user class {user_class!r}: choose one of {', '.join(USER_CLASSES)}")
    if pressure_class not in PRESSURE_CLASSES:
        raise BadInput(f"inlet pressure class {pressure_class!r}: choose one of {', '.join(PRESSURE_CLASSES)}")
    if lat is not None and not -90 <= lat <= 90 or lon is not None and not -180 <= lon <= 180:
        raise BadInput("coordinates: latitude -90..90, longitude -180..180 (decimal degrees, WGS 84)")
    if households < 0:
        raise BadInput("households served cannot be negative")
    params = settings.check_params(profile, dict(params or {}))
    if upstream is not None and reg.get(upstream) is None:
        raise BadInput(f"upstream station {upstream:08x} is not in the registry: add the station first")
    if dev_id is None:
        for _ in range(100):
            dev_id = secrets.randbelow(MAX_ID) + 1
            if reg.get(dev_id) is None:
                break
    elif reg.get(dev_id) is not None:
        raise BadInput(f"device {dev_id:08x} is already in the registry: ids are never reused")
    radio = dict(settings.DEFAULT_RADIO[board], **settings.check_radio(board, dict(radio or {})))
    config = dict(params, board=board, radio=radio)
    dev = Device(dev_id=dev_id, key=keys.new_device_key(), profile=profile, site_name=site_name, address=address,
                 lat=lat, lon=lon, households=households, user_class=user_class, pressure_class=pressure_class,
                 key_area=key_area, upstream=upstream, config=config)
    try:
        reg.add(dev)
    except RegistryError as e:
        raise BadInput(str(e)) from None
    reg.log(dev_id, "new", {"profile": profile, "board": board})
    return dev


def label(dev: Device) -> list[str]:
    """What goes on the device label: no key, ever."""
    kind = "regulator station node" if dev.profile == "station" else "household meter node"
    out = [f"GasGuard {kind}", f"ID {dev.dev_id:08X}"]
    if dev.site_name:
        out.append(dev.site_name)
    if dev.address:
        out.append(dev.address)
    if dev.lat is not None and dev.lon is not None:
        out.append(f"{dev.lat:.5f}, {dev.lon:.5f}")
    out.append(f"key v{dev.key_version}" + ("  KEY AREA" if dev.key_area else ""))
    return out


def node_config(dev: Device) -> dict:
    """/gg_config.json for this device (firmware/README.md), from its registry entry."""
    params, board, radio = settings.split(dev.config)
    cfg = {"dev_id": dev.dev_id, "profile": dev.profile, "board": board, "params": params, "radio": radio}
    if dev.calibration:
        cfg["calibration"] = dev.calibration
    return cfg


def check_grading_facts(profile: str, lat: float | None, lon: float | None, households: int) -> None:
    """What the district's grading needs to know about a node before it goes in the field (BadInput): where it
    is (leak alarms within a radius join one incident; the report names the place) and, for a regulator
    station, how many households it feeds (plan 1.6.2.3: the level of a supply incident is counted in them)."""
    missing = []
    if lat is None or lon is None:
        missing.append("--lat and --lon (decimal degrees, WGS 84: read them off the site plan or a phone)")
    elif not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise BadInput(f"--lat {lat} --lon {lon}: latitude is -90..90 and longitude -180..180 (decimal degrees)")
    if profile == "station" and households <= 0:
        missing.append("--households (every household this station feeds, directly or through stations "
                       "downstream)")
    if missing:
        raise BadInput(f"a {profile} node needs " + " and ".join(missing) + ": grading cannot place or size its "
                       "incidents without them")


def _when(t: float, now: float) -> str:
    """'2026-12-02 15:04 +08:00 (3 h ago)': local time with its offset, and how long ago."""
    import time as _time
    if not t:
        return "never"
    lt = _time.localtime(t)
    off = lt.tm_gmtoff // 60
    ago = max(0.0, now - t)
    rel = (f"{ago:.0f} s" if ago < 90 else f"{ago / 60:.0f} min" if ago < 5400 else
           f"{ago / 3600:.0f} h" if ago < 172800 else f"{ago / 86400:.0f} days")
    return (_time.strftime("%Y-%m-%d %H:%M", lt) + f" {'+' if off >= 0 else '-'}{abs(off) // 60:02d}:{abs(off) % 60:02d}"
            f" ({rel} ago)")


def _flat(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, x in sorted(d.items()):
        out += _flat(x, f"{prefix}{k}.") if isinstance(x, dict) else [f"{prefix}{k}={_value(x)}"]
    return out


def _value(v) -> str:
    if isinstance(v, dict):
        return ", ".join(_flat(v)) or "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return " ".join(_value(x) for x in v) or "-"
    return "-" if v in (None, "") else str(v)


def describe(pub: dict, history: list[dict], now: float | None = None) -> list[str]:
    """`device show` for a person: one fact a line, times as dates with how long ago, settings as name=value."""
    import time as _time
    now = _time.time() if now is None else now
    skip = {"dev", "dev_id", "created_at", "updated_at", "config", "calibration", "lat", "lon", "upstream"}
    lines = [f"device          {pub['dev']}"]
    lines += [f"{k.replace('_', ' '):15} {_value(v)}" for k, v in pub.items() if k not in skip]
    lines.append(f"{'location':15} " + (f"{pub['lat']:.5f}, {pub['lon']:.5f}" if pub.get("lat") is not None
                                         and pub.get("lon") is not None else "-"))
    lines.append(f"{'fed by':15} " + (f"{pub['upstream']:08x}" if pub.get("upstream") else "-"))
    lines.append(f"{'settings':15} {_value(pub.get('config') or {})}")
    lines.append(f"{'calibration':15} {_value(pub.get('calibration') or {})}")
    lines.append(f"{'created':15} {_when(pub.get('created_at') or 0, now)}")
    lines.append(f"{'updated':15} {_when(pub.get('updated_at') or 0, now)}")
    lines.append("history:")
    lines += [f"  {_when(h['at'], now):38} {h['action']:13} {_value(h['detail'])}" for h in history]
    return lines
