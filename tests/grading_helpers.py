"""Builders shared by the grading, incident and console tests: registry-shaped devices and observations."""

from gasguard.protocol import frame

T0 = 1_795_400_000.0          # 2026-11-23 10:13:20 +08:00, a virtual clock start


def device(dev_id, profile="station", households=0, pressure_class="medium_a", key_area=False, lat=36.66,
           lon=117.06, site=None, upstream=None, address="历下区测试路1号"):
    return {"dev_id": dev_id, "dev": f"{dev_id:08x}", "profile": profile, "site_name": site or f"site-{dev_id:x}",
            "address": address, "lat": lat, "lon": lon, "households": households, "user_class": "residential",
            "pressure_class": pressure_class, "key_area": key_area, "upstream": upstream}


def alarm(dev, t, code, *, cleared=False, aseq=1, age=0, value=0, valve=1, ptrip=False, gas_level=0):
    st = frame.make_state(valve, valve == 1, gas_level, False, False, ptrip)
    return {"id": f"{dev['dev']}-a{aseq}-{cleared}", "t": t, "dev": dev["dev_id"], "type": "alarm",
            "frame": {"code": code, "cleared": cleared, "aseq": aseq, "age": age, "value": value, "state": st},
            "state": frame.state_fields(st), "device": dev, "rx": {}}


def reading(dev, t, *, pressure=None, inlet=None, gas=0, valve=0, ptrip=False):
    st = frame.make_state(valve, False, 0, False, False, ptrip)
    fr = {"gas": gas, "pressure": pressure, "battery": None, "state": st}
    if inlet is not None:
        fr["inlet"] = inlet
    return {"id": f"{dev['dev']}-r{t}", "t": t, "dev": dev["dev_id"], "type": "reading", "frame": fr,
            "state": frame.state_fields(st), "device": dev, "rx": {}}


def valve_event(dev, t, valve, cause=5, eseq=1):
    return {"id": f"{dev['dev']}-e{eseq}", "t": t, "dev": dev["dev_id"], "type": "event",
            "frame": {"code": 5, "eseq": eseq, "data": bytes([valve, cause]).hex()}, "state": None,
            "device": dev, "rx": {}}


def payloads(out, topic_part=""):
    return [p for t, p in out if topic_part in t]
