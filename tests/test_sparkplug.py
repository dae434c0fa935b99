"""The gateway as a Sparkplug B 3.0 edge node, checked from outside by a host made of Eclipse Tahu's own
JavaScript packages (testing/tahu/host.mjs: Tahu's decoder/encoder and MQTT.js under node), with the real
daemon, real ptys and a real mosquitto.

What is checked is what a SCADA host relies on: births before data, every metric named in a birth with its
type and unit, seq numbering, bdSeq across the Will and restarts, primary-host STATE, rebirth, historical
replay, DDEATH, and that DCMDs become node commands on the gateway's command path."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gasguard.authority import audit as A
from gasguard.protocol.const import CMD_RESET
from gasguard.registry import Registry
from gasguard.gateway.sparkplug import metrics as M
from gasguard.testing.gateway import GatewayProcess
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

TAHU = Path(__file__).resolve().parent.parent / "testing" / "tahu"
pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120),
              pytest.mark.skipif(not (TAHU / "node_modules" / "sparkplug-payload").is_dir() or not shutil.which("node"),
                                 reason="Tahu's npm packages are installed by `make setup` (testing/tahu)")]

GROUP, NODE, HOST = "d1", "gw1", "scada"


class TahuHost:
    """node testing/tahu/host.mjs: every spBv1.0 message decoded by Tahu, as dicts on a queue."""

    def __init__(self, port: int):
        self.proc = subprocess.Popen(["node", str(TAHU / "host.mjs"), str(port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.q: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.expect(lambda m: m.get("ready"), "host subscribed")

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.q.put(json.loads(line))
            except ValueError:
                self.q.put({"noise": line})

    def expect(self, pred, what: str, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"Tahu host: {what} not seen within {timeout} s; seen: "
                                     f"{[m.get('topic') or m for m in self.seen[-12:]]}")
            try:
                m = self.q.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(m)
            if pred(m):
                return m

    def kind(self, kind: str, what: str = "", timeout: float = 15.0, dev: int | None = None) -> dict:
        def ok(m):
            return m.get("kind") == kind and (dev is None or m["topic"].endswith(f"/{dev:08x}"))
        return self.expect(ok, what or kind, timeout)

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def state(self, online: bool, ts: int) -> None:
        self.send(op="state", host=HOST, online=online, timestamp=ts)

    def drain(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self.q.get_nowait())
            except queue.Empty:
                self.seen.extend(out)
                return out

    def close(self) -> None:
        try:
            self.send(op="quit")
            self.proc.wait(5)
        except Exception:
            self.proc.kill()


def metrics_by_name(msg: dict) -> dict:
    return {m["name"]: m for m in msg["payload"]["metrics"]}


def by_alias(msg: dict, dev: int) -> dict:
    """A data message's metrics by name, from aliases (data messages carry no names)."""
    out = {}
    for m in msg["payload"]["metrics"]:
        assert "name" not in m or not m["name"], "data messages carry aliases, not names"
        a = m["alias"]
        assert a >> 8 == dev
        out[M.DEVICE_METRICS[a & 0xFF].name] = m
    return out


def sparkplug_conf(tmp: Path, primary: bool = True) -> str:
    return ("[sparkplug]\n" + (f'primary_host = "{HOST}"\n' if primary else "")
            + f'store = "{tmp / "sparkplug.db"}"\n')


@pytest.fixture
def host(mosquitto):
    h = TahuHost(mosquitto.port)
    yield h
    h.close()


