"""End to end without the daemon (fallback while the gateway branch is not merged): a simulated station
writes signed, COBS-framed protocol frames into a real pty; a minimal in-test gateway reads them with
pyserial, verifies them against a real registry, and drives the grading plugin; incidents travel through a
real mosquitto to the console client on the district and city topics; virtual time for the deadlines."""

import os

import serial

from gasguard.gateway.console import CommandClient
from gasguard.gateway.grading_plugin import GradingPlugin, registry_downstream
from gasguard.gateway.registry import Device, Registry
from gasguard.protocol import const, frame, framing
from grading_helpers import T0, PluginHarness


def _read_frames(port, want, timeout=5.0):
    import time
    deframer, out = framing.Deframer(), []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        out += [p for k, p in deframer.feed(port.read(256)) if k == framing.FRAME]
    assert len(out) == want, f"pty: {len(out)} of {want} frames arrived"
    return out


def test_station_trip_via_pty_and_mosquitto_escalates_until_acked(tmp_path, mosquitto):
    key_a, key_b = os.urandom(16), os.urandom(16)
    reg = tmp_path / "registry.db"
    with Registry(reg) as r:
        r.add_many([Device(dev_id=0xA001, key=key_a, profile="station", site_name="燕山调压站", households=8_000,
                           pressure_class="subhigh_a", lat=36.659, lon=117.062, state="commissioned"),
                    Device(dev_id=0xA002, key=key_b, profile="station", site_name="解放东路调压站",
                           households=4_000, upstream=0xA001, state="commissioned")])
    clock = {"t": T0}
    plugin = GradingPlugin({"gateway_id": "sub-017"}, downstream=registry_downstream(reg),
                           state_path=tmp_path / "grading.json")
    gw = PluginHarness(plugin, mosquitto.port, lambda: clock["t"])
    master, slave = os.openpty()
    port = serial.Serial(os.ttyname(slave), 115200, timeout=0.1)
    try:
        with CommandClient("127.0.0.1", mosquitto.port, "lixia") as district, \
                CommandClient("127.0.0.1", mosquitto.port, "lixia", city=True) as city:
            st = frame.make_state(const.VALVE_CLOSED, True, 0, False, False, True)
            trip = frame.seal({"type": "alarm", "dev": 0xA001, "fcnt": 1, "code": const.AL_UPSO, "cleared": False,
                               "aseq": 1, "age": 3, "value": 900, "state": st}, key_a, const.UP)
            os.write(master, framing.wrap(trip))
            (raw,) = _read_frames(port, 1)
            with Registry(reg, readonly=True) as r:
                dev = r.get(frame.decode(raw)["dev"])
            f = frame.open_frame(raw, dev.key, const.UP, 0)
            gw.observe({"id": "sub-017:a001:1", "t": clock["t"], "dev": f["dev"], "type": "alarm", "frame": f,
                        "state": frame.state_fields(f["state"]), "device": dev.public(), "rx": {"transport": "pty"}})

            first = district.wait_match(lambda m: m["kind"] == "new", 10)
            assert city.wait_for(first["incident_id"], 10)["revision"] == first["revision"]
            assert (first["level"], first["projected"], first["households"]) == (3, True, 12_000)
            rep = first["report"]
            assert rep["place"]["site_name"] == "燕山调压站" and rep["source"]["gateway"] == "sub-017"
            assert "shut off automatically" in rep["measures_taken"][0]["text"]

            clock["t"] = first["detected_at"] + 1199.5
            assert gw.tick() == []
            clock["t"] = first["detected_at"] + 1200
            gw.tick()
            esc = district.wait_for(first["incident_id"], 10, lambda m: m["kind"] == "escalation")
            assert esc["escalation"]["stage"] == "phone"
            assert city.wait_for(first["incident_id"], 10, lambda m: m["kind"] == "escalation")

            district.ack(first["incident_id"], "王值班", esc["revision"])
            gw.pump(until=lambda t: "/ack/" in t)
            assert district.wait_for(first["incident_id"], 10, lambda m: bool(m["acked"]))["escalation"] is None
            for minutes in (25, 45, 90):
                clock["t"] = first["detected_at"] + minutes * 60
                assert gw.tick() == []                                  # acknowledged: no more escalation
    finally:
        port.close()
        os.close(master)
        os.close(slave)
        gw.close()
