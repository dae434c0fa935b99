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


def _shelves(iid, until, seq=3, grade=(2, 3)):
    """The command service's retained snapshot (command/README.md: gasguard.command-shelves/1)."""
    return {"schema": "gasguard.command-shelves/1", "district": "lixia", "seq": seq, "t": T0,
            "shelves": {iid: {"by": "zhao.min", "reason": "crew on site,\n valve closed", "at": T0 + 1300,
                              "until": until, "revision": 2, "grade": list(grade)}}}


def test_render_board_says_which_incidents_are_shelved_by_whom_until_when_and_why():
    """`gasguard command list`'s board: a shelved incident says SHELVED on its row and who, the time left and
    why under the table, while the shelf holds by the watch's rule; past its expiry, or once the incident is
    upgraded beyond the grade shelved, it is back as it was, whatever the service has published since."""
    _, msgs = _incidents((1200,))
    board = IncidentBoard()
    for m in msgs:
        board.apply(m)
    leak = [m for m in msgs if m["category"] == "safety_accident"][-1]
    assert board.apply_shelves(_shelves(leak["incident_id"], T0 + 1300 + 2700, grade=(3, 4)))

    def text(now):
        con = Console(record=True, width=170)
        con.print(render_board(board, now, district="lixia"))
        return con.export_text()

    held = text(T0 + 1360)
    assert held.count("SHELVED") == 1 and "SHELVED (not acked)" in held
    assert f"shelved {leak['incident_id']} by zhao.min: 44:00 left, until " in held
    assert "crew on site, valve closed" in held                      # one line, whatever was typed
    assert "SHELVED" not in text(T0 + 1300 + 2700)                      # expired by this machine's clock
    upgraded = dict(leak, revision=leak["revision"] + 1, warning="orange", level=2)
    board.apply(upgraded)
    assert "SHELVED" not in text(T0 + 1360)                            # upgraded beyond what was shelved


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
        assert [(m["incident_id"], m["shelf"]) for m in json.loads(r.output)] == [(iid, None)]
    finally:
        gateway.stop_pumping()


def test_cli_list_shows_the_command_services_shelves(mosquitto, gateway):
    """`gasguard command list` reads the shelves the service keeps retained on command/shelves: a shelved
    incident is shown so (--json: the shelf; the table: SHELVED, who, the time left, why), an expired one not."""
    import re
    import time

    import paho.mqtt.client as mqtt
    from gasguard.protocol.topics import Topics
    gateway.observe(alarm(device(0xA001, households=12_000, site="燕山调压站"), T0, 4, value=900, ptrip=True))
    iid = gateway.published[0][1]["incident_id"]
    gateway.pump_in_background()
    topic = Topics().command("lixia").shelves
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    try:
        port = ["--port", str(mosquitto.port), "--timeout", "5", "--wait", "3"]
        until = time.time() + 1800           # the CLI's clock is this machine's
        pub.publish(topic, json.dumps(_shelves(iid, until, grade=(2, 3))), qos=1, retain=True).wait_for_publish(5)
        r = CliRunner().invoke(command, ["list", "--json", *port])
        assert r.exit_code == 0, r.output
        assert [(m["incident_id"], m["shelf"]["by"], m["shelf"]["until"]) for m in json.loads(r.output)] == [
            (iid, "zhao.min", until)]
        r = CliRunner().invoke(command, ["list", *port], env={"COLUMNS": "200"})
        assert r.exit_code == 0, r.output
        assert "SHELVED" in r.output and re.search(rf"shelved {iid} by zhao\.min: 29:\d\d left", r.output), r.output
        pub.publish(topic, json.dumps(_shelves(iid, time.time() - 1, seq=4)), qos=1,
                    retain=True).wait_for_publish(5)
        r = CliRunner().invoke(command, ["list", "--json", *port])
        assert [(m["incident_id"], m["shelf"]) for m in json.loads(r.output)] == [(iid, None)]
    finally:
        pub.loop_stop()
        pub.disconnect()
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
                    await pilot.press("s")             # a substation alone holds no shelves: nothing to ask or send
                    assert app.screen is app.screen_stack[0] and "needs the district command service" in status()
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


