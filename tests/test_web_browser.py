"""The web console in a real headless Chromium, end to end. One browser for the module.

- a substation working alone: a signed leak frame over a real pty into the real gateway daemon (grading
  plugin on, the district's authority configured), its incident through a real mosquitto onto the board of
  a logged-in operator within 2 s, who acknowledges it; the console signs on their behalf, the gateway
  verifies and confirms, and its hash-chained audit record names the operator (and the console's too);
- a district: the same frame through a plain gateway to the real command service (leader, SQLite store,
  the authority's Gate), read from its store; the acknowledgement signed by the console on behalf of the
  operator, verified and applied by the leader, whose hash-chained audit record names them; then shelved from
  the incident page, held by the service and shown apart on the board;
- the gateway line, live: in a district the real gateway stops (OFFLINE, when last heard) and starts again
  (the warning goes); over MQTT the command's messages on a silent gateway and on an id two gateways share;
- pages need a login, print without controls, and a forged form is refused."""

from __future__ import annotations

import contextlib
import json
import re
import time
from types import SimpleNamespace

import pytest

from gasguard.command.web.app import WebConfig, create_app
from gasguard.command.web.login import new_password_file
from gasguard.command.web.source import MqttSource
from gasguard.gateway import config as gwconfig
from gasguard.gateway.daemon import Daemon
from gasguard.registry.model import Device, Registry
from gasguard.testing.config import write_config
from gasguard.testing.gateway import DaemonThread
from gasguard.testing.links import PtyCable
from gasguard.testing.node import Node
from gasguard.testing.subscriber import Subscriber
from gasguard.testing.waits import wait_until
from gasguard.testing.webserver import WebServer
from web_helpers import RecordingActing, quick_hasher

pytestmark = pytest.mark.mosquitto

OPERATOR, PASSWORD = "wang.li", "correct horse battery"
LEAK_SITE = "文化东路12号 3单元 502室 (Wenhua East Road 12, unit 3, flat 502)"


def _gateway(tmp_path, mosquitto, grading=True, authority=None):
    """A home and its regulator station in the registry, a pty cable, the gateway's configuration: grading
    plugin on (a substation working alone) or off (a district: the command service grades)."""
    station, home = Node(0xA001), Node(0x100001)
    with Registry(tmp_path / "registry.db") as r:
        r.add_many([
            Device(dev_id=station.dev, key=station.key, profile="station", site_name="燕山调压站",
                   address="历下区燕山立交桥东", lat=36.659, lon=117.062, households=8_000,
                   pressure_class="subhigh_a", state="commissioned"),
            Device(dev_id=home.dev, key=home.key, profile="household", site_name=LEAK_SITE,
                   address="历下区文化东路12号", lat=36.662, lon=117.071, households=1,
                   upstream=station.dev, state="commissioned"),
        ])
    cable = PtyCable(tmp_path / "ttyGG0")
    cfg = gwconfig.load(write_config(
        tmp_path / "gateway.toml", registry=tmp_path / "registry.db", spool=tmp_path / "spool.db",
        mqtt_port=mosquitto.port, serial=[str(cable.link)], gateway_id="sub-017", district="lixia",
        extra='[metrics]\ntick_interval = 0.1\n' + ('\n[plugins.grading]\nreporter_unit = "历下区住房和城乡建设局"\n'
                                                  if grading else "")
        + (f'\n[authority]\nroster = "{authority.roster}"\ntrust = "{authority.trust}"\n' if authority else "")))
    return home, cable, cfg


