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
