"""One simulated node (household meter or regulator station) speaking protocol v1 as the firmware does.

Pure logic: inputs are virtual time `t` (seconds) and a random generator; outputs are field dicts that
`seal()` turns into signed frames with this node's own counter. No clock, no socket: the fleet
(tools/sim/fleet.py) schedules nodes and moves bytes.

What it models (firmware/bounds.py defaults, overridable by the registry `config`):
- readings at the profile's report period: gas noise 0-2 % LEL, service/outlet pressure noise around the
  set point, station inlet pressure around the nominal of its GB 50028 class, battery drain (households);
- for nodes a scenario drives ("dynamic"), once per virtual second the firmware's own safety state machine
  (firmware/safety.Safety) on the simulated signals, reported as firmware/app.App.sample reports it: gas
  warning/alarm with debounce and hysteresis (household shut-off latched on level 2), OPSO/UPSO trips with
  the slam-shut or self-closing valve latched, cleared alarms; a low-battery alarm of the simulator's own;
- alarms and events retransmitted with the same aseq/eseq and a new counter until acked (SPEC 3.4: aseq/eseq
  is the low byte of the first copy's counter, set when that copy is sealed),
  or sent a fixed number of times when there is no downlink path;
- downlinks: acks stop retransmissions; commands (RESET, SET_PARAM, STATUS, SELFTEST) are verified
  (MIC, counter) and answered with an ack; RESET is the firmware's Safety.reset, SET_PARAM, the STATUS data
  and the BOOT event are the firmware's own (firmware/commands.py), so result codes and versions cannot
  drift (tests/test_one_node_logic.py).

Kept of its own: radio (Radio), signal noise and physics (_signals), scheduling (the fleet), battery drain.
Simplification, on purpose: the safety step runs every 1 s of virtual time (debounce rounds up to whole steps).
"""

import math

from gasguard.firmware import bounds, commands, safety, ticks
from gasguard.protocol import ProtocolError, const, frame

STEP_S = 1.0                         # virtual seconds between safety steps of a dynamic node
RETX_S = (5, 10, 20, 40, 60)         # alarm/event retransmission back-off, then every 60 s until acked
NO_DOWNLINK_COPIES = 3               # copies of an alarm when no ack can ever come (one-way link)
LOW_BATTERY_PCT = 10                 # LOW_BATTERY alarm below this
DRAIN_PER_FRAME = 0.0004             # % of capacity per transmission (SF11, ~0.8 s at ~40 mA)
DRAIN_PER_HOUR = 0.001               # % per hour asleep (~10-year life on a D cell)
HOUSEHOLD_SERVICE_PA = 2000          # typical low-pressure service at a meter
SERVICE_RATIO = 0.85                 # meter pressure / feeding station outlet (drop in the service line)
OUTLET_DECAY_S = 20.0                # outlet pressure time constant after a slam-shut closes
REGULATOR_RATIO = 0.9                # a regulator cannot hold an outlet above 90 % of its inlet

# nominal inlet pressure per GB 50028 class (middle of the range), Pa
INLET_NOMINAL = {"high_a": 3_200_000, "high_b": 2_000_000, "subhigh_a": 1_200_000, "subhigh_b": 600_000,
                 "medium_a": 300_000, "medium_b": 100_000, "low": 3_000}

_DEFAULTS = {p: bounds.defaults(p) for p in bounds.PROFILES}


class Radio:
    """What a LoRa gateway would measure for this node: channel, spreading factor, RSSI and SNR."""
    __slots__ = ("chan", "sf", "rssi", "lsnr")

    def __init__(self, rng):
        self.chan = rng.randrange(8)
        self.rssi = rng.uniform(-120.0, -70.0)
        self.lsnr = max(-19.0, min(10.0, (self.rssi + 112.0) * 0.6))
        # the slowest rate that still decodes (SPEC 7: nothing slower than SF11)
        self.sf = 7 if self.lsnr > -5 else 9 if self.lsnr > -10 else 11


class Pending:
    __slots__ = ("fields", "t0", "next_t", "tries")

    def __init__(self, fields, t0, next_t):
        self.fields = fields
        self.t0 = t0
        self.next_t = next_t
        self.tries = 1


