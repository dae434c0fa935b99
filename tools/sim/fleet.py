"""The fleet simulator: thousands of SimNodes on one virtual clock, sending through one transport.

    from gasguard.tools.sim.fleet import Fleet
    from gasguard.tools.sim.fleet_transport import PtyTransport
    fleet = Fleet("district.db", PtyTransport(), speed=60)       # or a list of Devices / SimNodes
    report = fleet.run("single_leak", duration=600)      # virtual seconds
    print(report.as_dict())

Time: every frame is stamped with a virtual time `t` (seconds since the run started). With `realtime=True`
virtual time runs `speed` times faster than the wall clock (speed=60: a minute per second); with
`realtime=False` the fleet jumps from one due item to the next as fast as it can (benchmarks, oracles that
need no gateway pacing). Given a seed, the frames sent are the same in both modes (downlinks aside).

Runs in sequence: the virtual clock, the reading schedule and node state (latched valves, unacked alarms)
carry over from one run() to the next; each scenario's times count from the start of its run.

Bounds: a run stops at `duration` virtual seconds, after `max_frames` frames, or after `wall_timeout`
wall seconds, whichever comes first; `stop()` ends it from another thread. Counters (next uplink FCnt and
last downlink FCnt per device) can be kept in a state file so a second run against the same gateway is
not refused as a replay.
"""

from __future__ import annotations

import collections
import heapq
import json
import os
import random
import sqlite3
import threading
import time
import typing
from dataclasses import dataclass, field

from gasguard.protocol import ProtocolError, frame
from gasguard.protocol.const import ALARM, ALARM_NAMES, COUNTER_BLOCK, HEAD_LEN

from .fleet_node import STEP_S, SimNode

_ACTION, _STEP, _RETX, _REPORT = 0, 1, 2, 3
BATCH = 2000          # items handled between two downlink polls
POLL_S = 0.005        # longest sleep, so downlinks are handled within a few ms of wall time


@dataclass
class FleetReport:
    scenario: str
    virtual_s: float = 0.0
    wall_s: float = 0.0
    stopped_by: str = "duration"
    sent: dict = field(default_factory=lambda: {"reading": 0, "alarm": 0, "event": 0, "ack": 0})
    alarms: dict = field(default_factory=lambda: {"raised": 0, "retransmitted": 0, "acked": 0, "unacked": 0})
    alarm_codes: dict = field(default_factory=dict)     # alarm code name -> distinct alarms raised
    downlinks: dict = field(default_factory=dict)       # status (ack, command, mic, replay, ...) -> count
    transport: dict = field(default_factory=dict)
    nodes: int = 0
    dynamic_nodes: int = 0
    steps: int = 0                                       # safety steps run by dynamic nodes
    max_lag_s: float = 0.0     # realtime: how far (wall s) sending fell behind the schedule; ~0 = kept up

    @property
    def frames(self) -> int:
        return sum(self.sent.values())

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["frames"] = self.frames
        d["frames_per_wall_s"] = round(self.frames / self.wall_s, 1) if self.wall_s > 0 else None
        return d


