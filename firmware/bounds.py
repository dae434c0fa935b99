# Node parameters: defaults per profile and the safe bounds the firmware enforces.
# The technician CLI imports this same file, so a value it accepts is a value the node accepts.
# MicroPython-compatible (no typing, no dataclasses).
#
# Gas in 0.1 % LEL, pressure in Pa, times in ms unless named _s.
# household: warning 10 % LEL, alarm + shut-off 25 % LEL; OPSO 7 kPa, UPSO 0.75 kPa
#   (self-closing valves on low-pressure natural-gas service, CJ/T 447).
# station: first alarm 25 % LEL, second alarm 50 % LEL (GB/T 50493); OPSO 165 % and UPSO 50 % of the
#   outlet set point (typical slam-shut settings); shut-off on gas only when configured.

HOUSEHOLD = "household"
STATION = "station"
PROFILES = (HOUSEHOLD, STATION)

DEFAULTS = {
    HOUSEHOLD: {
        "gas_l1": 100, "gas_l2": 250, "hysteresis": 30, "debounce_ms": 2000,
        "opso": 7000, "upso": 750,
        "sample_ms": 1000, "report_s": 900,
        "shutoff_on_gas": True, "fault_action": "close",
    },
    STATION: {
        "gas_l1": 250, "gas_l2": 500, "hysteresis": 30, "debounce_ms": 500,
        "setpoint": 2500, "opso_pct": 165, "upso_pct": 50,
        "sample_ms": 100, "report_s": 60,
        "shutoff_on_gas": False, "fault_action": "alarm",
    },
}

# (low, high) inclusive. A gas alarm above 25 % LEL at a home, or 50 % LEL at a station, is not safe.
BOUNDS = {
    HOUSEHOLD: {
        "gas_l1": (50, 200), "gas_l2": (100, 250), "hysteresis": (10, 100), "debounce_ms": (0, 10000),
        "opso": (3000, 10000), "upso": (300, 1500),
        "sample_ms": (100, 5000), "report_s": (60, 86400),
    },
    STATION: {
        "gas_l1": (50, 250), "gas_l2": (100, 500), "hysteresis": (10, 100), "debounce_ms": (0, 5000),
        "setpoint": (1000, 4000000), "opso_pct": (110, 200), "upso_pct": (20, 90),
        "sample_ms": (50, 1000), "report_s": (10, 3600),
    },
}

CHOICES = {"shutoff_on_gas": (True, False), "fault_action": ("close", "alarm")}


def defaults(profile):
    if profile not in DEFAULTS:
        raise ValueError("profile %r: choose household or station" % (profile,))
    return dict(DEFAULTS[profile])


def problems(profile, params):
    """Every reason `params` (a full or partial parameter dict) is unsafe; [] when it is fine."""
    if profile not in BOUNDS:
        return ["profile %r: choose household or station" % (profile,)]
    out = []
    b = BOUNDS[profile]
    for name in params:
        v = params[name]
        if name in CHOICES:
            if v not in CHOICES[name]:
                out.append("%s=%r: choose one of %r" % (name, v, CHOICES[name]))
        elif name not in b:
            out.append("%s: not a %s parameter (known: %s)" % (name, profile, ", ".join(sorted(b))))
        elif not isinstance(v, int) or isinstance(v, bool):
            out.append("%s=%r: must be a whole number" % (name, v))
        elif v < b[name][0] or v > b[name][1]:
            out.append("%s=%d outside the safe range %d..%d" % (name, v, b[name][0], b[name][1]))
    merged = defaults(profile)
    merged.update(params)
    if merged["gas_l1"] >= merged["gas_l2"]:
        out.append("gas_l1 (%d) must be below gas_l2 (%d)" % (merged["gas_l1"], merged["gas_l2"]))
    if merged["hysteresis"] >= merged["gas_l1"]:
        out.append("hysteresis (%d) must be below gas_l1 (%d)" % (merged["hysteresis"], merged["gas_l1"]))
    if profile == HOUSEHOLD and merged["upso"] >= merged["opso"]:
        out.append("upso (%d Pa) must be below opso (%d Pa)" % (merged["upso"], merged["opso"]))
    return out


def trip_pressures(profile, params):
    """(opso_pa, upso_pa) for a full parameter dict."""
    if profile == STATION:
        sp = params["setpoint"]
        return sp * params["opso_pct"] // 100, sp * params["upso_pct"] // 100
    return params["opso"], params["upso"]
