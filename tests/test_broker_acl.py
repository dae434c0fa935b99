"""The broker as the second wall (issue 14, 3): the real mosquitto runs the configuration that
`gasguard authority broker-config` writes, and refuses an anonymous client, a wrong password, an operator
publishing a node command, and a gateway publishing under another gateway's prefix; what each role may do
still flows. The same configuration turns Nagle off on the broker's client sockets (set_tcp_nodelay)."""

import socket

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gasguard.authority import broker
from gasguard.authority import roster as RO
from gasguard.authority.secretfile import public_hex
from gasguard.testing.mosquitto import Mosquitto
from mqtt5_client import Client

pytestmark = pytest.mark.mosquitto


def _roster(tmp_path):
    auth = Ed25519PrivateKey.generate()
    path = tmp_path / "operators.json"
    RO.init(path, auth, "lixia")
    admin = Ed25519PrivateKey.generate()
    RO.add(path, auth, "root", "admin", public_hex(admin.public_key()))
    for pid, role in (("li.na", "engineer"), ("zhao", "operator"), ("gone", "engineer")):
        RO.add(path, auth, pid, role, public_hex(Ed25519PrivateKey.generate().public_key()), approver=("root", admin))
    RO.revoke(path, auth, "gone", approver=("root", admin))
    return RO.load(path, auth.public_key())


def test_generated_config_refuses_anonymous_and_wrong_roles_at_the_real_broker(tmp_path):
    ro = _roster(tmp_path)
    out = tmp_path / "broker"
    rep = broker.write_config(ro, ["gw-1", "gw-2"], out)
    assert rep["users"] == ["gw-gw-1", "gw-gw-2", "li.na", "root", "zhao"]          # the revoked one has no login
    assert (out / "passwd").read_text().count("$7$") == 5 and "gone" not in (out / "acl").read_text()
    pw = {u: (out / "credentials" / f"{u}.password").read_text().strip() for u in rep["users"]}
    assert broker.write_config(ro, ["gw-1", "gw-2"], out)["new_credentials"] == []   # passwords are kept
    # included as OPERATORS.md says (include_dir: mosquitto reads every *.conf there, here gasguard.conf)
    with Mosquitto(workdir=tmp_path / "m", extra_config=f"include_dir {out}\n") as m:
        anon = Client(m.port)
        assert anon.rc.is_failure and anon.rc.value == 135                              # not authorised
        wrong = Client(m.port, "zhao", "guess")
        assert wrong.rc.is_failure
        gw1 = Client(m.port, "gw-gw-1", pw["gw-gw-1"])
        assert not gw1.rc.is_failure
        # the gateways' PUBACKs leave at once, not after the client's delayed ACK (BENCHMARKS.md, sixth pass)
        held = m.client_sockets()
        try:
            assert held and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in held)
        finally:
            for s in held:
                s.close()
        assert gw1.subscribe("gasguard/v1/lixia/gw-1/+/cmd") == [1]
        assert gw1.subscribe("gasguard/v1/lixia/command/ack/+") == [1]
        gw1.subscribe("gasguard/v1/lixia/gw-2/+/cmd")      # mosquitto grants it, then delivers nothing (read ACL)
        zhao = Client(m.port, "zhao", pw["zhao"])
        eng = Client(m.port, "li.na", pw["li.na"])
        gw2 = Client(m.port, "gw-gw-2", pw["gw-gw-2"])
        # its own status, retained (gateway/identity.py: another process publishing as it), not another's
        assert gw1.publish("gasguard/v1/lixia/gw-1/status", b"birth 1", retain=True) < 128   # 16: no subscribers
        assert gw2.publish("gasguard/v1/lixia/gw-2/status", b"birth 2", retain=True) < 128
        assert gw1.subscribe("gasguard/v1/lixia/gw-1/status") == [1]
        assert gw1.got.get(timeout=5) == ("gasguard/v1/lixia/gw-1/status", b"birth 1")
        gw1.subscribe("gasguard/v1/lixia/gw-2/status")
        assert zhao.publish("gasguard/v1/lixia/gw-1/00c0ffee/cmd", b"reset") == 135     # an operator: no commands
        assert zhao.publish("gasguard/v1/other/command/ack/L-1") == 135                  # nor another district's acks
        assert gw2.publish("gasguard/v1/lixia/gw-1/00c0ffee/alarm") == 135              # nor another gateway's prefix
        assert zhao.publish("gasguard/v1/lixia/command/ack/L-1", b"ack") == 0
        # shelving goes to the command service (here: an engineer listening in its place); a gateway has no say
        assert eng.subscribe("gasguard/v1/lixia/command/shelve/+") == [1]
        assert gw2.publish("gasguard/v1/lixia/command/shelve/L-1") == 135
        assert zhao.publish("gasguard/v1/lixia/command/shelve/L-1", b"shelve") == 0
        assert eng.got.get(timeout=5) == ("gasguard/v1/lixia/command/shelve/L-1", b"shelve")
        assert eng.publish("gasguard/v1/lixia/gw-2/0badf00d/cmd", b"for gw-2") == 0     # not for gw-1's eyes
        assert eng.publish("gasguard/v1/lixia/gw-1/00c0ffee/cmd", b"status") == 0
        got = [gw1.got.get(timeout=5) for _ in range(2)]
        assert sorted(got) == [("gasguard/v1/lixia/command/ack/L-1", b"ack"),
                               ("gasguard/v1/lixia/gw-1/00c0ffee/cmd", b"status")]
        assert gw1.got.empty()                              # the refused publications never reached it
        for c in (anon, wrong, gw1, zhao, eng, gw2):
            c.close()
        log = m.log.read_text()                                  # the broker's own record of the refusals
        assert log.count("disconnected, not authorised") == 2, log[-2000:]     # anonymous, wrong password
