# The node's local safety state machine (issue 3; GRADING.md 7-8: "local, immediate, safe").
#
# Pure logic: inputs are samples and now_ms, outputs are action bits. No hardware, no I/O, no clock.
# The steady-state step allocates nothing on the heap: every field is a small int preallocated in
# __init__, arithmetic is integer only, and times are ticks modulo 2**30 (MicroPython's ticks_ms period)
# compared with a masked difference, so a long uptime never makes a long int.
#
# Units: gas in 0.1 % LEL (NO_VALUE when the sensor is faulted), pressure in Pa (NO_VALUE when there is
# no transducer or it is faulted), times in ms.

from gasguard.firmware import ticks
from gasguard.protocol import const

NO_VALUE = -1

# step() result bits
ACT_CLOSE = 1      # drive the valve closed (now)
ACT_OPEN = 2       # drive the valve open (only after an accepted reset)
ACT_PERSIST = 4    # latch/valve changed: persist the state BEFORE reporting it
ACT_ALARM = 8      # alarm conditions were raised: see .raised (bit 1 << code)
ACT_CLEAR = 16     # alarm conditions cleared: see .cleared

# fault bits (input `faults`)
F_GAS = 1
F_PRESSURE = 2
F_INLET = 4

B_L1 = 1 << const.AL_GAS_L1
B_L2 = 1 << const.AL_GAS_L2
B_OPSO = 1 << const.AL_OPSO
B_UPSO = 1 << const.AL_UPSO
B_FAULT = 1 << const.AL_SENSOR_FAULT

# latch causes (as EV_VALVE causes, SPEC 3.5)
CAUSE_NONE = 0

# Pressure trips clear only once the pressure is back inside the band by this fraction (1/50 = 2 %)
# of the trip value, so a transducer that sits on the trip point does not chatter.
P_HYST_DIV = 50


