"""The web console's test kit: a source driven by the real incident engine (the grading library in this
process, no broker: for page, form and screenshot runs) that can check signed acts through a real authority
`Gate`; a district authority made for a test (`Authority`: signed roster, console key, audit log); an `Acting`
that keeps its audit records in a list (for tests that do not need the authority); a test-sized argon2."""

from __future__ import annotations

import json
import threading

from gasguard.grading.incidents import IncidentEngine
from gasguard.protocol.topics import Topics


class EngineSource:
    """`IncidentSource` over an IncidentEngine in this process: the engine's publications are the feed,
    acknowledgements and input go to the engine as the gateway would hand them over."""

    def __init__(self, clock, stations: list[dict], cfg: dict | None = None, gate=None):
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
        # the command service's gateway messages a test hands the board (none: no command service here)
        self.gateway_states: list[dict] = []
        self.lock = threading.Lock()
        self.topics = Topics().command("lixia")
        self.gate = gate                    # an authority Gate: acts are verified as the command service does
        from gasguard.command.web.source import LocalShelves
        self.local_shelves = LocalShelves(clock=clock)

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

    def gateways(self):
        return list(self.gateway_states)

    def _checked(self, kind, iid, request):
        """The act's body, with `by` the verified operator when a Gate checks it (Refused otherwise)."""
        if self.gate is None:
            return json.loads(request)
        from gasguard.authority import Refused as AuthRefused
        from gasguard.command.web.source import Refused
        action = (lambda b: "resolve" if b.get("resolved") else "input") if kind == "input" else kind
        topic = self.act_topic(kind, iid)
        try:
            v = self.gate.check(topic, request, action=action, category="incident")
        except AuthRefused as r:
            raise Refused(f"{r.reason}: {r}") from None
        return {**v.body, "by": v.operator.id}

    def acknowledge(self, iid, request, timeout):
        self.sent.append(("ack", iid, request))
        body = self._checked("ack", iid, request)
        with self.lock:
            self._take(self.engine.acknowledge(iid, body, self.clock()))
        return "accepted"

    def send_input(self, iid, request, timeout):
        self.sent.append(("input", iid, request))
        body = self._checked("input", iid, request)
        with self.lock:
            self._take(self.engine.operator_input(iid, body, self.clock()))
        return "accepted"

    def shelve(self, iid, request, body, timeout):
        self.sent.append(("shelve", iid, request))
        body = self._checked("shelve", iid, request)
        out = self.local_shelves.apply(self.get(iid), iid, body)
        for fn in list(self.listeners):
            fn(None)
        return out

    def shelves(self):
        return self.local_shelves.current()

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


class Authority:
    """A district authority made for one test: its key, a signed roster with the given people and one web
    console (role `console`, relaying operator and engineer), the console's key, an audit log, a Gate."""

    def __init__(self, directory, district: str, people: dict[str, tuple[str, str]],
                 console_id: str = "web-console-1"):
        from pathlib import Path

        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from gasguard.authority import AuditLog
        from gasguard.authority import roster as RO
        from gasguard.authority.secretfile import public_hex
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = Ed25519PrivateKey.generate()
        self.roster = self.dir / "operators.json"
        self.district, self.console_id = district, console_id
        RO.init(self.roster, self.key, district)
        self.console_key = Ed25519PrivateKey.generate()
        RO.add(self.roster, self.key, console_id, "console", public_hex(self.console_key.public_key()),
               name="web console")
        self.keys = {}
        self.approver = None              # once an admin is in, every change needs an admin's approval
        for pid, (role, name) in sorted(people.items(), key=lambda kv: kv[1][0] == "admin"):
            k = self.keys[pid] = Ed25519PrivateKey.generate()
            RO.add(self.roster, self.key, pid, role, public_hex(k.public_key()), name=name, approver=self.approver)
            if role == "admin" and self.approver is None:
                self.approver = (pid, k)
        self.trust = self.dir / "authority.pub"           # what the command service and gateways trust
        self.trust.write_text(public_hex(self.key.public_key()) + "\n")
        self.console_audit = AuditLog(self.dir / "audit-console", recorder=console_id)
        self.command_audit = AuditLog(self.dir / "audit-command", recorder="command")

    def acting(self, **kw):
        from gasguard.command.web.acting import AuthorityActing
        return AuthorityActing(self.roster, self.key.public_key(), self.console_id, self.console_key,
                               self.console_audit, **kw)

    def gate(self):
        """Where acts are checked (the command's side), with its own audit log and replay store."""
        from gasguard.authority import Gate
        return Gate(self.roster, self.key.public_key(), self.dir / "replay.db", self.command_audit,
                    district=self.district)

    def command_table(self) -> dict:
        """The command service's [authority] table (command/acts.py) for this authority."""
        return {"roster": str(self.roster), "trust": str(self.trust), "replay": str(self.dir / "command-replay.db"),
                "audit": str(self.dir / "audit-command")}

    def revoke(self, pid: str) -> None:
        from gasguard.authority import roster as RO
        RO.revoke(self.roster, self.key, pid, reason="test", approver=self.approver)

    def records(self, which: str = "console") -> list[dict]:
        from gasguard.authority import audit
        return [rec for _, _, rec, _ in audit.read(self.dir / f"audit-{which}") if rec]
