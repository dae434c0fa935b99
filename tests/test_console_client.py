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
from gasguard.command.watch import deadline_cell
from grading_helpers import T0, PluginHarness, alarm, device, payloads, reading


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


def test_watch_at_100_columns_help_confirm_ack_and_rejected_input(mosquitto, gateway, district):
    """The textual field console driven by textual's own pilot at 100 columns, against the gateway's
    grading plugin through a real mosquitto."""
    import asyncio

    from gasguard.command.watch import WatchApp
    # two stations whose names differ only at the end: cut at a fixed width they would look alike
    first = device(0xA001, households=12_000, site="历下区燕山立交桥东侧解放东路第一调压站")
    second = device(0xA002, households=4_000, site="历下区燕山立交桥东侧解放东路第二调压站")
    gateway.observe(alarm(first, T0, 4, value=900, ptrip=True))
    gateway.pump_in_background()
    clock = {"t": T0 + 60}
    try:
        with CommandClient("127.0.0.1", mosquitto.port, "lixia", signer=_signer(district)) as client:
            iid = gateway.published[0][1]["incident_id"]
            client.wait_for(iid, 10)
            gateway.observe(alarm(second, T0 + 1, 4, value=900, ptrip=True, aseq=1))
            client.wait_for(iid, 10, lambda m: len(m["report"]["what_happened"]["stations"]) == 2)
            app = WatchApp(client, by="duty", refresh=0.05, clock=lambda: clock["t"], confirm_timeout=10)

            async def until(pilot, pred, what, timeout=10.0):
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                while not pred():
                    assert loop.time() < deadline, f"{what}: status {app.status_text!r}"
                    await pilot.pause(0.05)

            def status():
                return str(app.query_one("#status").render())

            async def run():
                async with app.run_test(size=(100, 30)) as pilot:
                    await pilot.pause(0.2)
                    table = app.query_one("#board")
                    site = str(table.get_cell_at((0, 4)))
                    assert "…" in site and site.endswith("第一调压站")           # ellipsised in the middle
                    assert str(table.get_cell_at((0, 6))) == "19:00"             # 20' counting down
                    await pilot.press("question_mark")
                    assert app.screen.__class__.__name__ == "HelpScreen"
                    await pilot.press("escape")
                    await pilot.press("a")                                       # asks first ...
                    assert app.screen.__class__.__name__ == "ConfirmAck"
                    await pilot.press("n")                                       # ... and "no" sends nothing
                    assert client.board.get(iid)["acked"] is None and "not acknowledged" in status()
                    clock["t"] = gateway.now["t"] = T0 + 1300                    # 20' passed: overdue
                    await pilot.pause(0.2)
                    assert str(table.get_cell_at((0, 6))).startswith("OVER")
                    await pilot.press("a", "y")
                    await until(pilot, lambda: "confirmed by the gateway" in status(), "ack confirmed")
                    clock["t"] = T0 + 4000                                       # much later ...
                    await pilot.pause(0.2)
                    assert str(table.get_cell_at((0, 6))) == "✓ late"            # ... no longer counting
                    assert str(table.get_cell_at((0, 8))) == "duty"                 # who signed
                    await pilot.press("i")
                    app.screen.query_one("Input").value = "deaths=-1"            # refused before sending
                    await pilot.press("enter")
                    assert "cannot be negative" in str(app.screen.query_one("#error").render())
                    app.screen.query_one("Input").value = "evacuated=300 shelter=school"
                    await pilot.press("enter")                                   # a field nobody knows
                    assert "unknown field 'shelter'" in str(app.screen.query_one("#error").render())
                    app.screen.query_one("Input").value = "evacuated=300 note='警戒已设置'"
                    await pilot.press("enter")
                    await until(pilot, lambda: "applied evacuated, note" in status(), "input applied")
                    await pilot.press("r")
                    assert "初判级别" in str(app.query_one("#report").render())
                    await pilot.press("q")
            asyncio.run(run())
    finally:
        gateway.stop_pumping()


def test_watch_keeps_an_alarm_that_cleared_unacknowledged_until_someone_acknowledges_it():
    """ISA-18.2 returned-to-normal-unacknowledged: the field console used to drop a resolved incident after
    10 minutes whether or not anyone had seen it."""
    from gasguard.command.watch import WatchApp
    eng = IncidentEngine({}, downstream=lambda d: [])
    home = device(0x100001, profile="household", households=1, site="千佛山路8号2单元")
    msgs = payloads(eng.observe(alarm(home, T0, 2, value=300, gas_level=2)), "/lixia/")
    msgs += payloads(eng.observe(alarm(home, T0 + 60, 2, aseq=2, cleared=True)), "/lixia/")
    msgs += payloads(eng.observe(reading(home, T0 + 90, pressure=2000, valve=0)), "/lixia/")
    client = CommandClient("127.0.0.1", 1, "lixia")                     # not connected: the board is filled here
    for m in msgs:
        client.board.apply(m)
    assert msgs[-1]["status"] == "resolved"
    clock = {"t": T0 + 3600}                                           # an hour later, still not acknowledged
    app = WatchApp(client, by="wang.li", clock=lambda: clock["t"])
    [row] = app.rows()
    assert row["state"] == "returned-to-normal-unacknowledged"
    assert str(deadline_cell(row["phone"])) == "cleared"
    eng_ack = payloads(eng.acknowledge(msgs[-1]["incident_id"], {"by": "wang.li"}, T0 + 3600), "/lixia/")
    client.board.apply(eng_ack[-1])
    clock["t"] += 601                                                  # acknowledged and cleared: goes after 10 min
    assert app.rows() == []


def test_cli_input_keeps_spaces_and_quotes_in_one_field():
    from gasguard.command.console import parse_fields
    assert parse_fields(["note=it's on fire, 3 floors", "deaths=0"]) == {"note": "it's on fire, 3 floors", "deaths": 0}
