"""Incident lifecycle: observations and operator messages in, incident publications out. Pure.

Inputs are accepted uplinks (`observe`), the time (`tick`), and messages from the district command
(`acknowledge`, `operator_input`, `sync`). Outputs are `(topic, payload)` pairs. The only outside lookup
is `downstream(dev_id) -> [device dicts]` (Registry.downstream), injected. Time is always passed in, so
tests run 24 hours of deadlines in microseconds.

Three kinds of incident (plan 1.6.1):
- "supply" (供应保障类): stations whose supply stopped (slam-shut trip, valve closed, outlet lost). One open
  supply incident per district adds every cut-off station's households (and those of stations it feeds)
  to the district's count, each station counted once;
- "pressure" (供应保障类): a station inlet under its network class bound and still falling (plan 3.3.x(2));
- "leak" (安全事故类): gas alarms that shut off a node; alarms within a radius and time window join one
  incident whose level rises one step from `leak_cluster_count` alarms.
"""

from __future__ import annotations

from collections import deque

from gasguard import logs
from gasguard.grading import engine as G
from gasguard.grading import report as R
from gasguard.protocol import counter
from gasguard.protocol.topics import ACK, INPUT, SYNC, CommandTopics, Topics
from gasguard.protocol.units import gas_percent_lel

VALVE_CLOSED = 1
VALVE_OPEN = 0
TRIP_CODES = {3: "opso", 4: "upso"}
CAUSES = {1: "gas", 2: "opso", 3: "upso", 4: "fault", 5: "reset", 6: "selftest", 7: "manual"}
GAS_CODES = {1: "gas_l1", 2: "gas_l2"}
MAX_NOTES = 100

log = logs.get("gasguard.incidents")   # every publication at INFO: the engineer's record of what the gateway said


def command_topics(cfg: dict) -> CommandTopics:
    """The district command's subtree, under the configured topic root."""
    return Topics(cfg["topic_root"]).command(cfg["district"])


def district_topic(cfg: dict, incident_id: str) -> str:
    return command_topics(cfg).incident(incident_id)


def city_topic(cfg: dict, incident_id: str) -> str:
    return Topics(cfg["topic_root"]).city_incident(cfg["city_topic"], incident_id)


def command_subscriptions(cfg: dict) -> list[str]:
    return list(command_topics(cfg).subscriptions)


class Incident:
    def __init__(self, cfg: dict, kind: str, dev: dict, detected_at: float, known_at: float):
        self.kind = kind
        self.category = "safety_accident" if kind == "leak" else "supply_assurance"
        self.id = f"{cfg['district']}-{kind}-{dev['dev_id']:08x}-{int(detected_at)}"
        self.origin = dev
        self.detected_at = detected_at
        self.known_at = known_at
        self.revision = 0
        self.status = "open"
        self.resolved_at: float | None = None
        self.stations: dict[int, dict] = {}     # supply: dev_id -> {device, cut_at, restored_at, cause, affected}
        self.members: dict[int, dict] = {}      # leak: dev_id -> {device, t, gas, cleared_at, valve}
        self.pressure: dict = {}                # pressure: {device, warning, bound_mpa, crossed_at, last_pa}
        self.timeline: deque = deque(maxlen=cfg["history_len"])
        self.timeline_dropped = 0
        self.measures: list[dict] = []
        self.operator: dict = {}
        self.notes: list[dict] = []
        self.acked: dict | None = None
        self.ack_floor = 0                      # acks of revisions before the last upgrade do not count
        self.escalation: dict | None = None
        self.escalations = 0
        self.last_escalation_at: float | None = None
        self.routed_city = False
        self.level: int | None = None
        self.warning: str | None = None
        self.projected = False
        self.basis: list[dict] = []
        self.warning_reasons: list[str] = []
        self.households = 0
        self.households_confirmed = 0
        self.households_peak = 0

    def to_dict(self) -> dict:
        d = dict(vars(self))
        d["timeline"] = list(self.timeline)
        d["stations"] = {str(k): v for k, v in self.stations.items()}
        d["members"] = {str(k): v for k, v in self.members.items()}
        return d

    @classmethod
    def from_dict(cls, cfg: dict, d: dict) -> "Incident":
        inc = cls.__new__(cls)
        vars(inc).update({k: v for k, v in d.items() if k != "ack_history"})   # unbounded and unread: dropped
        inc.timeline = deque(d["timeline"], maxlen=cfg["history_len"])
        inc.stations = {int(k): v for k, v in d["stations"].items()}
        inc.members = {int(k): v for k, v in d["members"].items()}
        return inc

    def add_timeline(self, t: float, text: str, zh: str, **data) -> None:
        if len(self.timeline) == self.timeline.maxlen:
            self.timeline_dropped += 1            # bounded: the oldest entry goes, and is counted
        self.timeline.append({"t": t, "text": text, "text_zh": zh, **data})

    def add_note(self, t: float, by, text: str) -> None:
        # bounded like the timeline: a chatty console cannot grow the report (or the state file) without end
        if len(self.notes) >= MAX_NOTES:
            self.notes.pop(0)
            self.notes_dropped = getattr(self, "notes_dropped", 0) + 1
        self.notes.append({"t": t, "by": str(by or "command")[:80], "text": text[:2000]})

    def add_measure(self, t: float, text: str, text_zh: str) -> None:
        if not any(m["text"] == text for m in self.measures):
            self.measures.append({"t": t, "text": text, "text_zh": text_zh})

    def devices(self) -> list[dict]:
        if self.kind == "supply":
            return [s["device"] for s in self.stations.values()]
        if self.kind == "leak":
            return [m["device"] for m in self.members.values()]
        return [self.pressure["device"]]


