"""The fleet over real transports: a pty read with pyserial, and the Semtech UDP packet-forwarder protocol
towards a UDP socket playing the gateway. The receivers here verify frames with the registry's keys."""

import base64
import json
import os
import re
import socket
import struct
import threading
import time

import pytest
import serial

from fleet_oracle import Oracle
from gasguard.registry import Registry
from gasguard.protocol import const, framing
from gasguard.tools.sim import district
from gasguard.testing.waits import wait_until
from gasguard.tools.sim.fleet import Fleet
from gasguard.tools.sim.fleet_transport import PtyTransport, TransportError, UdpTransport, parse_target


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    path = tmp_path_factory.mktemp("reg") / "district.db"
    district.write(path, seed=21, scale=0.03, households=150)     # random keys, as real devices have
    with Registry(path, readonly=True) as reg:
        keys = {d.dev_id: d.key for d in reg.all()}
    return path, keys


class SerialGateway(threading.Thread):
    """Reads the pty's slave with pyserial like the gateway does; acks alarms/events on the same line."""

    def __init__(self, port, oracle):
        super().__init__(daemon=True)
        self.ser = serial.Serial(port, 115200, timeout=0.02)
        self.oracle = oracle
        self.deframer = framing.Deframer()
        self.errors = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            data = self.ser.read(4096)
            for kind, payload in self.deframer.feed(data):
                if kind != framing.FRAME:
                    self.errors.append((kind, payload))
                    continue
                try:
                    reply = self.oracle.reply(self.oracle.accept(payload))
                except Exception as e:                    # noqa: BLE001 - recorded, asserted on
                    self.errors.append(("verify", repr(e)))
                    continue
                if reply:
                    self.ser.write(framing.wrap(reply))
        self.ser.close()


def test_pty_multiplexes_every_node_and_retransmits_until_acked(registry, tmp_path):
    path, keys = registry
    link = tmp_path / "modem"
    pty = PtyTransport(link=str(link))
    assert os.path.realpath(link) == pty.port
    oracle = Oracle(keys, ack_after=3)                # ack the third copy of each alarm/event
    gw = SerialGateway(str(link), oracle)
    gw.start()
    try:
        fleet = Fleet.from_registry(path, pty, seed=2, speed=100.0)
        rep = fleet.run("single_leak", duration=450, wall_timeout=20)
        wait_until(lambda: len(oracle.frames) >= rep.frames, 5, "the gateway read every frame sent")
    finally:
        gw.stop.set()
        gw.join(5)
        pty.close()
    assert not link.exists()
    assert gw.errors == []                                          # no noise, every frame verified
    assert rep.stopped_by == "duration" and 4 < rep.wall_s < 12 and rep.max_lag_s < 1.0
    assert len(oracle.frames) == rep.frames == pty.stats["frames"] and pty.stats["tx_dropped"] == 0
    heard = {f["dev"] for f in oracle.frames}                      # many nodes multiplexed on one line
    assert {n.dev for n in fleet.stations()} <= heard and len(heard) > 100
    (dev,) = {d for d, _ in oracle.alarms()}
    assert [c for _d, c in oracle.alarms(dev)] == [const.AL_GAS_L1, const.AL_GAS_L2]
    # each alarm/event went out until the third copy was acked, then stopped (one copy may cross the ack)
    for k, n in oracle.copies.items():
        assert 3 <= n <= 4, (k, n)
    assert rep.alarms["raised"] == rep.alarms["acked"] == 4 and rep.alarms["unacked"] == 0
    assert rep.downlinks == {"ack": 5} and pty.stats["downlinks"] == 5


def test_fast_wrap_gives_the_same_bytes_as_the_protocol():
    import random

    from gasguard.tools.sim.fleet_transport import wrap

    rng = random.Random(1)
    for n in list(range(0, 40)) + [251, 252, 253, 254, 300]:
        for _ in range(30):
            data = bytes(rng.choice((0, 0, rng.randrange(256))) for _ in range(n))
            assert wrap(data) == framing.wrap(data)


def test_pty_nobody_reading_drops_and_counts_instead_of_hanging():
    pty = PtyTransport(write_timeout=0.2)
    try:
        node = type("N", (), {})()
        t0 = time.monotonic()
        for _ in range(20):
            pty.send([(bytes(19), node)] * 500)
        took = time.monotonic() - t0
    finally:
        pty.close()
    assert pty.stats["tx_dropped"] > 0 and pty.stats["frames"] + pty.stats["tx_dropped"] == 10_000
    assert took < 2.0


