"""The web console working alone at a substation (no command store) logs in to the district's broker, which
takes no anonymous clients ('gasguard authority broker-config': allow_anonymous false), and talks TLS when
its config gives a CA: both of its connections (incidents, readings) built from the web config's [mqtt] as
`gasguard command web serve` builds them, against a real mosquitto with users and a TLS listener."""

import json
import os
import time

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner

from gasguard.command.web.cli import web
from gasguard.command.web.config import ConfigError, load
from gasguard.command.web.source import MqttSource, SourceError
from gasguard.testing.mosquitto import Mosquitto, dynamic_security, free_ports
from gasguard.testing.waits import wait_until
from test_gateway_tls import issue, make_ca, tls_listener

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(60)]

PW = "s3cret-broker-pw"                      # distinctive: it must appear in no output
IID = "lixia-20261203-0001"
DEV = "0000a001"


@pytest.fixture
def broker(tmp_path, monkeypatch):
    """A mosquitto that logs in "op" only (no anonymous clients), with a plain listener, a TLS one, and a TLS
    one that also requires a client certificate from the same CA (the console's: `console.pem`)."""
    monkeypatch.delenv("GASGUARD_MQTT_PASSWORD", raising=False)
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca(pki / "ca", "GasGuard test CA")
    cert, key = issue(pki / "broker", ca, "broker.test", server=True)
    issue(pki / "console", ca, "web-console", server=False)
    tls, mtls = free_ports(2)
    conf = dynamic_security(tmp_path / "dynsec", {"op": (PW, ["gasguard/v1/lixia/#"])})
    listeners = (tls_listener(tls, pki / "ca.pem", cert, key) + tls_listener(mtls, pki / "ca.pem", cert, key)
                 + "require_certificate true\n")
    with Mosquitto(workdir=tmp_path / "broker", extra_config=conf + listeners) as b:
        b.tls_port, b.mtls_port, b.pki = tls, mtls, pki
        yield b


def _config(tmp_path, port, mqtt_lines: str):
    cfg = tmp_path / "web.toml"
    cfg.write_text(f'[web]\ndistrict = "lixia"\n[mqtt]\nhost = "127.0.0.1"\nport = {port}\n{mqtt_lines}')
    return cfg


def _publish(port, topic, doc):
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.username_pw_set("op", PW)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        pub.publish(topic, json.dumps(doc).encode(), qos=1, retain=True).wait_for_publish(5)
    finally:
        pub.disconnect()
        pub.loop_stop()


def _receives(source, port):
    """An incident and a reading published (retained) on the broker reach the console's two connections."""
    _publish(port, f"gasguard/v1/lixia/command/incident/{IID}",
             {"incident_id": IID, "revision": 1, "status": "open", "level": 4})
    wait_until(lambda: source.get(IID) is not None, 10, "the incident at the console")
    t = time.time()
    _publish(port, "gasguard/v1/lixia/gw1/reading", {"readings": [{"dev": DEV, "t": t, "pressure_pa": 2100.0}]})
    wait_until(lambda: source.readings(DEV, t - 1), 10, "the reading at the console (its own connection)")
    assert source.readings(DEV, t - 1)[0]["pressure_pa"] == 2100.0