@contextlib.contextmanager
def _district(tmp_path, mosquitto, chromium):
    """A district on a board in the browser: the gateway (no grading plugin) on a pty, the real command service
    (leader, SQLite store, the authority's Gate), the console reading its store (its own connection, as
    `web serve` opens it), served, the operator logged in and the board's event stream up. Yields home, cable,
    auth, svc, source, web and gateway (the running DaemonThread; `start_gateway()` starts another)."""
    from gasguard.command import config as cconfig
    from gasguard.command.service import CommandService
    from gasguard.command.store import open_store
    from gasguard.command.web.source import StoreSource
    from gasguard.testing.webconsole import Authority
    home, cable, gw_cfg = _gateway(tmp_path, mosquitto, grading=False)
    d = SimpleNamespace(home=home, cable=cable, start_gateway=lambda: DaemonThread(Daemon(gw_cfg)), source=None)
    d.gateway = d.start_gateway()
    d.auth = Authority(tmp_path / "authority", "lixia", {OPERATOR: ("operator", "王丽")})
    url = f"sqlite:///{tmp_path / 'command.db'}"
    d.svc = CommandService(cconfig.load(None, district="lixia", store=url, registry=str(tmp_path / "registry.db"),
                                        mqtt_port=mosquitto.port, tick_interval=0.1, instance="cmd-a", lease_ttl=2.0,
                                        authority=d.auth.command_table())).start()
    try:
        wait_until(d.svc.connected.is_set, 15, "the command service leads and connects")
        d.gateway.wait_ports()
        d.source = StoreSource(open_store(url), "lixia", poll_s=0.05).start()
        book = new_password_file(tmp_path / "pw.json", OPERATOR, PASSWORD, quick_hasher())
        with WebServer(create_app(WebConfig(district="lixia"), d.source, d.auth.acting(), book)) as d.web:
            chromium.reset()
            _login(chromium, d.web.url)
            chromium.wait_css("#live.on", 10)
            yield d
            chromium.reset()
    finally:
        if d.source is not None:
            d.source.close()
        d.gateway.stop()
        cable.close()
        d.svc.stop()


def _login(browser, url, operator=OPERATOR, password=PASSWORD):
    d = browser.driver
    d.get(url + "/")
    browser.wait_css("#operator-id", 5)
    d.find_element("id", "operator-id").send_keys(operator)
    d.find_element("id", "password").send_keys(password)
    d.find_element("id", "login").click()


def test_leak_reaches_the_board_and_is_acknowledged_by_the_logged_in_operator(tmp_path, mosquitto, chromium):
    from gasguard.authority import audit
    from gasguard.testing.webconsole import Authority
    auth = Authority(tmp_path / "authority", "lixia", {OPERATOR: ("operator", "王丽")})
    home, cable, cfg = _gateway(tmp_path, mosquitto, authority=auth)    # the gateway checks signatures
    daemon_sub = Subscriber(mosquitto.port, "gasguard/v1/lixia/command/incident/+")
    runner = DaemonThread(Daemon(cfg))
    source = MqttSource("127.0.0.1", mosquitto.port, "lixia").start(10)
    acting = auth.acting()
    book = new_password_file(tmp_path / "console-passwords.json", OPERATOR, PASSWORD, quick_hasher())
    app = create_app(WebConfig(district="lixia"), source, acting, book)
    try:
        runner.wait_ports()
        with WebServer(app) as web:
            chromium.reset()
            _login(chromium, web.url, password="wrong")
            chromium.wait_css("#login-error", 5, "wrong")                 # refused, and said so
            _login(chromium, web.url)
            chromium.wait_css("#live.on", 10)                              # the board's event stream is up
            assert chromium.wait_css("#empty", 2)[0].is_displayed()

            sent = time.monotonic()
            cable.send(home.alarm(code=2, value=300))                    # gas_l2: the node shut its valve
            row = chromium.wait_css("#rows tr", 2, LEAK_SITE)[0]         # full name, within 2 s of the frame
            seen_s = time.monotonic() - sent
            assert row.get_attribute("data-state") == "unacknowledged"
            assert "BLUE" in row.text and "IV" in row.text and "安全事故类" in row.text
            assert row.find_element("css selector", "td.deadline").text.startswith("19:")   # 20' counting down

            chromium.click_css("#rows tr", 5, LEAK_SITE, ".ack-button")  # asks first ...
            confirm = chromium.wait_css("#confirm-ack", 5)[0]
            assert OPERATOR in confirm.text
            confirm.click()                                               # ... acts on the confirmation
            flash = chromium.wait_css("#flash", 15, "confirmed")[0]
            assert "confirmed at revision" in flash.text, flash.text          # not "NOT confirmed"
            row = chromium.wait_css("#rows tr[data-state=acknowledged]", 3)[0]
            assert OPERATOR in row.text and "acked in time" in row.text   # deadlines stop counting

            # the gateway itself confirmed: its own publication carries the acknowledgement
            pubs = daemon_sub.wait(lambda ms: [d for _, d, _ in ms if d.get("acked")], 5)
            assert pubs[-1]["acked"]["by"] == OPERATOR
            iid = pubs[-1]["incident_id"]
            # the gateway verified the console's signature for the operator: its audit record names them
            recs = [(r["type"], r["outcome"], r["source"].get("operator"), r["source"].get("console"))
                    for r in audit.show(tmp_path / "audit", category="incident")]
            assert ("ack", "allowed", OPERATOR, auth.console_id) in recs
            assert audit.verify(tmp_path / "audit")["ok"]
            # and the console's own record: the refused login, the login, the act
            console = [(r["type"], r["outcome"], r["source"].get("operator")) for r in auth.records()]
            assert [c for c in console if c[0] in ("login", "ack")] == [
                ("login", "refused", OPERATOR), ("login", "allowed", OPERATOR), ("ack", "done", OPERATOR)]
            print(f"leak frame -> board row: {seen_s * 1000:.0f} ms")
            chromium.reset()
    finally:
        source.close()
        daemon_sub.close()
        runner.stop()
        cable.close()