class Fleet:
    """Simulated nodes plus a transport. See the module docstring and tools/sim/README.md."""

    def __init__(self, source, transport, *, seed: int = 0, speed: float = 60.0, rate: float = 0.0,
                 log: str | os.PathLike | None = None, record: bool = False, on_foreign=None):
        """`source`: a registry path, a list of registry Devices, or a list of SimNodes."""
        if speed <= 0:
            raise ValueError("speed must be above 0 (virtual seconds per wall second)")
        if rate < 0:
            raise ValueError("rate must be 0 (no limit) or a number of frames per second")
        if isinstance(source, (str, os.PathLike)):
            nodes = registry_nodes(source, seed)
        elif source and not isinstance(source[0], SimNode):
            nodes = device_nodes(source, seed)
        else:
            nodes = list(source)
        if not nodes:
            raise ValueError("a fleet needs at least one node")
        self.nodes = nodes
        self.by_dev = {n.dev: n for n in nodes}
        for n in nodes:
            n.parent = self.by_dev.get(n.upstream) if n.upstream else None
            n.downlink = transport.has_downlink
        self.transport = transport
        self.seed = seed
        self.rng = random.Random(seed)
        self.speed = speed
        self.rate = rate
        self.log_path = log
        self.records: list[dict] | None = [] if record else None     # every frame sent, as logged (tests, oracles)
        # mixed benches: downlinks for devices that are not in this fleet (e.g. a virtual board sharing
        # the line) go to on_foreign(raw) instead of being counted as unknown
        self.on_foreign = on_foreign
        self._stop = threading.Event()
        self._heap: list = []
        self._seq = 0
        self._retx_at: dict[int, float] = {}
        self._log: typing.TextIO | None = None
        self.report: FleetReport | None = None
        self.now = 0.0            # virtual clock; it keeps running across run() calls
        self.t0 = 0.0             # virtual time the current run started at (scenarios offset from it)
        self._started = False
        self._run_thread: int | None = None   # thread id while run() is going on
        self._inbox: collections.deque[bytes] = collections.deque()         # downlinks handed in from other threads

    # -- building a fleet --------------------------------------------------------------------------
    @classmethod
    def from_registry(cls, path, transport, *, households: int | None = None, stations: bool = True,
                      seed: int = 0, **kw) -> "Fleet":
        """Nodes for the active devices of a registry file (keys read from it).

        `households` caps how many household-profile nodes are loaded (None = all), `stations=False` leaves
        regulator stations out.
        """
        return cls(registry_nodes(path, seed, households, stations), transport, seed=seed, **kw)

    @classmethod
    def from_devices(cls, devices, transport, *, seed: int = 0, **kw) -> "Fleet":
        """Nodes for registry Device objects (e.g. straight from district.generate())."""
        return cls(device_nodes(devices, seed), transport, seed=seed, **kw)

    # -- counters kept across runs -------------------------------------------------------------------
    def load_counters(self, path) -> int:
        """Resume counters from a state file written by save_counters(). Returns devices resumed.

        Like the firmware's reserved ceiling (SPEC 4), a resumed node skips one block, so a crash between
        two saves never makes it reuse a counter.
        """
        if not os.path.exists(path):
            return 0
        with open(path) as f:
            state = json.load(f)
        n = 0
        for dev, (up, down) in state.items():
            node = self.by_dev.get(int(dev))
            if node is not None:
                node.fcnt = up + COUNTER_BLOCK
                node.last_down = down
                n += 1
        return n

    def save_counters(self, path) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump({str(n.dev): [n.fcnt, n.last_down] for n in self.nodes}, f)
        os.replace(tmp, path)

    # -- helpers for scenarios ---------------------------------------------------------------------
    def at(self, t: float, fn) -> None:
        """Call `fn(fleet, t)` at virtual time `t` (its return value, a list of field dicts, is sent)."""
        self._push(t, _ACTION, fn)

    def make_dynamic(self, node: SimNode) -> None:
        """Give `node` a safety step every STEP_S virtual seconds (scenarios call this on nodes they drive)."""
        if not node.dynamic:
            node.dynamic = True
            self._push(self.now, _STEP, node)

    def households(self, user_class: str | None = "residential") -> list[SimNode]:
        return [n for n in self.nodes if n.profile == "household" and (user_class is None or n.user_class == user_class)]

    def stations(self) -> list[SimNode]:
        return [n for n in self.nodes if n.profile == "station"]

    def children(self, node: SimNode) -> list[SimNode]:
        return [n for n in self.nodes if n.parent is node]

    def subtree(self, node: SimNode) -> list[SimNode]:
        """Every node fed, directly or through other stations, by `node` (that are in this fleet)."""
        kids: dict[int, list] = {}
        for n in self.nodes:
            if n.parent is not None:
                kids.setdefault(id(n.parent), []).append(n)
        out, todo = [], [node]
        while todo:
            for k in kids.get(id(todo.pop()), ()):
                out.append(k)
                todo.append(k)
        return out

    def stop(self) -> None:
        """End a run from another thread (or a signal handler); the run returns its report."""
        self._stop.set()

    # -- the run -----------------------------------------------------------------------------------
    def _push(self, t, kind, obj):
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, obj))

    def _schedule_retx(self, node):
        nxt = node.next_retx()
        if nxt is None:
            return
        cur = self._retx_at.get(node.dev)
        if cur is None or nxt < cur:
            self._retx_at[node.dev] = nxt
            self._push(nxt, _RETX, node)

    def deliver_downlink(self, raw: bytes) -> list:
        """Hand one downlink frame (bytes) to its node, as if it came over the transport.

        From the thread running run() (or when no run is going on) it is handled at once and the (raw, node)
        uplinks it caused (acks to commands, events) are returned, already sent. From any other thread it is
        queued for the running loop (handled within a few ms) and [] is returned.
        """
        if self._run_thread is not None and self._run_thread != threading.get_ident():
            self._inbox.append(bytes(raw))        # deque.append is atomic: no lock needed
            return []
        if self.report is None:
            self.report = FleetReport(scenario="none", nodes=len(self.nodes))
        return self._downlinks([raw])

    def _downlinks(self, raws):
        rep = self.report
        batch = []
        for raw in raws:
            try:
                dev = frame.decode(raw)["dev"]
            except ProtocolError as e:
                rep.downlinks[e.reason] = rep.downlinks.get(e.reason, 0) + 1
                continue
            node = self.by_dev.get(dev)
            if node is None:
                status = "foreign" if self.on_foreign else "unknown_device"
                rep.downlinks[status] = rep.downlinks.get(status, 0) + 1
                if self.on_foreign:
                    self.on_foreign(raw)
                continue
            status, ups = node.on_downlink(raw, self.now)
            rep.downlinks[status] = rep.downlinks.get(status, 0) + 1
            if status == "ack" and raw[HEAD_LEN] == ALARM:    # ack body: ref_type first
                rep.alarms["acked"] += 1
            for f in ups:
                batch.append(self._seal(node, f))
            self._schedule_retx(node)
        if batch:
            self._send(batch)
        return batch

    def _seal(self, node, f):
        retx = f.pop("retx", 0)
        raw = node.seal(f)
        rep = self.report
        ftype = f["type"]
        rep.sent[ftype] += 1
        rec = None
        if ftype == "alarm":
            if retx:
                rep.alarms["retransmitted"] += 1
            else:
                rep.alarms["raised"] += 1
                name = ("cleared_" if f["cleared"] else "") + _alarm_name(f["code"])
                rep.alarm_codes[name] = rep.alarm_codes.get(name, 0) + 1
            if self._log or self.records is not None:
                rec = {"code": f["code"], "cleared": f["cleared"], "aseq": f["aseq"], "value": f["value"],
                       "state": f["state"]}
        elif self._log or self.records is not None:
            if ftype == "event":
                rec = {"code": f["code"], "eseq": f["eseq"]}
            elif ftype == "ack":
                rec = {"ref_type": f["ref_type"], "ref": f["ref"], "result": f["result"]}
            else:
                rec = {"gas": f["gas"], "pressure": f["pressure"], "state": f["state"]}
                if "inlet" in f:
                    rec["inlet"] = f["inlet"]
        if rec is not None:
            rec.update({"t": round(time.time(), 6), "vt": round(self.now, 3), "dev": node.dev, "fcnt": f["fcnt"],
                        "type": ftype, "retx": retx})
            if self.records is not None:
                self.records.append(rec)
            if self._log:
                self._log.write(json.dumps(rec) + "\n")
        return raw, node

    def _send(self, batch):
        self.transport.send(batch)

    def _handle(self, t, kind, obj, batch):
        rng = self.rng
        if kind == _REPORT:
            node = obj
            batch.append(self._seal(node, node.reading(t, rng)))
            self._push(t + node.params["report_s"], _REPORT, node)
        elif kind == _STEP:
            node = obj
            self.report.steps += 1
            out = node.step(t, rng)
            if out:
                for f in out:
                    batch.append(self._seal(node, f))
                self._schedule_retx(node)
            self._push(t + STEP_S, _STEP, node)
        elif kind == _RETX:
            node = obj
            if self._retx_at.get(node.dev) == t:
                del self._retx_at[node.dev]
            for f in node.retransmits(t):
                batch.append(self._seal(node, f))
            self._schedule_retx(node)
        else:
            for f in obj(self, t) or ():
                batch.append(self._seal(self.by_dev[f["dev"]], f))
                self._schedule_retx(self.by_dev[f["dev"]])

    def run(self, scenario="quiet", duration: float | None = None, *, realtime: bool = True,
            wall_timeout: float = 120.0, max_frames: int | None = None, params: dict | None = None) -> FleetReport:
        """Play `scenario` (a name from tools/sim/scenarios.py or a Scenario) for `duration` virtual seconds."""
        from . import scenarios

        scen = scenarios.make(scenario, **(params or {})) if isinstance(scenario, str) else scenario
        duration = float(duration if duration is not None else scen.duration)
        if duration <= 0 or wall_timeout <= 0:
            raise ValueError("duration and wall_timeout must be above 0")
        self.report = rep = FleetReport(scenario=scen.name, nodes=len(self.nodes))
        self._stop.clear()
        t0 = self.t0 = self.now
        end = t0 + duration
        if not self._started:
            # first readings spread over one report period, as nodes powered up at random times would;
            # a later run continues this schedule (and node state: latched valves stay latched)
            self._started = True
            for node in self.nodes:
                self._push(t0 + self.rng.uniform(0, node.params["report_s"]), _REPORT, node)
        scen.setup(self, duration)
        rep.dynamic_nodes = sum(1 for n in self.nodes if n.dynamic)
        self._log = open(self.log_path, "a", buffering=1 << 16) if self.log_path else None
        w0 = time.monotonic()
        heap = self._heap
        self._run_thread = threading.get_ident()
        try:
            while not self._stop.is_set():
                wall = time.monotonic() - w0
                if wall >= wall_timeout:
                    rep.stopped_by = "wall_timeout"
                    break
                # fast mode: take a virtual second at a time (one batch, one send), order unchanged
                vnow = t0 + wall * self.speed if realtime else (heap[0][0] + 1.0 if heap else end)
                batch: list = []
                n = 0
                budget = self.rate * wall - rep.frames if self.rate else None
                cap = max_frames - rep.frames if max_frames is not None else None
                while heap and heap[0][0] <= vnow and heap[0][0] < end and n < BATCH:
                    if (budget is not None and len(batch) >= budget) or (cap is not None and len(batch) >= cap):
                        break
                    t, _s, kind, obj = heapq.heappop(heap)
                    self.now = t
                    self._handle(t, kind, obj, batch)
                    n += 1
                if batch:
                    self._send(batch)
                    if realtime:
                        lag = (time.monotonic() - w0) - (self.now - t0) / self.speed
                        if lag > rep.max_lag_s:
                            rep.max_lag_s = round(lag, 4)
                self.now = max(self.now, min(vnow, end))
                downs = self.transport.receive() if self.transport.has_downlink else []
                while self._inbox:
                    downs.append(self._inbox.popleft())
                if downs:
                    self._downlinks(downs)
                if max_frames is not None and rep.frames >= max_frames:
                    rep.stopped_by = "max_frames"
                    break
                if not heap or heap[0][0] >= end:
                    if not realtime or vnow >= end:
                        self.now = end      # the whole duration has been played
                        break
                if realtime and (not heap or heap[0][0] > vnow or n < BATCH):
                    nxt = ((heap[0][0] - t0) / self.speed) if heap else wall + POLL_S
                    time.sleep(max(0.0, min(POLL_S, nxt - (time.monotonic() - w0))))
            else:
                rep.stopped_by = "stop"
        except KeyboardInterrupt:
            rep.stopped_by = "interrupted"
        finally:
            self._run_thread = None
            if self._log:
                self._log.close()
                self._log = None
            rep.wall_s = round(time.monotonic() - w0, 3)
            rep.virtual_s = round(min(self.now, end) - t0, 3)
            rep.alarms["unacked"] = sum(1 for n in self.nodes for k in (n.pending or ()) if k[0] == 1)
            rep.transport = dict(self.transport.stats)
        return rep


