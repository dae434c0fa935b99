"""Only signed requests from authorised operators change the world (issue 14), with the real gateway daemon
behind the real mosquitto running the generated password + ACL configuration:

- an anonymous client is refused by the broker; an operator's login cannot publish node commands there;
- at the gateway, unsigned, wrong-role, revoked, stale and replayed acknowledgements, operator input and node
  commands change nothing (no downlink, the incident stays unacknowledged and ungraded), each answered with
  its reason, counted, and on the audit record; replay protection survives a gateway restart;
- signed requests of the right role act, and the incident records who acted (the verified operator, not a
  name the sender typed).
"""

import json
import stat
import time

import pytest

from gasguard.authority import audit as A
from gasguard.authority import broker
from gasguard.authority import roster as RO
from gasguard.authority.bootstrap import bootstrap
from gasguard.testing.mosquitto import Mosquitto
from gasguard.testing.rig import PEOPLE, Rig
from gasguard.testing.subscriber import Subscriber
from gasguard.testing.waits import wait_until
from mqtt5_client import Client

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]
D = "d1"
BASE = f"gasguard/v1/{D}/command"


@pytest.fixture
def walled(tmp_path):
    """The district's authority, the broker configured from it, and a gateway logging in as itself."""
    auth = bootstrap(tmp_path / "authority", D, dict(PEOPLE, old="engineer"))
    ro = RO.load(auth.roster, auth.authority().public_key())
    conf = broker.write_config(ro, ["gw1"], tmp_path / "broker-conf")
    pw = {u: (tmp_path / "broker-conf" / "credentials" / f"{u}.password").read_text().strip() for u in conf["users"]}
    with Mosquitto(workdir=tmp_path / "mosq", extra_config=(tmp_path / "broker-conf" / "gasguard.conf").read_text()) as m:
        rig = Rig(tmp_path, m.port, authority=auth, sub=False,
                  mqtt_extra=f'username = "gw-gw1"\npassword = "{pw["gw-gw1"]}"\n',
                  extra=f'[limits]\ncommand_retry = 0.3\n[plugins.grading]\nstate_path = "{tmp_path / "grading.json"}"\n')
        rig.sub = Subscriber(m.port, "gasguard/#", username="root", password=pw["root"])
        try:
            yield rig, m, pw
        finally:
            rig.close()


def _answers(rig, n):
    return rig.sub.wait(lambda ms: len(rig.sub.on(f"{BASE}/result/gw1")) >= n and rig.sub.on(f"{BASE}/result/gw1"), 10)