class SimNode:
    """A simulated node. `dev` and `key` come from the registry; `profile` is household or station."""

    __slots__ = ("dev", "key", "profile", "fcnt", "last_down", "params", "gas_base", "p_nom",
                 "inlet_nom", "pressure_class", "households", "user_class", "upstream", "parent", "battery",
                 "valve", "latched", "level", "ptrip", "fault", "gas", "pressure", "inlet", "gas_fn", "p_fn",
                 "inlet_fn", "dynamic", "pending", "low_batt_sent", "radio",
                 "last_t", "downlink", "safety", "since")

    def __init__(self, dev, key, profile, rng, *, config=None, pressure_class="low", households=0,
                 user_class="residential", upstream=None, fcnt=1, downlink=True):
        if profile not in bounds.PROFILES:
            raise ValueError("profile %r: choose household or station" % (profile,))
        self.dev = dev
        self.key = key
        self.profile = profile
        self.fcnt = fcnt                  # the next uplink counter to use
        self.last_down = 0                # highest downlink counter accepted (SPEC 4)
        params = _DEFAULTS[profile]
        cfg = {k: v for k, v in (config or {}).items() if k in params}
        if cfg:
            params = dict(params, **cfg)  # shared defaults unless the registry overrides them
        self.params = params
        self.pressure_class = pressure_class
        self.households = households
        self.user_class = user_class
        self.upstream = upstream
        self.parent = None                # the feeding SimNode, when it is in the same fleet
        self.gas_base = rng.uniform(0.0, 8.0)
        if profile == "station":
            self.p_nom = params["setpoint"]
            self.inlet_nom = INLET_NOMINAL.get(pressure_class, 300_000)
            self.battery = None           # mains powered
        else:
            self.p_nom = HOUSEHOLD_SERVICE_PA
            self.inlet_nom = None
            self.battery = rng.uniform(55.0, 100.0)
        self.valve = const.VALVE_OPEN
        self.latched = False
        self.level = 0
        self.ptrip = False
        self.fault = False
        self.gas = None                   # last values from the safety step (dynamic nodes)
        self.pressure = None
        self.inlet = None
        self.gas_fn = None                # scenario overrides: t -> value
        self.p_fn = None
        self.inlet_fn = None
        self.dynamic = False
        self.pending = None               # (frame type, seq) -> Pending; made on the first alarm (memory)
        self.low_batt_sent = False
        self.radio = Radio(rng)
        self.last_t = 0.0
        self.downlink = downlink
        self.safety = None                # the firmware's own Safety, made when the node turns dynamic
        self.since = None                 # alarm code -> virtual time raised (the age of a cleared alarm)

    # -- state -------------------------------------------------------------------------------------
    def state(self):
        if self.safety is not None:
            return self.safety.state_byte()
        return frame.make_state(self.valve, self.latched, self.level, self.fault, self.gas is not None
                                and self.gas > 1000, self.ptrip)

    def trips(self):
        """(opso, upso) in Pa for this node's parameters."""
        return bounds.trip_pressures(self.profile, self.params)

    # -- signals -----------------------------------------------------------------------------------
    def _noise_gas(self, rng):
        g = int(self.gas_base + abs(rng.gauss(0.0, 3.0)))
        return g if g < 20 else 20    # clean air reads 0-2 % LEL

    def _signals(self, t, rng):
        """Current gas, pressure and inlet (dynamic nodes): scenario overrides, else physics and noise."""
        gas = self.gas_fn(t) if self.gas_fn else self._noise_gas(rng)
        parent = self.parent
        if self.profile == "station":
            if self.inlet_fn:
                inlet = self.inlet_fn(t)
            elif parent is not None and parent.dynamic and parent.pressure is not None:
                inlet = parent.pressure
            else:
                inlet = self.inlet_nom * (1 + rng.gauss(0, 0.005))
            if self.valve == const.VALVE_CLOSED:
                prev = self.pressure if self.pressure is not None else self.p_nom
                p = prev * math.exp(-(t - self.last_t) / OUTLET_DECAY_S)
            elif self.p_fn:
                p = self.p_fn(t)
            else:
                p = min(self.p_nom, inlet * REGULATOR_RATIO) * (1 + rng.gauss(0, 0.004))
            self.inlet = max(0, int(inlet))
        else:
            if self.p_fn:
                p = self.p_fn(t)
            elif parent is not None and parent.dynamic and parent.pressure is not None:
                p = parent.pressure * SERVICE_RATIO + rng.gauss(0, 10)
            else:
                p = self.p_nom + rng.gauss(0, 30)
        self.pressure = max(0, int(p))
        self.gas = None if gas is None else max(0, int(gas))

    # -- frames ------------------------------------------------------------------------------------
    def reading(self, t, rng):
        """The fields of a periodic reading (counter assigned by seal())."""
        if self.dynamic and self.gas is not None:
            gas, p, inlet = self.gas, self.pressure, self.inlet
        elif self.profile == "station":
            gas = self._noise_gas(rng)
            p = int(self.p_nom * (1 + rng.gauss(0, 0.004)))
            inlet = int(self.inlet_nom * (1 + rng.gauss(0, 0.005)))
        else:
            gas, p, inlet = self._noise_gas(rng), int(self.p_nom + rng.gauss(0, 30)), None
        f = {"type": "reading", "dev": self.dev, "gas": gas, "pressure": p, "battery": None,
             "state": self.state()}
        if self.battery is not None:
            self.battery -= (t - self.last_t) / 3600.0 * DRAIN_PER_HOUR
            f["battery"] = int(self.battery) if self.battery > 0 else 0
        if self.profile == "station":
            f["inlet"] = inlet
        self.last_t = t
        return f

    def seal(self, f):
        """Assign the next uplink counter and sign. Returns the frame bytes."""
        fc = f["fcnt"] = self.fcnt
        self.fcnt += 1
        p = f.pop("_pending", None)
        if p is not None:
            self._identify(p, f, fc & 0xFF)
        if self.battery is not None:
            self.battery -= DRAIN_PER_FRAME
        return frame.seal(f, self.key, const.UP)

    def _alarm(self, t, code, value, since, cleared=False):
        f = {"type": "alarm", "dev": self.dev, "code": code, "cleared": cleared, "aseq": None,
             "age": max(0, int(t - since)), "value": value, "state": self.state()}
        self._track(const.ALARM, f, t)
        return f

    def _event(self, t, code, data):
        f = {"type": "event", "dev": self.dev, "code": code, "eseq": None, "data": bytes(data)}
        self._track(const.EVENT, f, t)
        return f

    def _track(self, ftype, f, t):
        """Queue for retransmission under a placeholder key until the first copy is sealed (then (ftype, seq))."""
        if self.pending is None:
            self.pending = {}
        p = self.pending[(ftype, ("new", id(f)))] = Pending(f, t, t + RETX_S[0])
        f["_pending"] = p

    def _identify(self, p, f, seq):
        """The first copy's counter gives the identity (SPEC 3.4). An unacked one holding the same low byte
        takes a new identity at its next copy, as on the firmware: one ack never retires both."""
        ftype, key = (const.ALARM, "aseq") if f["type"] == "alarm" else (const.EVENT, "eseq")
        self.pending.pop((ftype, ("new", id(p.fields))), None)
        old = self.pending.pop((ftype, seq), None)
        if old is not None:
            old.fields[key] = None
            self.pending[(ftype, ("new", id(old.fields)))] = old
        p.fields[key] = f[key] = seq
        self.pending[(ftype, seq)] = p

    def boot_event(self, t, cause=1):
        """The BOOT event a node sends after reset: the firmware's own (firmware/commands.boot_data)."""
        return self._event(t, const.EV_BOOT, commands.boot_data(cause, self.profile))

    def next_retx(self):
        """Virtual time of the next retransmission due, or None."""
        return min((p.next_t for p in self.pending.values()), default=None) if self.pending else None

    def retransmits(self, t):
        """Copies of unacked alarms/events due at `t` (same aseq/eseq, a new counter at seal())."""
        out = []
        for k in list(self.pending or ()):
            p = self.pending[k]
            if p.next_t > t:
                continue
            if not self.downlink and p.tries >= NO_DOWNLINK_COPIES:
                del self.pending[k]
                continue
            step = RETX_S[p.tries] if p.tries < len(RETX_S) else RETX_S[-1]
            p.tries += 1
            p.next_t = t + step
            f = dict(p.fields)
            if f["aseq" if f["type"] == "alarm" else "eseq"] is None:
                f["_pending"] = p     # its identity was given up (_identify): this copy takes a new one
            if f["type"] == "alarm":   # age counts from detection, so it grows on every copy
                f["age"] = min(0xFFFF, f["age"] + int(t - p.t0))
            f["retx"] = p.tries - 1
            out.append(f)
        return out

    # -- the safety step (dynamic nodes): the firmware's own state machine ------------------------------
    def step(self, t, rng):
        """One safety step at virtual time `t`: update signals, run firmware/safety.Safety on them, return the
        alarm/event field dicts the firmware would send (as firmware/app.App.sample does)."""
        self._signals(t, rng)
        s = self.safety
        if s is None:
            s = self.safety = safety.Safety(self.profile, self.params)
            self.since = {}
        gas = safety.NO_VALUE if self.gas is None else self.gas
        p = safety.NO_VALUE if self.pressure is None else self.pressure
        act = s.step(int(t * 1000) & ticks.TICKS_MASK, gas, p, 0)
        out = []
        if act & safety.ACT_CLOSE:
            out.append(self._event(t, const.EV_VALVE, (const.VALVE_CLOSED, s.latch_cause or const.CAUSE_GAS)))
        if act & (safety.ACT_ALARM | safety.ACT_CLEAR):
            for code in range(1, 9):
                bit = 1 << code
                if s.raised & bit:
                    self.since[code] = t
                    out.append(self._alarm(t, code, self._alarm_value(code), t))
                elif s.cleared & bit:
                    out.append(self._alarm(t, code, self._alarm_value(code) or 0, self.since.pop(code, t),
                                           cleared=True))
        self.valve, self.latched, self.level, self.ptrip = s.valve, bool(s.latched), s.level, bool(s.ptrip)
        if self.battery is not None and self.battery < LOW_BATTERY_PCT and not self.low_batt_sent:
            self.low_batt_sent = True
            out.append(self._alarm(t, const.AL_LOW_BATTERY, int(self.battery), t))
        self.last_t = t
        return out

    def _alarm_value(self, code):
        """The alarm's value field as the firmware fills it (firmware/app.App._alarm_value)."""
        s = self.safety
        if code in (const.AL_GAS_L1, const.AL_GAS_L2):
            return 0xFFFF if s.gas < 0 else min(s.gas, 1000)
        if code in (const.AL_OPSO, const.AL_UPSO):
            return None if s.pressure < 0 else s.pressure
        return 0

    def condition_persists(self):
        """RESET is refused while the firmware's condition persists (firmware/safety.Safety)."""
        return self.safety is not None and self.safety.condition_persists()

    # -- downlinks ---------------------------------------------------------------------------------
    def on_downlink(self, raw, t):
        """Handle one downlink frame for this node. Returns (status, [uplink field dicts]).

        status: "ack" (an alarm/event ack matched), "ack_stale", "command", or a ProtocolError reason
        (mic, replay, counter_gap, ...). A frame that does not verify changes nothing, as on the firmware.
        """
        try:
            f = frame.open_frame(raw, self.key, const.DOWN, self.last_down)
        except ProtocolError as e:
            return e.reason, []
        self.last_down = f["fcnt"]
        if f["type"] == "ack":
            p = self.pending.pop((f["ref_type"], f["ref"]), None) if self.pending else None
            return ("ack" if p is not None else "ack_stale"), []
        if f["type"] != "command":
            return "type", []
        return "command", self._command(f, t)

    def _command(self, f, t):
        cmd, cid, args = f["cmd"], f["cid"], f["args"]
        out = []
        result = const.R_OK
        if cmd == const.CMD_RESET:
            if self.safety is not None:                     # the firmware's decision (firmware/safety.Safety)
                result, act = self.safety.reset()
                s = self.safety
                self.valve, self.latched, self.ptrip = s.valve, bool(s.latched), bool(s.ptrip)
                if act & safety.ACT_OPEN:
                    out.append(self._event(t, const.EV_VALVE, (const.VALVE_OPEN, const.CAUSE_RESET)))
        elif cmd == const.CMD_SET_PARAM:
            result = self._set_param(args)
            if result == const.R_OK:
                out.append(self._event(t, const.EV_CONFIG, bytes(args)))     # as the firmware reports it
        elif cmd == const.CMD_STATUS:
            battery = -1 if self.battery is None else int(self.battery)
            waiting = sum(1 for p in (self.pending or {}).values())
            out.append(self._event(t, const.EV_STATUS, commands.status_data(
                self.state(), self.level, 1 if self.fault else 0, battery, 0, waiting)))
            out.append(self.reading(t, _ZeroRng))
        elif cmd == const.CMD_SELFTEST:
            mask = args[0] if args else 7
            out.append(self._event(t, const.EV_SELFTEST, (mask & 7, mask & 7)))
        else:
            result = const.R_UNKNOWN
        ack = {"type": "ack", "dev": self.dev, "ref_type": const.COMMAND, "ref": cid, "result": result}
        return [ack] + out

    def _set_param(self, args):
        # the firmware's own decision (firmware/commands.set_param): same result codes, same bounds
        result, name, value = commands.set_param(self.profile, self.params, {}, args)
        if result != const.R_OK:
            return result
        self.params = dict(self.params, **{name: value})
        if self.safety is not None:
            self.safety.configure(self.params)
        if name == "setpoint":
            self.p_nom = value
        return const.R_OK


class _ZeroRng:
    """Noise-free generator for readings asked for by a STATUS command (no draw from the fleet's rng)."""

    @staticmethod
    def gauss(mu, sigma):
        return mu
