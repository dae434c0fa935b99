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


def _station_trip(district, gate):  # noqa: F811
    """A grader checking acts with `gate`, and the incident of a station's trip: (grader, store, fence, id)."""
    g, store, fence = _grader(district)
    g.acts = GateActs(gate)
    g.handle([_alarm("gw1", 0xA001, 1, T0, UPSO, TRIP_STATE)], T0, fence)
    return g, store, fence, store.list_incidents()[0]["incident_id"]


def _records(audit_dir):
    return [(r["type"], r["outcome"], r["source"].get("operator") or r["source"].get("claimed_operator"))
            for r in A.show(audit_dir, category="incident")]


def test_signed_acts_applied_unsigned_and_replayed_refused_all_audited(district, authority):  # noqa: F811
    gate, keys, audit_dir = authority
    g, store, fence, iid = _station_trip(district, gate)
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
    g, store, fence, iid = _station_trip(district, gate)
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
    g, store, fence, iid = _station_trip(district, gate)
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


def _submit_and_grade(g, store, fence, kind, iid, raw, t):
    import json
    rid = store.submit(kind, iid, json.loads(raw), source="web")
    g.handle([(f"gasguard/v1/{D}/command/{r['kind']}/{r['incident_id']}", r["payload"], r["seq"])
              for r in store.pending_requests()], t, fence)
    return store.request(rid)["outcome"]


def test_shelving_is_a_signed_act_held_in_the_store_ended_by_expiry_and_upgrade_all_audited(district, authority):  # noqa: F811
    """ISA-18.2 shelving at the command service: the console signs for the operator, the leader checks the
    `shelve` role, keeps the shelf in its store (a new leader holds it too), and records every act and end:
    in its shelf log, the incident's journal and the authority's audit log."""
    from gasguard.command.grader import DistrictGrader
    gate, keys, audit_dir = authority
    g, store, fence, iid = _station_trip(district, gate)
    topic = f"gasguard/v1/{D}/command/shelve/{iid}"

    def signed(body, **kw):
        return sign_request(keys["web"], "web", topic, body, on_behalf_of=kw.get("op", "op"), client_id="sess-1",
                            address="10.0.0.7")
    # the console's own key, for nobody: a console may not act for itself
    assert "refused" in _submit_and_grade(g, store, fence, "shelve", iid, sign_request(
        keys["web"], "web", topic, {"reason": "crew on site", "duration_s": 1800}), T0 + 10)
    assert _submit_and_grade(g, store, fence, "shelve", iid, signed({"reason": " ", "duration_s": 1800}),
                             T0 + 11).startswith("refused: write why")
    assert _submit_and_grade(g, store, fence, "shelve", iid, signed({"reason": "crew on site", "duration_s": 1800}),
                             T0 + 12) == "accepted"
    assert store.shelves() == {iid: {"by": "op", "reason": "crew on site", "at": T0 + 12, "until": T0 + 1812,
                                     "revision": 1, "grade": [3, 4]}}
    # a new leader (a restart, a take-over) holds the same shelf, and ends it at its expiry
    g2 = DistrictGrader(g.cfg, store, devices=g.devices, downstream=g.engine.downstream, acts=GateActs(gate))
    g2.load()
    assert g2.shelves.items() == store.shelves()
    g2.tick(T0 + 1811, fence)
    assert iid in store.shelves()
    g2.tick(T0 + 1812, fence)
    assert store.shelves() == {}
    # shelved again, then the station's network falls to a higher grade: the shelf ends at once
    assert _submit_and_grade(g2, store, fence, "shelve", iid, signed({"reason": "crew on site", "duration_s": 3600}),
                             T0 + 1900) == "accepted"
    assert _submit_and_grade(g2, store, fence, "shelve", iid, signed({"unshelve": True}), T0 + 1901) == "accepted"
    assert _submit_and_grade(g2, store, fence, "shelve", iid, signed({"unshelve": True}), T0 + 1902) == \
        "refused: not shelved"
    assert _submit_and_grade(g2, store, fence, "shelve", iid, signed({"reason": "crew on site", "duration_s": 3600}),
                             T0 + 1903) == "accepted"
    g2.handle([_alarm("gw1", 0xA002, 1, T0 + 1950, UPSO, TRIP_STATE)], T0 + 1950, fence)   # 12,000 households
    assert store.list_incidents()[0]["level"] == 3 and store.shelves() == {}

    log = [(r["action"], r["who"], r["outcome"].split(":")[0]) for r in store.shelf_log(iid)]
    assert log == [("shelve", "web", "refused"), ("shelve", "op", "refused"), ("shelve", "op", "accepted"),
                   ("expired", "command", "ended"), ("shelve", "op", "accepted"), ("unshelve", "op", "accepted"),
                   ("unshelve", "op", "refused"), ("shelve", "op", "accepted"), ("upgraded", "command", "ended")]
    journal = [j["text"] for j in store.journal(incident_id=iid) if j["category"] == "shelve"]
    assert any(t.startswith("shelved by op until ") and t.endswith("crew on site") for t in journal)
    assert "shelf by op expired" in journal and "unshelved by op" in journal
    assert any("upgraded" in t for t in journal)
    recs = [(r["type"], r["outcome"], r["source"].get("operator"), r["source"].get("console"))
            for r in A.show(audit_dir, category="incident")]
    assert ("shelve", "allowed", "op", "web") in recs and ("shelve", "done", "op", "web") in recs
    assert ("shelve", "refused", "web", None) in recs
    assert [r[0] for r in recs if r[0].startswith("shelve_")] == ["shelve_expired", "shelve_upgraded"]
    assert A.verify(audit_dir)["ok"]
    store.close()


