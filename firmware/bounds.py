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

# How each number is said to a person: gas in % LEL (stored in 0.1 % LEL), pressure in kPa (stored in Pa)
UNITS = {"gas_l1": "lel", "gas_l2": "lel", "hysteresis": "lel", "opso": "pa", "upso": "pa", "setpoint": "pa",
         "opso_pct": "% of setpoint", "upso_pct": "% of setpoint", "sample_ms": "ms", "debounce_ms": "ms",
         "report_s": "s"}


def show(name, v):
    """A value with its unit as a person reads it: gas_l2 300 -> '30.0 % LEL', opso 7000 -> '7.0 kPa'."""
    u = UNITS.get(name)
    if u == "lel":
        return "%.1f %% LEL" % (v / 10)
    if u == "pa":
        return "%.1f kPa" % (v / 1000)
    return "%d %s" % (v, u) if u else "%r" % (v,)


def _outside(name, v, lo, hi):
    """'gas_l2=300 (30.0 % LEL) outside 10.0–25.0 % LEL': the number as typed, then in units."""
    u = UNITS.get(name)
    if u in ("lel", "pa"):
        unit = "% LEL" if u == "lel" else "kPa"
        return "%s=%d (%s) outside %s–%s" % (name, v, show(name, v), show(name, lo)[:-len(unit) - 1],
                                             show(name, hi))
    return "%s=%d outside %d–%d %s" % (name, v, lo, hi, u)


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
            out.append(_outside(name, v, b[name][0], b[name][1]))
    merged = defaults(profile)
    merged.update(params)
    if merged["gas_l1"] >= merged["gas_l2"]:
        out.append("gas_l1 (%s) must be below gas_l2 (%s)" % (show("gas_l1", merged["gas_l1"]),
                                                               show("gas_l2", merged["gas_l2"])))
    if merged["hysteresis"] >= merged["gas_l1"]:
        out.append("hysteresis (%s) must be below gas_l1 (%s)" % (show("hysteresis", merged["hysteresis"]),
                                                                   show("gas_l1", merged["gas_l1"])))
    if profile == HOUSEHOLD and merged["upso"] >= merged["opso"]:
        out.append("upso (%s) must be below opso (%s)" % (show("upso", merged["upso"]), show("opso", merged["opso"])))
    return out


def trip_pressures(profile, params):
    """(opso_pa, upso_pa) for a full parameter dict."""
    if profile == STATION:
        sp = params["setpoint"]
        return sp * params["opso_pct"] // 100, sp * params["upso_pct"] // 100
    return params["opso"], params["upso"]
