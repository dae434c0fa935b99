"""The gateway daemon over real ptys and a real mosquitto: what it publishes (topics, JSON Schemas), what it
rejects (by reason, counted), duplicates over two paths, alarms while readings stream, retained state."""

import sqlite3
import threading

import pytest

from gasguard.protocol import frame
from gasguard.protocol.const import ALARM, EVENT, R_OK
from gasguard.testing.node import Node
from gasguard.testing.subscriber import Subscriber
from gasguard.registry import Device, Registry
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(90)]


@pytest.fixture
def rig(tmp_path, mosquitto):
    r = Rig(tmp_path, mosquitto.port, extra="[batch]\ndelay = 0.2\n")
    yield r
    r.close()


def _acks(node, cable, timeout=5.0):
    """The downlinks the node got, opened with its key (MIC and downlink counter checked)."""
    return wait_until(lambda: [node.open_downlink(b) for b in cable.downlinks()], timeout, "a downlink")


def test_valid_frames_are_published_on_the_documented_topics_and_schemas(rig):
    rig.start()
    a, b = rig.nodes
    cable = rig.cables[0]
    sent = [a.reading(gas=120, pressure=2100), b.reading(pressure=1900, inlet=300000), a.reading(gas=5)]
    for raw in sent:
        cable.send(raw)
    cable.send(a.alarm(code=2, value=260))
    acks_a = _acks(a, cable)
    cable.send(b.event(code=1))
    acks_b = _acks(b, cable)
    root = rig.root
    sub = rig.sub
    sub.wait(lambda ms: len(rig.readings()) == 3 and sub.on(f"{b.dev:08x}/event"), 10)
    sub.wait(lambda ms: sub.on("/status") and len(sub.on("/state")) >= 2, 10)

    counts = rig.validated()
    assert {"readings", "alarm", "event", "state", "gateway-status"} <= set(counts)
    # topics: gasguard/v1/<district>/<gateway>/...
    assert root == "gasguard/v1/d1/gw1"
    ids = [r["id"] for r in rig.readings()]
    assert ids == [f"gw1:{a.dev:08x}:1", f"gw1:{b.dev:08x}:1", f"gw1:{a.dev:08x}:2"]   # in arrival order
    first = rig.readings()[0]
    assert first["gas_pct_lel"] == pytest.approx(12) and first["pressure_pa"] == 2100
    assert first["rx"]["transport"] == "serial" and first["rx"]["port"] == "ttyGG0"
    assert rig.readings()[1]["inlet_pa"] == 300000
    (alarm,) = sub.on(f"{a.dev:08x}/alarm")
    assert alarm["id"] == f"gw1:{a.dev:08x}:3" and alarm["name"] == "gas_l2" and alarm["value"] == 26.0
    assert alarm["site"]["site_name"] == f"site {a.dev}"
    assert [(f["type"], f["ref_type"], f["ref"], f["result"]) for f in acks_a] == [("ack", ALARM, a.aseq, R_OK)]
    assert [(f["type"], f["ref_type"], f["ref"]) for f in acks_b] == [("ack", EVENT, b.eseq)]
    (status,) = sub.on("gw1/status")
    assert status["online"] is True
    # (that alarms overtake readings is shown without timing luck in test_gateway_spool's backlog test)
    assert rig.metric("gasguard_gateway_accepted_total", type="reading") == 3
    assert rig.metric("gasguard_gateway_frames_in_total", transport="serial") == 5


