"""Structured logs (gasguard/logs.py): incidents, escalations, acknowledgements, operator input and commands at
INFO with their fields (device, port, gateway, incident, operator), in both formats: logfmt text where every
token really is key=value, and JSON lines. The logfmt grammar here is written from the logfmt convention
(key=bare or key="quoted with \\" and \\\\ escapes"), not from the renderer's code."""

import io
import json
import logging
import re
import signal
import time

import pytest

from gasguard import logs
from gasguard.grading.incidents import IncidentEngine
from gasguard.testing.subscriber import Subscriber
from gasguard.testing.mosquitto import free_port
from gasguard.testing.gateway import GatewayProcess
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until
from grading_helpers import T0, alarm, device

TOKEN = re.compile(r'([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|[^\s"=]*)(?:\s+|$)')


def logfmt(line: str) -> dict:
    """Parse one logfmt line; fails if any part of it is not key=value."""
    out, pos = {}, 0
    while pos < len(line):
        m = TOKEN.match(line, pos)
        assert m, f"not key=value at {line[pos:pos + 40]!r} in {line!r}"
        v = m.group(2)
        out[m.group(1)] = json.loads(v) if v.startswith('"') else v
        pos = m.end()
    return out


@pytest.fixture
def captured():
    """The `gasguard` loggers through logs.setup, into a buffer per format."""
    def run(as_json: bool):
        buf = io.StringIO()
        logs.setup("INFO", as_json, stream=buf, gateway="sub-017")
        return buf
    yield run
    logging.getLogger("gasguard").handlers[:] = []
    logging.getLogger("gasguard").propagate = True


def _incident_story():
    """A station trip (12,000 households), its phone deadline passing, an acknowledgement and operator input."""
    eng = IncidentEngine({"district": "lixia"})
    out = eng.observe(alarm(device(0xA001, households=12_000), T0, 4, value=900, ptrip=True))
    iid = out[0][1]["incident_id"]
    eng.tick(T0 + 1200)
    eng.acknowledge(iid, {"by": "王值班", "revision": 2}, T0 + 1300)
    eng.operator_input(iid, {"by": "李工", "deaths": 0, "note": "valve crew on site"}, T0 + 1400)
    eng.operator_input(iid, {"by": "李工", "deaths": -3}, T0 + 1500)
    return iid


@pytest.mark.parametrize("as_json", [False, True], ids=["logfmt", "json"])
def test_incident_lifecycle_is_logged_at_info_with_fields(captured, as_json):
    buf = captured(as_json)
    iid = _incident_story()
    lines = buf.getvalue().splitlines()
    recs = [json.loads(l) if as_json else logfmt(l) for l in lines]
    assert all(r["level"] == "info" and r["gateway"] == "sub-017" and r["logger"] == "gasguard.incidents"
               and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$", r["t"]) for r in recs), lines
    by_msg = {}
    for r in recs:
        by_msg.setdefault(r["msg"].split(":")[0], []).append(r)
    opened = by_msg["incident opened"][0]
    assert opened["incident"] == iid and opened["device"] == "0000a001" and str(opened["grade"]) == "3"
    esc = by_msg["incident escalated"][0]
    assert esc["incident"] == iid and esc["stage"] == "phone"
    ack = by_msg["incident acknowledged"][0]
    assert ack["incident"] == iid and ack["operator"] == "王值班"
    inputs = by_msg["operator input recorded"] + by_msg["operator input refused"]
    assert [i["operator"] for i in inputs] == ["李工", "李工"] and all(i["incident"] == iid for i in inputs)
    assert "deaths" in by_msg["operator input refused"][0]["msg"]


def test_logfmt_quotes_what_would_break_a_line(captured):
    buf = captured(False)
    logging.getLogger("gasguard.gateway").warning('a "quoted" word, an = sign\nand a second line',
                                                   extra=logs.fields(device=0xA10000, port="tty GG0"))
    line, = buf.getvalue().splitlines()
    r = logfmt(line)
    assert r["msg"] == 'a "quoted" word, an = sign\nand a second line'
    assert r["device"] == "00a10000" and r["port"] == "tty GG0"


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
@pytest.mark.parametrize("as_json", [False, True], ids=["logfmt", "json"])
def test_the_daemon_logs_fields_in_the_configured_format(tmp_path, mosquitto, as_json):
    """The real command: every line parses in its format and carries gateway=; the port, the command and the
    device going offline carry port=, request= and device=."""
    rig = Rig(tmp_path, mosquitto.port, sub=False, gateway_id="sub-017",
              metrics="tick_interval = 0.1\n", extra="[limits]\noffline_after = 0.5\noffline_missed_reports = 0\n"
              "command_retry = 0.2\ncommand_timeout = 0.5\n")
    text = rig.config_path.read_text().replace('log_level = "INFO"', f'log_level = "INFO"\nlog_json = {str(as_json).lower()}')
    rig.config_path.write_text(text)
    gw = GatewayProcess(rig.config_path, tmp_path / "gw.log").start()
    sub = Subscriber(mosquitto.port, "gasguard/#")
    try:
        wait_until(lambda: "open (serial" in gw.log(), 30, "the port opens")
        node = rig.nodes[0]
        rig.cables[0].send(node.reading())
        sub.wait(lambda ms: any(t.endswith("/state") for t, _, _ in ms), 10)
        topic = f"{rig.root}/{node.dev:08x}/cmd"     # signed by the rig district's engineer (issue 14)
        sub.c.publish(topic, rig.signed("eng", topic, {"request_id": "req-77", "cmd": "status"}),
                      qos=1).wait_for_publish(5)
        wait_until(lambda: "timed out after" in gw.log() and "offline" in gw.log(), 20, "command timeout, offline")
        assert gw.terminate() == 0
    finally:
        sub.close()
        gw.close()
        rig.close()
    lines = [l for l in gw.log().splitlines() if l.strip()]
    recs = [json.loads(l) if as_json else logfmt(l) for l in lines]
    assert all(r.get("gateway") == "sub-017" and r["level"] in ("info", "warning", "error") for r in recs), lines
    dev = f"{node.dev:08x}"
    assert any(r.get("port") == "ttyGG0" and "open" in r["msg"] for r in recs)
    queued = [r for r in recs if r["msg"].startswith("command status") and "queued" in r["msg"]]
    assert queued and queued[0]["device"] == dev and queued[0]["request"] == "req-77" and queued[0]["level"] == "info"
    assert queued[0]["operator"] == "eng"
    assert any(r.get("device") == dev and r.get("request") == "req-77" and "timed out" in r["msg"] for r in recs)
    assert any(r.get("device") == dev and r["msg"].startswith("device offline") for r in recs)


def test_user_state_file_follows_xdg_state_home_else_local_state(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert logs.user_state_file("watch.log") == tmp_path / "state" / "gasguard" / "watch.log"
    for unset in ("", "relative/state"):          # the XDG spec: empty or relative is to be ignored
        monkeypatch.setenv("XDG_STATE_HOME", unset)
        assert logs.user_state_file("watch.log") == tmp_path / "home" / ".local" / "state" / "gasguard" / "watch.log"