def test_board_shows_silent_and_offline_gateways_from_the_command_service():
    b = IncidentBoard()
    for gid, online, silent, t in (("gw01", True, False, 5.0), ("gw07", True, True, 6.0), ("gw09", False, False, 7.0)):
        assert b.apply_gateway({"schema": "gasguard.command-gateway/1", "gateway": gid, "online": online,
                                "silent": silent, "last_seen": 1_795_400_000.0, "t": t})
    assert not b.apply_gateway({"gateway": "gw07", "online": True, "silent": False, "t": 1.0})   # older: ignored
    line = b.gateway_line()
    assert line.startswith("gateways: 1 heard") and "SILENT gw07" in line and "OFFLINE gw09" in line
    rc = Console(width=200, record=True)
    rc.print(render_board(b, 1_795_400_100.0, district="lixia"))
    assert "SILENT gw07" in rc.export_text()


def test_watch_shows_the_services_shelves_shelves_and_unshelves_signed_and_audited(mosquitto, district, tmp_path):
    """Shelving in the field console against the real command service (SQLite store, authority Gate, real
    mosquitto) on a virtual clock: a shelf set from the watch (a reason the service's rules refuse first, both
    on the audit record) shows as "shelf" with who, why and the time left, exactly as the store that the web
    console reads holds it; at its expiry the row is back to UNACK by the watch's own clock, before the service
    records the end; unshelving from the watch puts it back at once."""
    import asyncio
    import time

    import paho.mqtt.client as mqtt

    from gasguard.authority import audit as AU
    from gasguard.command import config as cconfig
    from gasguard.command.service import CommandService
    from gasguard.command.store import open_store
    from gasguard.command.watch import WatchApp
    from gasguard.registry import Device, Registry
    from gasguard.testing.waits import until, wait_until
    from test_command_grading import TRIP_STATE, UPSO, _alarm

    site = "历下区燕山立交桥东侧解放东路第一调压站"
    reg = tmp_path / "registry.db"
    with Registry(reg) as r:
        r.add_many([Device(dev_id=0xA001, key=bytes(16), profile="station", site_name=site, households=8_000,
                           pressure_class="medium_a", state="commissioned")])
    t0 = float(int(time.time()))
    clock = {"t": t0 + 60}                                   # the service's and the watch's: one virtual clock
    audit_dir = tmp_path / "audit-command"
    cfg = cconfig.load(None, district="lixia", store=f"sqlite:///{tmp_path / 'command.db'}", registry=str(reg),
                       mqtt_port=mosquitto.port, instance="cmd-a", lease_ttl=2.0,
                       tick_interval=3600.0,                 # expiries are checked only when the test says so
                       authority={"roster": str(district.roster), "trust": str(district.trust),
                                  "replay": str(tmp_path / "replay.db"), "audit": str(audit_dir)})
    svc = CommandService(cfg, clock=lambda: clock["t"]).start()
    store = open_store(cfg.store)                            # where the web console reads shelves
    gw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw1-test")
    try:
        wait_until(svc.connected.is_set, 15, "the service to lead and connect")
        gw.connect("127.0.0.1", mosquitto.port)
        gw.loop_start()
        topic, doc = _alarm("gw1", 0xA001, 1, t0, UPSO, TRIP_STATE)
        gw.publish(topic, json.dumps(doc), qos=1).wait_for_publish(5)
        with CommandClient("127.0.0.1", mosquitto.port, "lixia", signer=_signer(district)) as client:
            iid = client.wait_match(lambda m: m["category"] == "supply_assurance", 15)["incident_id"]
            wait_until(lambda: client.board.shelves == {}, 10, "the service's shelves (none yet), retained")
            # redraws twice a second: the pilot waits for the process to idle after each key (up to 1 s)
            app = WatchApp(client, by="duty", refresh=0.5, clock=lambda: clock["t"], confirm_timeout=10)

            def status():
                return str(app.query_one("#status").render())

            def cell(col):
                return str(app.query_one("#board").get_cell_at((0, col)))

            def panel():
                return str(app.query_one("#shelves").render()) if app.query_one("#shelves").display else ""

            async def shelve(pilot, reason, minutes="30", answer="y"):
                await pilot.press("s")
                assert app.screen.__class__.__name__ == "ShelveScreen"
                app.screen.query_one("#reason").value = reason
                app.screen.query_one("#minutes").value = minutes
                await pilot.press("enter")
                if app.screen.__class__.__name__ == "ConfirmShelve":
                    await pilot.press(answer)

            async def run():
                async with app.run_test(size=(100, 30)) as pilot:
                    await until(lambda: cell(0) == "UNACK", 10, "the incident on the board")
                    assert panel() == ""
                    await shelve(pilot, "")                              # a reason is required: not sent
                    assert "a reason is required" in str(app.screen.query_one("#error").render())
                    await pilot.press("escape")
                    assert "not shelved" in status()
                    await shelve(pilot, "crew on site", answer="n")      # asked first: "no" sends nothing
                    assert "not shelved" in status()
                    await shelve(pilot, "ok")                            # the service's rule: too short
                    await until(lambda: "NOT shelved" in status(), 15, "the service's refusal")
                    assert "REFUSED by the command service" in status() and "at least 3 characters" in status()
                    assert client.board.shelves == {} and cell(0) == "UNACK"
                    await shelve(pilot, "crew on site, valve closed at the trip")
                    await until(lambda: "confirmed by the command service" in status(), 15, "the shelf confirmed")
                    await until(lambda: cell(0) == "shelf", 5, "the row marked shelved")
                    line = panel()
                    assert "by duty" in line and "30:00 left" in line and "crew on site, valve closed" in line
                    assert "…" in line and "第一调压站" in line                 # site ellipsised in the middle
                    assert store.shelves() == client.board.shelves       # what the web console reads: the same
                    assert store.shelves()[iid]["until"] == t0 + 60 + 1800
                    await pilot.press("question_mark")
                    assert "shelve" in str(app.screen.query_one("#help").render())
                    await pilot.press("escape")
                    clock["t"] = t0 + 60 + 600                           # ten minutes on
                    await until(lambda: "20:00 left" in panel(), 5, "the time left counting down")
                    clock["t"] = t0 + 60 + 1800 + 1                      # past the expiry:
                    await until(lambda: cell(0) == "UNACK", 5, "the row back in its real state")
                    assert panel() == "" and client.board.shelf(iid) is not None   # the service has not ticked
                    svc.tick_now()                                       # ... now it records the end
                    await until(lambda: client.board.shelves == {}, 10, "the service's end of the shelf")
                    assert store.shelves() == {}
                    await shelve(pilot, "gas company crew on site", minutes="60")
                    await until(lambda: cell(0) == "shelf", 15, "shelved again")
                    assert "1:00:00 left" in panel()
                    await pilot.press("s")                               # a shelved row: unshelve, asked first
                    assert app.screen.__class__.__name__ == "ConfirmShelve"
                    await pilot.press("y")
                    await until(lambda: "unshelved" in status(), 15, "the unshelving confirmed")
                    assert cell(0) == "UNACK" and store.shelves() == {} and client.board.shelves == {}
                    await pilot.press("q")
            asyncio.run(run())
        recs = [(r["type"], r["outcome"], r["source"].get("operator")) for r in AU.show(audit_dir, category="incident")]
        assert recs == [("shelve", "allowed", "duty"), ("shelve", "failed", "duty"),   # too short: refused
                        ("shelve", "allowed", "duty"), ("shelve", "done", "duty"),
                        ("shelve_expired", "info", None),                              # the service's own act
                        ("shelve", "allowed", "duty"), ("shelve", "done", "duty"),     # shelved again
                        ("shelve", "allowed", "duty"), ("shelve", "done", "duty")]     # unshelved
        log = [(e["action"], e["who"], e["outcome"].split(":")[0]) for e in store.shelf_log(iid)]
        assert log == [("shelve", "duty", "refused"), ("shelve", "duty", "accepted"), ("expired", "command", "ended"),
                       ("shelve", "duty", "accepted"), ("unshelve", "duty", "accepted")]
    finally:
        gw.loop_stop()
        gw.disconnect()
        store.close()
        svc.stop()