@pytest.mark.parametrize("how", ["env", "password_file"])
def test_the_substation_console_logs_in_with_its_config_and_receives_incidents_and_readings(
        tmp_path, broker, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("GASGUARD_MQTT_PASSWORD", PW)
        cfg = _config(tmp_path, broker.port, 'username = "op"\n')
    else:
        (tmp_path / "secrets").mkdir()
        pf = tmp_path / "secrets" / "op.password"
        pf.write_text(PW + "\n")
        pf.chmod(0o600)
        cfg = _config(tmp_path, broker.port, 'username = "op"\npassword_file = "secrets/op.password"\n')  # relative
    sc = load(cfg)
    assert (sc.login.username, sc.login.password) == ("op", PW)
    source = MqttSource.from_config(sc).start(10)
    try:
        _receives(source, broker.port)
    finally:
        source.close()
    r = CliRunner().invoke(web, ["check-config", "-c", str(cfg)])
    assert r.exit_code == 0 and PW not in r.output


@pytest.mark.parametrize("login", ["", 'username = "op"\n'])
def test_without_the_login_the_start_fails_with_the_brokers_refusal_at_once(tmp_path, broker, monkeypatch, login):
    """No username (anonymous), or the username without its password ($GASGUARD_MQTT_PASSWORD wrong)."""
    monkeypatch.setenv("GASGUARD_MQTT_PASSWORD", "wrong")
    source = MqttSource.from_config(load(_config(tmp_path, broker.port, login)))
    t0 = time.monotonic()
    with pytest.raises(SourceError) as e:
        source.start(10)
    assert time.monotonic() - t0 < 3, "a refused login must end the start at once, not after the timeout"
    msg = str(e.value)
    assert "refused the login" in msg and "Not authorized" in msg
    assert "[mqtt] username" in msg and "password_file" in msg


def test_a_password_file_others_can_read_is_refused_at_load_naming_it_and_the_fix(tmp_path):
    pf = tmp_path / "op.password"
    pf.write_text(PW + "\n")
    pf.chmod(0o644)
    cfg = _config(tmp_path, 1883, 'username = "op"\npassword_file = "op.password"\n')
    with pytest.raises(ConfigError) as e:
        load(cfg)
    assert "mqtt.password_file" in str(e.value) and str(pf) in str(e.value) and f"chmod 600 {pf}" in str(e.value)
    r = CliRunner().invoke(web, ["check-config", "-c", str(cfg)])
    assert r.exit_code == 2 and f"chmod 600 {pf}" in r.output and PW not in r.output
    # the password itself has no key in the file; other unknown keys are still refused
    cfg = _config(tmp_path, 1883, f'username = "op"\npassword = "{PW}"\n')
    r = CliRunner().invoke(web, ["check-config", "-c", str(cfg)])
    assert r.exit_code == 2 and "mqtt.password: not in this file" in r.output and "GASGUARD_MQTT_PASSWORD" in r.output
    assert PW not in r.output
    r = CliRunner().invoke(web, ["check-config", "-c", str(_config(tmp_path, 1883, 'usrname = "op"\n'))])
    assert r.exit_code == 2 and "mqtt.usrname: unknown key; did you mean 'username'?" in r.output


def test_the_substation_console_talks_tls_to_the_brokers_ca_and_a_bad_tls_file_is_named(
        tmp_path, broker, monkeypatch):
    monkeypatch.setenv("GASGUARD_MQTT_PASSWORD", PW)
    cafile = os.path.relpath(broker.pki / "ca.pem", tmp_path)
    source = MqttSource.from_config(load(_config(tmp_path, broker.tls_port,
                                                 f'username = "op"\ncafile = "{cafile}"\n'))).start(10)
    try:
        _receives(source, broker.port)
        assert source.client.client._ssl and source.feed.client._ssl        # both connections over TLS
    finally:
        source.close()
    (tmp_path / "not-a-ca.pem").write_text("nothing here\n")
    for lines, key, named in [('cafile = "not-a-ca.pem"\n', "mqtt.cafile", tmp_path / "not-a-ca.pem"),
                              ('cafile = "missing.pem"\n', "mqtt.cafile", tmp_path / "missing.pem"),
                              (f'cafile = "{cafile}"\ncert = "not-a-ca.pem"\nkey = "not-a-ca.pem"\n', "mqtt.cert",
                               tmp_path / "not-a-ca.pem"),
                              (f'cafile = "{cafile}"\ncert = "not-a-ca.pem"\n', "mqtt.key", "both cert and key")]:
        r = CliRunner().invoke(web, ["check-config", "-c", str(_config(tmp_path, broker.tls_port, lines))])
        assert r.exit_code == 2 and key in r.output and str(named) in r.output, r.output


def test_the_substation_console_shows_its_client_certificate_where_the_broker_requires_one(
        tmp_path, broker, monkeypatch):
    """A listener with `require_certificate true`: the console's cert and key from [mqtt] get it in, on both
    of its connections; with the CA alone the start is refused, not left hanging."""
    monkeypatch.setenv("GASGUARD_MQTT_PASSWORD", PW)
    pki = os.path.relpath(broker.pki, tmp_path)
    with_cert = f'username = "op"\ncafile = "{pki}/ca.pem"\ncert = "{pki}/console.pem"\nkey = "{pki}/console.key"\n'
    source = MqttSource.from_config(load(_config(tmp_path, broker.mtls_port, with_cert))).start(10)
    try:
        _receives(source, broker.port)
    finally:
        source.close()
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="closed the connection before accepting it.*client certificate"):
        MqttSource.from_config(load(_config(tmp_path, broker.mtls_port,
                                            f'username = "op"\ncafile = "{pki}/ca.pem"\n'))).start(10)
    assert time.monotonic() - t0 < 5, "a refused client certificate must not wait out the start's timeout"