def registry_nodes(path, seed: int = 0, households: int | None = None, stations: bool = True) -> list[SimNode]:
    """SimNodes for the active devices of the registry at `path` (read-only; keys come from it)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"registry {path} does not exist: make one with 'gasguard sim district "
                                f"--registry {path}'")
    rng = random.Random(seed ^ 0x5EED)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT dev_id, key, profile, config, pressure_class, households, user_class, upstream "
                          "FROM devices WHERE state != 'decommissioned' ORDER BY dev_id").fetchall()
    finally:
        db.close()
    nodes, n_house = [], 0
    for dev, key, profile, config, pclass, hh, uclass, up in rows:
        if profile == "station" and not stations:
            continue
        if profile == "household":
            if households is not None and n_house >= households:
                continue
            n_house += 1
        cfg = json.loads(config) if config and config != "{}" else None
        nodes.append(SimNode(dev, bytes(key), profile, rng, config=cfg, pressure_class=pclass, households=hh,
                             user_class=uclass, upstream=up))
    if not nodes:
        raise ValueError(f"registry {path} has no active devices to simulate")
    return nodes


def device_nodes(devices, seed: int = 0) -> list[SimNode]:
    """SimNodes for registry Device objects (decommissioned ones left out)."""
    rng = random.Random(seed ^ 0x5EED)
    return [SimNode(d.dev_id, d.key, d.profile, rng, config=d.config, pressure_class=d.pressure_class,
                    households=d.households, user_class=d.user_class, upstream=d.upstream)
            for d in devices if d.state != "decommissioned"]


def _alarm_name(code):
    return ALARM_NAMES.get(code, str(code))
