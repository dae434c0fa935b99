"""MQTT over TLS against a real mosquitto TLS listener, with a CA and certificates made here with
`cryptography`: server verification, a wrong CA (clear error, retried, no crash), a client certificate."""

import datetime
import ipaddress
import logging
import os
import socket

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gasguard.gateway import config as gwconfig
from gasguard.testing.mosquitto import Mosquitto, free_ports
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(60)]


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, key, cert):
    key_path = path.with_suffix(".key")
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path.with_suffix(".pem"), key_path


def make_ca(path, cn):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(path, key, cert)
    return key, cert


def issue(path, ca, cn, *, server):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return _write(path, key, b.sign(ca_key, hashes.SHA256()))


def tls_listener(port, cafile, cert, key):
    return f"listener {port} 127.0.0.1\ncafile {cafile}\ncertfile {cert}\nkeyfile {key}\n"


@pytest.fixture
def tls_broker(tmp_path):
    """A mosquitto with its plain listener (for the test's subscriber) plus two TLS listeners: server auth
    only, and one that requires a client certificate from the same CA."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca(pki / "ca", "GasGuard test CA")
    make_ca(pki / "other-ca", "Somebody else's CA")
    cert, key = issue(pki / "broker", ca, "broker.test", server=True)
    issue(pki / "gw1", ca, "gw1", server=False)
    tls, mtls = free_ports(2)
    extra = (tls_listener(tls, pki / "ca.pem", cert, key) + tls_listener(mtls, pki / "ca.pem", cert, key)
             + "require_certificate true\n")
    with Mosquitto(workdir=tmp_path / "broker", extra_config=extra) as b:
        b.tls_port, b.mtls_port, b.pki, b.ca = tls, mtls, pki, ca
        yield b


def test_the_broker_is_up_once_its_last_listener_listens(tmp_path):
    """Mosquitto.start returns once every listener listens, not the first one: mosquitto opens them in turn,
    loading a TLS listener's certificates before opening the next. Here that CA file holds one certificate
    3,000 times (~0.5 s to load), so the plain listener after it opens ~0.5 s after the first. The console
    test below was refused once on its mTLS port in a full -n 2 run: the same gap, ~9 ms wide unloaded."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca(pki / "ca", "GasGuard test CA")
    cert, key = issue(pki / "broker", ca, "broker.test", server=True)
    (pki / "many.pem").write_bytes((pki / "ca.pem").read_bytes() * 3000)
    tls, late = free_ports(2)
    extra = tls_listener(tls, pki / "many.pem", cert, key) + f"listener {late} 127.0.0.1\n"
    with Mosquitto(workdir=tmp_path / "broker", extra_config=extra):
        with socket.create_connection(("127.0.0.1", late), timeout=5):   # refused if start returned early
            pass


def _rig(tmp_path, broker, port, tls: str):
    rig = Rig(tmp_path, broker.port, extra="[batch]\ndelay = 0.1\n")
    # the gateway talks TLS on `port`; the test's subscriber stays on the plain listener
    text = rig.config_path.read_text().replace(f"port = {broker.port}", f"port = {port}\n{tls}")
    rig.config_path.write_text(text)
    rig.cfg = gwconfig.load(rig.config_path)
    return rig


def test_tls_with_server_verification(tmp_path, tls_broker):
    rig = _rig(tmp_path, tls_broker, tls_broker.tls_port, f'tls_ca = "{tls_broker.pki}/ca.pem"')
    try:
        rig.start()
        a = rig.nodes[0]
        rig.cables[0].send(a.reading())
        rig.sub.wait(lambda ms: rig.readings(), 10)
        assert rig.sub.on("gw1/status")[0]["online"] is True
    finally:
        rig.close()


def test_wrong_ca_is_a_clear_error_retried_without_crash(tmp_path, tls_broker, caplog):
    caplog.set_level(logging.INFO, logger="gasguard.gateway.mqtt")
    rig = _rig(tmp_path, tls_broker, tls_broker.tls_port, f'tls_ca = "{tls_broker.pki}/other-ca.pem"')
    try:
        rig.start(wait=False)
        wait_until(lambda: "does not verify against mqtt.tls_ca" in caplog.text, 10, "a clear TLS error")
        a = rig.nodes[0]
        wait_until(lambda: rig.daemon.serial[0].ser is not None, 10, "serial open")
        rig.cables[0].send(a.reading())                # ingest goes on: the reading waits in the spool
        wait_until(lambda: rig.metric("gasguard_gateway_accepted_total", type="reading") == 1, 10, "accepted")
        assert rig.runner.thread.is_alive() and not rig.daemon.publisher.connected
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, errors                  # said once, not once per retry
        assert "certificate verify failed" in errors[0] and "Retrying with backoff" in errors[0]
        assert rig.daemon.spool.depth()["reading"][0] == 1
        assert rig.readings() == []
    finally:
        rig.close()


def test_client_certificate(tmp_path, tls_broker, caplog):
    pki = tls_broker.pki
    rig = _rig(tmp_path, tls_broker, tls_broker.mtls_port,
               f'tls_ca = "{pki}/ca.pem"\ntls_cert = "{pki}/gw1.pem"\ntls_key = "{pki}/gw1.key"')
    try:
        rig.start()
        rig.cables[0].send(rig.nodes[0].reading())
        rig.sub.wait(lambda ms: rig.readings(), 10)
    finally:
        rig.close()
    # the same listener without a client certificate: refused, logged, the gateway keeps running
    caplog.set_level(logging.INFO, logger="gasguard.gateway.mqtt")
    caplog.clear()
    (tmp_path / "no-cert").mkdir()
    rig = _rig(tmp_path / "no-cert", tls_broker, tls_broker.mtls_port, f'tls_ca = "{pki}/ca.pem"')
    try:
        rig.start(wait=False)
        wait_until(lambda: "closed the connection before accepting it" in caplog.text, 10, "the refusal is logged")
        assert "mqtt.tls_cert" in caplog.text
        assert rig.runner.thread.is_alive() and not rig.daemon.publisher.connected
    finally:
        rig.close()


def test_console_connects_with_tls_and_a_client_certificate_as_mosquitto_sub_does(tls_broker):
    from click.testing import CliRunner

    from gasguard.command.console_cli import command
    pki = tls_broker.pki
    issue(pki / "console", tls_broker.ca, "console", server=False)
    base = ["list", "--json", "--wait", "0.2", "--timeout", "5", "-p", str(tls_broker.mtls_port),
            "--cafile", f"{pki}/ca.pem"]
    r = CliRunner().invoke(command, base + ["--cert", f"{pki}/console.pem", "--key", f"{pki}/console.key"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "[]"
    r = CliRunner().invoke(command, base)             # no client certificate: the broker says no
    assert r.exit_code == 1 and "error:" in r.output
    r = CliRunner().invoke(command, ["list", "--wait", "0", "--timeout", "5", "-p", str(tls_broker.tls_port),
                                     "--cafile", f"{pki}/other-ca.pem"])
    assert r.exit_code == 1 and "certificate verify failed" in r.output