def _opts(port, **kw):
    """console_cli's common options (what click hands each subcommand)."""
    return {"host": "127.0.0.1", "port": port, "district": "lixia", "city": False, "username": None,
            "password": None, "cafile": None, "cert": None, "key": None, "timeout": 10.0, **kw}


def test_a_cli_command_connects_once_and_keeps_the_subscription_it_waited_for(mosquitto, monkeypatch):
    """Every `gasguard command` subcommand runs `with _client(o) as client`, and `_client` connects: `with`
    connected the same paho client again, from this thread while paho's network thread ran. That thread then
    found the socket gone, reconnected a second later and dropped what had just been subscribed (a node
    command's cmd/result subscription: 98 of 300 commands waited 1-2 s for their SUBACK, and CI once saw none
    in 10 s)."""
    import threading

    import paho.mqtt.client as mqtt

    from gasguard.command import console
    from gasguard.command.console_cli import _client
    connects = []

    class Counting(mqtt.Client):
        def reconnect(self):                   # every connection paho makes: connect() and its own retries
            connects.append((self._client_id, threading.current_thread().name))
            return super().reconnect()
    monkeypatch.setattr(console.mqtt, "Client", Counting)
    topic = "gasguard/v1/lixia/gw1/0000a001/cmd/result"
    with _client(_opts(mosquitto.port)) as client:
        got = threading.Event()
        client.client.message_callback_add(topic, lambda *a: got.set())
        client.subscribe_wait(topic, 10)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        pub.publish(topic, b"{}", qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        assert got.wait(5), "the subscription the console waited for is not in place"
        assert [c for c in connects if c[0] == client.client_id.encode()] == [(client.client_id.encode(), "MainThread")]
        with pytest.raises(RuntimeError, match="connect once"):
            client.connect()


def test_subscribe_wait_takes_a_suback_that_comes_after_its_next_try(mosquitto):
    """A broker that answers a SUBSCRIBE in more than the 2 s between tries (a stalled fsync, an overloaded
    machine) must not make every try time out: the SUBACK of an earlier try on the same connection counts."""
    import threading

    from gasguard.command.console import ConsoleError
    with CommandClient("127.0.0.1", mosquitto.port, "lixia") as client:
        on_subscribe = client.client.on_subscribe
        client.client.on_subscribe = lambda *a: threading.Timer(2.5, on_subscribe, a).start()   # 2.5 s late
        try:
            client.subscribe_wait("gasguard/v1/lixia/gw1/0000a001/cmd/result", 6)
        except ConsoleError as e:
            pytest.fail(f"a SUBACK 2.5 s late was never taken: {e}")


@pytest.fixture
def acl_broker(tmp_path):
    """A real mosquitto that logs in "op" and lets it subscribe to the district's command topics only (what
    a console subscribes to on connect), so a node's cmd/result is refused with SUBACK 0x80."""
    from gasguard.testing.mosquitto import Mosquitto, dynamic_security
    conf = dynamic_security(tmp_path / "dynsec", {"op": ("good", ["gasguard/v1/lixia/command/#"])})
    with Mosquitto(workdir=tmp_path / "broker", extra_config=conf) as broker:
        yield broker


@pytest.mark.parametrize("user, password", [("op", "wrong"), ("nobody", "good"), (None, None)])
def test_a_refused_login_ends_the_wait_at_once_and_says_what_to_check(acl_broker, user, password):
    """The broker's first CONNACK refuses a wrong password, an unknown user and an anonymous client ("Not
    authorized"); the console waited the whole --timeout (10 s) for a session that could not come."""
    import time

    from gasguard.command.console import BrokerLogin, ConsoleError
    args = ["list", "--wait", "0", "-p", str(acl_broker.port), "--timeout", "10"]
    args += ["-u", user, "-P", password] if user else []
    t0 = time.monotonic()
    r = CliRunner().invoke(command, args, env={"GASGUARD_MQTT_USERNAME": None, "GASGUARD_MQTT_PASSWORD": None})
    took = time.monotonic() - t0
    assert r.exit_code == 1, r.output
    assert took < 3, f"a refused login took {took:.1f} s to say so"
    assert "refused the login" in r.output and "Not authorized" in r.output
    if user:
        assert f"of '{user}'" in r.output and "--password" in r.output and f"credentials/{user}.password" in r.output
    else:
        assert "no anonymous clients" in r.output and "--username" in r.output
    with pytest.raises(ConsoleError, match="refused the login"):    # no session left behind to retry
        CommandClient("127.0.0.1", acl_broker.port, "lixia", login=BrokerLogin(user, password)).connect(10)


def test_a_subscription_the_brokers_acl_refuses_is_an_error_at_once(acl_broker):
    """A SUBACK 0x80 (the broker's ACL) was taken as a confirmation: a node command then waited its whole
    timeout for a result that could never reach it."""
    import time

    from gasguard.command.console import BrokerLogin, ConsoleError
    result = "gasguard/v1/lixia/gw1/0000a001/cmd/result"
    with CommandClient("127.0.0.1", acl_broker.port, "lixia", login=BrokerLogin("op", "good")) as client:
        client.subscribe_wait("gasguard/v1/lixia/command/result/gw1", 10)       # granted: still confirmed
        t0 = time.monotonic()
        with pytest.raises(ConsoleError) as e:
            client.node_command("gw1", 0xA001, {"request_id": "r1", "cmd": "status"}, 10)
        took = time.monotonic() - t0
        assert took < 3, f"a refused subscription took {took:.1f} s to say so ({e.value})"
        assert result in str(e.value) and "refused the subscription" in str(e.value)
        assert "ACL" in str(e.value) and "'op'" in str(e.value) and "0x80" in str(e.value)
        assert result not in client.extra_subs            # not asked for again on every reconnect
        assert client.subacks == {}


def test_subacks_hold_only_what_a_waiter_still_waits_for_over_reconnects(mosquitto):
    """The web console's CommandClient lives for weeks: every connect's own SUBSCRIBEs (incidents, gateways,
    shelves, results, and each subscribe_wait topic again) and every SUBACK that came after its waiter gave
    up were kept in `subacks` for good."""
    import threading

    from gasguard.command.console import ConsoleError
    from gasguard.testing.waits import wait_until
    with CommandClient("127.0.0.1", mosquitto.port, "lixia") as client:
        for n in range(1, 4):
            client.subscribe_wait(f"gasguard/v1/lixia/gw1/0000a00{n}/cmd/result", 10)
            assert client.subacks == {}
            session = client.session
            mosquitto.restart()
            wait_until(lambda: client.session > session and client.connected.is_set(), 30, "the reconnect")
            # the broker answers in order: the connect's own SUBACKs came before this one's
            client.subscribe_wait("gasguard/v1/lixia/command/result/gw1", 10)
            assert client.subacks == {}, f"after reconnect {n}"
        # a SUBACK that comes after its waiter gave up is not kept
        on_subscribe, late = client.client.on_subscribe, threading.Event()

        def slow(*a):
            def later():
                on_subscribe(*a)
                late.set()
            threading.Timer(1.0, later).start()
        client.client.on_subscribe = slow
        with pytest.raises(ConsoleError, match="did not confirm"):
            client.subscribe_wait("gasguard/v1/lixia/gw1/0000a009/cmd/result", 0.3)
        assert late.wait(5)
        assert client.subacks == {}


def test_subscriptions_the_broker_refuses_on_connect_are_logged_kept_and_reset_on_reconnect(tmp_path, caplog):
    """Nobody waits for the SUBSCRIBEs made on connect: an account that may not read the gateways' status and
    the shelves showed an empty board at the command, with nobody told. Each refusal is an ERROR (once per
    connection) and in `refused_topics`, made anew on every connect (the broker's ACL may change between)."""
    import logging

    import paho.mqtt.client as mqtt
    from gasguard.command.console import BrokerLogin
    from gasguard.testing.mosquitto import Mosquitto, dynamic_security
    from gasguard.testing.waits import wait_until
    d = "gasguard/v1/lixia/command"
    gateways, shelves = f"{d}/gateway/+", f"{d}/shelves"
    conf = dynamic_security(tmp_path / "dynsec", {"op": ("good", [f"{d}/incident/+", f"{d}/result/+"])})

    def refusals(topic):
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.ERROR and f"subscription to {topic} " in r.getMessage()]
    caplog.set_level(logging.ERROR, "gasguard.command")
    _, msgs = _incidents()
    with Mosquitto(workdir=tmp_path / "broker", extra_config=conf) as broker, \
            CommandClient("127.0.0.1", broker.port, "lixia", login=BrokerLogin("op", "good")) as client:
        wait_until(lambda: len(client.refused_topics) == 2, 10, "the refused SUBACKs")
        assert set(client.refused_topics) == {gateways, shelves}
        assert "0x80" in client.refused_topics[shelves]
        for t in (gateways, shelves):
            [text] = refusals(t)
            assert "'op'" in text and "0x80" in text and "grant it to your account" in text
        # what the account may read still works
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        BrokerLogin("op", "good").apply(pub)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        try:
            pub.publish(f"{d}/incident/{msgs[0]['incident_id']}", json.dumps(msgs[0]), qos=1).wait_for_publish(5)
        finally:
            pub.disconnect()
            pub.loop_stop()
        wait_until(lambda: client.board.get(msgs[0]["incident_id"]) is not None, 10, "the incident")
        assert not refusals(f"{d}/incident/+") and not refusals(f"{d}/result/+")

        # the gateways granted meanwhile: the reconnect's SUBACKs replace what was refused, shelves said again
        dynamic_security(tmp_path / "dynsec", {"op": ("good", [f"{d}/incident/+", f"{d}/result/+", gateways])})
        session = client.session
        broker.restart()
        # every SUBACK of the reconnect answered (result/+ is subscribed after the shelves: its SUBACK may come
        # after the shelves' refusal is logged)
        wait_until(lambda: client.session > session and len(refusals(shelves)) == 2 and not client.connect_subs, 30,
                   "the reconnect's SUBACKs")
        assert client.refused_topics == {shelves: client.refused_topics[shelves]}
        assert len(refusals(gateways)) == 1