def test_the_shelves_held_are_published_retained_after_each_change_a_take_over_and_a_sync(district, authority):  # noqa: F811
    """What `gasguard command watch` shows of shelves is the store's, published by the leader on
    `command/shelves` (retained) after the transaction that changed them, again on a console's sync and by a
    new leader; ordered by the store's shelf_log sequence, so a console keeps the newest."""
    import hashlib
    import json

    from gasguard.command.console import IncidentBoard
    from gasguard.command.grader import DistrictGrader
    gate, keys, _ = authority
    g, store, fence, iid = _station_trip(district, gate)
    topic = f"gasguard/v1/{D}/command/shelve/{iid}"

    def shelves(out):
        return [(p, retain) for t, p, retain in out.direct if t == f"gasguard/v1/{D}/command/shelves"]
    raw = sign_request(keys["op"], "op", topic, {"reason": "crew on site", "duration_s": 1800})
    out = g.handle([(topic, json.loads(raw), None, raw)], T0 + 12, fence)    # as the service hands an MQTT act over
    [(msg, retain)] = shelves(out)
    assert retain and msg["shelves"] == store.shelves() and iid in msg["shelves"]
    assert msg["seq"] == store.shelf_seq() and msg["schema"] == "gasguard.command-shelves/1"
    [answer] = [p for t, p, _ in out.direct if "/command/result/" in t]   # what the watch waits for, by hash
    assert answer["outcome"] == "allowed" and answer["request_sha256"] == hashlib.sha256(raw).hexdigest()
    refused = g.handle([(topic, {"by": "mallory", "reason": "mine now", "duration_s": 60})], T0 + 13, fence)
    assert shelves(refused) == []                                            # nothing changed: nothing published
    assert shelves(g.tick(T0 + 100, fence)) == []
    [(ended, _)] = shelves(g.tick(T0 + 1812, fence))                         # the expiry: published without it
    assert ended["shelves"] == {} == store.shelves() and ended["seq"] == store.shelf_seq() > msg["seq"]
    [(synced, _)] = shelves(g.handle([(f"gasguard/v1/{D}/command/sync", {})], T0 + 1813, fence))
    assert synced["shelves"] == {} and synced["seq"] == ended["seq"]
    g2 = DistrictGrader(g.cfg, store, devices=g.devices, downstream=g.engine.downstream, acts=GateActs(gate))
    g2.load()
    [(again, _)] = shelves(g2.tick(T0 + 1814, fence))                        # a new leader's first pass
    assert again["seq"] == ended["seq"]
    board = IncidentBoard()
    assert board.shelves is None                                             # no command service heard yet
    assert board.apply_shelves(ended) and board.shelves == {}
    assert not board.apply_shelves(msg) and board.shelves == {}             # a deposed leader's late snapshot
    store.close()