RXPK_KEYS = {"time", "tmst", "chan", "rfch", "freq", "stat", "modu", "datr", "codr", "rssi", "lsnr", "size", "data"}


class UdpGateway(threading.Thread):
    """The server side of the Semtech UDP protocol: PUSH_ACK, PULL_ACK, PULL_RESP downlinks, TX_ACK check."""

    def __init__(self, oracle):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # UDP drops what a full receive buffer cannot take: room for the whole run, so a busy test machine
        # (this thread shares the GIL with the fleet) delays datagrams instead of losing them
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        try:                                  # past net.core.rmem_max, when allowed (root in CI)
            self.sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 1 << 22)
        except OSError:
            pass
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.oracle = oracle
        self.errors, self.stat, self.pull_from = [], [], None
        self.push, self.pull, self.rxpk = 0, 0, 0
        self.resp_tokens, self.tx_acks = set(), []
        self.stop = threading.Event()

    def check_rxpk(self, pk):
        assert set(pk) == RXPK_KEYS, pk
        assert pk["modu"] == "LORA" and pk["codr"] == "4/5" and pk["stat"] == 1
        assert re.fullmatch(r"SF(7|9|11)BW125", pk["datr"]) and 470.3 <= pk["freq"] <= 489.3
        assert -130 <= pk["rssi"] <= -60 and -20 <= pk["lsnr"] <= 15 and isinstance(pk["tmst"], int)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", pk["time"])
        data = base64.b64decode(pk["data"], validate=True)
        assert len(data) == pk["size"]
        return data

    def run(self):
        while not self.stop.is_set():
            try:
                dg, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            try:
                ver, token, ident = struct.unpack_from(">BHB", dg)
                assert ver == 2
                if ident == 0:                                        # PUSH_DATA
                    assert len(dg) > 12
                    self.sock.sendto(struct.pack(">BHB", 2, token, 1), addr)          # PUSH_ACK
                    self.push += 1
                    obj = json.loads(dg[12:])
                    if "stat" in obj:
                        self.stat.append(obj["stat"])
                    for pk in obj.get("rxpk", []):
                        self.rxpk += 1
                        reply = self.oracle.reply(self.oracle.accept(self.check_rxpk(pk)))
                        if reply and self.pull_from:
                            tok = (0x4000 + len(self.resp_tokens)) & 0xFFFF
                            self.resp_tokens.add(tok)
                            txpk = {"imme": True, "freq": 500.3, "rfch": 0, "powe": 17, "modu": "LORA",
                                    "datr": "SF11BW125", "codr": "4/5", "ipol": True, "size": len(reply),
                                    "data": base64.b64encode(reply).decode()}
                            self.sock.sendto(struct.pack(">BHB", 2, tok, 3) + json.dumps({"txpk": txpk}).encode(),
                                             self.pull_from)
                elif ident == 2:                                      # PULL_DATA
                    assert len(dg) == 12
                    self.pull += 1
                    self.pull_from = addr
                    self.sock.sendto(struct.pack(">BHB", 2, token, 4), addr)          # PULL_ACK
                elif ident == 5:                                      # TX_ACK
                    self.tx_acks.append((token, json.loads(dg[12:])))
                else:
                    self.errors.append(("ident", ident))
            except Exception as e:                                    # noqa: BLE001 - recorded, asserted on
                self.errors.append(("bad", repr(e)))
        self.sock.close()


