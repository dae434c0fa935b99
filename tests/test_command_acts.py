"""Operators' acts at the command service (issue 15 with issue 14's authority), on both stores: a signed
acknowledgement is applied and audited; an unsigned or forged one is refused and audited; a replay is refused;
an act whose first delivery died between the authority's replay record and the command's commit is applied
once when the broker delivers it again; the web console signs on behalf of a logged-in operator."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gasguard.authority import AuditLog, Gate, sign_request
from gasguard.authority import audit as A
from gasguard.authority import roster as RO
from gasguard.authority import secretfile as S
from gasguard.command.acts import GateActs
from test_command_grading import D, TRIP_STATE, UPSO, _alarm, _grader, district  # noqa: F401  (fixture)
from grading_helpers import T0


@pytest.fixture
def authority(tmp_path):
    auth = Ed25519PrivateKey.generate()
    path = tmp_path / "operators.json"
    RO.init(path, auth, D)
    keys = {n: Ed25519PrivateKey.generate() for n in ("root", "op", "web")}
    RO.add(path, auth, "root", "admin", S.public_hex(keys["root"].public_key()))
    ap = ("root", keys["root"])
    RO.add(path, auth, "op", "operator", S.public_hex(keys["op"].public_key()), approver=ap)
    RO.add(path, auth, "web", "console", S.public_hex(keys["web"].public_key()), relays=["operator"], approver=ap)
    gate = Gate(path, auth.public_key(), tmp_path / "replay.db", AuditLog(tmp_path / "audit", recorder="cmd"),
                district=D)
    return gate, keys, tmp_path / "audit"


def _records(audit_dir):
    return [(r["type"], r["outcome"], r["source"].get("operator") or r["source"].get("claimed_operator"))
            for r in A.show(audit_dir, category="incident")]


def test_signed_acts_applied_unsigned_and_replayed_refused_all_audited(district, authority):  # noqa: F811
    gate, keys, audit_dir = authority
    g, store, fence = _grader(district)
    g.acts = GateActs(gate)
    g.handle([_alarm("gw1", 0xA001, 1, T0, UPSO, TRIP_STATE)], T0, fence)
    iid = store.list_incidents()[0]["incident_id"]
    topic = f"gasguard/v1/{D}/command/ack/{iid}"
    import json
    signed = json.loads(sign_request(keys["op"], "op", topic, {"revision": 1}))
    g.handle([(topic, {"by": "mallory", "revision": 1}),          # unsigned: refused
              (topic, signed), (topic, signed)], T0 + 60, fence)  # signed: applied; the same again: a replay
    acks = store.get_incident(iid)["acks"]
    assert [(a["who"], a["outcome"].split(":")[0]) for a in acks] == [("?", "refused"), ("op", "accepted"),
                                                                       ("op", "refused")]
    assert "replayed" in acks[2]["outcome"] and "unsigned" in acks[0]["outcome"]
    assert store.list_incidents()[0]["acked"]["by"] == "op"
    assert _records(audit_dir) == [("ack", "refused", None), ("ack", "allowed", "op"), ("ack", "done", "op"),
                                   ("ack", "refused", "op")]
    store.close()


def test_an_act_cut_off_by_a_crash_is_applied_once_when_delivered_again(district, authority):  # noqa: F811
    gate, keys, _ = authority
    g, store, fence = _grader(district)
    g.acts = GateActs(gate)
    g.handle([_alarm("gw1", 0xA001, 1, T0, UPSO, TRIP_STATE)], T0, fence)
    iid = store.list_incidents()[0]["incident_id"]
    topic = f"gasguard/v1/{D}/command/input/{iid}"
    raw = sign_request(keys["op"], "op", topic, {"evacuated": 1200})
    gate.check(topic, raw, action="input", category="incident")   # first delivery: the Gate saw it, then SIGKILL
    import json
    g.handle([(topic, json.loads(raw))], T0 + 60, fence)           # the broker delivers it again
    got = store.get_incident(iid)
    assert [(i["who"], i["outcome"]) for i in got["inputs"]] == [("op", "accepted")]
    assert got["incident"]["level"] == 3                            # 1,200 evacuated: level III (plan 1.6.2)
    g.handle([(topic, json.loads(raw))], T0 + 61, fence)           # and a third time: now it is a replay
    assert "replayed" in store.get_incident(iid)["inputs"][-1]["outcome"]
    store.close()


def test_the_web_console_signs_for_an_operator_through_the_store(district, authority):  # noqa: F811
    gate, keys, audit_dir = authority
    g, store, fence = _grader(district)
    g.acts = GateActs(gate)
    g.handle([_alarm("gw1", 0xA001, 1, T0, UPSO, TRIP_STATE)], T0, fence)
    iid = store.list_incidents()[0]["incident_id"]
    import json
    topic = f"gasguard/v1/{D}/command/ack/{iid}"
    rid = store.submit("ack", iid, json.loads(sign_request(keys["web"], "web", topic, {"revision": 1},
                                                           on_behalf_of="op", client_id="sess-9",
                                                           address="10.0.0.7")), source="web")
    reqs = [(f"gasguard/v1/{D}/command/{r['kind']}/{r['incident_id']}", r["payload"], r["seq"])
            for r in store.pending_requests()]
    g.handle(reqs, T0 + 30, fence)
    assert store.request(rid)["outcome"] == "accepted"
    ack = store.get_incident(iid)["acks"][0]
    assert ack["who"] == "op" and ack["request"]["console"] == "web"
    rec = [r for r in A.show(audit_dir, category="incident") if r["outcome"] == "allowed"][0]
    assert rec["source"]["console"] == "web" and rec["source"]["address"] == "10.0.0.7"
    store.close()
