"""Scenarios the fleet plays: what happens in the district, in virtual time.

Each scenario picks its targets with its own seeded generator (so the same fleet and seed give the same
targets), drives their signals, and says what it expects (`expect`: dev -> alarm codes the nodes should
raise), so tests and the demo can check the gateway saw it. Every scenario is bounded: a default duration
in virtual seconds, and a bounded number of nodes it drives.

    quiet            readings only: gas noise 0-2 % LEL, pressures around their set points
    single_leak      one household: gas rises to 40 % LEL -> warning, alarm, valve shut and latched,
                     then it clears (alarms "cleared"; the valve stays latched until an authenticated reset)
    station_trip     a regulator station's outlet over-pressures -> OPSO, slam-shut closes, outlet lost;
                     the stations it feeds lose inlet and trip UPSO, its households' valves close on UPSO
    pressure_falling the inlet network of one pressure class falls below the plan's bound and keeps falling
                     (plan 3.3: red/orange warning); a feeder on it trips UPSO once
                     its inlet can no longer hold the outlet set point
    alarm_storm      `count` households reach the gas alarm level within `window` seconds
    leak_then_trip   the demo's story: single_leak at 60 s, then station_trip at 300 s
"""

from __future__ import annotations

import inspect
import random

from gasguard.protocol import const

from .fleet_node import INLET_NOMINAL


class Scenario:
    name = "base"
    duration = 600.0           # virtual seconds, when the caller gives none

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed ^ 0x5CE4)
        self.targets: list[int] = []
        self.expect: dict[int, set] = {}

    def setup(self, fleet, duration: float) -> None:
        """Choose targets and drive them; called once by Fleet.run() before the clock starts."""

    def describe(self) -> dict:
        return {"scenario": self.name, "targets": [f"{d:08x}" for d in self.targets],
                "expect": {f"{d:08x}": sorted(const.ALARM_NAMES[c] for c in codes) for d, codes in self.expect.items()}}


class Quiet(Scenario):
    name = "quiet"
    duration = 3600.0


def _ramp(t0, t1, v0, v1):
    """t -> v0 before t0, linear to v1 at t1, v1 after."""
    def f(t):
        if t <= t0:
            return v0
        if t >= t1:
            return v1
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return f


def _leak(start, peak=400, rise=30.0, hold=120.0, fall=180.0):
    """Gas at a leaking home (0.1 % LEL): rises to `peak`, holds, falls back once the valve has shut."""
    up = _ramp(start, start + rise, 5, peak)
    down = _ramp(start + rise + hold, start + rise + hold + fall, peak, 5)

    def f(t):
        return up(t) if t < start + rise + hold else down(t)
    return f


class SingleLeak(Scenario):
    name = "single_leak"
    duration = 600.0

    def __init__(self, seed=0, target: int | None = None, start: float = 60.0, peak: int = 400):
        super().__init__(seed)
        self.target, self.start, self.peak = target, start, peak

    def setup(self, fleet, duration):
        homes = fleet.households()
        if self.target is not None:
            node = fleet.by_dev.get(self.target)
            if node is None or node.profile != "household":
                raise ValueError(f"target {self.target:08x} is not a household node of this fleet")
        elif not homes:
            raise ValueError("single_leak needs at least one residential household node in the fleet")
        else:
            node = self.rng.choice(homes)
        node.gas_fn = _leak(fleet.t0 + self.start, self.peak)
        fleet.make_dynamic(node)
        self.targets = [node.dev]
        codes = {const.AL_GAS_L1}
        if self.peak >= node.params["gas_l2"]:
            codes.add(const.AL_GAS_L2)
        self.expect = {node.dev: codes}


class StationTrip(Scenario):
    """A regulator fails open: the outlet climbs past OPSO and the slam-shut valve closes (plan 1.6.1,
    supply assurance); everything downstream loses pressure."""
    name = "station_trip"
    duration = 600.0

    def __init__(self, seed=0, target: int | None = None, start: float = 60.0, rise: float = 20.0):
        super().__init__(seed)
        self.target, self.start, self.rise = target, start, rise

    def setup(self, fleet, duration):
        stations = fleet.stations()
        if self.target is not None:
            node = fleet.by_dev.get(self.target)
            if node is None or node.profile != "station":
                raise ValueError(f"target {self.target:08x} is not a station of this fleet")
        elif not stations:
            raise ValueError("station_trip needs at least one regulator station in the fleet")
        else:
            # the station whose loss cuts off the most simulated nodes, ties to the most households
            size = {id(s): len(fleet.subtree(s)) for s in stations}
            node = max(stations, key=lambda s: (size[id(s)], s.households, -s.dev))
        opso, _upso = node.trips()
        peak = min(opso * 1.3, node.inlet_nom * 0.98)
        s0 = fleet.t0 + self.start
        node.p_fn = _ramp(s0, s0 + self.rise, node.p_nom, peak)
        fleet.make_dynamic(node)
        self.targets = [node.dev]
        # OPSO, then UPSO: once the slam-shut is shut its own outlet falls below the UPSO bound too (the
        # firmware's safety machine reports both, as a real station's would)
        self.expect = {node.dev: {const.AL_OPSO, const.AL_UPSO}}
        for n in fleet.subtree(node):
            fleet.make_dynamic(n)
            self.expect[n.dev] = {const.AL_UPSO}