def test_births_data_rebirth_and_primary_host_state(tmp_path, mosquitto, host):
    rig = Rig(tmp_path, mosquitto.port, extra="[batch]\ndelay = 0.1\n" + sparkplug_conf(tmp_path))
    with Registry(rig.registry) as r:
        r.update(rig.nodes[1].dev, profile="station", households=4000)
    try:
        rig.start()
        a, b = rig.nodes
        cable = rig.cables[0]
        # the host is not online: the node publishes nothing, and holds what arrives
        cable.send(a.reading(gas=30, pressure=2100, battery=80))
        rig.sub.wait(lambda ms: len(rig.readings()) == 1, 10)
        assert not [m for m in host.drain() if m.get("kind")], "nothing before the primary host is online"

        host.state(True, 1000)
        nb = host.kind("NBIRTH")
        assert nb["topic"] == f"spBv1.0/{GROUP}/NBIRTH/{NODE}" and nb["payload"]["seq"] == 0 and nb["qos"] == 0
        node_m = metrics_by_name(nb)
        assert node_m["bdSeq"]["type"] == "Int64" and node_m["Node Control/Rebirth"]["value"] is False
        bdseq = node_m["bdSeq"]["value"]
        db = host.kind("DBIRTH", dev=a.dev)
        assert db["payload"]["seq"] == 1
        dm = metrics_by_name(db)
        # every metric the device will ever send, typed, with units; a household has no inlet pressure
        assert set(dm) == {d.name for d in M.device_metrics("household")}
        assert dm["Gas"]["type"] == "Float" and dm["Gas"]["value"] == pytest.approx(3.0)
        assert dm["Gas"]["properties"]["engUnit"]["value"] == "%LEL"
        assert dm["Pressure"]["properties"]["engUnit"]["value"] == "Pa" and dm["Pressure"]["value"] == 2100
        # an alarm not seen in this session is null (unknown), not "inactive"
        assert dm["Valve"]["value"] == "open" and dm["Alarms/Gas L2"]["value"] is None
        assert dm["Gas"]["alias"] == (a.dev << 8) | M.INDEX["Gas"]
        hist = host.kind("DDATA", "historical replay of the held reading", dev=a.dev)
        assert hist["payload"]["seq"] == 2
        hm = by_alias(hist, a.dev)
        assert hm["Gas"]["isHistorical"] is True and hm["Gas"]["value"] == pytest.approx(3.0)

        # live data: only what changed, by alias, seq counting on
        cable.send(a.reading(gas=55, pressure=2100, battery=80))
        dd = host.kind("DDATA", dev=a.dev)
        assert dd["payload"]["seq"] == 3
        live = by_alias(dd, a.dev)
        assert set(live) >= {"Gas", "Frame Counter"} and "Pressure" not in live
        assert live["Gas"]["value"] == pytest.approx(5.5) and not live["Gas"].get("isHistorical")
        cable.send(a.alarm(code=2, value=260, state=0x15))
        al = host.expect(lambda m: m.get("kind") == "DDATA" and "Alarms/Gas L2" in by_alias(m, a.dev), "alarm DDATA")
        am = by_alias(al, a.dev)
        assert am["Alarms/Gas L2"]["value"] is True and am["Valve"]["value"] == "closed"
        assert am["Valve Latched"]["value"] is True and al["payload"]["seq"] == 4
        # a station is a device with inlet pressure
        cable.send(b.reading(pressure=1900, inlet=300000))
        sb = host.kind("DBIRTH", dev=b.dev)
        sm = metrics_by_name(sb)
        assert sm["Inlet Pressure"]["value"] == 300000 and sm["Properties/Households"]["value"] == 4000
        assert sm["Properties/Profile"]["value"] == "station"

        # rebirth on request: NBIRTH (seq 0, same bdSeq) and every device again
        host.send(op="ncmd", group=GROUP, node=NODE, metrics=[{"name": "Node Control/Rebirth", "type": "Boolean",
                                                                "value": True}])
        nb2 = host.kind("NBIRTH", "rebirth")
        assert nb2["payload"]["seq"] == 0 and metrics_by_name(nb2)["bdSeq"]["value"] == bdseq
        births = {host.kind("DBIRTH", "rebirth DBIRTH")["topic"][-8:] for _ in range(2)}
        assert births == {f"{a.dev:08x}", f"{b.dev:08x}"}

        # a stale STATE (older timestamp) changes nothing; the host going offline -> NDEATH, then silence
        host.state(False, 500)
        host.state(False, 2000)
        nd = host.kind("NDEATH", "NDEATH when the primary host goes offline")
        assert metrics_by_name(nd)["bdSeq"]["value"] == bdseq
        cable.send(a.reading(gas=70, pressure=2100, battery=80))
        rig.sub.wait(lambda ms: len(rig.readings()) == 4, 10)     # 2 of a, 1 of b, and this one
        assert not [m for m in host.drain() if m.get("kind") in ("NBIRTH", "DDATA", "DBIRTH")]
        # back online: a new session (bdSeq + 1), births, then the held reading as history
        host.state(True, 3000)
        nb3 = host.kind("NBIRTH", "birth after the host came back")
        assert metrics_by_name(nb3)["bdSeq"]["value"] == (bdseq + 1) % 256
        host.kind("DBIRTH", dev=a.dev)
        h2 = host.expect(lambda m: m.get("kind") == "DDATA" and m["topic"].endswith(f"{a.dev:08x}")
                         and by_alias(m, a.dev).get("Gas", {}).get("isHistorical"), "historical DDATA")
        assert by_alias(h2, a.dev)["Gas"]["value"] == pytest.approx(7.0)
    finally:
        rig.close()


