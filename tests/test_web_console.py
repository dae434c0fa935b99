"""The web console's pages and acts over HTTP (Starlette's test client; the browser tests are in
test_web_browser.py): login and lockout, CSRF, acknowledgement only on confirmation, operator input with
errors at the field and the command's rejection shown as such, shelving audited, the flood banner."""

import re

import pytest
from starlette.testclient import TestClient

from gasguard.command.web.app import WebConfig, create_app
from gasguard.command.web.alarms import FloodConfig
from gasguard.command.web.login import LockoutConfig, new_password_file
from web_helpers import STATIONS, T0, EngineSource, RecordingActing, alarm, device, quick_hasher

OP, PW = "wang.li", "correct horse battery"


@pytest.fixture
def console(tmp_path):
    clock = {"t": T0}
    src = EngineSource(lambda: clock["t"])
    src.observe(alarm(STATIONS[0], T0, 4, ptrip=True, value=900))
    acting = RecordingActing({OP: {"name": "王丽", "role": "operator"}, "zhao.viewer": {"role": "viewer"}})
    book = new_password_file(tmp_path / "pw.json", OP, PW, quick_hasher())
    book.set("zhao.viewer", PW)
    cfg = WebConfig(lockout=LockoutConfig(max_failures=3, window_s=600, lockout_s=900),
                    flood=FloodConfig(window_s=600, start_above=3, end_below=2), confirm_timeout_s=1)
    app = create_app(cfg, src, acting, book, stations=lambda: STATIONS, clock=lambda: clock["t"])
    with TestClient(app) as client:
        yield client, src, acting, clock


def _csrf(client, path="/login"):
    return re.search(r'name="csrf" value="([^"]+)"', client.get(path).text).group(1)


def _login(client, op=OP, pw=PW):
    return client.post("/login", data={"operator": op, "password": pw, "csrf": _csrf(client)})


def test_lockout_after_repeated_failures_even_with_the_right_password(console):
    client, src, acting, clock = console
    assert client.get("/").url.path == "/login"                              # nothing without a login
    for _ in range(3):
        assert _login(client, pw="guess").status_code == 401
    r = _login(client)                                                       # right password, locked out
    assert r.status_code == 429 and "locked" in r.text
    clock["t"] += 901
    assert _login(client).url.path == "/"
    outcomes = [(r["type"], r["outcome"]) for r in acting.records if r["category"] == "access"]
    assert outcomes == [("login", "refused")] * 4 + [("login", "allowed")]
    assert "now locked out" in acting.records[2]["reason"]


def test_login_without_the_pages_csrf_token_is_refused_and_a_new_session_follows_login(console):
    client, *_ = console
    r = client.post("/login", data={"operator": OP, "password": PW, "csrf": "forged"})
    assert r.status_code == 403
    before = client.cookies.get("gg_session")
    _login(client)
    assert client.cookies.get("gg_session") != before


def test_acknowledge_needs_the_confirmation_and_waits_for_the_command(console):
    client, src, acting, clock = console
    _login(client)
    iid = next(iter(src.latest))
    tok = _csrf(client, "/")
    r = client.post(f"/incidents/{iid}/ack", data={"csrf": tok, "revision": 1})      # no confirm=yes
    assert r.url.path == f"/incidents/{iid}/ack" and "Acknowledge this incident?" in r.text
    assert src.sent == []
    r = client.post(f"/incidents/{iid}/ack", data={"csrf": tok, "revision": 1, "confirm": "yes"})
    assert "confirmed at revision 2" in r.text
    assert src.get(iid)["acked"]["by"] == OP
    assert acting.signed[-1][:3] == (OP, "gasguard/v1/lixia/command/ack/" + iid, acting.signed[-1][2])


def test_operator_input_errors_are_shown_at_their_field_and_nothing_is_sent(console):
    client, src, acting, clock = console
    _login(client)
    iid = next(iter(src.latest))
    r = client.post(f"/incidents/{iid}/input", data={"csrf": _csrf(client, "/"), "deaths": "two",
                                                      "evacuated": "-5", "on_site_lead": "张三"})
    assert r.status_code == 422 and src.sent == []
    assert re.search(r'id="e-deaths">a whole number', r.text)
    assert re.search(r'id="e-evacuated">cannot be negative', r.text)
    assert 'value="张三"' in r.text                                          # what was typed is kept