def test_watch_says_which_topics_the_broker_refuses_this_console_and_not_once_granted(tmp_path):
    """The field console showed an empty board when the broker's ACL refused its subscriptions (SUBACK 0x80):
    to an operator in a van that reads as a quiet district. It now says so on screen, in the web console's
    words, and says nothing once the broker grants everything (after the admin fixed the ACL and the reconnect)."""
    import asyncio

    from gasguard.command.console import BrokerLogin
    from textual.widgets import Static

    from gasguard.command.watch import WatchApp
    from gasguard.testing.mosquitto import Mosquitto, dynamic_security
    from gasguard.testing.waits import until, wait_until
    d = "gasguard/v1/lixia/command"
    shelves = f"{d}/shelves"
    conf = dynamic_security(tmp_path / "dynsec", {"op": ("good", [f"{d}/incident/+", f"{d}/result/+",
                                                                   f"{d}/gateway/+"])})
    with Mosquitto(workdir=tmp_path / "broker", extra_config=conf) as broker, \
            CommandClient("127.0.0.1", broker.port, "lixia", login=BrokerLogin("op", "good")) as client:
        app = WatchApp(client, by="duty", refresh=0.05)

        def refused():
            """The refusal line wherever the watch shows it (any shown text on its screen), or ""."""
            shown = [str(w.render()) for w in app.screen.query(Static) if w.display]
            return next((t for t in shown if t.startswith("the broker refuses")), "")

        async def run():
            async with app.run_test(size=(100, 30)) as pilot:
                line = await until(refused, 10, "the refusal on the watch")
                assert line.startswith("the broker refuses this console's account ")
                assert f"{shelves} (" in line and "0x80" in line and "grant" in line
                assert "gateway" not in line and "incident" not in line and "result" not in line
                # the admin grants the rest; the broker comes back with it, the console reconnects
                dynamic_security(tmp_path / "dynsec", {"op": ("good", [f"{d}/#"])})
                session = client.session
                await asyncio.to_thread(broker.restart)
                await asyncio.to_thread(wait_until, lambda: client.session > session and not client.connect_subs,
                                        30, "the reconnect's SUBACKs")
                assert client.refused_topics == {}
                await until(lambda: not refused(), 10, "the refusal gone from the watch")
                await pilot.press("q")
        asyncio.run(run())