# plan 3.3: the bound under which the network of a class puts the district on red/orange warning,
# and where this scenario drives it to (Pa): orange for sub-high (< 0.4 MPa), red for sub-high A (< 0.2 MPa)
PLAN_BOUND = {"subhigh_a": 200_000, "subhigh_b": 400_000, "high_a": 800_000, "high_b": 1_600_000}


class PressureFalling(Scenario):
    """Upstream supply falls short (plan 1.6.1 supply assurance, 3.3 warnings): the inlet pressure of every
    station on one network class falls linearly, crosses the plan's bound at `cross` of the run, and keeps
    falling."""
    name = "pressure_falling"
    duration = 1800.0

    def __init__(self, seed=0, pclass: str = "subhigh_b", start: float = 60.0, cross: float = 0.5):
        super().__init__(seed)
        if pclass not in INLET_NOMINAL or pclass == "low":
            raise ValueError(f"pressure class {pclass!r}: choose one of "
                             f"{', '.join(c for c in INLET_NOMINAL if c != 'low')}")
        self.pclass, self.start, self.cross = pclass, start, cross
        self.bound = PLAN_BOUND.get(pclass, INLET_NOMINAL[pclass] // 2)

    def setup(self, fleet, duration):
        hit = [s for s in fleet.stations() if s.pressure_class == self.pclass and s.parent is None]
        if not hit:
            raise ValueError(f"no station of this fleet takes its inlet from a {self.pclass} network")
        s0 = fleet.t0 + self.start
        t_cross = s0 + (duration - self.start) * self.cross
        for s in hit:
            nominal = s.inlet_nom
            slope = (nominal - self.bound) / max(1.0, t_cross - s0)
            s.inlet_fn = _falling(s0, nominal, slope)
            fleet.make_dynamic(s)
            for n in fleet.subtree(s):
                fleet.make_dynamic(n)
        self.targets = [s.dev for s in hit]
        # UPSO only where the outlet cannot be held: inlet*0.9 under the UPSO bound before the end
        end_inlet = {s.dev: s.inlet_fn(fleet.t0 + duration) for s in hit}
        self.expect = {s.dev: {const.AL_UPSO} for s in hit if end_inlet[s.dev] * 0.9 < s.trips()[1]}


def _falling(t0, v0, slope):
    def f(t):
        return v0 if t <= t0 else max(0.0, v0 - slope * (t - t0))
    return f


class AlarmStorm(Scenario):
    """Many homes alarm at once (an earthquake, a contaminated supply): `count` households reach level 2
    within `window` seconds. Bounded by `count`."""
    name = "alarm_storm"
    duration = 600.0

    def __init__(self, seed=0, count: int = 200, window: float = 60.0, start: float = 30.0):
        super().__init__(seed)
        if count < 1:
            raise ValueError("count must be at least 1")
        self.count, self.window, self.start = count, window, start

    def setup(self, fleet, duration):
        homes = fleet.households(None)
        if not homes:
            raise ValueError("alarm_storm needs household nodes in the fleet")
        chosen = self.rng.sample(homes, min(self.count, len(homes)))
        for node in chosen:
            t0 = fleet.t0 + self.start + self.rng.uniform(0, self.window)
            node.gas_fn = _leak(t0, peak=self.rng.randint(300, 600), rise=10.0, hold=duration, fall=1.0)
            fleet.make_dynamic(node)
        self.targets = [n.dev for n in chosen]
        self.expect = {n.dev: {const.AL_GAS_L1, const.AL_GAS_L2} for n in chosen}


class LeakThenTrip(Scenario):
    """The demo's story: a leak at a household at `leak_at`, then a regulator station trips at `trip_at`."""
    name = "leak_then_trip"
    duration = 900.0

    def __init__(self, seed=0, leak_at: float = 60.0, trip_at: float = 300.0):
        super().__init__(seed)
        self.parts = [SingleLeak(seed, start=leak_at), StationTrip(seed, start=trip_at)]

    def setup(self, fleet, duration):
        for part in self.parts:
            part.setup(fleet, duration)
            self.targets += part.targets
            for dev, codes in part.expect.items():
                self.expect.setdefault(dev, set()).update(codes)


SCENARIOS = {c.name: c for c in (Quiet, SingleLeak, StationTrip, PressureFalling, AlarmStorm, LeakThenTrip)}


def make(name: str, **params) -> Scenario:
    """A scenario by name with its parameters (seed, target, count, pclass, ...)."""
    try:
        cls = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"scenario {name!r}: choose one of {', '.join(SCENARIOS)}") from None
    sig = inspect.signature(cls.__init__).parameters
    for k, v in params.items():
        if k not in sig:
            known = ", ".join(p for p in sig if p != "self")
            raise ValueError(f"scenario {name} has no parameter {k!r} (it takes {known})")
        default = sig[k].default
        numeric = default is None or (isinstance(default, (int, float)) and not isinstance(default, bool))
        if numeric and not (isinstance(v, (int, float)) and not isinstance(v, bool)):
            raise ValueError(f"scenario {name}: {k} must be a number, got {v!r}")
    return cls(**params)
