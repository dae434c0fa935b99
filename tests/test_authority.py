"""The authority library on its own (issue 14): roster signed by the district authority with admin approvals,
signed requests refused for every reason they must be (unsigned, forged, wrong role, revoked, stale, replayed
- also after a restart), the web console's on-behalf-of signatures, passphrase-protected keys, and the audit
log's chain catching edited, removed and reordered records across rotation."""

import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gasguard.authority import audit as A
from gasguard.authority import roster as RO
from gasguard.authority import secretfile as S
from gasguard.authority.envelope import sign_request, verify_request
from gasguard.authority.errors import AuditFull, BadInput, Refused
from gasguard.authority.gate import Gate
from gasguard.authority.replay import ReplayGuard

T = 1_800_000_000.0
TOPIC = "gasguard/v1/lixia/gw-1/00c0ffee/cmd"


def _pub(k):
    return S.public_hex(k.public_key())


@pytest.fixture
def district(tmp_path):
    """An authority, a roster with an admin, an engineer, an operator and a web console."""
    auth = Ed25519PrivateKey.generate()
    path = tmp_path / "operators.json"
    RO.init(path, auth, "lixia")
    keys = {n: Ed25519PrivateKey.generate() for n in ("root", "eng", "op", "web")}
    RO.add(path, auth, "root", "admin", _pub(keys["root"]), name="Admin")           # bootstrap: no admin yet
    ap = ("root", keys["root"])
    RO.add(path, auth, "eng", "engineer", _pub(keys["eng"]), approver=ap)
    RO.add(path, auth, "op", "operator", _pub(keys["op"]), approver=ap)
    RO.add(path, auth, "web", "console", _pub(keys["web"]), relays=["operator"], approver=ap)
    return auth, path, keys


def _verify(roster, raw, replay, action="reset", topic=TOPIC, now=T):
    return verify_request(raw, topic, roster=roster, action=action, replay=replay, now=now, district="lixia")


def test_roster_changes_need_an_admin_and_are_signed(district, tmp_path):
    auth, path, keys = district
    ro = RO.load(path, auth.public_key())
    assert {p.id: p.role for p in ro.principals.values()} == {"root": "admin", "eng": "engineer", "op": "operator",
                                                                "web": "console"}
    assert [c["by"] for c in ro.changes] == ["root"] * 3 and ro.get("eng").added_by == "root"
    with pytest.raises(BadInput, match="admin's approval"):
        RO.add(path, auth, "x", "operator", _pub(Ed25519PrivateKey.generate()))
    with pytest.raises(BadInput, match="not an active admin"):          # an engineer cannot manage operators
        RO.add(path, auth, "x", "operator", _pub(Ed25519PrivateKey.generate()), approver=("eng", keys["eng"]))
    with pytest.raises(BadInput, match="not root's key"):
        RO.add(path, auth, "x", "operator", _pub(Ed25519PrivateKey.generate()), approver=("root", keys["eng"]))
    # a changed roster, or one from another authority, is refused
    doc = json.loads(path.read_text())
    body = json.loads(__import__("base64").b64decode(doc["payload"]))
    body["principals"][1]["role"] = "admin"           # op (sorted by id) promotes itself
    doc["payload"] = __import__("base64").b64encode(json.dumps(body).encode()).decode()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(BadInput, match="signature does not verify"):
        RO.load(bad, auth.public_key())
    with pytest.raises(BadInput, match="signed by authority"):
        RO.load(path, Ed25519PrivateKey.generate().public_key())


