"""The command service end to end, on both stores: real gateway daemons (grading plugin off, as in a district)
read signed frames from ptys and publish into a real mosquitto; the service consumes every gateway, grades
district-wide, stores and publishes; the console's MQTT client sees one picture and acknowledges.

The SIGKILL test runs two `gasguard command serve` processes (leader + hot standby) and kills the leader
during an alarm storm."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from gasguard.command import config as cconfig
from gasguard.command.service import CommandService
from gasguard.command.store import open_store
from gasguard.gateway import config as gwconfig
from gasguard.gateway import daemon as gwdaemon
from gasguard.testing.config import write_config
from gasguard.testing.gateway import DaemonThread
from gasguard.testing.links import PtyCable
from gasguard.testing.node import Node
from gasguard.testing.subscriber import Subscriber
from gasguard.command.console import CommandClient, ConsoleError
from gasguard.registry import Device, Registry
from gasguard.protocol import frame

D = "lixia"
UPSO, GAS_L2 = 4, 2
TRIP = frame.make_state(1, True, 0, False, False, True)


def _gateway(tmp_path, mosquitto, gid, registry):
    cable = PtyCable(tmp_path / f"tty-{gid}")
    path = write_config(tmp_path / f"{gid}.toml", registry=registry, spool=tmp_path / f"{gid}-spool.db",
                                mqtt_port=mosquitto.port, serial=[str(cable.link)], gateway_id=gid, district=D,
                                extra="[metrics]\ntick_interval = 0.2\n")
    runner = DaemonThread(gwdaemon.Daemon(gwconfig.load(path)))     # no plugins: off in a district
    runner.wait_ports()
    return runner, cable


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_gateways_one_district_picture_escalation_and_ack(tmp_path, mosquitto, store_url):
    a, b, home = Node(0xA001), Node(0xA002), Node(0xB001)
    reg = tmp_path / "registry.db"
    with Registry(reg) as r:
        r.add_many([
            Device(dev_id=a.dev, key=a.key, profile="station", site_name="燕山调压站", households=8_000,
                   pressure_class="medium_a", state="commissioned"),
            Device(dev_id=b.dev, key=b.key, profile="station", site_name="解放东路调压站", households=4_000,
                   pressure_class="medium_a", state="commissioned"),
            Device(dev_id=home.dev, key=home.key, profile="household", households=1, lat=36.66, lon=117.06,
                   state="commissioned")])
    offset = [0.0]
    cfg = cconfig.load(None, district=D, store=store_url, registry=str(reg), mqtt_port=mosquitto.port,
                       tick_interval=0.1, instance="cmd-a", lease_ttl=2.0)
    svc = CommandService(cfg, clock=lambda: time.time() + offset[0]).start()
    gws = []
    try:
        _wait(svc.connected.is_set, 15, "the service to lead and connect")
        gws = [_gateway(tmp_path, mosquitto, gid, reg) for gid in ("gw1", "gw2")]
        with CommandClient("127.0.0.1", mosquitto.port, D) as console, \
                CommandClient("127.0.0.1", mosquitto.port, D, city=True) as city:
            gws[0][1].send(a.alarm(code=UPSO, value=900, state=TRIP))
            gws[1][1].send(b.alarm(code=UPSO, value=900, state=TRIP))
            leak = home.alarm()                   # one frame heard by both gateways
            gws[0][1].send(leak)
            gws[1][1].send(leak)
            supply = console.wait_match(lambda m: m["category"] == "supply_assurance" and m["households"] == 12_000,
                                        20)
            assert supply["level"] == 3 and supply["routes"] == ["district", "city"]
            assert city.wait_for(supply["incident_id"], 10)["households"] == 12_000
            leaks = _wait(lambda: [m for m in console.board.incidents.values() if m["category"] == "safety_accident"],
                          10, "the leak incident")
            # both gateways published the leak frame; the command graded it once: one incident, one id
            assert len(leaks) == 1 and leaks[0]["revision"] == 1
            _wait(lambda: svc.metrics.value("gasguard_command_frames_duplicate_total") >= 1, 10,
                  "the second gateway's copy of the leak frame, dropped by its identity")
            assert len([m for m in console.board.incidents.values() if m["category"] == "safety_accident"]) == 1
            assert {g["gateway_id"] for g in svc.store.gateways()} == {"gw1", "gw2"}

            # 20 minutes after detection (virtual): escalation from the service, to the district and the city
            offset[0] = supply["deadlines"]["phone"] - time.time() + 1
            svc.tick_now()
            esc = console.wait_for(supply["incident_id"], 10, lambda m: m["kind"] == "escalation")
            assert esc["escalation"]["stage"] == "phone"
            # the gateways as the service sees them reach the console (silence: test_command_grading)
            _wait(lambda: {"gw1", "gw2"} <= set(console.board.gateways), 10, "the console's view of the gateways")
            console.ack(supply["incident_id"], "王值班", esc["revision"])
            acked = console.wait_for(supply["incident_id"], 10, lambda m: bool(m["acked"]))
            assert acked["acked"]["by"] == "王值班" and acked["escalation"] is None
            got = svc.store.get_incident(supply["incident_id"])
            assert [x["outcome"] for x in got["acks"]] == ["accepted"]
            assert [r["kind"] for r in got["revisions"]][-2:] == ["escalation", "update"]
            _wait(lambda: all(r["published"] for r in svc.store.get_incident(supply["incident_id"])["revisions"]),
                  10, "every revision PUBACKed")
            assert svc.metrics.value("gasguard_command_time_to_acknowledge_seconds_count") == 1

            # the CLI's way: an act waits for the service's answer on its result topic (refused: unknown incident)
            console.send_input(supply["incident_id"], {"note": "消防已到场", "by": "李现场"}, 10, confirm=True)
            with pytest.raises(ConsoleError, match="unknown incident"):
                console.ack(supply["incident_id"].replace("supply", "leak"), "李现场", 1, 10, confirm=True)

            # a console in another process (the web) acts through the store; the leader answers there
            other = open_store(store_url)
            rid = other.submit("input", supply["incident_id"], {"by": "李现场", "evacuated": 300, "note": "疏散完毕"})
            bad = other.submit("ack", "lixia-leak-ffffffff-0", {"by": "李现场"})
            assert other.wait_request(rid, 10)["outcome"] == "accepted"
            assert other.wait_request(bad, 10)["outcome"] == "refused: unknown incident"
            assert console.wait_for(supply["incident_id"], 10,
                                    lambda m: m["report"]["evacuated"] == 300)
            other.close()
    finally:
        for runner, cable in gws:
            runner.stop()
            cable.close()
        svc.stop()


def _serve(cfg_path, instance, log):
    return subprocess.Popen([sys.executable, "-m", "gasguard.cli", "command", "serve", "--config", str(cfg_path),
                             "--instance", instance, "--log-level", "WARNING"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_sigkill_of_the_leader_during_an_alarm_storm_loses_and_duplicates_nothing(tmp_path, mosquitto, store_url):
    n = 160
    nodes = [Node(0x00C00000 + i) for i in range(n)]
    reg = tmp_path / "registry.db"
    with Registry(reg) as r:       # homes ~330 m apart: every alarm is its own leak incident
        r.add_many([Device(dev_id=x.dev, key=x.key, profile="household", households=1, lat=36.60 + 0.003 * i,
                           lon=117.06, state="commissioned") for i, x in enumerate(nodes)])
    cfg_path = tmp_path / "command.toml"
    cfg_path.write_text(f'[command]\ndistrict = "{D}"\nstore = "{store_url}"\nregistry = "{reg}"\nlease_ttl = 2.0\n'
                        f'tick_interval = 0.2\n\n[command.mqtt]\nport = {mosquitto.port}\n')
    raw = Subscriber(mosquitto.port, f"gasguard/v1/{D}/command/incident/+")
    logs = [open(tmp_path / f"serve-{x}.log", "wb") for x in ("a", "b")]
    leader = _serve(cfg_path, "cmd-a", logs[0])
    store = open_store(store_url)
    procs = [leader]
    gw = None
    try:
        _wait(lambda: store.schema_version() and store.lease()["holder"] == "cmd-a", 20, "cmd-a to lead")
        procs.append(_serve(cfg_path, "cmd-b", logs[1]))
        gw = _gateway(tmp_path, mosquitto, "gw1", reg)
        storm_done = threading.Event()

        def storm():
            for x in nodes:
                gw[1].send(x.alarm())
                time.sleep(0.01)          # ~100 alarms/s from one substation
            storm_done.set()
        threading.Thread(target=storm, daemon=True).start()
        _wait(lambda: len(store.list_incidents()) >= n // 4, 30, "a quarter of the storm stored")
        leader.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        leader.wait(5)
        _wait(lambda: store.lease()["holder"] == "cmd-b", 15, "the standby to take over")
        takeover = time.monotonic() - killed
        assert takeover < 10, f"standby took {takeover:.1f} s"
        assert store.lease()["epoch"] == 2
        assert storm_done.wait(30)
        _wait(lambda: len(store.list_incidents()) == n, 30, f"all {n} incidents stored")
        incs = store.list_incidents()
        assert sorted(int(i["incident_id"].split("-")[2], 16) for i in incs) == [x.dev for x in nodes]
        for i in incs:                                   # exactly one revision each: none lost, none twice
            assert [c["revision"] for c in store.get_incident(i["incident_id"])["revisions"]] == [1]
        _wait(lambda: not store.unpublished(), 15, "the new leader to publish what the old one had not")
        seen = _wait(lambda: {(d["incident_id"], d["revision"]) for _, d, _ in raw.messages}
                     if len({d["incident_id"] for _, d, _ in raw.messages}) == n else None, 15,
                     "every incident on the district topic")
        assert len(seen) == n
    finally:
        if gw:
            gw[0].stop()
            gw[1].close()
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in logs:
            f.close()
        raw.close()
        store.close()