def test_input_the_command_rejects_is_shown_as_rejected_not_as_sent(console):
    client, src, acting, clock = console
    _login(client)
    iid = next(iter(src.latest))
    # the command refuses a field this console version does not know (a newer form, an older gateway)
    orig = acting.sign
    acting.sign = lambda op, topic, body, **kw: orig(op, topic, {**body, "casualty_note": "x"}, **kw)
    r = client.post(f"/incidents/{iid}/input", data={"csrf": _csrf(client, "/"), "deaths": "1"})
    assert r.status_code == 409 and "REJECTED by the command" in r.text
    assert [r["outcome"] for r in acting.records if r["type"] == "input"] == ["refused"]
    acting.sign = orig
    r = client.post(f"/incidents/{iid}/input", data={"csrf": _csrf(client, "/"), "deaths": "3"})
    assert "Applied: deaths" in r.text and "level III" in r.text             # 3 deaths: level III (1.6.2.3)


def test_a_viewer_may_not_act_and_the_refusal_is_audited(console):
    client, src, acting, clock = console
    _login(client, op="zhao.viewer")
    iid = next(iter(src.latest))
    r = client.post(f"/incidents/{iid}/ack", data={"csrf": _csrf(client, "/"), "revision": 1, "confirm": "yes"})
    assert r.status_code == 403 and src.sent == []
    assert acting.records[-1]["outcome"] == "refused" and acting.records[-1]["operator"] == "zhao.viewer"


def test_shelving_hides_with_reason_until_expiry_audited_and_a_flood_raises_the_banner(console):
    client, src, acting, clock = console
    _login(client)
    iid = next(iter(src.latest))
    tok = _csrf(client, "/")
    r = client.post(f"/incidents/{iid}/shelve", data={"csrf": tok, "reason": "", "minutes": "30"})
    assert r.status_code == 422 and "write why" in r.text
    client.post(f"/incidents/{iid}/shelve", data={"csrf": tok, "reason": "crew on site", "minutes": "30"})
    rows = client.get("/api/board").json()["rows"]
    assert rows[0]["state"] == "shelved" and rows[0]["shelf"]["reason"] == "crew on site"
    rec = acting.records[-1]
    assert (rec["type"], rec["outcome"], rec["operator"], rec["until"]) == ("shelve", "allowed", OP, T0 + 1800)
    clock["t"] += 1800
    assert client.get("/api/board").json()["rows"][0]["state"] == "unacknowledged"

    assert client.get("/api/board").json()["flood"]["flood"] is False
    for k in range(4):                                   # 4 new alarms, far apart: 4 incidents
        src.observe(alarm(device(0x200000 + k, profile="household", site=f"泉城路{k}号", lat=36.6 + k / 10,
                                 lon=117.0), clock["t"], 2))
    board = client.get("/api/board").json()
    assert board["flood"]["flood"] is True and board["flood"]["count"] == 4


def test_the_flood_banner_counts_alarms_joining_an_incident_not_only_new_incidents(console):
    """ISA-18.2 counts annunciations: homes joining one leak cluster are alarms each (the fixture's flood
    starts above 3 alarms in 10 minutes), a revision that adds no alarm counts nothing."""
    client, src, acting, clock = console
    _login(client)

    def home(k):                               # within 200 m of each other: one leak cluster (plan 1.6.1.1)
        return device(0x300000 + k, profile="household", site=f"文化东路{k}号", lat=36.66, lon=117.07)
    for k in range(3):
        src.observe(alarm(home(k), clock["t"] + k, 2))
    board = client.get("/api/board").json()
    leaks = [r for r in board["rows"] if r["category"] == "safety_accident"]
    assert len(leaks) == 1 and board["flood"]["count"] == 3 and board["flood"]["flood"] is False   # not above 3
    src.acknowledge(leaks[0]["incident_id"], b'{"by": "wang.li"}', 5)      # a new revision, no new alarm
    assert client.get("/api/board").json()["flood"]["count"] == 3
    src.observe(alarm(home(3), clock["t"] + 3, 2))                          # a fourth home joins the cluster
    board = client.get("/api/board").json()
    assert len([r for r in board["rows"] if r["category"] == "safety_accident"]) == 1
    assert board["flood"] == {**board["flood"], "flood": True, "count": 4}
    clock["t"] += 601                                                       # ten minutes on: over
    assert client.get("/api/board").json()["flood"]["flood"] is False


def test_password_file_holds_argon2id_hashes_only_readable_by_the_console(tmp_path):
    import json

    from gasguard.command.web.login import PasswordBook, PasswordFileError
    from web_helpers import quick_hasher
    p = tmp_path / "pw.json"
    book = new_password_file(p, OP, PW, quick_hasher())
    assert p.stat().st_mode & 0o777 == 0o600
    stored = json.loads(p.read_text())["hashes"][OP]
    assert stored.startswith("$argon2id$") and PW not in p.read_text()
    assert book.verify(OP, PW) and not book.verify(OP, PW + "x") and not book.verify("nobody", PW)
    p.chmod(0o644)
    with pytest.raises(PasswordFileError, match="chmod 600"):
        PasswordBook(p, quick_hasher())