class IncidentEngine:
    def __init__(self, cfg: dict | None = None, downstream=None):
        self.cfg = cfg if cfg is not None and "phone_deadline_s" in cfg else G.load_config(cfg)
        self.downstream = downstream or (lambda dev_id: [])
        self.incidents: dict[str, Incident] = {}
        self.inlet: dict[int, deque] = {}           # station dev_id -> (t, inlet Pa), bounded
        # (dev, identity, code, cleared) of alarms taken: a copy seen again is not a new alarm. The identity is
        # the gateway's `aid` (SPEC 3.4, never reused by a device), else recovered from fcnt and aseq, else the
        # message id. Not the 8-bit
        # aseq: two alarms of one device share it every 256 counters (issue 12).
        self._seen_alarms: deque = deque(maxlen=4096)
        # Lookups of open incidents by kind, by leak member and by latitude band (_OpenIndex), kept up to date
        # as incidents open and gain members and rebuilt when one closes or goes: a district-wide engine takes
        # thousands of readings a second while a storm holds a thousand incidents open.
        self._idx: _OpenIndex | None = None

    def _index(self) -> "_OpenIndex":
        if self._idx is None:
            self._idx = _OpenIndex(self.incidents.values(), self.cfg["leak_cluster_radius_m"])
        return self._idx

    # --- state across restarts (the plugin writes it to disk) ---------------------------------------
    def snapshot(self) -> dict:
        """Everything needed to carry on after a restart (escalation must not stop with the process)."""
        return {"schema": "gasguard.grading-state/1",
                "incidents": [i.to_dict() for i in self.incidents.values()],
                "inlet": {str(k): list(v) for k, v in self.inlet.items()}}

    def restore(self, snap: dict) -> None:
        if snap.get("schema") != "gasguard.grading-state/1":
            raise ValueError(f"unknown grading state schema {snap.get('schema')!r}")
        self.incidents = {d["id"]: Incident.from_dict(self.cfg, d) for d in snap["incidents"]}
        self.inlet = {int(k): deque([tuple(x) for x in v], maxlen=512) for k, v in snap["inlet"].items()}
        self._idx = None

    # --- inputs ----------------------------------------------------------------------------------
    def observe(self, obs: dict) -> list[tuple[str, dict]]:
        dev = obs.get("device")
        if not dev:
            return []
        t = float(obs["t"])
        typ, fr = obs.get("type"), obs.get("frame") or {}
        if typ == "alarm":
            ident = fr.get("aid")
            if ident is None and fr.get("fcnt") is not None and fr.get("aseq") is not None:
                ident = counter.identity(int(fr["fcnt"]), int(fr["aseq"]))     # SPEC 3.4, as the gateway does
            if ident is None:
                ident = obs.get("id")
            key = (dev["dev_id"], ident, fr.get("code"), bool(fr.get("cleared")))
            if key in self._seen_alarms:
                return []
            self._seen_alarms.append(key)
        changed: set[Incident] = set()
        changed |= self._supply(obs, dev, t, typ, fr)
        changed |= self._leak(obs, dev, t, typ, fr)
        changed |= self._pressure(obs, dev, t, typ, fr)
        return self._publish_changed(changed, t)

    def tick(self, now: float) -> list[tuple[str, dict]]:
        out: list = []
        for inc in list(self.incidents.values()):
            if inc.status == "resolved":
                if now - inc.resolved_at >= self.cfg["resolved_keep_s"]:
                    del self.incidents[inc.id]
                continue
            if inc.kind == "supply" and self._regrade(inc, now):     # a station reached 24 h cut off
                out += self._publish(inc, now, "update")
            stage = None
            if now >= inc.detected_at + self.cfg["written_deadline_s"]:
                stage = "written"
            elif now >= inc.detected_at + self.cfg["phone_deadline_s"]:
                stage = "phone"
            if stage is None or inc.acked:
                continue
            repeat = self.cfg["escalation_repeat_s"]
            due = (inc.escalation is None or inc.escalation["stage"] != stage
                   or (repeat > 0 and now - inc.last_escalation_at >= repeat))
            if due:
                inc.escalations += 1
                deadline = inc.detected_at + self.cfg[f"{stage}_deadline_s"]
                inc.escalation = {"stage": stage, "count": inc.escalations, "overdue_s": round(now - deadline, 1)}
                inc.last_escalation_at = now
                out += self._publish(inc, now, "escalation")
        return out

    def acknowledge(self, incident_id: str, payload: dict, now: float) -> list[tuple[str, dict]]:
        inc = self.incidents.get(incident_id)
        if inc is None:
            return []
        rev = payload.get("revision")
        if isinstance(rev, int) and rev < inc.ack_floor:
            log.info("acknowledgement ignored: it acknowledges revision %s, before the last upgrade (%d)", rev,
                     inc.ack_floor, incident=incident_id, operator=str(payload.get("by", "command"))[:80])
            return []        # acknowledges a revision older than the last upgrade: not this grade
        inc.acked = {"by": str(payload.get("by", "command"))[:80], "t": now, "revision": rev}
        log.info("incident acknowledged", incident=incident_id, operator=inc.acked["by"], revision=rev)
        inc.escalation = None
        return self._publish(inc, now, "update")

    def operator_input(self, incident_id: str, payload: dict, now: float) -> list[tuple[str, dict]]:
        """Facts from people on site (plan 1.6.2 casualties, losses, evacuations; 4.1.3 fields)."""
        inc = self.incidents.get(incident_id)
        if inc is None:
            return []
        problems = R.validate_operator_input(payload)
        log.info("operator input %s", "refused: " + "; ".join(problems) if problems else "recorded",
                 incident=incident_id, operator=str(payload.get("by", "command"))[:80],
                 keys=",".join(sorted(k for k in payload if k != "by")))
        if problems:
            inc.add_note(now, payload.get("by"), "rejected input: " + "; ".join(problems))
            return self._publish(inc, now, "update")
        for k, v in payload.items():
            if k in R.OPERATOR_FIELDS:
                inc.operator[k] = v
        if payload.get("note"):
            inc.add_note(now, payload.get("by"), str(payload["note"]))
        self._regrade(inc, now)
        if payload.get("resolved"):
            self._resolve(inc, now, "closed by the command")
            return self._publish(inc, now, "final")
        return self._publish(inc, now, "update")

    def sync(self, now: float) -> list[tuple[str, dict]]:
        """Re-publish every incident still held (a console that just connected asks for this)."""
        out = []
        for inc in self.incidents.values():
            out += self._messages(inc, now, "sync")
        return out

    def on_message(self, topic: str, payload: dict, now: float) -> list[tuple[str, dict]]:
        msg = command_topics(self.cfg).parse(topic)
        if msg is None:
            return []
        kind, incident_id = msg
        if kind == SYNC:
            return self.sync(now)
        if kind == ACK:
            return self.acknowledge(incident_id, payload, now)
        if kind == INPUT:
            return self.operator_input(incident_id, payload, now)
        return []            # shelving is the command service's (command/shelving.py), not the engine's

    def open_incidents(self) -> list[Incident]:
        return list(self._index().open)

    def in_open_leak(self, dev_id: int) -> bool:
        """Is this device a member of an open leak incident (then its readings can change it: its valve)?"""
        return dev_id in self._index().leak

    def gauges(self, now: float) -> dict[str, dict[str, int]]:
        """Open incidents by kind, and those not acknowledged by a report deadline (plan 4.1.2), each counted
        under the latest deadline it missed: the metrics the overdue-incident alert watches."""
        kinds = {"supply": 0, "pressure": 0, "leak": 0}
        overdue = {"phone": 0, "written": 0}
        for inc in self.open_incidents():
            kinds[inc.kind] = kinds.get(inc.kind, 0) + 1
            if inc.acked:
                continue
            if now >= inc.detected_at + self.cfg["written_deadline_s"]:
                overdue["written"] += 1
            elif now >= inc.detected_at + self.cfg["phone_deadline_s"]:
                overdue["phone"] += 1
        return {"incidents_open": kinds, "incidents_overdue": overdue}

    # --- supply (plan 1.6.2.x(2): households cut off) -----------------------------------------
    def _supply(self, obs, dev, t, typ, fr) -> set:
        if dev.get("profile") != "station":
            return set()
        lost, cause = self._station_supply(obs, typ, fr)
        if lost is None:
            return set()
        inc = self._open("supply")
        did = dev["dev_id"]
        if lost:
            if inc is not None and did in inc.stations and inc.stations[did]["restored_at"] is None:
                return set()
            detected = t - float(fr.get("age") or 0) if typ == "alarm" else t
            if inc is None:
                inc = self._new("supply", dev, detected, t)
            affected = [d for d in self.downstream(did) if d.get("profile") == "station"]
            inc.stations[did] = {"device": dev, "cut_at": detected, "restored_at": None, "cause": cause,
                                 "affected": affected}
            text = {"upso": "slam-shut tripped on under-pressure (UPSO)", "opso":
                    "slam-shut tripped on over-pressure (OPSO)", "valve": "station valve closed",
                    "outlet": "outlet pressure lost"}.get(cause, cause)
            zh = {"upso": "欠压切断阀动作（UPSO）", "opso": "超压切断阀动作（OPSO）", "valve": "调压站阀门关闭",
                  "outlet": "出口压力丧失"}.get(cause, cause)
            inc.add_timeline(detected, f"{_site(dev)}: {text}", f"{_site(dev)}：{zh}，停止供气", dev=dev["dev"],
                             pressure_pa=fr.get("pressure") if typ == "reading" else fr.get("value"))
            if cause in ("upso", "opso", "valve"):
                inc.add_measure(detected, f"station {dev['dev']} shut off automatically at "
                                f"{self._hms(detected)} ({cause})",
                                f"调压站{dev.get('site_name') or dev['dev']}于{self._hms(detected)}自动切断（{cause.upper()}）")
            self._regrade(inc, t)
            return {inc}
        if inc is None or did not in inc.stations or inc.stations[did]["restored_at"] is not None:
            return set()
        inc.stations[did]["restored_at"] = t
        inc.add_timeline(t, f"{_site(dev)}: supply restored ({cause})", f"{_site(dev)}：恢复供气", dev=dev["dev"],
                         pressure_pa=fr.get("pressure"))
        inc.add_measure(t, f"station {dev['dev']} supply restored at {self._hms(t)}",
                        f"调压站{dev.get('site_name') or dev['dev']}于{self._hms(t)}恢复供气")
        self._regrade(inc, t)
        if all(s["restored_at"] is not None for s in inc.stations.values()):
            self._resolve(inc, t, "supply restored at every station")
        return {inc}

    def _station_supply(self, obs, typ, fr) -> tuple[bool | None, str]:
        """(True = supply stopped, False = supply flowing, None = this message does not say), cause."""
        st = obs.get("state") or {}
        if typ == "alarm" and fr.get("code") in TRIP_CODES:
            return (None, "") if fr.get("cleared") else (True, TRIP_CODES[fr["code"]])
        if typ == "event" and fr.get("code") == 5:               # VALVE event: valve u8, cause u8
            data = bytes.fromhex(fr["data"]) if isinstance(fr.get("data"), str) else bytes(fr.get("data") or b"")
            if len(data) >= 1 and data[0] == VALVE_CLOSED:
                c = CAUSES.get(data[1], "valve") if len(data) > 1 else "valve"
                return True, c if c in ("opso", "upso") else "valve"
            if len(data) >= 1 and data[0] == VALVE_OPEN:
                return False, "valve re-opened"
            return None, ""
        if typ == "reading":
            p = fr.get("pressure")
            if st.get("ptrip"):
                return True, "upso"
            if st.get("valve") == VALVE_CLOSED:
                return True, "valve"
            if p is not None and p < self.cfg["station_outlet_lost_pa"]:
                return True, "outlet"
            if p is not None or st.get("valve") == VALVE_OPEN:
                return False, "outlet pressure back" if p is not None else "valve open"
        return None, ""

    # --- leaks (plan 1.6.1.1, 5.1.1) ---------------------------------------------------------------
    def _leak(self, obs, dev, t, typ, fr) -> set:
        did = dev["dev_id"]
        st = obs.get("state") or {}
        if typ == "alarm" and GAS_CODES.get(fr.get("code")) in self.cfg["leak_alarm_codes"]:
            if fr.get("cleared"):
                inc = self._leak_of(did)
                if inc is None:
                    return set()
                inc.members[did]["cleared_at"] = t
                inc.add_timeline(t, f"{_site(dev)}: gas alarm cleared", f"{_site(dev)}：燃气报警解除", dev=dev["dev"],
                                 gas_lel=_lel(fr.get("value")))
                self._maybe_resolve_leak(inc, t)
                return {inc}
            detected = t - float(fr.get("age") or 0)
            current = self._leak_of(did)
            if current is not None and current.members[did]["cleared_at"] is None:
                return set()                     # the same leak reported again (e.g. after a node reboot)
            inc = self._cluster_for(dev, detected)
            if inc is None:
                inc = self._new("leak", dev, detected, t)
            inc.members[did] = {"device": dev, "t": detected, "gas": fr.get("value"), "cleared_at": None,
                                "valve": st.get("valve")}
            if self._idx is not None:
                self._idx.member(inc, did, inc.members[did])
            inc.add_timeline(detected, f"{_site(dev)}: gas alarm {_lel(fr.get('value'))} %LEL",
                             f"{_site(dev)}：燃气浓度 {_lel(fr.get('value'))} %LEL 报警", dev=dev["dev"],
                             gas_lel=_lel(fr.get("value")))
            if st.get("valve") == VALVE_CLOSED:
                inc.add_measure(detected, f"valve at {dev['dev']} closed automatically at {self._hms(detected)}",
                                f"{dev.get('address') or dev['dev']}处阀门于{self._hms(detected)}自动关闭")
            self._regrade(inc, t)
            return {inc}
        inc = self._leak_of(did)
        if inc is None or inc.status != "open":
            return set()
        valve = None
        if typ == "event" and fr.get("code") == 5:
            data = bytes.fromhex(fr["data"]) if isinstance(fr.get("data"), str) else bytes(fr.get("data") or b"")
            valve = data[0] if data else None
        elif typ == "reading":
            valve = st.get("valve")
        if valve is None or valve == inc.members[did]["valve"]:
            return set()
        inc.members[did]["valve"] = valve
        if valve == VALVE_CLOSED:
            inc.add_measure(t, f"valve at {dev['dev']} closed at {self._hms(t)}",
                            f"{dev.get('address') or dev['dev']}处阀门于{self._hms(t)}关闭")
        elif valve == VALVE_OPEN:
            inc.add_timeline(t, f"{_site(dev)}: valve re-opened", f"{_site(dev)}：阀门已重新开启", dev=dev["dev"])
        self._maybe_resolve_leak(inc, t)
        return {inc}

    def _maybe_resolve_leak(self, inc, t) -> None:
        # safe again when every alarm has cleared and no valve is still shut (latched until a reset)
        if all(m["cleared_at"] is not None and m["valve"] != VALVE_CLOSED for m in inc.members.values()):
            self._resolve(inc, t, "gas cleared and valves re-opened")

    def _leak_of(self, did) -> Incident | None:
        return self._index().leak.get(did)

    def _cluster_for(self, dev, t) -> Incident | None:
        """The first open leak incident (in opening order) with a member within the radius and time window."""
        if dev.get("lat") is None or dev.get("lon") is None:
            return None
        idx = self._index()
        best = None
        for inc, m in idx.near(dev["lat"]):
            d = m["device"]
            if (abs(t - m["t"]) <= self.cfg["leak_cluster_window_s"]
                    and (best is None or idx.pos[inc.id] < idx.pos[best.id])
                    and G.haversine_m(d["lat"], d["lon"], dev["lat"], dev["lon"]) <= self.cfg["leak_cluster_radius_m"]):
                best = inc
        return best

    # --- network pressure (plan 3.3.1(2), 3.3.2(2)) -----------------------------------------------
    def _pressure(self, obs, dev, t, typ, fr) -> set:
        if typ != "reading" or fr.get("inlet") is None or not G.pressure_bound(self.cfg, dev.get("pressure_class")):
            return set()
        did = dev["dev_id"]
        window = self.cfg["falling_window_s"]
        samples = self.inlet.setdefault(did, deque(maxlen=512))
        samples.append((t, float(fr["inlet"])))
        while samples and samples[0][0] < t - 3 * window - 1:
            samples.popleft()
        state = G.pressure_warning(self.cfg, dev["pressure_class"], list(samples), t)
        inc = next((i for i in self._index().by_kind.get("pressure", ()) if i.origin["dev_id"] == did), None)
        if inc is None:
            if not state["warning"]:
                return set()
            inc = self._new("pressure", dev, state["crossed_at"], t)
            inc.pressure = {"device": dev, "warning": None, "peak": None}
        p = inc.pressure
        before = (p.get("warning"), p.get("below"), p.get("falling"))
        p.update(state, last_pa=fr["inlet"], class_=dev["pressure_class"])
        p["peak"] = G.warning_max(p["peak"], state["warning"])
        after = (p.get("warning"), p.get("below"), p.get("falling"))
        if before == after:
            return set()
        if state["warning"]:
            inc.add_timeline(t, f"inlet {fr['inlet'] / 1e6:.3f} MPa under {state['bound_mpa']} MPa "
                             f"({dev['pressure_class']}) and still falling",
                             f"进口压力 {fr['inlet'] / 1e6:.3f} MPa，低于 {state['bound_mpa']} MPa 且仍持续下降",
                             dev=dev["dev"], inlet_pa=fr["inlet"])
        elif state["below"]:
            inc.add_timeline(t, f"inlet {fr['inlet'] / 1e6:.3f} MPa: pressure recovering",
                             f"进口压力 {fr['inlet'] / 1e6:.3f} MPa，压力回升", dev=dev["dev"],
                             inlet_pa=fr["inlet"])
        else:
            inc.add_timeline(t, f"inlet {fr['inlet'] / 1e6:.3f} MPa: back above the bound",
                             f"进口压力 {fr['inlet'] / 1e6:.3f} MPa，已恢复至限值以上", dev=dev["dev"],
                             inlet_pa=fr["inlet"])
            self._regrade(inc, t)
            self._resolve(inc, t, "inlet pressure recovered")
            return {inc}
        self._regrade(inc, t)
        return {inc}

    # --- grading and publication ------------------------------------------------------------------
    def _open(self, kind) -> Incident | None:
        return next(iter(self._index().by_kind.get(kind, ())), None)

    def _new(self, kind, dev, detected, known) -> Incident:
        inc = Incident(self.cfg, kind, dev, detected, known)
        while inc.id in self.incidents:                  # same device, same second: keep ids unique
            inc.id += "b"
        self.incidents[inc.id] = inc
        if self._idx is not None:
            self._idx.add(inc)
        return inc

    def _affected(self, inc, now, confirmed: bool) -> dict[int, dict]:
        out: dict[int, dict] = {}
        for did, s in inc.stations.items():
            if s["restored_at"] is not None:
                continue
            if confirmed and now - s["cut_at"] < self.cfg["projection_hours"] * 3600:
                continue
            out[did] = s["device"]
            for d in s["affected"]:
                out.setdefault(d["dev_id"], d)
        return out

    def _regrade(self, inc: Incident, now: float) -> bool:
        """Recompute level and warning; True if anything a reader sees changed."""
        cfg = self.cfg
        before = (inc.level, inc.warning, inc.projected, inc.households, inc.households_confirmed)
        basis = []
        if inc.kind == "supply":
            cur = sum(d.get("households") or 0 for d in self._affected(inc, now, False).values())
            conf = sum(d.get("households") or 0 for d in self._affected(inc, now, True).values())
            inc.households_peak = max(inc.households_peak, cur)
            # once every station is back, the final report grades what the incident reached
            ended = all(st["restored_at"] is not None for st in inc.stations.values())
            inc.households = inc.households_peak if ended else cur
            inc.households_confirmed = max(inc.households_confirmed, conf)
            lv = G.households_level(cfg, inc.households)
            if lv is not None:
                conf_lv = G.households_level(cfg, inc.households_confirmed)
                basis.append({"criterion": "households_cut_off", "value": inc.households, "level": lv,
                              "projected": conf_lv is None or conf_lv > lv})
        if inc.kind == "leak":
            n = sum(1 for _ in inc.members)
            lv = cfg["leak_level"]
            if n >= cfg["leak_cluster_count"]:
                lv = max(1, lv - 1)
            basis.append({"criterion": "leak_alarms", "value": n, "level": lv, "projected": True})
        for crit, lv in G.grade_operator(cfg, inc.operator).items():
            if lv is not None:
                basis.append({"criterion": crit, "value": inc.operator[crit], "level": lv, "projected": False})
        level = G.most_severe(*(b["level"] for b in basis))
        inc.basis = basis
        inc.level = level
        # projected while every criterion giving this level is itself a projection (初判)
        inc.projected = level is not None and all(b["projected"] for b in basis if b["level"] == level)
        base = G.warning_max(G.LEVEL_WARNING.get(level) if level else None,
                             G.households_warning(cfg, inc.households) if inc.households else None,
                             inc.pressure.get("peak") if inc.kind == "pressure" else None,
                             G.forecast_warning(cfg, inc.operator.get("forecast_excess_pct")))
        key_area = any(d.get("key_area") for d in inc.devices()) or any(
            d.get("key_area") for s in inc.stations.values() for d in s["affected"])
        inc.warning, inc.warning_reasons = G.final_warning(cfg, base, key_area,
                                                           G.local_time(cfg, inc.detected_at).date())
        upgraded = before[0] is not None and (
            (level is not None and level < before[0]) or
            (G.warning_at_least(inc.warning, before[1]) and inc.warning != before[1]))
        if upgraded and inc.acked and cfg["reack_on_upgrade"]:
            inc.acked = None                          # a new grade needs a new acknowledgement
            inc.ack_floor = inc.revision + 1
        inc.routed_city = inc.routed_city or G.routes_to_city(cfg, level, inc.warning)
        return before != (inc.level, inc.warning, inc.projected, inc.households, inc.households_confirmed)

    def _resolve(self, inc: Incident, now: float, why: str) -> None:
        if inc.status != "resolved":
            inc.status = "resolved"
            self._idx = None          # rebuilt at the next lookup (closing is rare next to readings)
            inc.resolved_at = now
            inc.escalation = None
            inc.add_timeline(now, f"resolved: {why}", "事件结束：" + _WHY_ZH.get(why, why))

    def _publish_changed(self, changed: set, now: float) -> list:
        out = []
        for inc in sorted(changed, key=lambda i: i.id):
            out += self._publish(inc, now, "final" if inc.status == "resolved" else
                                 "new" if inc.revision == 0 else "update")
        return out

    def _publish(self, inc: Incident, now: float, kind: str) -> list:
        inc.revision += 1
        what = {"new": "incident opened", "final": "incident closed", "escalation": "incident escalated: "
                "not acknowledged by its reporting deadline", "update": "incident updated"}.get(kind, kind)
        log.info(what, incident=inc.id, device=inc.origin.get("dev_id"), kind=inc.kind, revision=inc.revision,
                 grade=inc.level, warning=inc.warning, households=inc.households or None,
                 stage=(inc.escalation or {}).get("stage") if kind == "escalation" else None,
                 overdue_s=(inc.escalation or {}).get("overdue_s") if kind == "escalation" else None,
                 city=inc.routed_city or None)
        return self._messages(inc, now, kind)

    def _messages(self, inc: Incident, now: float, kind: str) -> list:
        payload = R.message(self.cfg, inc, now, kind)
        out = [(district_topic(self.cfg, inc.id), payload)]
        if inc.routed_city:
            out.append((city_topic(self.cfg, inc.id), payload))
        return out

    def _hms(self, t: float) -> str:
        return G.local_time(self.cfg, t).strftime("%H:%M:%S")