def test_the_will_is_the_ndeath_and_bdseq_survives_a_sigkill(tmp_path, mosquitto, host):
    rig = Rig(tmp_path, mosquitto.port, sub=False, extra=sparkplug_conf(tmp_path, primary=False))
    gw = GatewayProcess(rig.config_path, tmp_path / "gw.log").start()
    try:
        nb = host.kind("NBIRTH", "birth with no primary host configured", timeout=30)
        bd = metrics_by_name(nb)["bdSeq"]["value"]
        gw.kill()
        nd = host.kind("NDEATH", "the Will after SIGKILL", timeout=60)
        assert metrics_by_name(nd)["bdSeq"]["value"] == bd and nd["qos"] == 1
        gw = GatewayProcess(rig.config_path, tmp_path / "gw.log").start()
        nb2 = host.kind("NBIRTH", "birth after restart", timeout=30)
        assert metrics_by_name(nb2)["bdSeq"]["value"] == (bd + 1) % 256
        assert os.stat(tmp_path / "sparkplug.db").st_mode & 0o077 == 0
    finally:
        gw.close()
        rig.close()


def test_ddeath_dcmd_and_a_tahu_peer(tmp_path, mosquitto, host):
    extra = ("[batch]\ndelay = 0.1\n[limits]\noffline_after = 0.5\noffline_missed_reports = 0\n"
             + sparkplug_conf(tmp_path, primary=False))
    rig = Rig(tmp_path, mosquitto.port, extra=extra)
    try:
        rig.start()
        a = rig.nodes[0]
        host.kind("NBIRTH")
        rig.cables[0].send(a.reading(gas=10))
        host.kind("DBIRTH", dev=a.dev)
        # silence past the offline timeout: the gateway's verdict becomes a DDEATH
        dd = host.kind("DDEATH", "DDEATH when the device goes offline", dev=a.dev)
        assert dd["payload"]["seq"] >= 2
        # back: born again
        rig.cables[0].send(a.reading(gas=10))
        host.kind("DBIRTH", "DBIRTH when the device is back", dev=a.dev)

        # DCMDs go to the gateway's command dispatcher, where authority is checked and audited: unsigned and
        # wrong-role writes change nothing; an engineer's signed reset reaches the line
        dev = f"{a.dev:08x}"
        cmd_t = rig.cmd_topic(a.dev)
        rig.cables[0].downlinks()
        host.send(op="dcmd", group=GROUP, node=NODE, device=dev,
                  metrics=[{"name": "Node Control/Reset", "type": "Boolean", "value": True}])
        host.send(op="dcmd", group=GROUP, node=NODE, device=dev, metrics=[
            {"name": "Authority/Signed Request", "type": "String",
             "value": rig.signed("op", cmd_t, {"request_id": "spb-op", "cmd": "reset"}).decode()}])
        results = rig.sub.wait(lambda ms: len(rig.sub.on("/cmd/result")) >= 2 and rig.sub.on("/cmd/result"), 10)
        assert sorted(r["reason"] for r in results) == ["unsigned", "wrong_role"]
        assert rig.cables[0].downlinks() == []
        host.send(op="dcmd", group=GROUP, node=NODE, device=dev, metrics=[
            {"name": "Authority/Signed Request", "type": "String",
             "value": rig.signed("eng", cmd_t, {"request_id": "spb-eng", "cmd": "reset", "ttl_s": 5}).decode()},
            {"name": "Node Control/Reset", "type": "Boolean", "value": True}])
        sent = wait_until(lambda: [a.open_downlink(b) for b in rig.cables[0].downlinks()], 10, "the reset on the line")
        assert [(f["type"], f["cmd"]) for f in sent] == [("command", CMD_RESET)]
        allowed = A.show(rig.spool.parent / "audit", outcome="allowed")
        assert [(r["type"], r["source"]["operator"]) for r in allowed] == [("reset", "eng")]
        refused = A.show(rig.spool.parent / "audit", outcome="refused")
        assert sorted(r["reason"].split(":")[0] for r in refused if r["category"] == "command") == \
            ["unsigned", "wrong_role"]

        # an unknown metric or a garbled payload is refused and counted, never a crash
        plugin = next(p for p in rig.daemon.plugins if p.name == "sparkplug")
        before = plugin.edge.refused
        host.send(op="dcmd", group=GROUP, node=NODE, device=f"{a.dev:08x}",
                  metrics=[{"name": "Valve", "type": "String", "value": "open"}])
        host.send(op="raw", topic=f"spBv1.0/{GROUP}/DCMD/{NODE}/{a.dev:08x}", hex="ffff0102")
        wait_until(lambda: plugin.edge.refused >= before + 2, 10, "both refusals counted")
        assert plugin.edge.refused == before + 2

        # Tahu's own edge node client beside ours: the host decodes both births alike
        host.send(op="peer", group=GROUP, node="tahu-peer")
        peer = host.expect(lambda m: m.get("kind") == "NBIRTH" and m["topic"].endswith("/tahu-peer"), "peer NBIRTH")
        # (Tahu's JS client types bdSeq UInt64; the 3.0 specification says Int64, which we send)
        assert metrics_by_name(peer)["bdSeq"]["type"] in ("Int64", "UInt64") and peer["payload"]["seq"] == 0
    finally:
        rig.close()
