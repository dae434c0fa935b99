"""The console: rendering (rich Console(record=True)) and its MQTT client against a real mosquitto."""

import json

import pytest
from click.testing import CliRunner
from rich.console import Console

from gasguard.authority.bootstrap import bootstrap
from gasguard.command.console import CommandClient, IncidentBoard, Signer, parse_input, render_board, render_report
from gasguard.command.console_cli import command
from gasguard.gateway.grading_plugin import GradingPlugin
from gasguard.grading.incidents import IncidentEngine
from grading_helpers import T0, PluginHarness, alarm, device, payloads


def _incidents(now_offsets=()):
    eng = IncidentEngine({}, downstream=lambda d: [])
    msgs = payloads(eng.observe(alarm(device(0xA001, households=12_000, site="燕山调压站"), T0, 4, value=900,
                                      ptrip=True)), "/lixia/")
    msgs += payloads(eng.observe(alarm(device(0x100001, profile="household", households=1, site="文化东路12号"),
                                       T0 + 300, 2, value=300, gas_level=2)), "/lixia/")
    for off in now_offsets:
        msgs += payloads(eng.tick(T0 + off), "/lixia/")
    return eng, msgs


def _styles_of(console, renderable, needle):
    return [seg.style for seg in console.render(renderable) if needle in seg.text]


def test_board_keeps_latest_revision_only():
    _, msgs = _incidents((1200,))
    board = IncidentBoard()
    assert all(board.apply(m) for m in msgs)
    first = msgs[0]
    assert board.apply(first) is False                    # an old revision arriving late
    assert board.get(first["incident_id"])["kind"] == "escalation"
    assert [m["level"] for m in board.rows(T0 + 1200)] == [3, 4]     # most severe warning first


def test_render_board_shows_warning_colour_level_households_deadlines():
    _, msgs = _incidents((1200,))
    board = IncidentBoard()
    for m in msgs:
        board.apply(m)
    con = Console(record=True, width=170, color_system="truecolor")
    view = render_board(board, T0 + 1260, district="lixia", selected=msgs[0]["incident_id"])
    con.print(view)
    text = con.export_text()
    assert msgs[0]["incident_id"] in text and "YELLOW" in text and "BLUE" in text
    assert "III (projected)" in text and "12,000" in text and "供应保障类" in text and "安全事故类" in text
    assert "-1:00 OVERDUE" in text                        # phone deadline passed a minute ago
    assert "24:00" in text                                # written deadline in 24 minutes
    assert "ESCALATED x1" in text and "not acked" in text
    yellow = _styles_of(con, view, "YELLOW")
    assert yellow and yellow[0].bgcolor.name == "yellow"
    over = _styles_of(con, view, "OVERDUE")
    assert over and over[0].color.name == "red"


def test_render_report_panel_lists_what_is_missing():
    _, msgs = _incidents()
    con = Console(record=True, width=120)
    con.print(render_report(msgs[0]))
    text = con.export_text()
    assert "较大（Ⅲ级）" in text and "燕山调压站" in text and "to be completed:" in text and "on_site_lead" in text


@pytest.mark.parametrize("text,expected", [
    ("deaths=1 evacuated=300", {"deaths": 1, "evacuated": 300}),
    ("note='消防已到场' resolved=true", {"note": "消防已到场", "resolved": True}),
    ("direct_loss_cny=1.5e6", {"direct_loss_cny": 1.5e6}),
])
def test_parse_input(text, expected):
    assert parse_input(text) == expected


def test_parse_input_rejects_bare_words():
    with pytest.raises(ValueError, match="field=value"):
        parse_input("deaths 1")


@pytest.fixture
def district(tmp_path):
    """Lixia's operators: an admin, the duty operator 王值班 (id duty) and an engineer."""
    return bootstrap(tmp_path / "authority", "lixia", {"root": "admin", "duty": "operator", "li.na": "engineer"})


@pytest.fixture
def gateway(mosquitto, district, tmp_path):
    now = {"t": T0}
    plugin = GradingPlugin({}, downstream=lambda d: [])
    h = PluginHarness(plugin, mosquitto.port, lambda: now["t"], authority=district, workdir=tmp_path)
    h.now = now
    yield h
    h.close()


def _signer(district, who="duty"):
    return Signer(who, district.key(who))


def _cli_as(district, who="duty"):
    return ["--operator", who, "--operator-key", str(district.keys[who])]


def test_client_gets_incidents_acks_and_sends_input(mosquitto, gateway, district):
    st = device(0xA001, households=12_000, site="燕山调压站")
    gateway.observe(alarm(st, T0, 4, value=900, ptrip=True))            # before the console runs
    with CommandClient("127.0.0.1", mosquitto.port, "lixia", signer=_signer(district)) as client:
        gateway.pump(until=lambda t: t.endswith("/sync"))               # the console asked for a sync
        iid = gateway.published[0][1]["incident_id"]
        m = client.wait_for(iid, 5)
        assert m["level"] == 3 and m["acked"] is None
        client.ack(iid, "王值班", m["revision"])
        gateway.pump(until=lambda t: "/ack/" in t)
        acked = client.wait_for(iid, 5, lambda x: bool(x["acked"]))
        assert acked["acked"]["by"] == "duty" and acked["revision"] == m["revision"] + 1   # who signed, not who typed
        client.send_input(iid, {"deaths": 3, "by": "现场"})
        gateway.pump(until=lambda t: "/input/" in t)
        regraded = client.wait_for(iid, 5, lambda x: x["report"]["casualties"] is not None)
        assert regraded["projected"] is False and regraded["report"]["casualties"]["deaths"] == 3