class _OpenIndex:
    """Open incidents in opening order, by kind, leak members by device, and leak members by latitude band
    (bands one cluster radius tall: a member within the radius is at most one band away, since the
    great-circle distance is never below the north-south one)."""

    BAND_M = 111_195.0           # metres per degree of latitude

    def __init__(self, incidents, radius_m: float):
        self.band = max(radius_m, 1.0) / self.BAND_M     # degrees of latitude per band
        self.open: list[Incident] = []
        self.pos: dict[str, int] = {}
        self.by_kind: dict[str, list[Incident]] = {}
        self.leak: dict[int, Incident] = {}
        self.bands: dict[int, list[tuple[Incident, dict]]] = {}
        for inc in incidents:
            if inc.status == "open":
                self.add(inc)

    def add(self, inc: Incident) -> None:
        self.pos[inc.id] = len(self.open)
        self.open.append(inc)
        self.by_kind.setdefault(inc.kind, []).append(inc)
        if inc.kind == "leak":
            for did, m in inc.members.items():
                self.member(inc, did, m)

    def member(self, inc: Incident, did: int, m: dict) -> None:
        self.leak.setdefault(did, inc)
        lat = m["device"].get("lat")
        if lat is not None and m["device"].get("lon") is not None:
            self.bands.setdefault(int(lat // self.band), []).append((inc, m))

    def near(self, lat: float):
        k = int(lat // self.band)
        for b in (k - 1, k, k + 1):
            yield from self.bands.get(b, ())


_WHY_ZH = {"supply restored at every station": "各调压站均已恢复供气", "gas alarm cleared": "燃气报警解除",
           "gas cleared and valves re-opened": "燃气浓度恢复正常且阀门已重新开启",
           "inlet pressure recovered": "进口压力已恢复", "closed by the command": "指挥部确认结束"}


def _site(dev: dict) -> str:
    return dev.get("site_name") or dev["dev"]


def _lel(v) -> float | None:
    v = gas_percent_lel(v)
    return None if v is None else round(v, 1)