def test_an_idle_session_ends_and_says_so_on_the_record(console):
    client, src, acting, clock = console
    _login(client)
    assert client.get("/").url.path == "/"
    clock["t"] += 8 * 3600 + 1                                              # a shift without a click
    assert client.get("/").url.path == "/login"
    assert (acting.records[-1]["type"], acting.records[-1]["reason"]) == ("session_end", "idle")


def test_check_config_names_the_key_and_the_fix(tmp_path):
    from click.testing import CliRunner

    from gasguard.command.web.cli import web
    cfg = tmp_path / "web.toml"
    cfg.write_text('[web]\nport = 8080\nlockuot = { max_failures = 3 }\n')
    r = CliRunner().invoke(web, ["check-config", "-c", str(cfg)])
    assert r.exit_code == 2 and "web.lockuot: unknown key; did you mean 'lockout'?" in r.output
    cfg.write_text('[web]\nflood = { start_above = 4, end_below = 9 }\n')
    r = CliRunner().invoke(web, ["check-config", "-c", str(cfg)])
    assert r.exit_code == 2 and "end_below must not exceed start_above" in r.output
    cfg.write_text('[web]\nport = 8081\ndistrict = "lixia"\nflood = { start_above = 20, end_below = 8 }\n')
    r = CliRunner().invoke(web, ["check-config", "-c", str(cfg)])
    assert r.exit_code == 0 and "127.0.0.1:8081, district lixia" in r.output
    assert (tmp_path / "console-session.key").stat().st_mode & 0o777 == 0o600


def test_pages_forbid_outside_scripts_framing_and_caching(console):
    client, *_ = console
    r = client.get("/login")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    assert "onclick" not in r.text and "<script>" not in r.text


def test_acts_are_signed_by_the_console_for_the_operator_checked_and_on_both_audit_records(tmp_path):
    """The real authority: a signed roster, the console's own key signing on behalf of the logged-in operator,
    a Gate where the act is applied (as the command service checks it), hash-chained audit logs."""
    from gasguard.authority import audit
    from gasguard.testing.webconsole import Authority
    auth = Authority(tmp_path / "authority", "lixia", {OP: ("operator", "王丽"), "li.admin": ("admin", "李管理")})
    clock = {"t": T0}
    src = EngineSource(lambda: clock["t"], gate=auth.gate())
    src.observe(alarm(STATIONS[0], T0, 4, ptrip=True, value=900))
    iid = next(iter(src.latest))
    book = new_password_file(tmp_path / "pw.json", OP, PW, quick_hasher())
    book.set("li.admin", PW)
    acting = auth.acting(reload_s=0)
    app = create_app(WebConfig(confirm_timeout_s=2), src, acting, book, stations=lambda: STATIONS,
                     clock=lambda: clock["t"])
    with TestClient(app) as client:
        _login(client, op="li.admin")                    # the console relays operators and engineers only
        r = client.post(f"/incidents/{iid}/ack", data={"csrf": _csrf(client, "/"), "revision": 1, "confirm": "yes"})
        assert r.status_code == 403 and src.sent == []
        client.post("/logout", data={"csrf": _csrf(client, "/")})
        _login(client)
        r = client.post(f"/incidents/{iid}/ack", data={"csrf": _csrf(client, "/"), "revision": 1, "confirm": "yes"})
        assert "confirmed at revision 2" in r.text and src.get(iid)["acked"]["by"] == OP
        raw = src.sent[-1][2]
        assert b'"operator":"wang.li"' in raw and b'"signer":"web-console-1"' in raw   # signed, not typed
        from gasguard.command.web.source import Refused
        with pytest.raises(Refused, match="replayed"):    # the same signed act again changes nothing
            src.acknowledge(iid, raw, 1)
        auth.revoke(OP)                                   # revoked: the session ends at the next request
        assert client.get("/").url.path == "/login"

    for which in ("console", "command"):
        assert audit.verify(tmp_path / "authority" / f"audit-{which}")["ok"]
    console = [(r["type"], r["outcome"], r["source"].get("operator")) for r in auth.records("console")
               if r["category"] in ("access", "incident")]
    assert ("ack", "refused", "li.admin") in console and ("ack", "done", OP) in console
    assert ("session_end", "info", OP) in console
    command = [(r["type"], r["outcome"], r["source"].get("operator"), r["source"].get("console"))
               for r in auth.records("command") if r["category"] == "incident"]
    assert ("ack", "allowed", OP, "web-console-1") in command


