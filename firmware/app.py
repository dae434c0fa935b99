# The node application: sensing -> safety -> valve, persistence, link and downlink commands.
#
# Everything hardware-shaped is handed in (`hw`, built by firmware/boards.py); nothing here opens a bus.
# Order inside one tick, for every sample: read -> safety step -> persist the latch -> drive the valve -> report.
# The latch is persisted before the valve moves and before anything reports it, so neither the node nor the
# gateway can be left believing in an open valve that a power cut closed (issue 3; see `sample`).

from gasguard.firmware import bounds, commands, safety, sensing, ticks
from gasguard.protocol import const

POLL_MS = 100


class Hardware:
    """What a board gives the application. Any channel may be None when the board does not have it."""

    def __init__(self, gas_adc, pressure_adc, inlet_adc, battery_adc, valve, uart, wdt=None, wdt_ms=8000):
        self.gas_adc = gas_adc
        self.pressure_adc = pressure_adc
        self.inlet_adc = inlet_adc
        self.battery_adc = battery_adc
        self.valve = valve
        self.uart = uart
        self.wdt = wdt
        self.wdt_ms = wdt_ms


class Valve:
    """A shut-off valve driven by one output pin (1 = drive closed). A latching valve holds its position
    without power; the driver re-asserts the commanded position at boot from the persisted state."""

    def __init__(self, pin):
        self.pin = pin

    def close(self):
        self.pin.value(1)

    def open(self):
        self.pin.value(0)

    def closed(self):
        return self.pin.value() == 1


def params_for(cfg, state, log):
    """Full parameter dict: defaults < gg_config.json params < SET_PARAM overrides, checked by bounds."""
    profile = cfg.get("profile", bounds.HOUSEHOLD)
    p = bounds.defaults(profile)
    extra = dict(cfg.get("params") or {})
    extra.update(state.get("params") or {})
    bad = bounds.problems(profile, extra)
    if bad:
        for b in bad:
            log("config: %s; running the %s defaults" % (b, profile))
        return p, False
    p.update(extra)
    return p, True


