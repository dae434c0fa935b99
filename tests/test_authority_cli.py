"""`gasguard authority ...` and `gasguard audit ...`: a district sets up its operators end to end from the
command line (docs/OPERATORS.md), keys encrypted and never printed, and `audit verify` catches an edited
record (exit 1) while `audit show` filters."""

import json
import stat

from gasguard.authority import audit as A

from provisioning_helpers import cli


def _j(*args):
    code, out, err = cli(*args, "--json")
    assert code == 0, out + err
    return json.loads(out)


def test_a_district_sets_up_its_operators_from_the_cli(tmp_path, monkeypatch):
    auth, ro = tmp_path / "authority.pem", tmp_path / "operators.json"
    monkeypatch.setenv("GASGUARD_AUTHORITY", str(auth))
    monkeypatch.setenv("GASGUARD_ROSTER", str(ro))
    monkeypatch.setenv("GASGUARD_AUTHORITY_PASSPHRASE", "authority passphrase")
    cli("device", "authority-init", "--authority", str(auth))
    assert _j("authority", "init", "--district", "lixia")["serial"] == 1
    pw = tmp_path / "wang.pass"
    pw.write_text("wang's passphrase\n")
    k = _j("authority", "key-init", "--out", str(tmp_path / "wang.key"), "--passphrase-file", str(pw))
    assert stat.S_IMODE((tmp_path / "wang.key").stat().st_mode) == 0o600
    assert "BEGIN ENCRYPTED PRIVATE KEY" in (tmp_path / "wang.key").read_text()
    monkeypatch.setenv("GASGUARD_OPERATOR_PASSPHRASE", "li's passphrase")
    li = _j("authority", "key-init", "--out", str(tmp_path / "li.key"))
    _j("authority", "add", "wang.li", "--role", "admin", "--public-key", k["public_file"], "--name", "王力")
    # once there is an admin, a change without the admin's approval is refused (exit 2) and changes nothing
    code, out, err = cli("authority", "add", "li.na", "--role", "engineer", "--public-key", li["public_key"])
    assert code == 2 and "admin's approval" in err
    monkeypatch.delenv("GASGUARD_OPERATOR_PASSPHRASE")
    code, out, err = cli("authority", "add", "li.na", "--role", "engineer", "--public-key", li["public_key"],
                         "--as", "wang.li", "--key", str(tmp_path / "wang.key"))
    assert code == 2 and "GASGUARD_OPERATOR_PASSPHRASE" in err     # no passphrase, no prompt without a terminal
    added = _j("authority", "add", "li.na", "--role", "engineer", "--public-key", li["public_key"],
               "--as", "wang.li", "--key", str(tmp_path / "wang.key"), "--passphrase-file", str(pw))
    assert added["operator"]["added_by"] == "wang.li"
    _j("authority", "revoke", "li.na", "--reason", "lost laptop", "--as", "wang.li", "--key",
       str(tmp_path / "wang.key"), "--passphrase-file", str(pw))
    listed = _j("authority", "list")
    assert [o["id"] for o in listed["operators"]] == ["wang.li"] and listed["serial"] == 4
    everyone = _j("authority", "list", "--all")["operators"]
    assert [(o["id"], o["revoke_reason"]) for o in everyone] == [("li.na", "lost laptop"), ("wang.li", "")]
    code, out, err = cli("authority", "list")
    assert "wang.li" in out and "admin" in out and "PRIVATE" not in out + err


def test_audit_verify_catches_an_edited_record_and_show_filters(tmp_path):
    d = tmp_path / "audit"
    log = A.AuditLog(d, recorder="gw-1")
    log.record(category="command", type="reset", outcome="refused", source={"operator": "zhao"}, reason="wrong_role")
    log.record(category="command", type="reset", outcome="allowed", source={"operator": "li.na"})
    log.record(category="incident", type="ack", outcome="allowed", source={"operator": "zhao"})
    assert _j("audit", "verify", str(d))["ok"]
    shown = _j("audit", "show", str(d), "--operator", "zhao", "--category", "command")
    assert [(r["type"], r["outcome"]) for r in shown] == [("reset", "refused")]
    code, out, _ = cli("audit", "show", str(d), "--outcome", "allowed")
    assert out.count("\n") == 2 and "li.na" in out
    seg = d / "audit-000001.jsonl"
    seg.write_text(seg.read_text().replace('"outcome":"refused"', '"outcome":"allowed"'))   # someone covers a refusal
    code, out, err = cli("audit", "verify", str(d))
    assert code == 1 and "EDITED" in out and "seq 1" in out