def test_udp_packet_forwarder_delivers_a_station_trip_and_takes_downlinks(registry):
    path, keys = registry
    oracle = Oracle(keys)
    gw = UdpGateway(oracle)
    gw.start()
    try:
        udp = UdpTransport(f"127.0.0.1:{gw.port}", stat_s=0.5)
        fleet = Fleet.from_registry(path, udp, seed=3, speed=150.0)
        rep = fleet.run("station_trip", duration=300, wall_timeout=20)
        wait_until(lambda: gw.rxpk >= rep.frames and len(gw.tx_acks) >= len(gw.resp_tokens), 5,
                   "the gateway read every frame and TX_ACK")
        udp.close()
    finally:
        gw.stop.set()
        gw.join(5)
    assert gw.errors == []
    assert gw.rxpk == rep.frames == len(oracle.frames) and gw.push > rep.frames / 8
    assert gw.pull >= 1 and udp.stats["pull_ack"] >= 1 and gw.stat and "rxnb" in gw.stat[0]
    assert udp.stats["push_ack"] >= udp.stats["push_data"] - 2
    got = {}
    for d, c in oracle.alarms():
        got.setdefault(d, set()).add(c)
    target = max(got, key=lambda d: const.AL_OPSO in got[d])
    assert got[target] == {const.AL_OPSO, const.AL_UPSO} and len(got) > 3   # its own outlet runs down after
    assert all(c == {const.AL_UPSO} for d, c in got.items() if d != target)
    # every downlink was answered with a TX_ACK carrying its token and no error, and acked its alarm/event
    assert sorted(t for t, _ in gw.tx_acks) == sorted(gw.resp_tokens)
    assert all(j == {"txpk_ack": {"error": "NONE"}} for _, j in gw.tx_acks)
    assert rep.alarms["acked"] == rep.alarms["raised"] and rep.alarms["unacked"] == 0


def test_udp_target_must_be_loopback():
    assert parse_target("1700") == ("127.0.0.1", 1700)
    with pytest.raises(TransportError, match="loopback"):
        parse_target("192.0.2.1:1700")
    with pytest.raises(TransportError, match="HOST:PORT"):
        parse_target("localhost:x")


def test_pty_mixed_line_carries_a_foreign_board_and_routes_its_downlinks(registry):
    """A mixed bench: a board that is not in the fleet (its own key) shares the line through inject()."""
    from gasguard.protocol import frame

    path, keys = registry
    board, bkey = 0x7F000001, bytes(range(16))
    oracle = Oracle({**keys, board: bkey})
    pty = PtyTransport()
    gw = SerialGateway(pty.port, oracle)
    gw.start()
    foreign = []
    try:
        fleet = Fleet.from_registry(path, pty, seed=4, speed=100.0, on_foreign=foreign.append)
        alarm = frame.seal({"type": "alarm", "dev": board, "fcnt": 1, "code": const.AL_GAS_L2, "aseq": 1, "age": 0,
                            "value": 300, "state": 0x15}, bkey, const.UP)
        threading.Timer(0.3, lambda: pty.inject(b"boot: household v0.1\n" + framing.wrap(alarm))).start()
        rep = fleet.run("quiet", duration=100, wall_timeout=10)
    finally:
        gw.stop.set()
        gw.join(5)
        pty.close()
    assert gw.errors == [(framing.TEXT, b"boot: household v0.1\n")]
    assert any(f["dev"] == board and f["type"] == "alarm" for f in oracle.frames)
    assert len(oracle.frames) == rep.frames + 1
    (down,) = foreign                                              # the board's ack came back to the bench
    assert frame.open_frame(down, bkey, const.DOWN, 0)["ref"] == 1 and rep.downlinks == {"foreign": 1}


def test_overlapping_gateways_hear_a_share_of_the_nodes_twice(registry):
    from gasguard.tools.sim.fleet_transport import CallbackTransport, OverlapTransport

    path, keys = registry
    oracles = [Oracle(keys), Oracle(keys)]

    def gateway(o):
        def deliver(raw, node):
            r = o.reply(o.accept(raw))
            return [r] if r else []
        return CallbackTransport(deliver)

    link = OverlapTransport([gateway(oracles[0]), gateway(oracles[1])], overlap=0.25)
    fleet = Fleet.from_registry(path, link, seed=6)
    rep = fleet.run("alarm_storm", duration=300, realtime=False, params={"count": 40})
    heard = [{f["dev"] for f in o.frames} for o in oracles]
    both = heard[0] & heard[1]
    assert len(heard[0] | heard[1]) == len({f["dev"] for o in oracles for f in o.frames})
    assert 0.1 < len(both) / len(heard[0] | heard[1]) < 0.4             # about a quarter heard twice
    assert sum(len(o.frames) for o in oracles) == rep.frames + link.heard_twice
    # each gateway saw the same frames of an overlapping node, counters intact
    dev = sorted(both)[0]
    assert [f["fcnt"] for f in oracles[0].frames if f["dev"] == dev] == \
        [f["fcnt"] for f in oracles[1].frames if f["dev"] == dev]
    # both acked every alarm they heard; the node took one ack, the other copy was stale or a replay
    assert rep.alarms["unacked"] == 0 and rep.downlinks.get("ack_stale", 0) + rep.downlinks.get("replay", 0) > 0
