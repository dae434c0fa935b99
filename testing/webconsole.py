"""The web console's test kit: a source driven by the real incident engine (the grading library in this
process, no broker: for page, form and screenshot runs), an `Acting` that keeps its audit records in a list
(for tests that do not need the authority's roster and keys), and a test-sized argon2 hasher."""

from __future__ import annotations

import json
import threading

from gasguard.grading.incidents import IncidentEngine
from gasguard.protocol.topics import Topics


class EngineSource:
    """`IncidentSource` over an IncidentEngine in this process: the engine's publications are the feed,
    acknowledgements and input go to the engine as the gateway would hand them over."""

    def __init__(self, clock, stations: list[dict], cfg: dict | None = None):
        def downstream(dev_id):             # as Registry.downstream: every station fed, directly or not
            out, todo = [], [dev_id]
            while todo:
                cur = todo.pop()
                for d in stations:
                    if d.get("upstream") == cur and d not in out:
                        out.append(d)
                        todo.append(d["dev_id"])
            return out
        self.engine = IncidentEngine(cfg or {"district": "lixia", "gateway_id": "sub-017"}, downstream=downstream)
        self.clock = clock
        self.latest: dict[str, dict] = {}
        self.listeners = []
        self.readings_rows: dict[str, list] = {}
        self.valves: dict[str, list] = {}
        self.sent: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()
        self.topics = Topics().command("lixia")

    def _take(self, outs):
        for topic, payload, *_ in outs:
            if "/incident/" not in topic or "/city/" in topic:
                continue
            cur = self.latest.get(payload["incident_id"])
            if cur is None or payload["revision"] > cur["revision"]:
                self.latest[payload["incident_id"]] = payload
                for fn in list(self.listeners):
                    fn(payload)

    def observe(self, obs):
        with self.lock:
            self._take(self.engine.observe(obs))

    def tick(self):
        with self.lock:
            self._take(self.engine.tick(self.clock()))

    # --- IncidentSource ------------------------------------------------------------------------
    def snapshot(self):
        return list(self.latest.values())

    def get(self, iid):
        return self.latest.get(iid)

    def listen(self, fn):
        self.listeners.append(fn)
        return lambda: self.listeners.remove(fn)

    def act_topic(self, kind, iid):
        return getattr(self.topics, kind)(iid)

    def acknowledge(self, iid, request, timeout):
        self.sent.append(("ack", iid, request))
        with self.lock:
            self._take(self.engine.acknowledge(iid, json.loads(request), self.clock()))

    def send_input(self, iid, request, timeout):
        self.sent.append(("input", iid, request))
        with self.lock:
            self._take(self.engine.operator_input(iid, json.loads(request), self.clock()))

    def readings(self, dev, since):
        return [r for r in self.readings_rows.get(dev, []) if r["t"] >= since]

    def valve_history(self, dev, since):
        return [r for r in self.valves.get(dev, []) if r["t"] >= since]


def quick_hasher():
    """argon2id with test-sized cost (the console's default costs ~0.5 s a hash on a loaded CI core)."""
    from argon2 import PasswordHasher
    return PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


class RecordingActing:
    """Operators by id with a role; requests "signed" by naming the operator; audit records kept in a list.
    Stands in for gasguard.authority until it lands; the web layer sees only the `Acting` interface."""

    def __init__(self, operators: dict[str, dict]):
        self.operators = operators
        self.records: list[dict] = []
        self.signed: list[tuple] = []

    def operator(self, operator_id):
        o = self.operators.get(operator_id)
        return None if o is None else {"id": operator_id, "active": True, **o}

    def may(self, operator_id, action):
        o = self.operator(operator_id)
        return bool(o and o["active"] and action in {"operator": {"ack", "input", "resolve", "shelve"},
                                                      "viewer": set()}.get(o["role"], set()))

    def sign(self, operator_id, topic, body, client_id="", address=""):
        self.signed.append((operator_id, topic, body, client_id, address))
        return json.dumps(body, ensure_ascii=False).encode()

    def audit(self, **rec):
        self.records.append(rec)