def test_district_path_leak_through_the_command_service_signed_ack_on_the_audit_record(tmp_path, mosquitto,
                                                                                      chromium):
    """In a district: gateway (no grading plugin) -> broker -> the command service (leader, SQLite store, the
    authority's Gate) -> its store -> this console; the acknowledgement goes back through the store as a signed
    request the leader verifies, applies and audits with the operator's name."""
    from gasguard.authority import audit
    with _district(tmp_path, mosquitto, chromium) as dist:
        sent = time.monotonic()
        dist.cable.send(dist.home.alarm(code=2, value=300))
        chromium.wait_css("#rows tr", 2, LEAK_SITE)
        print(f"leak frame -> service -> store -> board row: {(time.monotonic() - sent) * 1000:.0f} ms")
        chromium.click_css("#rows tr", 5, LEAK_SITE, ".ack-button")   # (the row may be redrawn meanwhile)
        chromium.click_css("#confirm-ack", 5)
        flash = chromium.wait_css("#flash", 15, "confirmed")[0]
        assert "confirmed at revision" in flash.text, flash.text
        chromium.wait_css("#rows tr[data-state=acknowledged]", 3, OPERATOR)
        iid = dist.source.snapshot()[0]["incident_id"]
        chromium.driver.get(f"{dist.web.url}/incidents/{iid}")         # the service's journal names them
        chromium.wait_css("#journal tr", 5, OPERATOR)
        # shelving from the incident page: the service holds it, the board shows it apart, with who and why
        d = chromium.driver
        d.find_element("id", "shelve-reason").send_keys("crew on site")
        d.find_element("id", "shelve-minutes").clear()
        d.find_element("id", "shelve-minutes").send_keys("45")
        d.find_element("id", "shelve").click()
        chromium.wait_css("#flash", 15, "shelved until")
        chromium.wait_css("#shelved-rows tr", 5, f"shelved by {OPERATOR}: crew on site")
        assert dist.svc.store.shelves()[iid]["by"] == OPERATOR
        assert [a["outcome"] for a in dist.svc.store.get_incident(iid)["acks"]] == ["accepted"]
    recs = [(r["type"], r["outcome"], r["source"].get("operator"), r["source"].get("console"))
            for r in audit.show(dist.auth.dir / "audit-command", category="incident")]
    assert ("ack", "allowed", OPERATOR, dist.auth.console_id) in recs          # the leader's record names them
    assert ("shelve", "allowed", OPERATOR, dist.auth.console_id) in recs
    assert audit.verify(dist.auth.dir / "audit-command")["ok"]