def test_bad_frames_are_rejected_and_counted_by_reason(rig, tmp_path):
    stranger = Node(0x00BEEF01)
    gone = Node(0x00BEEF02)
    with Registry(rig.registry) as r:
        r.add_many([Device(dev_id=gone.dev, key=gone.key, profile="household", state="decommissioned")])
    rig.cfg.rate_burst, rig.cfg.rate_per_min = 3, 1.0   # a runaway node: 3 readings, then refused
    rig.start()
    a, b = rig.nodes
    cable = rig.cables[0]

    good = a.reading()
    cable.send(good)
    forged = bytearray(b.reading())
    forged[-1] ^= 0x01                                 # MIC does not match the registry key
    cable.send(bytes(forged))
    for _ in range(8):                                 # events: not rate limited; push `good` out of the
        cable.send(a.event())                          # recent-frames window, so a copy is a replay, not
    cable.send(good)                                   # a second path's duplicate
    cable.send(good[:-3])                              # truncated (valid CRC around a short frame)
    cable.send(stranger.reading())                     # not in the registry
    cable.send(gone.reading())                         # decommissioned
    cable.write(b"\x00\x13\x37\xde\xad\xbe\xef\x00")  # line noise (a COBS frame with a bad CRC)
    for _ in range(5):                                 # rate limit: node b only has 3 tokens
        cable.send(b.reading())
    # (metrics are read from this thread while the daemon's loop may be mid-group: wait for the end state)
    wait_until(lambda: rig.rejected("rate_limit") >= 2 and
               rig.metric("gasguard_gateway_accepted_total", type="reading") == 4, 10, "all frames handled")

    got = {r: rig.rejected(r) for r in ("mic", "replay", "unknown_device", "decommissioned", "rate_limit")}
    assert got == {"mic": 1, "replay": 1, "unknown_device": 1, "decommissioned": 1, "rate_limit": 2}
    # the truncated frame and the noise: rejected by the decoder / deframer, under their own reasons
    other = {s.labels["reason"]: s.value for m in rig.daemon.metrics.rejected.collect() for s in m.samples
             if s.name.endswith("_total") and s.labels["reason"] not in got}
    assert sum(other.values()) == 2, other
    assert rig.metric("gasguard_gateway_accepted_total", type="reading") == 4
    assert rig.metric("gasguard_gateway_accepted_total", type="event") == 8
    before = rig.settle(a)                             # everything sent is out: nothing more can come
    assert [r["id"] for r in before] == [f"gw1:{a.dev:08x}:1"] + [f"gw1:{b.dev:08x}:{n}" for n in (2, 3, 4)]
    assert len(rig.sub.on("/event")) == 8
    rig.validated()


def test_one_frame_over_two_paths_is_published_once(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, cables=2, extra="[batch]\ndelay = 0.1\n")
    try:
        rig.start()
        a = rig.nodes[0]
        raw = a.alarm()
        rig.cables[0].send(raw)
        rig.cables[1].send(raw)                        # a second radio heard it too
        rd = a.reading()
        rig.cables[1].send(rd)
        rig.cables[0].send(rd)
        wait_until(lambda: rig.rejected("duplicate") == 2 and
                   rig.metric("gasguard_gateway_accepted_total", type="reading") == 1, 10, "both copies counted")
        before = rig.settle(a)                         # everything sent is out: nothing more can come
        assert len(rig.sub.on("/alarm")) == 1 and len(before) == 1
        assert rig.rejected("replay") == 0
        assert rig.metric("gasguard_gateway_accepted_total", type="alarm") == 1
    finally:
        rig.close()


def test_alarm_is_spooled_acked_and_published_while_readings_stream(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, nodes=20, extra="[spool]\naudit = true\n[limits]\nrate_per_min = 60000\n"
                                                         "burst = 1000\n[batch]\ndelay = 0.2\n")
    try:
        rig.start()
        cable = rig.cables[0]
        streamer, alarmer = rig.nodes[:-1], rig.nodes[-1]
        stop = threading.Event()
        streamed = []

        def stream():
            while not stop.is_set() and len(streamed) < 20_000:
                for n in streamer:
                    cable.send(n.reading(gas=10))
                    streamed.append(n.dev)
        t = threading.Thread(target=stream, daemon=True)
        t.start()
        wait_until(lambda: len(rig.readings()) > 500, 20, "readings flowing")
        raw = alarmer.alarm(code=1, value=150)
        cable.send(raw)
        mid = f"gw1:{alarmer.dev:08x}:{alarmer.fcnt}"
        ack = wait_until(lambda: next((alarmer.open_downlink(b) for b in cable.downlinks()
                                        if frame.decode(b)["dev"] == alarmer.dev), None), 10, "the alarm's ack",
                         step=0.005)
        # the ack reached the device: the alarm must already be on disk (read with a separate connection)
        with sqlite3.connect(rig.spool) as db:
            assert db.execute("SELECT 1 FROM audit WHERE msg_id = ?", (mid,)).fetchone() is not None
        assert ack is not None and ack["ref_type"] == ALARM and ack["ref"] == alarmer.aseq
        (alarm,) = rig.sub.wait(lambda ms: rig.sub.on(f"{alarmer.dev:08x}/alarm"), 10)
        readings_before = len(rig.readings())
        rig.sub.wait(lambda ms: len(rig.readings()) > readings_before, 10)   # still streaming afterwards
        stop.set()
        t.join(10)
        assert alarm["id"] == mid and alarm["name"] == "gas_l1"
        rig.validated()
    finally:
        rig.close()


