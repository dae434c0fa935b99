"""`gasguard sim demo --fast --no-tui` end to end, judged on what reached a real mosquitto: the demo's own
checks are not trusted, a separate subscriber reads every publication of the story and grades it again."""

import collections
import subprocess
import sys

import pytest

from gasguard.testing.subscriber import Subscriber

pytestmark = [pytest.mark.micropython, pytest.mark.mosquitto, pytest.mark.slow]

BOARD1, BOARD2 = "03f00001", "03f00002"        # tools/demo/run.py BOARD_BASE: the leak, the home under the trip
OPERATOR = "duty.demo"                      # tools/demo/run.py provisions its own operators; acks are signed


def _by_incident(messages, prefix):
    """incident id -> [payload, ...] in arrival order, for the topics starting with `prefix` (sync repeats
    of a revision, asked for by a console that connects, left out)."""
    out = collections.defaultdict(list)
    for topic, doc, _ in messages:
        if topic.startswith(prefix) and "incident_id" in doc and doc.get("kind") != "sync":
            out[doc["incident_id"]].append(doc)
    return out


def test_fast_demo_grades_the_story_on_the_broker(tmp_path, mosquitto):
    sub = Subscriber(mosquitto.port, "gasguard/v1/#")
    try:
        run = subprocess.run([sys.executable, "-m", "gasguard.cli", "sim", "demo", "--fast", "--no-tui",
                              "--broker", f"127.0.0.1:{mosquitto.port}", "--workdir", str(tmp_path / "demo")],
                             capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        # the gateway said goodbye: the daemon was stopped gracefully, not killed
        sub.wait(lambda ms: [d for t, d, _ in ms if t.endswith("/sub-017/status") and d.get("online") is False], 10)
        with sub.lock:
            msgs = list(sub.messages)
    finally:
        sub.close()

    district = _by_incident(msgs, "gasguard/v1/lixia/command/incident/")
    city = _by_incident(msgs, "gasguard/v1/city/incident/")

    # 1. the leak: board 1's real firmware raised GAS_L2 with its valve shut and latched; level IV, district only
    gas_l2 = [d for t, d, _ in msgs if t.endswith(f"/{BOARD1}/alarm") and d["name"] == "gas_l2" and not d["cleared"]]
    assert gas_l2 and gas_l2[0]["state"]["valve"] == 1 and gas_l2[0]["state"]["latched"], gas_l2
    leaks = [i for i in district if i.startswith(f"lixia-leak-{BOARD1}-")]
    assert len(leaks) == 1, sorted(district)
    leak = district[leaks[0]]
    assert leak[0]["kind"] == "new" and leak[0]["level"] == 4 and leak[0]["warning"] == "blue"
    assert leak[0]["category"] == "safety_accident" and leak[0]["routes"] == ["district"]
    assert leaks[0] not in city

    # 2. the trip: projected level III, over 10,000 households, on the district and the city topics. The
    # incident may open with the first station heard (on a loaded machine a station the feeder feeds) and
    # grow as the others come in; once at level III it is on the city topic too, revision for revision
    supply = [i for i in district if i.startswith("lixia-supply-")]
    assert len(supply) == 1, sorted(district)
    sup = district[supply[0]]
    assert sup[0]["kind"] == "new"
    third = [m for m in sup if m["level"] == 3]
    assert third and third[0]["projected"] is True and 10_000 <= third[0]["households"] < 30_000
    assert third[0]["routes"] == ["district", "city"] and min(m["level"] or 9 for m in sup) == 3
    routed = [m["revision"] for m in city[supply[0]]]
    assert third[0]["revision"] in routed
    assert routed == [m["revision"] for m in sup if m["revision"] >= routed[0]]
    # board 2, fed by a station under the trip, shut its valve on under-pressure (real firmware)
    upso = [d for t, d, _ in msgs if t.endswith(f"/{BOARD2}/alarm") and d["name"] == "upso"]
    assert upso and upso[0]["state"]["valve"] == 1, upso

    # 3. and 4. each escalated at the 20-minute phone deadline, then was acknowledged and escalated no more
    for revs in (leak, sup):
        esc = [m for m in revs if m["kind"] == "escalation"]
        assert esc, [m["kind"] for m in revs]
        assert esc[0]["escalation"]["stage"] == "phone"
        # after the 20-minute deadline, before the 45-minute one (the tick runs late on a loaded machine)
        assert 1200 <= esc[0]["published_at"] - esc[0]["detected_at"] < 2700
        acked = [m for m in revs if m.get("acked")]
        assert acked and acked[0]["acked"]["by"] == OPERATOR and acked[0]["escalation"] is None
        assert acked[0]["revision"] > esc[0]["revision"]
        assert not [m for m in revs if m["revision"] > acked[0]["revision"] and m["kind"] == "escalation"]
    assert "story complete" in run.stdout and "FAIL" not in run.stdout

    # 5. the web console ran on the service's store: its URL and a login were printed, and its own hash-chained
    # audit record shows the demo's duty operator logging in (the board and station page the demo then read)
    from gasguard.authority import audit
    assert "web console: http://127.0.0.1:" in run.stdout and f"log in as {OPERATOR} / demo-" in run.stdout
    logins = [(r["type"], r["outcome"], r["source"].get("operator"))
              for r in audit.show(tmp_path / "demo" / "web-audit", category="access")]
    assert ("login", "allowed", OPERATOR) in logins
    assert audit.verify(tmp_path / "demo" / "web-audit")["ok"]
