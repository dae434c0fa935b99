# Sensing: raw ADC counts (16-bit scale, as ADC.read_u16()) -> engineering units, with fault detection.
#
# A dead sensor is never read as zero gas (issue 3): open circuit, short circuit, out of range and a stuck
# value each raise a FAULT with the SPEC 3.4 fault kind, and the value becomes NO_VALUE.
# The filter is a median of the last three samples: it rejects a single-sample spike and delays a
# step change by exactly one sample (the bound). That one sample is given back to the trip: the
# channel also gives the newest raw sample (`raw_value`), and safety times a gas debounce from the first
# raw sample over the threshold, so the valve closes in the sample at which the debounce measured on the
# raw samples is met. Integer arithmetic only; no allocation per sample.

from gasguard.protocol import const

NO_VALUE = -1
FULL = 65535

# Gas sensor front end: the transmitter's 0.4-2.0 V output (0 % and 100 % LEL nominal on a catalytic or
# NDIR module with a 0.4 V live zero) read on a 3.3 V ADC. The live zero is what lets an open circuit
# (pulled to 0 V) be told apart from clean air.
GAS_ZERO_DEFAULT = 7944     # 0.4 V / 3.3 V * 65535
GAS_SPAN_DEFAULT = 23831    # 1.2 V at the 50 % LEL span gas
GAS_SPAN_GAS_DEFAULT = 500  # 0.1 % LEL
OPEN_BELOW = 1311           # < 2 % of scale (< 0.066 V): nothing connected, the input is pulled down
SHORT_ABOVE = 64880         # > 99 % of scale: shorted to the supply rail
NEG_LIMIT = -50             # below -5 % LEL the zero has drifted or the cell is damaged
GAS_MAX = 1000              # 100 % LEL; more is OVER_RANGE (clamped), not a fault
STUCK_SAMPLES = 3000        # identical raw values in a row (a live ADC always has a few LSB of noise)

# Pressure transducers (Pa). Ratiometric 0.5-4.5 V through a 2:3 divider on a 3.3 V ADC; 4-20 mA across
# a 150 ohm shunt (0.6-3.0 V). Outside 0.25..4.75 V (ratiometric) or 3.0..21.5 mA (4-20 mA, NAMUR NE 43
# fault bands) the signal is a fault.
KINDS = {
    # kind: (zero raw, span raw, open-below raw, short-above raw)
    "ratiometric": (6619, 59578, 3310, 62888),
    "4-20mA": (11916, 59578, 8937, 64043),
}


class Channel:
    """One analog channel: calibration, median-of-3 filter, fault detection. Allocation-free update()."""

    def __init__(self, sensor, zero, span, full, stuck=STUCK_SAMPLES):
        self.sensor = sensor          # SPEC 3.4 sensor number
        self.zero = zero
        self.span = span
        self.full = full              # engineering value at `span`
        self.stuck_limit = stuck
        d = span - zero
        if d <= 0:
            raise ValueError("calibration: span (%d) must be above zero (%d)" % (span, zero))
        # value = q * a + (q * c) >> 14 with q = raw - zero: exact to a few units without long ints
        # (q < 2**16 and c < 2**14 keep every product below MicroPython's 2**30 small-int limit).
        self.a = full // d
        self.c = ((full % d) * 16384 + d // 2) // d
        self.open_below = OPEN_BELOW
        self.short_above = SHORT_ABOVE
        self.low_limit = NEG_LIMIT
        self.high_limit = -1          # -1: no upper fault limit (gas clamps and flags OVER_RANGE)
        self.m1 = -1
        self.m2 = -1
        self.last_raw = -1
        self.same = 0
        self.value = NO_VALUE
        self.raw_value = NO_VALUE     # the newest sample unfiltered (>= 0; NO_VALUE on a fault): lets safety
                                      # time a debounce from a step's first sample (see safety.step)
        self.fault = 0                # 0 or a SPEC fault kind
        self.over = 0

    def convert(self, raw):
        q = raw - self.zero
        if q >= 0:
            return q * self.a + ((q * self.c + 8192) >> 14)
        q = -q
        return -(q * self.a + ((q * self.c + 8192) >> 14))

    def update(self, raw):
        """Feed one raw sample; sets .value (or NO_VALUE) and .fault. Returns .value."""
        if raw == self.last_raw:
            self.same += 1
        else:
            self.same = 1
            self.last_raw = raw
        # median of three
        a = self.m1
        b = self.m2
        self.m1 = b
        self.m2 = raw
        if a < 0:
            a = raw
        if b < 0:
            b = raw
        if a > b:
            t = a
            a = b
            b = t
        med = raw if raw < b else b
        if med < a:
            med = a
        fault = 0
        if raw < self.open_below:
            fault = const.FAULT_OPEN
        elif raw > self.short_above:
            fault = const.FAULT_SHORT
        elif self.same >= self.stuck_limit:
            fault = const.FAULT_STUCK
        v = self.convert(med)
        r = self.convert(raw)
        self.raw_value = NO_VALUE if fault else (r if r > 0 else 0)
        if not fault:
            if v < self.low_limit or (self.high_limit >= 0 and v > self.high_limit):
                fault = const.FAULT_RANGE
        self.fault = fault
        if fault:
            self.value = NO_VALUE
            self.over = 0
            return NO_VALUE
        if v < 0:
            v = 0
        self.over = 0
        if self.high_limit < 0 and v > GAS_MAX:
            self.over = 1
        self.value = v
        return v


def gas_channel(cal):
    """The gas channel from calibration.gas of gg_config.json (raw zero/span, span_gas in 0.1 % LEL)."""
    cal = cal or {}
    ch = Channel(const.SENSOR_GAS, int(cal.get("zero", GAS_ZERO_DEFAULT)), int(cal.get("span", GAS_SPAN_DEFAULT)),
                 int(cal.get("span_gas", GAS_SPAN_GAS_DEFAULT)), int(cal.get("stuck", STUCK_SAMPLES)))
    return ch


def pressure_channel(cal, sensor=const.SENSOR_PRESSURE):
    """A pressure channel from calibration.pressure / .inlet ({"kind", "full_scale" Pa, opt. zero/span})."""
    kind = cal.get("kind", "ratiometric")
    if kind not in KINDS:
        raise ValueError("calibration: transducer kind %r: choose ratiometric or 4-20mA" % (kind,))
    z, s, lo, hi = KINDS[kind]
    ch = Channel(sensor, int(cal.get("zero", z)), int(cal.get("span", s)), int(cal["full_scale"]),
                 int(cal.get("stuck", STUCK_SAMPLES)))
    ch.open_below = lo
    ch.short_above = hi
    fs = ch.full
    ch.low_limit = -(fs // 20)      # 5 % FS below zero: the transducer is out of its range
    ch.high_limit = fs + fs // 10   # 10 % FS above full scale
    return ch
