"""The Semtech UDP listener under attack (issue 12 item 6): datagrams whose JSON is not an object or has
wrong types are counted rejections (no traceback); a PULL_DATA from another host with a known forwarder's
EUI does not take over the downlink route (pinned to the host it first spoke from, or to [udp] forwarders).
Real UDP sockets on loopback (127.0.0.2 is another host), real mosquitto, the daemon in-process."""

import base64
import json
import logging

import pytest

from gasguard.testing.links import PacketForwarder
from gasguard.protocol.const import ALARM
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.mosquitto]

EUI = b"\xaa\x55\x5a\x00\x00\x00\x00\x01"


def _push(body: bytes) -> bytes:
    return b"\x02\x12\x34\x00" + EUI + body


def _garbage(node) -> list[tuple[bytes, str]]:
    """(datagram, the rejection reason it must be counted under)."""
    good = base64.b64encode(node.reading()).decode()
    cases = [
        (_push(b"[1, 2, 3]"), "udp_json"),                       # JSON, not an object
        (_push(b"42"), "udp_json"),
        (_push(b"null"), "udp_json"),
        (_push(b'"rxpk"'), "udp_json"),
        (_push(b"[" * 60_000), "udp_json"),                      # nested past the parser's depth
        (_push(b"\xff\xfe{}"), "udp_json"),                      # not UTF-8
        (_push(b'{"rxpk": "not a list"}'), "udp_json"),
        (_push(b'{"rxpk": {"data": "AA=="}}'), "udp_json"),
        (_push(b'{"rxpk": [1]}'), "udp_rxpk"),                   # an entry that is not an object
        (_push(b'{"rxpk": [null]}'), "udp_rxpk"),
        (_push(json.dumps({"rxpk": [{"data": 12345}]}).encode()), "udp_rxpk"),
        (_push(json.dumps({"rxpk": [{"data": good, "rssi": "-97"}]}).encode()), "udp_rxpk"),
        (_push(json.dumps({"rxpk": [{"data": good, "stat": "1"}]}).encode()), "udp_rxpk"),
        (_push(json.dumps({"rxpk": [{"data": good, "freq": [470.9]}]}).encode()), "udp_rxpk"),
        (_push(json.dumps({"rxpk": [{"data": good, "lsnr": True}]}).encode()), "udp_rxpk"),
        (_push(json.dumps({"rxpk": [{"stat": 1}]}).encode()), "udp_rxpk"),
        (b"\x02\x12\x34\x05" + EUI + b'{"txpk_ack": ["TOO_LATE"]}', None),   # TX_ACK: counted as a tx error
        (b"\x02\x12\x34\x05" + EUI + b"[]", "udp_json"),
        (b"\x02\x12\x34\x09" + EUI, "udp_junk"),                 # an identifier a forwarder never sends
        (b"\x02\x12\x34\x00" + EUI[:3], "udp_short"),
    ]
    return cases


@pytest.mark.timeout(90)
def test_garbage_json_is_a_counted_rejection_without_a_traceback(tmp_path, mosquitto, caplog):
    caplog.set_level(logging.INFO)
    rig = Rig(tmp_path, mosquitto.port, cables=0, udp=True, extra="[batch]\ndelay = 0.1\n")
    fwd = PacketForwarder(rig.udp_addr, EUI)
    try:
        rig.start()
        a, _ = rig.nodes
        cases = _garbage(a)
        rounds = 100
        expect: dict[str, int] = {}
        for _ in range(rounds):
            for dgram, reason in cases:
                fwd.sock.sendto(dgram, rig.udp_addr)
                if reason:
                    expect[reason] = expect.get(reason, 0) + 1
            # a round at a time: 60 kB datagrams faster than a loaded gateway reads them would overflow the
            # socket's receive buffer, a loss in the kernel that nothing in the gateway can count
            try:
                wait_until(lambda: all(rig.rejected(r) >= n for r, n in expect.items()), 20, "the round counted")
            except TimeoutError:       # say which reason fell short and whether the kernel dropped datagrams
                raise AssertionError(f"counted {({r: rig.rejected(r) for r in expect})} of {expect} after 20 s; "
                                     f"kernel drops {rig.metric('gasguard_gateway_udp_kernel_drops_total')}") from None
            fwd.poll(0.001)
        # a good frame still goes through, and its ack comes back on the pulled route
        fwd.pull()
        fwd.push(a.alarm(code=2))
        wait_until(lambda: fwd.poll(0.1) or fwd.txpk, 10, "the alarm's ack as PULL_RESP")
        (ack,) = [a.open_downlink(raw) for raw in fwd.downlinks()]
        assert ack["ref_type"] == ALARM
        assert {r: rig.rejected(r) for r in expect} == expect
        assert rig.daemon.udp.tx_errors == {"BAD_JSON": rounds}
        tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
        assert tracebacks == [], tracebacks[0].getMessage()
        # one line per kind of refusal and window, not one per datagram
        lines = [r for r in caplog.records if r.getMessage().startswith("udp: refused")]
        assert len(lines) <= 2 * len(expect), len(lines)
        assert rig.runner.thread.is_alive()
    finally:
        fwd.close()
        rig.close()


def _hijack(rig, allow_listed: bool) -> None:
    a, _ = rig.nodes
    home = PacketForwarder(rig.udp_addr, EUI)
    stranger = PacketForwarder(rig.udp_addr, EUI, host="127.0.0.2")    # same EUI, another host
    other = PacketForwarder(rig.udp_addr, b"\x01" * 8, host="127.0.0.2")
    try:
        rig.start()
        home.pull()
        home.push(a.alarm(code=2))
        wait_until(lambda: home.poll(0.1) or home.txpk, 10, "first ack to the forwarder")
        stranger.pull()                          # "I am aa555a0000000001, send its downlinks here"
        stranger.push(a.reading())
        wait_until(lambda: rig.rejected("udp_foreign_forwarder") == 2, 10, "the stranger refused and counted")
        stranger.poll(0.2)
        assert stranger.acks == []               # not even a PULL_ACK
        home.push(a.alarm(code=3))
        wait_until(lambda: home.poll(0.1) or len(home.txpk) == 2, 10, "second ack to the real forwarder")
        stranger.poll(0.3)
        assert stranger.txpk == [] and len(home.downlinks()) == 2
        assert [a.open_downlink(raw)["ref_type"] for raw in home.downlinks()] == [ALARM, ALARM]
        other.pull()                             # an EUI nobody configured
        if allow_listed:
            wait_until(lambda: rig.rejected("udp_unknown_forwarder") == 1, 10, "an unlisted forwarder refused")
        else:
            wait_until(lambda: other.poll(0.1) or other.acks, 10, "a new forwarder is pinned where it speaks from")
    finally:
        for f in (home, stranger, other):
            f.close()


@pytest.mark.timeout(60)
def test_a_stranger_with_the_forwarders_eui_does_not_take_over_the_downlink_route(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, cables=0, udp=True)
    try:
        _hijack(rig, allow_listed=False)
    finally:
        rig.close()


@pytest.mark.timeout(60)
def test_with_an_allow_list_only_listed_forwarders_from_their_host_are_heard(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, cables=0, udp=True,
              extra=f'[udp.forwarders]\n{EUI.hex()} = "127.0.0.1"\n')
    try:
        _hijack(rig, allow_listed=True)
    finally:
        rig.close()