def test_a_press_and_the_keyboard_focus_on_a_row_survive_the_boards_redraws(tmp_path, mosquitto, chromium):
    """The board draws its rows anew at least once a second. Keyboard focus on a row's Acknowledge link stays on it
    across redraws, and a press held on it across a redraw still clicks it: the boards that come meanwhile wait for
    the release (before, the row under the pointer was replaced and the click was lost)."""
    from selenium.webdriver.common.action_chains import ActionChains
    with _district(tmp_path, mosquitto, chromium) as dist:
        dist.cable.send(dist.home.alarm(code=2, value=300))
        chromium.wait_css("#rows tr", 5, LEAK_SITE)
        d = chromium.driver
        iid = dist.source.snapshot()[0]["incident_id"]
        board_at = lambda drv: drv.execute_script("return document.body.dataset.boardAt")  # noqa: E731
        chromium.wait(lambda drv: drv.execute_script(
            "const a = document.querySelector('#rows tr .ack-button'); if (a) a.focus(); return !!a"), 5, "focus")
        for _ in range(2):                                   # two redraws
            at = board_at(d)
            chromium.wait(lambda drv: board_at(drv) != at, 5, "the board redrawn")
        assert d.execute_script("const a = document.activeElement; return a.classList.contains('ack-button') "
                                "&& a.closest('tr').dataset.incident") == iid

        def press(drv):
            link = drv.find_element("css selector", "#rows tr .ack-button")
            ActionChains(drv).move_to_element(link).click_and_hold().perform()
            return True
        chromium.wait(press, 5, "a press on the Acknowledge link")
        chromium.wait(lambda drv: drv.execute_script("return document.body.dataset.pending") == "1", 5,
                      "a board held back while the pointer is down")
        ActionChains(d).release().perform()
        chromium.wait(lambda drv: "/ack" in drv.current_url, 5, "the Acknowledge page")


def _gateway_line(browser, summary: str, warnings: list[tuple[str, str, str]], timeout: float) -> None:
    """Wait until the board's gateway line reads `summary` then exactly `warnings` ((gateway, kind, text
    pattern) each) and is in warning colours if and only if there are any."""
    def shown(d):
        line = d.find_element("id", "gateways")
        if not line.is_displayed() or line.find_element("css selector", ".gw-summary").text != summary:
            return False
        got = [(w.get_attribute("data-gateway"), w.get_attribute("class"), w.text)
               for w in line.find_elements("css selector", ".gw-warning")]
        return (len(got) == len(warnings) and ("bad" in line.get_attribute("class").split()) == bool(warnings)
                and all(g == gid and f"gw-{kind}" in cls.split() and re.fullmatch(pattern, text)
                        for (g, cls, text), (gid, kind, pattern) in zip(got, warnings)))
    browser.wait(shown, timeout, f"the gateway line {summary!r} with {warnings}")


def test_a_gateway_stopped_and_started_again_shows_on_the_district_board_live(tmp_path, mosquitto, chromium):
    """In a district: the real gateway stops (its clean stop says offline, as its Last Will would); the command
    service records it in its store, and the board already open in the browser says OFFLINE with when it was
    last heard, in warning colours; the gateway starts again and the warning goes. No reload in between."""
    with _district(tmp_path, mosquitto, chromium) as dist:
        _gateway_line(chromium, "gateways: 1 heard", [], 10)            # its birth, through the service
        chromium.driver.execute_script("window.sameBoard = true")       # gone if the page were loaded again
        dist.gateway.stop()
        _gateway_line(chromium, "gateways: 0 heard",
                      [("sub-017", "offline", r"OFFLINE sub-017 \(last heard \d\d:\d\d:\d\d\)")], 10)
        dist.gateway = dist.start_gateway()
        dist.gateway.wait_ports()
        _gateway_line(chromium, "gateways: 1 heard", [], 10)
        assert chromium.driver.execute_script("return window.sameBoard === true"), "the board was reloaded"