class App:
    def __init__(self, cfg, key, hw, store, link, log=print, now=0, reset_cause=0):
        self.cfg = cfg
        self.hw = hw
        self.store = store
        self.link = link
        self.log = log
        self.profile = cfg.get("profile", bounds.HOUSEHOLD)
        st = store.state
        self.params, ok = params_for(cfg, st, log)
        self.safety = safety.Safety(self.profile, self.params, latched=bool(st.get("latched")),
                                    latch_cause=int(st.get("latch_cause", 0)))
        cal = cfg.get("calibration") or {}
        self.gas = sensing.gas_channel(cal.get("gas"))
        self.pressure = None
        self.inlet = None
        if hw.pressure_adc is not None:
            self.pressure = sensing.pressure_channel(cal.get("pressure") or {"full_scale": 10000})
        if hw.inlet_adc is not None and self.profile == bounds.STATION:
            self.inlet = sensing.pressure_channel(cal.get("inlet") or {"full_scale": 1600000}, const.SENSOR_INLET)
        self.since = {}           # alarm code -> ticks when first detected (for the age field)
        self.faults_seen = 0
        self.next_sample = now
        self.next_report = now
        self.battery = -1
        self.healthy = True
        self.steps = 0
        # the persisted latch wins over whatever the valve did while unpowered
        if self.safety.latched:
            hw.valve.close()
        self.valve_state = const.VALVE_CLOSED if hw.valve.closed() else const.VALVE_OPEN
        self.safety.valve = const.VALVE_CLOSED if self.safety.latched else self.valve_state
        link.event(now, const.EV_BOOT, commands.boot_data(reset_cause, self.profile))
        if not ok:
            link.event(now, const.EV_CONFIG, bytes([0, 0, 0]))

    @property
    def sample_ms(self):
        return self.params["sample_ms"]

    def _faults(self):
        f = 0
        if self.gas.fault:
            f |= safety.F_GAS
        if self.pressure is not None and self.pressure.fault:
            f |= safety.F_PRESSURE
        if self.inlet is not None and self.inlet.fault:
            f |= safety.F_INLET
        return f

    def sample(self, now):
        """One sample through the safety logic; drives the valve, persists, queues reports."""
        hw = self.hw
        gas = self.gas.update(hw.gas_adc.read_u16())
        p = self.pressure.update(hw.pressure_adc.read_u16()) if self.pressure is not None else safety.NO_VALUE
        if self.inlet is not None:
            self.inlet.update(hw.inlet_adc.read_u16())
        faults = self._faults()
        s = self.safety
        act = s.step(now, gas, p, faults, self.gas.raw_value)
        self.steps += 1
        if act & safety.ACT_PERSIST:
            # The latch reaches the flash before the valve moves: a latching valve holds its position
            # unpowered and has no position feedback, so a cut between "valve closed" and "latch written"
            # would boot a node that believes its shut valve is open and never reports it. Written first,
            # a cut before the write leaves valve and state consistent (gas still high trips again at
            # boot); a cut after it re-closes the valve at boot. One small atomic write (ms) stays well
            # inside the one-sample budget after debounce.
            self._persist(s, now)
        if act & safety.ACT_CLOSE:
            hw.valve.close()
            self.link.event(now, const.EV_VALVE, bytes([const.VALVE_CLOSED, s.latch_cause or const.CAUSE_GAS]))
        if act & (safety.ACT_ALARM | safety.ACT_CLEAR):
            self._report_alarms(now)
        if faults != self.faults_seen:
            self._report_faults(now, faults)

    def _persist(self, s, now):
        try:
            self.store.save(latched=bool(s.latched), latch_cause=s.latch_cause, valve=s.valve)
        except OSError as e:
            # a broken or full flash must never keep a valve open: close anyway, say so, report a fault
            self.log("state write failed (%s): valve acts, latch not persisted" % e)
            self.link.event(now, const.EV_FAULT, bytes([const.SENSOR_STORAGE, const.FAULT_WRITE]))

    def _alarm_value(self, code):
        if code == const.AL_GAS_L1 or code == const.AL_GAS_L2:
            g = self.safety.gas
            return 0xFFFF if g < 0 else min(g, 1000)
        if code == const.AL_OPSO or code == const.AL_UPSO:
            p = self.safety.pressure
            return None if p < 0 else p
        if code == const.AL_SENSOR_FAULT:
            for ch in (self.gas, self.pressure, self.inlet):
                if ch is not None and ch.fault:
                    return (ch.sensor << 8) | ch.fault
        return 0

    def _report_alarms(self, now):
        s = self.safety
        st = s.state_byte()
        for code in range(1, 9):
            bit = 1 << code
            if s.raised & bit:
                self.since[code] = now
                self.link.alarm(now, code, False, 0, self._alarm_value(code), st)
                self.log("alarm: %s" % const.ALARM_NAMES[code])
            elif s.cleared & bit:
                t0 = self.since.pop(code, now)
                age = ticks.elapsed(now, t0) // 1000
                self.link.alarm(now, code, True, age, self._alarm_value(code) or 0, st)
                self.log("alarm cleared: %s" % const.ALARM_NAMES[code])

    def _report_faults(self, now, faults):
        for ch in (self.gas, self.pressure, self.inlet):
            if ch is None:
                continue
            bit = 1 << (ch.sensor - 1)
            was = self.faults_seen & bit
            if ch.fault and not was:
                self.link.event(now, const.EV_FAULT, bytes([ch.sensor, ch.fault]))
            elif was and not ch.fault:
                self.link.event(now, const.EV_FAULT_CLEARED, bytes([ch.sensor]))
        self.faults_seen = faults

    def report(self, now):
        s = self.safety
        inlet = -1
        if self.inlet is not None:
            inlet = self.inlet.value if self.inlet.value >= 0 else -2
        self.link.reading(now, s.gas, s.pressure, self.battery, s.state_byte(), inlet)

    def read_battery(self):
        adc = self.hw.battery_adc
        if adc is None:
            self.battery = -1
            return
        # Li-SOCl2 / Li-ion pack through a 1:2 divider: 3.0 V empty .. 4.2 V full on a 3.3 V ADC
        mv = adc.read_u16() * 6600 // 65535
        pct = (mv - 3000) * 100 // 1200
        self.battery = 0 if pct < 0 else (100 if pct > 100 else pct)

    # ---- downlink commands (SPEC 3.6) ----
    def command(self, now, f):
        cmd = f["cmd"]
        cid = f["cid"]
        args = f["args"]
        link = self.link
        if cmd == const.CMD_RESET:
            r, act = self.safety.reset()
            if r == const.R_OK:
                if act & safety.ACT_OPEN:
                    self.hw.valve.open()
                if act & safety.ACT_PERSIST:
                    self.store.save(latched=False, latch_cause=0, valve=self.safety.valve)
                link.ack(now, const.COMMAND, cid, r)
                if act & safety.ACT_OPEN:
                    link.event(now, const.EV_VALVE, bytes([const.VALVE_OPEN, const.CAUSE_RESET]))
                self.log("reset: accepted, valve open")
            else:
                link.ack(now, const.COMMAND, cid, r)
                self.log("reset: refused, the condition persists")
        elif cmd == const.CMD_SET_PARAM:
            link.ack(now, const.COMMAND, cid, self._set_param(now, args))
        elif cmd == const.CMD_STATUS:
            link.ack(now, const.COMMAND, cid, const.R_OK)
            s = self.safety
            link.event(now, const.EV_STATUS, commands.status_data(s.state_byte(), s.level, s.fault, self.battery,
                                                                  link.dropped_readings, link.pending()))
            self.report(now)
        elif cmd == const.CMD_SELFTEST:
            mask = args[0] if args else 7
            link.ack(now, const.COMMAND, cid, const.R_OK)
            link.event(now, const.EV_SELFTEST, bytes([self._selftest(now, mask), mask & 7]))
        else:
            link.ack(now, const.COMMAND, cid, const.R_UNKNOWN)

    def _set_param(self, now, args):
        overrides = dict(self.store.state.get("params") or {})
        r, name, value = commands.set_param(self.profile, self.cfg.get("params"), overrides, args)
        if r != const.R_OK:
            return r
        overrides[name] = value
        self.store.save(params=overrides)
        self.params[name] = value
        self.safety.configure(self.params)
        self.link.event(now, const.EV_CONFIG, bytes(args))
        return const.R_OK

    def _selftest(self, now, mask):
        ok = 0
        if mask & 1:
            v = self.hw.valve
            if self.safety.latched or self.safety.valve == const.VALVE_CLOSED:
                good = v.closed()  # never stroke open a shut valve
            else:
                v.close()
                good = v.closed()
                v.open()
                good = good and not v.closed()
            if good:
                ok |= 1
        if mask & 2 and not self._faults():
            ok |= 2
        if mask & 4:
            ok |= 4  # the command arrived and verified: the link works both ways
        return ok

    # ---- the loop body ----
    def tick(self, now):
        """One pass of the main loop. Returns ms until the next sample is due (never negative)."""
        if ticks.reached(now, self.next_sample):
            self.sample(now)
            self.next_sample = ticks.add(self.next_sample, self.sample_ms)
            if ticks.reached(now, self.next_sample):
                self.next_sample = ticks.add(now, self.sample_ms)  # we fell behind: resync
        if ticks.reached(now, self.next_report):
            self.read_battery()
            self.report(now)
            self.next_report = ticks.add(now, self.params["report_s"] * 1000)
        for f in self.link.poll(now):
            self.command(now, f)
        self.link.pump(now)
        if self.hw.wdt is not None and self.healthy:
            self.hw.wdt.feed()  # only a loop that got here is healthy
        wait = ticks.until(now, self.next_sample)
        # wake at least every POLL_MS so downlink commands and acks are handled between samples
        return wait if wait < POLL_MS else POLL_MS