class Safety:
    """One node's safety logic. `params` is a full parameter dict (bounds.defaults + overrides)."""

    def __init__(self, profile, params, latched=False, latch_cause=0):
        self.profile = profile
        self.gas_l1 = 0
        self.gas_l2 = 0
        self.hyst = 0
        self.debounce = 0
        self.opso = 0
        self.upso = 0
        self.p_hyst = 0
        self.shutoff_on_gas = 0
        self.fault_close = 0
        self.configure(params)
        # state
        self.level = 0            # gas level 0/1/2 (SPEC 3.2 GAS_LEVEL)
        self.over_range = 0
        self.ptrip = 0
        self.fault = 0            # fault bits currently active
        self.latched = 1 if latched else 0
        self.latch_cause = latch_cause if latched else CAUSE_NONE
        self.valve = const.VALVE_CLOSED if latched else const.VALVE_OPEN
        self.active = 0           # alarm condition bits (1 << alarm code)
        self.raised = 0
        self.cleared = 0
        # debounce start times; -1 = condition not pending
        self.t_l1 = -1
        self.t_l2 = -1
        self.t_opso = -1
        self.t_upso = -1
        self.gas = NO_VALUE
        self.pressure = NO_VALUE
        self.t_prev = -1          # the previous step's time and raw gas (see step)
        self.raw_prev = NO_VALUE

    def configure(self, params):
        """Apply a (validated) parameter dict. Not on the hot path: may allocate."""
        self.gas_l1 = int(params["gas_l1"])
        self.gas_l2 = int(params["gas_l2"])
        self.hyst = int(params["hysteresis"])
        self.debounce = int(params["debounce_ms"])
        if self.profile == "station":
            sp = int(params["setpoint"])
            self.opso = sp * int(params["opso_pct"]) // 100
            self.upso = sp * int(params["upso_pct"]) // 100
        else:
            self.opso = int(params["opso"])
            self.upso = int(params["upso"])
        self.p_hyst = self.opso // P_HYST_DIV
        self.shutoff_on_gas = 1 if params["shutoff_on_gas"] else 0
        self.fault_close = 1 if params["fault_action"] == "close" else 0

    def state_byte(self):
        """SPEC 3.2 state byte."""
        st = self.valve & 3
        if self.latched:
            st |= const.ST_LATCHED
        st |= self.level << const.ST_GAS_SHIFT
        if self.fault:
            st |= const.ST_FAULT
        if self.over_range:
            st |= const.ST_OVER_RANGE
        if self.ptrip:
            st |= const.ST_PTRIP
        return st

    def _trip(self, cause):
        """Close and latch. Returns action bits."""
        act = 0
        if not self.latched:
            self.latched = 1
            self.latch_cause = cause
            act = ACT_PERSIST
        if self.valve != const.VALVE_CLOSED:
            self.valve = const.VALVE_CLOSED
            act |= ACT_CLOSE | ACT_PERSIST
        return act

    def step(self, now, gas, pressure, faults, gas_raw=NO_VALUE):
        """One sample. `now` in ticks ms; gas 0.1 % LEL or NO_VALUE; pressure Pa or NO_VALUE; faults bits.

        `gas_raw`, when the caller filters `gas` (median of 3), is the sample unfiltered. Then a gas debounce
        is timed from the first raw sample over the threshold (a filtered crossing whose previous raw sample
        had crossed too is a step the median delayed by one sample), and it is met only in a sample whose
        raw value is over the threshold too, so a burst the median stretches by a sample never trips early.
        Without it (NO_VALUE) the debounce runs on `gas` alone. Returns ACT_* bits. Allocates nothing.
        """
        t_prev = self.t_prev
        raw_prev = self.raw_prev
        self.t_prev = now
        self.raw_prev = gas_raw
        act = 0
        active = self.active
        self.gas = gas
        self.pressure = pressure
        self.fault = faults
        deb = self.debounce
        # --- gas (a faulted gas sensor holds the last level: a dead sensor never clears an alarm) ---
        if gas >= 0 and not (faults & F_GAS):
            self.over_range = 1 if gas > 1000 else 0
            if gas >= self.gas_l2:
                if self.t_l2 < 0:
                    self.t_l2 = t_prev if raw_prev >= self.gas_l2 else now
                if ticks.elapsed(now, self.t_l2) >= deb and (gas_raw < 0 or gas_raw >= self.gas_l2):
                    self.level = 2
            else:
                self.t_l2 = -1
                if self.level == 2 and gas < self.gas_l2 - self.hyst:
                    self.level = 1
            if gas >= self.gas_l1:
                if self.t_l1 < 0:
                    self.t_l1 = t_prev if raw_prev >= self.gas_l1 else now
                if self.level == 0 and ticks.elapsed(now, self.t_l1) >= deb and (gas_raw < 0 or gas_raw >= self.gas_l1):
                    self.level = 1
            else:
                self.t_l1 = -1
                if self.level == 1 and gas < self.gas_l1 - self.hyst:
                    self.level = 0
        lvl = self.level
        if lvl >= 1:
            active |= B_L1
        elif active & B_L1:
            active &= ~B_L1
        if lvl == 2:
            active |= B_L2
            if self.shutoff_on_gas:
                act |= self._trip(const.CAUSE_GAS)
        elif active & B_L2:
            active &= ~B_L2
        # --- pressure: OPSO / UPSO (slam-shut, always closes) ---
        if pressure >= 0 and not (faults & F_PRESSURE):
            if pressure >= self.opso:
                if self.t_opso < 0:
                    self.t_opso = now
                if ticks.elapsed(now, self.t_opso) >= deb:
                    active |= B_OPSO
            else:
                self.t_opso = -1
                if pressure < self.opso - self.p_hyst:
                    active &= ~B_OPSO
            if pressure <= self.upso:
                if self.t_upso < 0:
                    self.t_upso = now
                if ticks.elapsed(now, self.t_upso) >= deb:
                    active |= B_UPSO
            else:
                self.t_upso = -1
                if pressure > self.upso + self.p_hyst:
                    active &= ~B_UPSO
        if active & B_OPSO:
            act |= self._trip(const.CAUSE_OPSO)
        if active & B_UPSO:
            act |= self._trip(const.CAUSE_UPSO)
        self.ptrip = 1 if active & (B_OPSO | B_UPSO) else 0
        # --- sensor fault: always an alarm; closes when the profile says so ---
        if faults:
            active |= B_FAULT
            if self.fault_close:
                act |= self._trip(const.CAUSE_FAULT)
        else:
            active &= ~B_FAULT
        # --- a latched valve stays shut whatever the samples say ---
        if self.latched and self.valve != const.VALVE_CLOSED:
            self.valve = const.VALVE_CLOSED
            act |= ACT_CLOSE | ACT_PERSIST
        old = self.active
        self.raised = active & ~old
        self.cleared = old & ~active
        self.active = active
        if self.raised:
            act |= ACT_ALARM
        if self.cleared:
            act |= ACT_CLEAR
        return act

    def condition_persists(self):
        """True while anything that would keep the valve shut is still present (SPEC 3.6 RESET)."""
        if self.level or self.active & (B_OPSO | B_UPSO):
            return True
        if self.fault:
            return True
        return False

    def reset(self):
        """An authenticated RESET. Returns (result code, action bits)."""
        if self.condition_persists():
            return const.R_REFUSED, 0
        act = 0
        if self.latched:
            self.latched = 0
            self.latch_cause = CAUSE_NONE
            act |= ACT_PERSIST
        if self.valve != const.VALVE_OPEN:
            self.valve = const.VALVE_OPEN
            act |= ACT_OPEN | ACT_PERSIST
        return const.R_OK, act