def test_serve_starts_from_its_config_with_the_console_key_and_the_service_store(tmp_path, mosquitto):
    """`gasguard command web serve` as an operator starts it: TOML, encrypted console key, the command
    service's store, the broker; then the login page answers."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from gasguard.authority import secretfile
    from gasguard.command.store import open_store
    from gasguard.testing.mosquitto import free_port
    from gasguard.testing.webconsole import Authority
    auth = Authority(tmp_path / "authority", "lixia", {OP: ("operator", "王丽")})
    secretfile.save_private_key(tmp_path / "console.key", auth.console_key, b"console passphrase")
    store = open_store(f"sqlite:///{tmp_path / 'command.db'}")
    store.migrate()
    store.close()
    new_password_file(tmp_path / "pw.json", OP, PW, quick_hasher())
    port = free_port()
    (tmp_path / "web.toml").write_text(
        f'[web]\nport = {port}\ndistrict = "lixia"\npasswords = "pw.json"\n'
        f'[mqtt]\nport = {mosquitto.port}\n[command]\nstore = "sqlite:///{tmp_path / "command.db"}"\n'
        f'[authority]\nroster = "{auth.roster}"\ntrust = "{auth.trust}"\nconsole_id = "{auth.console_id}"\n'
        f'console_key = "console.key"\naudit = "audit-web"\n')
    env = dict(os.environ, GASGUARD_CONSOLE_PASSPHRASE="console passphrase")
    proc = subprocess.Popen([sys.executable, "-m", "gasguard.cli", "command", "web", "serve", "-c",
                             str(tmp_path / "web.toml")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2) as r:
                    assert r.status == 200 and b'id="operator-id"' in r.read()
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "the console did not answer within 20 s"
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)


def test_shelves_and_station_readings_are_the_services_and_outlive_a_console_restart_and_a_sigkill(
        tmp_path, mosquitto, store_url):
    """In a district the real `gasguard command serve` holds what the console shows: a shelf (signed by the
    console for the operator, checked and kept by the service) and a station's readings and valve moves (from
    the gateways' own payloads on the broker). The console is restarted and the service SIGKILLed and started
    again: the incident is still shelved, with who and why, the station page still plots the readings, and the
    service that came back unshelves it."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import paho.mqtt.publish as publish

    from gasguard.authority import audit
    from gasguard.command.store import open_store
    from gasguard.command.web.source import StoreSource
    from gasguard.registry import Device, Registry
    from gasguard.testing.waits import wait_until
    from gasguard.testing.webconsole import Authority
    from test_command_grading import TRIP_STATE, UPSO, _alarm, _batch, _valve
    auth = Authority(tmp_path / "authority", "lixia", {OP: ("operator", "王丽")})
    with Registry(tmp_path / "registry.db") as r:
        r.add(Device(dev_id=0xA001, key=bytes(16), profile="station", site_name="燕山调压站", households=8_000,
                     pressure_class="medium_a", lat=36.659, lon=117.062, state="commissioned"))
    authority = "".join(f'{k} = "{v}"\n' for k, v in auth.command_table().items())
    (tmp_path / "command.toml").write_text(
        f'[command]\ndistrict = "lixia"\nstore = "{store_url}"\nregistry = "{tmp_path / "registry.db"}"\n'
        f'instance = "cmd-a"\nlease_ttl = 2.0\ntick_interval = 0.2\n[command.mqtt]\nport = {mosquitto.port}\n'
        f'[authority]\n{authority}')
    log = open(tmp_path / "serve.log", "ab")

    def serve():
        return subprocess.Popen([sys.executable, "-m", "gasguard.cli", "command", "serve", "--config",
                                 str(tmp_path / "command.toml"), "--log-level", "WARNING"], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    store = open_store(store_url)
    book = new_password_file(tmp_path / "pw.json", OP, PW, quick_hasher())
    svc = serve()
    try:
        wait_until(lambda: store.schema_version() and store.lease()["holder"] == "cmd-a", 20, "the service to lead")
        topic, doc = _alarm("gw1", 0xA001, 1, T0, UPSO, TRIP_STATE)

        def stored():       # the same frame again until the service has subscribed (graded once: its identity)
            publish.single(topic, json.dumps(doc), qos=1, port=mosquitto.port)
            return [i["incident_id"] for i in store.list_incidents()]
        iid = wait_until(stored, 20, "the incident stored", step=0.2)[0]
        now = time.time()
        tripped = [(0xA001, 10 + n, now - 600 + 60 * n, 40 + n, 310_000) for n in range(3)]   # still shut
        for topic, doc in (_batch("gw1", tripped, TRIP_STATE),
                           _valve("gw1", 0xA001, 20, now - 300, 1, 2)):
            publish.single(topic, json.dumps(doc), qos=1, port=mosquitto.port)
        wait_until(lambda: len(store.readings(0xA001, 0)) == 3 and store.valve_events(0xA001, 0), 20,
                   "the station's readings and valve move stored by the service")

        def station_page(client):
            r = client.get("/stations/0000a001")
            assert r.status_code == 200 and "(3 readings)" in r.text, r.text
            assert '<tr class="valve-closed">' in r.text and "opso" in r.text and "gw1" in r.text

        def console():
            source = StoreSource(open_store(store_url), "lixia", poll_s=0.05).start()
            return source, create_app(WebConfig(confirm_timeout_s=15), source, auth.acting(), book,
                                      stations=lambda: STATIONS)
        source, app = console()
        with TestClient(app) as client:
            _login(client)
            r = client.post(f"/incidents/{iid}/shelve", data={"csrf": _csrf(client, "/"), "reason": "crew on site",
                                                              "minutes": "90"})
            assert "shelved until" in r.text, r.text
            row = client.get("/api/board").json()["rows"][0]
            assert row["state"] == "shelved" and row["shelf"]["by"] == OP
            station_page(client)
        source.close()                                              # the console goes away ...
        svc.send_signal(signal.SIGKILL)                             # ... and so does the service, unwarned
        svc.wait(5)
        svc = serve()
        wait_until(lambda: store.lease()["holder"] == "cmd-a" and not svc.poll(), 20, "the service back")
        source, app = console()
        with TestClient(app) as client:                             # a new console process, a new session
            _login(client)
            row = client.get("/api/board").json()["rows"][0]
            assert (row["state"], row["shelf"]["by"], row["shelf"]["reason"]) == ("shelved", OP, "crew on site")
            r = client.get(f"/incidents/{iid}")
            assert "Shelved by wang.li" in r.text
            station_page(client)
            r = client.post(f"/incidents/{iid}/shelve", data={"csrf": _csrf(client, "/"), "unshelve": "1"})
            assert "back on the board" in r.text, r.text            # the service that came back held it
            assert client.get("/api/board").json()["rows"][0]["state"] == "unacknowledged"
        source.close()
        assert [(x["action"], x["who"], x["outcome"]) for x in store.shelf_log(iid)] == [
            ("shelve", OP, "accepted"), ("unshelve", OP, "accepted")]
        recs = [(r["type"], r["outcome"], r["source"].get("operator"), r["source"].get("console"))
                for r in audit.show(auth.dir / "audit-command", category="incident")]
        assert recs.count(("shelve", "allowed", OP, auth.console_id)) == 2
    finally:
        if svc.poll() is None:
            os.killpg(svc.pid, signal.SIGTERM)
            svc.wait(10)
        log.close()
        store.close()


def test_the_board_status_line_names_the_topics_the_broker_refuses_this_console(tmp_path):
    """A console whose broker account may not read the shelves showed a board as quiet as a calm district."""
    from gasguard.command.console import BrokerLogin
    from gasguard.command.web.source import MqttSource
    from gasguard.testing.mosquitto import Mosquitto, dynamic_security
    from gasguard.testing.waits import wait_until

    class NoFeed:           # the readings feed is not under test (it logs in anonymously)
        def start(self): return self
        def close(self): pass
    d = "gasguard/v1/lixia/command"
    conf = dynamic_security(tmp_path / "dynsec", {"op": ("good", [f"{d}/incident/+", f"{d}/result/+",
                                                                   f"{d}/gateway/+"])})
    acting = RecordingActing({OP: {"name": "王丽", "role": "operator"}})
    book = new_password_file(tmp_path / "pw.json", OP, PW, quick_hasher())
    with Mosquitto(workdir=tmp_path / "broker", extra_config=conf) as broker:
        src = MqttSource("127.0.0.1", broker.port, "lixia", feed=NoFeed(), login=BrokerLogin("op", "good")).start()
        try:
            with TestClient(create_app(WebConfig(), src, acting, book)) as client:
                _login(client)
                wait_until(lambda: client.get("/api/board").json()["refused"], 10, "the refusal on the board")
                line = client.get("/api/board").json()["refused"]
                assert f"{d}/shelves (" in line and "0x80" in line and "grant" in line
                assert "gateway" not in line and "incident" not in line
                assert re.search(r'<span id="refused"[^>]*>the broker refuses[^<]*shelves', client.get("/").text)
        finally:
            src.close()