def test_watch_cli_logs_to_a_private_file_the_refusal_line_and_help_name(tmp_path, district, monkeypatch):
    """`gasguard command watch` set up no logging: the client's warning of a refused subscription (with what to
    ask the broker's admin) went to Python's last-resort stderr handler, under the TUI, while the line on screen
    said "the console's log says how". It now logs to a file in the user's state directory (0600 in a 0700
    folder), never to the terminal, and the refusal line and the help screen name that file."""
    import os
    import stat

    from textual.widgets import Static

    from gasguard.command.console import BrokerLogin
    from gasguard.command.watch import WatchApp
    from gasguard.testing.mosquitto import Mosquitto, dynamic_security
    from gasguard.testing.waits import until
    d = "gasguard/v1/lixia/command"
    conf = dynamic_security(tmp_path / "dynsec", {"op": ("s3cret-pw", [f"{d}/incident/+", f"{d}/result/+",
                                                                       f"{d}/gateway/+"])})
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    log = tmp_path / "state" / "gasguard" / "watch.log"
    seen: dict = {}

    def shown(app, start):
        return next((str(w.render()) for w in app.screen.query(Static)
                     if w.display and str(w.render()).lstrip().startswith(start)), "")

    async def drive(pilot):
        """The operator's side: the refusal on screen, the help; the test's: the log file meanwhile."""
        app = pilot.app
        try:
            seen["line"] = await until(lambda: shown(app, "the broker refuses"), 10, "the refusal on the watch")
            seen["log"] = await until(lambda: log.exists() and "refused the subscription" in log.read_text()
                                      and log.read_text(), 10, "the refusal in the log file")
            await pilot.press("question_mark")
            seen["help"] = await until(lambda: shown(app, "GasGuard field console"), 10, "the help screen")
            await pilot.press("escape")
        except Exception as e:          # said after the run: an exception here would only end the app
            seen["error"] = e
        app.exit()

    run = WatchApp.run
    monkeypatch.setattr(WatchApp, "run", lambda self: run(self, headless=True, size=(120, 40), auto_pilot=drive))
    with Mosquitto(workdir=tmp_path / "broker", extra_config=conf) as broker:
        r = CliRunner().invoke(command, ["watch", "--port", str(broker.port), "--username", "op", "--password",
                                         "s3cret-pw", "--refresh", "0.05", *_cli_as(district)])
    assert "error" not in seen, seen.get("error")
    assert r.exit_code == 0, r.output
    assert "refused the subscription" not in r.output and "SUBACK" not in r.output    # not on the terminal
    line, text = seen["line"], seen["log"]
    assert line.endswith(f"ask the broker's admin to grant them (the console's log, {log}, says how)"), line
    assert f"{d}/shelves (" in line
    # the client's whole warning, what to ask the admin included; no password, no key
    warning = next(ln for ln in text.splitlines() if "refused the subscription" in ln)
    assert "level=error" in warning and "logger=gasguard.command" in warning
    assert f"{d}/shelves" in warning and "login 'op'" in warning and "ask the broker's admin" in warning
    assert "docs/OPERATORS.md section 5" in warning and "or log in as an account that has it" in warning
    assert "s3cret-pw" not in text and "PRIVATE KEY" not in text
    assert str(log) in " ".join(seen["help"].split())
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600 and stat.S_IMODE(os.stat(log.parent).st_mode) == 0o700