def test_unsigned_wrong_role_revoked_stale_and_replayed_requests_change_nothing(walled):
    rig, m, pw = walled
    rig.start()
    a = rig.nodes[0]
    cable = rig.cables[0]
    cable.send(a.reading())
    cable.send(a.alarm())                                   # a leak: the valve shut, an incident opens
    inc = rig.sub.wait(lambda ms: [d for t, d, _ in ms if t.startswith(f"{BASE}/incident/")], 10)[0]
    iid = inc["incident_id"]
    ack_t, input_t, cmd_t = f"{BASE}/ack/{iid}", f"{BASE}/input/{iid}", rig.cmd_topic(a.dev)
    cable.downlinks()                                       # the alarm's ack: not a command

    # first wall: the broker
    anon = Client(m.port)
    assert anon.rc.is_failure                              # no login, no session
    op = Client(m.port, "op", pw["op"])
    eng = Client(m.port, "eng", pw["eng"])
    assert op.publish(cmd_t, rig.signed("op", cmd_t, {"request_id": "x", "cmd": "reset"})) == 135

    # second wall: the gateway, for whatever reaches it
    RO.revoke(rig.authority.roster, rig.authority.authority(), "old", reason="left",
              approver=("root", rig.authority.key("root")))
    wait_until(lambda: rig.daemon.gate.roster.get("old").revoked_at, 10, "the gateway takes up the new roster")
    refused = [
        (op, ack_t, json.dumps({"revision": inc["revision"], "by": "anyone"}).encode(), "unsigned"),
        (op, ack_t, rig.signed("web", ack_t, {"revision": inc["revision"]}), "wrong_role"),   # a console alone
        (op, ack_t, rig.signed("old", ack_t, {"revision": inc["revision"]}), "revoked"),
        (op, ack_t, rig.signed("op", ack_t, {"revision": inc["revision"]}, now=time.time() - 600), "stale"),
        (op, input_t, rig.signed("op", input_t, {"deaths": 31}, now=time.time() - 600), "stale"),
        (eng, cmd_t, json.dumps({"request_id": "u1", "cmd": "reset"}).encode(), "unsigned"),
        (eng, cmd_t, rig.signed("op", cmd_t, {"request_id": "w1", "cmd": "reset"}), "wrong_role"),
        (eng, cmd_t, rig.signed("old", cmd_t, {"request_id": "r1", "cmd": "reset"}), "revoked"),
    ]
    for client, topic, raw, _ in refused:
        assert client.publish(topic, raw) == 0             # the broker lets these through: the gateway decides
    answers = _answers(rig, 5)
    assert sorted(r["reason"] for r in answers) == ["revoked", "stale", "stale", "unsigned", "wrong_role"]
    assert all(r["outcome"] == "refused" for r in answers)
    results = rig.sub.wait(lambda ms: len(rig.sub.on("/cmd/result")) >= 3 and rig.sub.on("/cmd/result"), 10)
    assert sorted(r["reason"] for r in results) == ["revoked", "unsigned", "wrong_role"]
    # nothing changed: no command reached the node, the incident is unacknowledged and not re-graded
    rig.ticks(3)                          # a wrongly queued command would have had its first send
    assert cable.downlinks() == []
    latest = [d for t, d, _ in rig.sub.messages if t == f"{BASE}/incident/{iid}"][-1]
    assert latest["revision"] == inc["revision"] and latest["acked"] is None

    # the right people act; "by" is who signed, not what the sender wrote
    good_ack = rig.signed("op", ack_t, {"revision": inc["revision"], "by": "somebody else"})
    assert op.publish(ack_t, good_ack) == 0
    acked = rig.sub.wait(lambda ms: [d for t, d, _ in ms if t == f"{BASE}/incident/{iid}" and d.get("acked")], 10)[0]
    assert acked["acked"]["by"] == "op"
    good_cmd = rig.signed("eng", cmd_t, {"request_id": "ok-1", "cmd": "status", "ttl_s": 5})
    assert eng.publish(cmd_t, good_cmd) == 0
    wait_until(lambda: cable.downlinks(), 10, "the engineer's command on the line")
    # replays of both, before and after a gateway restart
    assert op.publish(ack_t, good_ack) == 0
    assert _answers(rig, 7)[-1]["reason"] == "replayed"
    rig.stop()
    rig.start()
    # the restarted gateway's subscriptions are in place once it answers a sync (subscribed after the commands')
    n = len(rig.sub.on(f"/incident/{iid}"))

    def resynced():                # a sync sent before the subscription is lost (clean session): ask again
        assert op.publish(f"{BASE}/sync", b"{}") == 0
        return len(rig.sub.on(f"/incident/{iid}")) > n
    wait_until(resynced, 10, "the restarted gateway answers a sync", step=0.5)
    assert eng.publish(cmd_t, good_cmd) == 0
    replay = rig.sub.wait(lambda ms: [d for d in rig.sub.on("/cmd/result") if d.get("reason") == "replayed"], 10)
    assert replay[0]["request_id"] == "ok-1"

    # on the record, with the reason; the chain verifies
    recs = A.show(rig.cfg.audit_dir or rig.spool.parent / "audit", outcome="refused")
    reasons = sorted(r["reason"].split(":")[0] for r in recs if r["category"] in ("command", "incident"))
    assert reasons == ["replayed", "replayed", "revoked", "revoked", "stale", "stale", "unsigned", "unsigned",
                       "wrong_role", "wrong_role"]
    assert A.verify(rig.spool.parent / "audit")["ok"]
    allowed = A.show(rig.spool.parent / "audit", outcome="allowed")
    assert [(r["type"], r["source"]["operator"]) for r in allowed] == [("ack", "op"), ("status", "eng")]
    assert rig.metric("gasguard_gateway_requests_refused_total", reason="replayed") == 1   # since the restart
    # secrets and records at rest are the owner's only: spool (and its WAL), replay store, audit, incident state
    at_rest = [rig.spool, rig.spool.with_name("spool.db-wal"), rig.spool.with_name("spool.db.replay.db"),
               rig.tmp / "grading.json", *(rig.spool.parent / "audit").glob("audit-*.jsonl")]
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in at_rest if p.exists()} == \
        {str(p): "0o600" for p in at_rest if p.exists()}
    assert rig.spool.with_name("spool.db.replay.db").exists() and list((rig.spool.parent / "audit").glob("audit-*"))
    for c in (anon, op, eng):
        c.close()


def test_console_logs_in_signs_as_the_operator_and_an_engineer_commands_a_node(walled):
    from click.testing import CliRunner

    from gasguard.command.console_cli import command
    rig, m, pw = walled
    rig.start()
    a = rig.nodes[0]
    rig.cables[0].send(a.reading())
    rig.cables[0].send(a.alarm())
    iid = rig.sub.wait(lambda ms: [d for t, d, _ in ms if t.startswith(f"{BASE}/incident/")], 10)[0]["incident_id"]
    common = ["-p", str(m.port), "--district", D, "--timeout", "10"]

    def as_(who, *extra):
        return [*common, "-u", who, "--operator", who, "--operator-key", str(rig.authority.keys[who]), *extra]

    r = CliRunner().invoke(command, ["ack", iid, *as_("op", "-P", "wrong")])
    assert r.exit_code == 1 and "refused the login" in r.output
    r = CliRunner().invoke(command, ["ack", iid, "--json", *as_("op")], env={"GASGUARD_MQTT_PASSWORD": pw["op"]})
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["acked"]["by"] == "op"
    # a node command: the operator's is refused by the gateway (and its login may not even publish it);
    # the engineer's reaches the line
    r = CliRunner().invoke(command, ["node", "gw1", f"{a.dev:08x}", "status", *as_("eng", "-P", pw["eng"]),
                                     "--operator", "op", "--operator-key", str(rig.authority.keys["op"])])
    assert r.exit_code == 1 and "wrong_role" in r.output, (r.output, rig.sub.on("/cmd/result"))
    assert [f["type"] for f in map(a.open_downlink, rig.cables[0].downlinks())] == ["ack"]   # the alarm's only
    r = CliRunner().invoke(command, ["node", "gw1", f"{a.dev:08x}", "status", "--ttl", "1",
                                     *as_("eng", "-P", pw["eng"])])
    assert r.exit_code == 1 and "timeout" in r.output            # sent (retried), never acked by the test node
    sent = [a.open_downlink(b) for b in rig.cables[0].downlinks()]
    assert sent and {f["type"] for f in sent} == {"command"}
