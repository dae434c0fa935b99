"""End to end: a simulated regulator station sends signed protocol frames over a real pty into the real
gateway daemon (virtual clock) with the grading plugin enabled in its TOML; incidents travel through a real
mosquitto to the console's MQTT client on the district topic and on the city topic."""

import os

from gasguard.authority.bootstrap import bootstrap
from gasguard.gateway import config as gwconfig
from gasguard.gateway import daemon as gwdaemon
from gasguard.testing.config import write_config
from gasguard.testing.gateway import DaemonThread
from gasguard.testing.links import PtyCable
from gasguard.testing.node import Node
from gasguard.testing.subscriber import Subscriber
from gasguard.command.console import CommandClient, Signer
from gasguard.registry import Device, Registry
from gasguard.protocol import frame
from grading_helpers import T0

UPSO = 4


def _setup(tmp_path, mosquitto):
    station, downstream = Node(0xA001), Node(0xA002)
    with Registry(tmp_path / "registry.db") as r:
        r.add_many([
            Device(dev_id=station.dev, key=station.key, profile="station", site_name="燕山调压站",
                   address="历下区燕山立交桥东", lat=36.659, lon=117.062, households=8_000,
                   pressure_class="subhigh_a", state="commissioned"),
            Device(dev_id=downstream.dev, key=downstream.key, profile="station", site_name="解放东路调压站",
                   households=4_000, upstream=station.dev, state="commissioned"),
        ])
    cable = PtyCable(tmp_path / "ttyGG0")
    auth = bootstrap(tmp_path / "authority", "lixia", {"root": "admin", "wang": "operator"})
    cfg_path = write_config(
        tmp_path / "gateway.toml", registry=tmp_path / "registry.db", spool=tmp_path / "spool.db",
        mqtt_port=mosquitto.port, serial=[str(cable.link)], gateway_id="sub-017", district="lixia",
        extra=auth.gateway_toml() + '[metrics]\ntick_interval = 0.1\n\n[plugins.grading]\nreporter_unit = "历下区住房和城乡建设局"\n'
              'reporter_phone = "0531-00000000"\n')
    return station, cable, gwconfig.load(cfg_path), Signer("wang", auth.key("wang"))


def test_station_trip_12000_households_escalates_until_acknowledged(tmp_path, mosquitto):
    station, cable, cfg, signer = _setup(tmp_path, mosquitto)
    clock = {"t": T0}
    daemon = gwdaemon.Daemon(cfg, clock=lambda: clock["t"])
    raw = Subscriber(mosquitto.port, "gasguard/v1/lixia/command/incident/+")
    runner = DaemonThread(daemon)
    try:
        runner.wait_ports()        # a frame sent before the port is open is flushed by the open
        with CommandClient("127.0.0.1", mosquitto.port, "lixia", signer=signer) as district, \
                CommandClient("127.0.0.1", mosquitto.port, "lixia", city=True) as city:
            # the slam-shut trips on under-pressure: valve closed and latched, PTRIP set
            state = frame.make_state(1, True, 0, False, False, True)
            cable.send(station.alarm(code=UPSO, value=900, state=state))

            first = district.wait_match(lambda m: m["kind"] == "new", 15)
            on_city = city.wait_for(first["incident_id"], 10)
            assert on_city["revision"] == first["revision"]
            assert first["level"] == 3 and first["projected"] is True and first["households"] == 12_000
            assert first["warning"] == "yellow" and first["category"] == "supply_assurance"
            assert first["routes"] == ["district", "city"]
            rep = first["report"]
            assert rep["place"]["site_name"] == "燕山调压站" and rep["place"]["address"] == "历下区燕山立交桥东"
            assert rep["source"]["gateway"] == "sub-017" and rep["source"]["devices"] == ["0000a001"]
            assert rep["preliminary_level"] == {"level": 3, "name": "III", "projected": True,
                                                "basis": rep["preliminary_level"]["basis"]}
            assert "shut off automatically" in rep["measures_taken"][0]["text"]
            assert rep["what_happened"]["stations"][0]["downstream_stations"] == ["0000a002"]
            assert rep["reporter"]["unit"] == "历下区住房和城乡建设局" and rep["reporter"]["phone"] == "0531-00000000"
            assert {"casualties", "losses_cny", "on_site_lead"} <= set(rep["to_be_completed"])
            assert first["detected_at"] == T0 - 3                        # the alarm's age
            assert "较大（Ⅲ级）（初判" in first["text_zh"]

            # 19:59 of virtual time: nothing yet; 20:00 after detection: escalation, district and city
            clock["t"] = first["detected_at"] + 1199
            runner.call(daemon.tick, clock["t"])
            clock["t"] = first["detected_at"] + 1200
            runner.call(daemon.tick, clock["t"])
            esc = district.wait_for(first["incident_id"], 10, lambda m: m["kind"] == "escalation")
            assert esc["escalation"]["stage"] == "phone" and esc["escalation"]["count"] == 1
            assert esc["published_at"] == first["detected_at"] + 1200
            assert city.wait_for(first["incident_id"], 10, lambda m: m["kind"] == "escalation")

            # the command acknowledges from the console: the gateway confirms, escalation stops
            district.ack(first["incident_id"], None, esc["revision"], confirm=True)    # signed as wang
            acked = district.wait_for(first["incident_id"], 10, lambda m: bool(m["acked"]))
            assert acked["acked"]["by"] == "wang" and acked["escalation"] is None
            for minutes in (25, 45, 60, 120):
                clock["t"] = first["detected_at"] + minutes * 60
                runner.call(daemon.tick, clock["t"])
            district.request_sync()      # the gateway re-publishes what it holds: a marker after the ticks
            raw.wait(lambda ms: [d for _, d, _ in ms if d.get("kind") == "sync"], 10)
            after_ack = [d for _, d, _ in raw.messages if d["revision"] > acked["revision"]]
            assert after_ack == []                                        # no escalation once acknowledged
            assert [d["kind"] for _, d, _ in raw.messages if d["kind"] == "escalation"] == ["escalation"]
    finally:
        raw.close()
        runner.stop()
        cable.close()
