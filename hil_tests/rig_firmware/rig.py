# The HIL rig's request handler (hil_tests/README.md "Rig protocol"), MicroPython and CPython alike.
#
# Hardware is passed in (main.py builds it for an ESP32 DevKit): `dacs` maps an input name (gas, pressure,
# inlet, battery) to an object with write_u16(code 0..65535) driving that node input; `valve` is an input
# pin on the node's valve line; `power` an output pin switching the node's supply (1 = on). Nothing here
# creates a bus. One request line in, one reply dict out; the caller writes it as one JSON line.

import json

MAX_LINE = 512
INPUTS = ("gas", "pressure", "inlet", "battery")
FEATURES = ["inputs", "valve", "power", "cut_on_valve"]


class Rig:
    def __init__(self, dacs, valve, power, cal=None):
        self.dacs = dacs
        self.valve = valve
        self.power = power
        # per input: (gain_ppm, offset) turning the node's ADC counts into this rig's DAC code, measured
        # once per node board (the ESP32 ADC1 at 11 dB is not linear near its ends: README "The rig")
        self.cal = cal or {}
        self.cut_after = 0      # valve edges until the supply is cut (0: not armed)
        self.errors = 0

    def _code(self, name, counts):
        gain, offset = self.cal.get(name, (1000000, 0))
        c = counts * gain // 1000000 + offset
        return 0 if c < 0 else (65535 if c > 65535 else c)

    def on_valve_edge(self, _pin=None):
        # runs in the pin interrupt: no allocation, one pin write. The cut must land within microseconds of
        # the edge (the node's latch write follows its valve command in the same loop pass), so it is done
        # here rather than deferred to the main loop.
        if self.cut_after:
            self.cut_after -= 1
            if not self.cut_after:
                self.power.value(0)

    def handle(self, line):
        if len(line) > MAX_LINE:
            self.errors += 1
            return {"ok": False, "error": "request longer than %d bytes" % MAX_LINE}
        try:
            req = json.loads(line)
            op = req.pop("op")
        except (ValueError, KeyError, AttributeError, TypeError):
            self.errors += 1
            return {"ok": False, "error": "send one JSON object with an 'op' per line"}
        if op == "info":
            return {"ok": True, "rig": "gasguard-rig", "features": FEATURES, "inputs": sorted(self.dacs)}
        if op == "get":
            return {"ok": True, "valve": self.valve.value(), "powered": bool(self.power.value())}
        if op == "set":
            for k in req:
                v = req[k]
                if k not in INPUTS or not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 65535:
                    return {"ok": False, "error": "set %s=%r: use gas, pressure, inlet, battery in 0..65535" % (k, v)}
                if k not in self.dacs:
                    return {"ok": False, "error": "no DAC wired to the node's %s input on this rig" % k}
            for k in req:
                self.dacs[k].write_u16(self._code(k, req[k]))
            return {"ok": True}
        if op == "power":
            self.power.value(1 if req.get("on") else 0)
            return {"ok": True}
        if op == "cut_on_valve":
            n = req.get("n", 1)
            if not isinstance(n, int) or not 1 <= n <= 100:
                return {"ok": False, "error": "cut_on_valve n=%r: a count of valve edges, 1..100" % (n,)}
            self.cut_after = n
            return {"ok": True}
        return {"ok": False, "unsupported": True, "error": "%s: this rig does not have that feature" % op}