def test_silent_and_shared_gateways_show_on_a_board_over_mqtt_live(tmp_path, mosquitto, chromium):
    """A console on MQTT (MqttSource) gets the command's gateway messages, here the real grader's, published
    to a real mosquitto as the service publishes them: two gateways heard; then one SILENT (with when it was last
    heard) and the other's id used by two gateway processes (SHARED, their hosts); then both fine again and
    the warning gone, on the board already open."""
    from paho.mqtt import publish
    from web_helpers import T0, GatewayGrader
    gg = GatewayGrader(tmp_path)

    def tell(msgs):
        publish.multiple([{"topic": t, "payload": json.dumps(m), "qos": 1} for t, m in msgs],
                         hostname="127.0.0.1", port=mosquitto.port)
    source = MqttSource("127.0.0.1", mosquitto.port, "lixia").start(10)
    book = new_password_file(tmp_path / "pw.json", OPERATOR, PASSWORD, quick_hasher())
    app = create_app(WebConfig(district="lixia"), source, RecordingActing({OPERATOR: {"role": "operator"}}), book)
    try:
        with WebServer(app) as web:
            chromium.reset()
            _login(chromium, web.url)
            chromium.wait_css("#live.on", 10)
            assert not chromium.driver.find_element("id", "gateways").is_displayed()   # none heard: nothing said
            chromium.driver.execute_script("window.sameBoard = true")
            tell(gg.status("gw03", True, T0, "a1", "sub-17") + gg.status("gw07", True, T0 + 1, "c1", "sub-20"))
            _gateway_line(chromium, "gateways: 2 heard", [], 5)
            # a copy of gw03's configuration started on sub-18: the two take the id from each other
            tell(gg.status("gw03", True, T0 + 150, "b1", "sub-18") + gg.status("gw03", True, T0 + 151, "a1", "sub-17"))
            tell(gg.tick(T0 + 200))                                  # gw07 not heard for more than 180 s
            _gateway_line(chromium, "gateways: 0 heard", [
                ("gw03", "shared", re.escape("gw03 SHARED BY 2 GATEWAYS (sub-17, sub-18)")),
                ("gw07", "silent", re.escape("SILENT gw07 (last heard 10:13:21)"))], 5)   # T0 + 1, the district's time
            # gw07 back; gw03's copy stopped long enough ago that the command says so
            tell(gg.status("gw07", True, T0 + 800, "c1", "sub-20") + gg.status("gw03", True, T0 + 801, "a1", "sub-17"))
            _gateway_line(chromium, "gateways: 2 heard", [], 5)
            assert chromium.driver.execute_script("return window.sameBoard === true"), "the board was reloaded"
            chromium.reset()
    finally:
        source.close()
        gg.close()


def test_pages_need_a_login_print_without_controls_and_a_forged_form_is_refused(tmp_path, chromium):
    from web_helpers import STATIONS, T0, EngineSource, alarm
    clock = {"t": T0}
    source = EngineSource(lambda: clock["t"])
    source.observe(alarm(STATIONS[0], T0, 4, ptrip=True, value=900))
    acting = RecordingActing({OPERATOR: {"name": "王丽", "role": "operator"}})
    book = new_password_file(tmp_path / "pw.json", OPERATOR, PASSWORD, quick_hasher())
    app = create_app(WebConfig(), source, acting, book, stations=lambda: STATIONS, clock=lambda: clock["t"])
    iid = next(iter(source.latest))
    with WebServer(app) as web:
        chromium.reset()
        chromium.driver.get(f"{web.url}/incidents/{iid}")
        chromium.wait_css("#operator-id", 5)                              # sent to the login page ...
        _login(chromium, web.url)
        chromium.wait_css("#live", 5)
        chromium.driver.get(f"{web.url}/incidents/{iid}")
        chromium.wait_css("#input-form", 5)
        # on paper: the report and the facts, no controls (print stylesheet)
        d = chromium.driver
        d.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        assert d.find_element("id", "report-zh").is_displayed() and d.find_element("id", "timeline").is_displayed()
        assert not d.find_element("id", "input-form").is_displayed() and not d.find_element("id", "ack").is_displayed()
        assert "Printed by wang.li" in d.find_element("css selector", ".printed-by").text
        d.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
        # the token of this form is replaced by another one: the console refuses the post
        chromium.driver.execute_script("document.querySelector('#input-form input[name=csrf]').value = 'forged'")
        chromium.driver.find_element("id", "f-deaths").send_keys("1")
        chromium.driver.find_element("id", "send-input").click()
        chromium.wait_css("body", 5, "CSRF token missing or wrong")
        wait_until(lambda: any(r["type"] == "csrf" for r in acting.records), 2, "CSRF refusal audited")
        assert source.sent == []                                          # nothing reached the command
        chromium.reset()