def test_signed_requests_and_every_refusal(district, tmp_path):
    auth, path, keys = district
    ro = RO.load(path, auth.public_key())
    rg = ReplayGuard(tmp_path / "replay.db")
    body = {"request_id": "r1", "cmd": "reset"}
    ok = sign_request(keys["eng"], "eng", TOPIC, body, now=T)
    v = _verify(ro, ok, rg)
    assert (v.operator.id, v.action, v.body) == ("eng", "reset", body)

    def refused(raw, **kw):
        with pytest.raises(Refused) as e:
            _verify(ro, raw, rg, **kw)
        return e.value.reason

    assert refused(json.dumps(body).encode()) == "unsigned"
    assert refused(ok) == "replayed"
    assert refused(sign_request(keys["op"], "op", TOPIC, body, now=T)) == "wrong_role"
    assert refused(sign_request(keys["op"], "eng", TOPIC, body, now=T)) == "bad_signature"     # forged name
    assert refused(sign_request(keys["eng"], "eng", TOPIC, body, now=T - 121)) == "stale"
    assert refused(sign_request(keys["eng"], "eng", TOPIC, body, now=T + 31)) == "future"
    assert refused(sign_request(keys["eng"], "nobody", TOPIC, body, now=T)) == "unknown_signer"
    moved = sign_request(keys["eng"], "eng", TOPIC.replace("00c0ffee", "00c0ffef"), body, now=T)
    assert refused(moved) == "topic_mismatch"
    doc = json.loads(sign_request(keys["eng"], "eng", TOPIC, body, now=T))
    doc["body"] = doc["body"].replace("reset", "status")
    assert refused(json.dumps(doc).encode()) == "bad_signature"
    # the operator may do what operators do
    assert _verify(ro, sign_request(keys["op"], "op", TOPIC, {"revision": 1}, now=T), rg, action="ack")
    # revocation takes effect with the next roster
    RO.revoke(path, auth, "eng", reason="left the company", approver=("root", keys["root"]))
    ro2 = RO.load(path, auth.public_key())
    assert ro2.serial == ro.serial + 1 and ro2.get("eng").revoked_by == "root"
    with pytest.raises(Refused) as e:
        _verify(ro2, sign_request(keys["eng"], "eng", TOPIC, body, now=T), rg)
    assert e.value.reason == "revoked"


def test_replay_is_refused_after_a_restart(district, tmp_path):
    auth, path, keys = district
    ro = RO.load(path, auth.public_key())
    raw = sign_request(keys["eng"], "eng", TOPIC, {"cmd": "reset", "request_id": "x"}, now=T)
    rg = ReplayGuard(tmp_path / "replay.db")
    _verify(ro, raw, rg)
    rg.close()
    rg = ReplayGuard(tmp_path / "replay.db")           # a restarted gateway
    with pytest.raises(Refused, match="already used"):
        _verify(ro, raw, rg, now=T + 60)
    assert stat.S_IMODE(os.stat(tmp_path / "replay.db").st_mode) == 0o600
    # pruning forgets only what freshness refuses anyway
    assert rg.prune(T + 200) == 1
    with pytest.raises(Refused) as e:
        _verify(ro, raw, rg, now=T + 200)
    assert e.value.reason == "stale"


def test_console_signs_on_behalf_of_an_operator(district, tmp_path):
    auth, path, keys = district
    ro = RO.load(path, auth.public_key())
    rg = ReplayGuard(tmp_path / "replay.db")
    ack_topic = "gasguard/v1/lixia/command/ack/L-1"
    raw = sign_request(keys["web"], "web", ack_topic, {"revision": 3}, on_behalf_of="op", now=T,
                       client_id="sess-1", address="10.0.0.7")
    v = _verify(ro, raw, rg, action="ack", topic=ack_topic)
    assert v.source() == {"operator": "op", "role": "operator", "client_id": "sess-1", "address": "10.0.0.7",
                          "console": "web"}
    reasons = []
    for signer, key, who, act in (("web", keys["web"], "eng", "reset"),    # console does not relay engineers
                                  ("op", keys["op"], "eng", "reset"),      # a person cannot sign for another
                                  ("web", keys["web"], "web", "ack")):     # a console alone is nobody
        with pytest.raises(Refused) as e:
            _verify(ro, sign_request(key, signer, TOPIC, {}, on_behalf_of=who, now=T), rg, action=act)
        reasons.append(e.value.reason)
    assert reasons == ["wrong_role", "not_a_console", "wrong_role"]