def test_client_times_out_on_unknown_incident(mosquitto):
    from gasguard.command.console import ConsoleError
    with CommandClient("127.0.0.1", mosquitto.port, "lixia") as client:
        with pytest.raises(ConsoleError, match="not seen within"):
            client.wait_for("nope", 0.5)


def test_cli_unreachable_broker_exit_1():
    res = CliRunner().invoke(command, ["report", "x", "--port", "1", "--timeout", "1"])
    assert res.exit_code == 1 and "cannot reach the MQTT broker" in res.output


def test_cli_report_ack_input_json(mosquitto, gateway, district):
    gateway.observe(alarm(device(0xA001, households=12_000, site="燕山调压站"), T0, 4, value=900, ptrip=True))
    iid = gateway.published[0][1]["incident_id"]
    gateway.pump_in_background()
    try:
        port = ["--port", str(mosquitto.port), "--timeout", "5"]
        r = CliRunner().invoke(command, ["report", iid, *port])
        assert r.exit_code == 0, r.output
        assert "初判级别：较大（Ⅲ级）" in r.output and "燕山调压站" in r.output
        r = CliRunner().invoke(command, ["report", iid, "--json", *port])
        assert json.loads(r.output)["households"] == 12_000
        r = CliRunner().invoke(command, ["report", iid, "--city", "--json", *port])    # level III: the city has it
        assert r.exit_code == 0 and json.loads(r.output)["routes"] == ["district", "city"]
        r = CliRunner().invoke(command, ["ack", iid, "--json", *port])                  # not signed: refused here
        assert r.exit_code == 2 and "--operator" in r.output
        r = CliRunner().invoke(command, ["ack", iid, "--json", *port, *_cli_as(district)])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["acked"]["by"] == "duty"
        r = CliRunner().invoke(command, ["input", iid, "evacuated=5000", "note=疏散完成", "--json", *port,
                                         *_cli_as(district)])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["level"] == 2
        r = CliRunner().invoke(command, ["input", iid, "deaths=-1", *port, *_cli_as(district)])
        assert r.exit_code == 2 and "cannot be negative" in r.output
        r = CliRunner().invoke(command, ["list", "--json", "--wait", "3", *port])
        assert [m["incident_id"] for m in json.loads(r.output)] == [iid]
    finally:
        gateway.stop_pumping()


class ScriptedKeys:
    """Key presses for watch(): each get() waits until `ready()` holds, then gives the next key."""

    def __init__(self, steps):
        self.steps = list(steps)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def get(self, timeout):
        import time
        ready, key = self.steps[0]
        deadline = time.monotonic() + 10
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready(), f"watch test: condition for key {key!r} never held"
        self.steps.pop(0)
        return key


def test_watch_keys_report_ack_input(mosquitto, gateway, district):
    import io

    from gasguard.command.console import watch
    gateway.observe(alarm(device(0xA001, households=12_000, site="燕山调压站"), T0, 4, value=900, ptrip=True))
    iid = gateway.published[0][1]["incident_id"]
    gateway.pump_in_background()
    out = io.StringIO()
    con = Console(file=out, width=200, record=True, force_terminal=False)
    asked = []
    try:
        with CommandClient("127.0.0.1", mosquitto.port, "lixia", signer=_signer(district)) as client:
            seen = lambda pred: (lambda: (client.board.get(iid) is not None and pred(client.board.get(iid))))  # noqa
            keys = ScriptedKeys([
                (seen(lambda m: True), "r"),                                   # open the draft report
                (seen(lambda m: True), "a"),                                   # acknowledge
                (seen(lambda m: bool(m["acked"])), "i"),                       # operator input
                (seen(lambda m: m["report"]["evacuated"] == 300), "q"),
            ])
            code = watch(client, con, by="duty", refresh=0.05, clock=lambda: T0 + 60, keys=keys,
                         ask=lambda prompt: asked.append(prompt) or "evacuated=300 note='警戒已设置'")
        text = con.export_text()
    finally:
        gateway.stop_pumping()
    assert code == 0
    assert "初判级别：较大（Ⅲ级）" in text                                   # the report panel was shown
    assert f"acknowledged {iid}" in text and "duty" in text
    assert "sent evacuated, note" in text and asked and iid in asked[0]
    assert "19:00" in text                                                  # phone deadline 19 min away


def test_cli_input_keeps_spaces_and_quotes_in_one_field():
    from gasguard.command.console import parse_fields
    assert parse_fields(["note=it's on fire, 3 floors", "deaths=0"]) == {"note": "it's on fire, 3 floors", "deaths": 0}