def test_retained_state_goes_offline_after_silence_and_back_online(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, extra="[limits]\noffline_after = 1.0\noffline_missed_reports = 0\n")
    try:
        rig.start()
        a = rig.nodes[0]
        rig.cables[0].send(a.reading(gas=30, pressure=2050))
        st = f"{a.dev:08x}/state"
        rig.sub.wait(lambda ms: [d for d in rig.sub.on(st) if d["online"] is False], 10)
        states = rig.sub.on(st)
        assert [s["online"] for s in states] == [True, False]
        assert states[1]["last_reading"]["pressure_pa"] == 2050 and states[1]["last_seen"] == states[0]["last_seen"]
        # a late subscriber (the command's console starting up) gets the retained offline state at once
        late = Subscriber(mosquitto.port, f"{rig.root}/+/state")
        try:
            (t, doc, retained), = late.wait(lambda ms: ms, 5)
            assert retained and doc["online"] is False and doc["dev"] == f"{a.dev:08x}"
        finally:
            late.close()
        rig.cables[0].send(a.reading())
        rig.sub.wait(lambda ms: len(rig.sub.on(st)) == 3, 10)
        assert rig.sub.on(st)[-1]["online"] is True
        rig.validated()
    finally:
        rig.close()


def test_a_household_is_not_offline_between_two_of_its_reports(tmp_path, mosquitto):
    # offline_after alone (1 s here) would flap a battery meter that reports every 900 s; the default
    # timeout is also 3 of the device's report periods (its profile default: 900 s) when that is longer
    rig = Rig(tmp_path, mosquitto.port, extra="[limits]\noffline_after = 1.0\n")
    clock = {"t": 1_795_400_000.0}                      # the daemon's clock, virtual: ticks are driven here
    try:
        rig.start(clock=lambda: clock["t"])
        a = rig.nodes[0]
        rig.cables[0].send(a.reading(gas=30, pressure=2050))
        st = f"{a.dev:08x}/state"
        rig.sub.wait(lambda ms: rig.sub.on(st), 10)
        for late in (3.5, 900.0, 2699.0):                # past offline_after, one and almost three reports late
            clock["t"] = 1_795_400_000.0 + late
            rig.runner.call(rig.daemon.tick, clock["t"])
            assert rig.runner.call(lambda: rig.daemon.presence.get(a.dev).online), late
        clock["t"] = 1_795_400_000.0 + 2701.0            # the third report missed: offline
        rig.runner.call(rig.daemon.tick, clock["t"])
        rig.sub.wait(lambda ms: [s for s in rig.sub.on(st) if s["online"] is False], 10)
    finally:
        rig.close()


def test_offline_timeout_follows_the_devices_report_period():
    from gasguard.gateway.config import Config
    from gasguard.gateway.presence import offline_timeout
    from gasguard.registry import Device
    cfg = Config(gateway_id="g1", district="d1", registry=None, spool=None)
    household = Device(dev_id=1, key=bytes(16), profile="household")
    station = Device(dev_id=2, key=bytes(16), profile="station")
    slow = Device(dev_id=3, key=bytes(16), profile="station", config={"report_s": 600})
    assert offline_timeout(cfg, household) == 2700.0          # 3 x 900 s
    assert offline_timeout(cfg, station) == 900.0             # 3 x 60 s < the 900 s floor
    assert offline_timeout(cfg, slow) == 1800.0
    assert offline_timeout(cfg, None) == 900.0
    cfg.offline_missed = 0
    assert offline_timeout(cfg, household) == 900.0


def test_a_group_of_frames_from_two_transports_counts_each_transports_frames(rig):
    """frames_in is counted per group (ingest's hot path): a group whose frames came from one transport is counted
    at once, one that mixes a serial line's and a forwarder's frames per transport."""
    rig.start()
    a, b = rig.nodes
    serial = {"transport": "serial", "port": "ttyGG0", "rssi": None, "snr": None}
    udp = {"transport": "udp", "eui": "0102030405060708", "rssi": -80, "snr": 7.5}
    d = rig.daemon
    rig.runner.call(lambda: d.process([(a.reading(), serial, "serial:tty0"), (b.reading(), udp, "udp:gw"),
                                       (a.reading(), serial, "serial:tty0")]))
    rig.runner.call(lambda: d.process([(b.reading(), udp, "udp:gw"), (b.reading(), udp, "udp:gw")]))
    assert rig.metric("gasguard_gateway_frames_in_total", transport="serial") == 2
    assert rig.metric("gasguard_gateway_frames_in_total", transport="udp") == 3
    assert rig.metric("gasguard_gateway_accepted_total", type="reading") == 5