def test_operator_keys_are_passphrase_protected(tmp_path):
    p = tmp_path / "keys" / "wang.key"
    pub = S.new_key(p, b"correct horse")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and b"ENCRYPTED" in p.read_bytes()
    assert S.public_hex(S.load_private_key(p, b"correct horse").public_key()) == pub
    assert (tmp_path / "keys" / "wang.pub").read_text().strip() == pub
    with pytest.raises(BadInput, match="wrong passphrase"):
        S.load_private_key(p, b"wrong")
    with pytest.raises(BadInput, match="is encrypted"):
        S.load_private_key(p, None)
    p.chmod(0o644)
    with pytest.raises(Exception, match="readable by others"):
        S.load_private_key(p, b"correct horse")
    sealed = S.seal(b"device keys", b"pw")
    assert b"device keys" not in sealed and S.is_sealed(sealed) and S.unseal(sealed, b"pw") == b"device keys"
    with pytest.raises(BadInput, match="wrong passphrase"):
        S.unseal(sealed, b"nope")


def _lines(path):
    return path.read_text().splitlines(keepends=True)


def test_audit_chain_catches_edits_removals_and_reorders(tmp_path):
    d = tmp_path / "audit"
    log = A.AuditLog(d, recorder="gw-1", segment_bytes=2000, capacity_bytes=1_000_000, clock=lambda: T)
    for i in range(20):
        log.record(category="command", type="reset", outcome="allowed" if i % 2 else "refused",
                   source={"operator": f"op{i % 3}"}, reason="" if i % 2 else "wrong_role: x")
    rep = A.verify(d)
    assert rep["ok"], rep["problems"]
    assert len(rep["segments"]) > 2                         # rotated ...
    assert rep["records"] == 20 + len(rep["segments"]) - 1  # ... one `rotated` record per new segment
    assert stat.S_IMODE(os.stat(d / rep["segments"][0]).st_mode) == 0o600
    assert [r["source"]["operator"] for r in A.show(d, operator="op1", outcome="refused")] == ["op1"] * 3

    seg = d / rep["segments"][1]
    orig = seg.read_text()
    lines = _lines(seg)
    rec = json.loads(lines[2])
    rec["outcome"] = "allowed"                              # edited in place
    seg.write_text("".join(lines[:2] + [json.dumps(rec) + "\n"] + lines[3:]))
    assert [p["problem"] for p in A.verify(d)["problems"]] == ["edited"]
    rec["hash"] = A.record_hash(rec)                        # edited and re-hashed: the next record's prev breaks
    seg.write_text("".join(lines[:2] + [json.dumps(rec) + "\n"] + lines[3:]))
    assert [p["problem"] for p in A.verify(d)["problems"]] == ["chain"]
    seg.write_text("".join(lines[:2] + lines[3:]))           # removed
    assert [p["problem"] for p in A.verify(d)["problems"]] == ["removed"]
    seg.write_text("".join(lines[:2] + [lines[3], lines[2]] + lines[4:]))   # reordered
    probs = {p["problem"] for p in A.verify(d)["problems"]}
    assert "reordered" in probs
    seg.write_text(orig)
    head = A.verify(d)["head"]
    last = d / rep["segments"][-1]
    last.write_text("".join(_lines(last)[:-1]))              # the newest record cut off: only the head shows it
    assert A.verify(d)["ok"]
    assert [p["problem"] for p in A.verify(d, head=f"{head['seq']}:{head['hash']}")["problems"]] == ["head_missing"]


def test_audit_survives_a_torn_write_and_warns_before_it_fills(tmp_path):
    d = tmp_path / "audit"
    warnings = []
    log = A.AuditLog(d, segment_bytes=4000, capacity_bytes=8000, warn_fraction=0.5,
                     on_warning=lambda msg, u: warnings.append(u["fraction"]))
    log.record(category="config", type="reload", outcome="done")
    with open(d / "audit-000001.jsonl", "ab") as f:
        f.write(b'{"seq": 2, "half a rec')                   # power lost mid-write
    log.record(category="config", type="reload", outcome="done")
    recs = A.show(d)
    assert [r["type"] for r in recs] == ["reload", "torn_tail_removed", "reload"] and A.verify(d)["ok"]
    with pytest.raises(AuditFull, match="archive old segments"):
        for _ in range(100):
            log.record(category="command", type="ack", outcome="allowed", detail={"pad": "x" * 200})
    assert warnings and warnings[0] >= 0.5
    assert any(r["type"] == "capacity_warning" for r in A.show(d)) and A.verify(d)["ok"]


def test_gate_records_allowed_and_refused_and_takes_up_new_rosters(district, tmp_path):
    auth, path, keys = district
    audit = A.AuditLog(tmp_path / "audit")
    now = [T]
    gate = Gate(path, auth.public_key(), tmp_path / "replay.db", audit, district="lixia",
                wall_clock=lambda: now[0])
    gate.check(TOPIC, sign_request(keys["eng"], "eng", TOPIC, {"cmd": "reset"}, now=T), action="reset",
               category="command")
    with pytest.raises(Refused):
        gate.check(TOPIC, sign_request(keys["op"], "op", TOPIC, {"cmd": "reset"}, now=T), action="reset",
                   category="command")
    RO.revoke(path, auth, "op", reason="test", approver=("root", keys["root"]))
    assert gate.reload()
    old = path.read_bytes()
    RO.revoke(path, auth, "eng", approver=("root", keys["root"]))
    assert gate.reload()
    path.write_bytes(old)                                    # an older roster would un-revoke eng
    assert not gate.reload() and not gate.roster.get("eng").active
    recs = A.show(tmp_path / "audit")
    assert [(r["type"], r["outcome"]) for r in recs] == [
        ("roster_loaded", "done"), ("reset", "allowed"), ("reset", "refused"), ("operators_changed", "done"),
        ("operators_changed", "done"), ("roster_refused", "refused")]
    assert recs[2]["source"] == {"operator": "op", "signer": "op"} and recs[2]["reason"].startswith("wrong_role")
    assert recs[3]["detail"]["changes"] == [{"change": "revoked", "id": "op", "role": "operator", "by": "root",
                                             "reason": "test"}]
    assert gate.counts == {"wrong_role": 1}


def test_a_flood_of_refusals_is_summarised_not_recorded_one_by_one(district, tmp_path):
    auth, path, keys = district
    now = [T]
    gate = Gate(path, auth.public_key(), tmp_path / "replay.db", A.AuditLog(tmp_path / "audit"), district="lixia",
                wall_clock=lambda: now[0], refusal_burst=3, refusal_window_s=60)
    for i in range(50):                                      # someone on the broker publishing garbage
        with pytest.raises(Refused):
            gate.check(TOPIC, b'{"cmd": "reset"}', action="reset", category="command")
    with pytest.raises(Refused):                             # another reason has its own allowance
        gate.check(TOPIC, sign_request(keys["op"], "op", TOPIC, {"cmd": "reset"}, now=T), action="reset",
                   category="command")
    now[0] += 61
    gate.tick()
    recs = [(r["type"], r["outcome"]) for r in A.show(tmp_path / "audit")]
    assert recs.count(("reset", "refused")) == 4             # 3 unsigned + 1 wrong role, one by one
    summary = A.show(tmp_path / "audit", type="refusals_summarised")
    assert [s["detail"]["suppressed"] for s in summary] == [{"unsigned": 47}]
    assert gate.counts == {"unsigned": 50, "wrong_role": 1}   # every refusal still counted
