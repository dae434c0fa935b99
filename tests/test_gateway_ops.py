"""Operating the gateway: `gasguard gateway check-config`, the Prometheus endpoint, birth and Last Will,
graceful shutdown on SIGTERM (the real command in a child process)."""

import sqlite3
import time
import urllib.request

import pytest
from click.testing import CliRunner

from gasguard.cli import cli
from gasguard.testing.node import Node, make_registry
from gasguard.testing.subscriber import Subscriber
from gasguard.testing.mosquitto import free_port
from gasguard.testing.gateway import GatewayProcess
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

GOOD = '[gateway]\nid = "g1"\ndistrict = "d1"\nregistry = "registry.db"\nspool = "spool.db"\n[udp]\nbind = "127.0.0.1:1700"\n'


@pytest.mark.parametrize("body, key, fix", [
    (GOOD.replace('id = "g1"\n', ""), "gateway.id", "is required"),
    (GOOD.replace('id = "g1"', 'id = "sub 17"'), "gateway.id", "A-Z a-z 0-9 _ -"),
    (GOOD + "[mqtt]\nprot = 1883\n", "mqtt.prot", "did you mean 'port'?"),
    (GOOD + "[mqtt]\nport = 70000\n", "mqtt.port", "8883 with TLS"),
    (GOOD + '[mqtt]\ntls_ca = "nowhere/ca.pem"\n', "mqtt.tls_ca", "give the PEM file's path"),
    (GOOD + "[batch]\ndelay = 100\n", "batch.delay", "between 0 and 60"),
    (GOOD + '[spool]\nsynchronous = "OFF"\n', "spool.synchronous", "FULL (survives power loss)"),
    (GOOD + "[limits]\nrate_per_min = 0\n", "limits.rate_per_min", "greater than 0"),
    (GOOD + "[plugins]\nscada = true\n", "plugins.scada", "unknown plugin; available:"),
    (GOOD + '[sparkplug]\nprimary_hots = "scada"\n', "sparkplug.primary_hots", "unknown key; known keys:"),
    (GOOD + '[sparkplug]\ngroup = "a/b"\n', "sparkplug.group", "no '/', '+' or '#'"),
    (GOOD.replace('bind = "127.0.0.1:1700"', 'bind = "1700"'), "udp.bind", 'e.g. "0.0.0.0:1700"'),
    (GOOD.replace('[udp]\nbind = "127.0.0.1:1700"\n', ""), "serial", "add a [[serial]] port"),
    (GOOD + '[[serial]]\nport = "/dev/ttyUSB0"\nbaud = 12345\n', "serial[0].baud", "use e.g. 115200"),
    (GOOD + "[nonsense]\n", "nonsense", "unknown table"),
    ("[gateway\n", "file", "not valid TOML"),
])
def test_check_config_names_the_key_and_the_fix(tmp_path, body, key, fix):
    path = tmp_path / "gateway.toml"
    path.write_text(body)
    r = CliRunner().invoke(cli, ["gateway", "check-config", "-c", str(path)])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(f"configuration error: {key}: ") and fix in r.stderr, r.stderr


def test_check_config_accepts_a_good_file_and_checks_the_registry(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(GOOD)
    r = CliRunner().invoke(cli, ["gateway", "check-config", "-c", str(path)])
    assert r.exit_code == 2 and r.stderr.startswith("cannot start: registry ") and "import-registry" in r.stderr
    make_registry(tmp_path / "registry.db", [Node(7)])
    r = CliRunner().invoke(cli, ["gateway", "check-config", "-c", str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert '"devices": 1' in r.stdout and '"root": "gasguard/v1/d1/g1"' in r.stdout


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_prometheus_endpoint_exposes_ingest_spool_latency_and_broker_state(tmp_path, mosquitto):
    bind = f"127.0.0.1:{free_port()}"
    rig = Rig(tmp_path, mosquitto.port, metrics=f'tick_interval = 0.1\nbind = "{bind}"\n',
              extra="[batch]\ndelay = 0.05\n")

    def scrape() -> dict:
        text = urllib.request.urlopen(f"http://{bind}/metrics", timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    skew = [0.0]                                     # the daemon's clock runs ahead on demand, not by waiting
    try:
        rig.start(clock=lambda: time.time() + skew[0])
        a = rig.nodes[0]
        rig.cables[0].send(a.reading())
        rig.cables[0].send(a.alarm())
        bad = bytearray(a.reading())
        bad[-2] ^= 0xFF
        rig.cables[0].send(bytes(bad))
        rig.sub.wait(lambda ms: rig.readings() and rig.sub.on("/alarm"), 10)
        m = wait_until(lambda: (m := scrape()).get('gasguard_gateway_published_total{lane="reading"}') and m,
                       10, "reading PUBACK counted")
        assert m['gasguard_gateway_frames_in_total{transport="serial"}'] == 3
        assert m['gasguard_gateway_rejected_total{reason="mic"}'] == 1
        assert m['gasguard_gateway_accepted_total{type="alarm"}'] == 1
        assert m['gasguard_gateway_publish_latency_seconds_count{lane="alarm"}'] == 1
        assert m['gasguard_gateway_broker_connected'] == 1
        # broker gone: the state is visible, readings pile up in the spool with their age
        mosquitto.stop()
        wait_until(lambda: scrape()["gasguard_gateway_broker_connected"] == 0, 10, "broker state 0")
        rig.cables[0].send(a.reading())
        wait_until(lambda: rig.metric("gasguard_gateway_accepted_total", type="reading") == 2, 10, "accepted")
        skew[0] = 0.3                                # the reading has waited 0.3 s of daemon time
        rig.runner.call(rig.daemon.update_gauges)    # the ticker does this every 5 s
        m = scrape()
        assert m['gasguard_gateway_spool_depth{lane="reading"}'] == 1
        assert m["gasguard_gateway_spool_oldest_age_seconds"] >= 0.2
        mosquitto.start()
        wait_until(lambda: scrape()["gasguard_gateway_broker_connected"] == 1, 15, "reconnected")
    finally:
        rig.close()


@pytest.mark.mosquitto
@pytest.mark.timeout(90)
def test_birth_then_last_will_when_the_gateway_is_killed(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, sub_topic="gasguard/v1/d1/gw1/status")
    gw = GatewayProcess(rig.config_path, tmp_path / "gateway.log").start()
    try:
        birth = rig.sub.wait(lambda ms: [d for _, d, _ in ms if d.get("online") is True], 20)[0]
        assert birth["t"] > 0 and birth["gateway"] == "gw1"
        gw.kill()                                      # SIGKILL: no goodbye, the broker sends the Will
        (will,) = rig.sub.wait(lambda ms: [d for _, d, _ in ms if d.get("online") is False], 10)
        assert will["t"] == 0                          # the Will was set at connect time
        rig.validated()
        late = Subscriber(mosquitto.port, f"{rig.root}/status")
        try:
            (_, doc, retained), = late.wait(lambda ms: ms, 5)
            assert retained and doc["online"] is False
        finally:
            late.close()
    finally:
        gw.close()
        rig.close()


def _lanes(spool) -> dict:
    """Messages waiting in the spool by lane (0 alarm .. 3 reading; a row may hold many readings), read with a
    connection of our own."""
    with sqlite3.connect(spool) as db:
        return dict(db.execute("SELECT lane, sum(count) FROM outbox GROUP BY lane").fetchall())


@pytest.mark.mosquitto
@pytest.mark.timeout(120)
def test_sigterm_stops_ingest_flushes_and_leaves_the_rest_in_the_spool(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, extra="[batch]\ndelay = 0.1\n")
    a = rig.nodes[0]
    cable = rig.cables[0]
    gw = GatewayProcess(rig.config_path, tmp_path / "gateway.log").start()
    try:
        rig.sub.wait(lambda ms: [d for t, d, _ in ms if t.endswith("/status") and d["online"]], 20)
        wait_until(lambda: "baud)" in gw.log(), 10, "serial port open")     # (its open flushes the line)
        for _ in range(5):
            cable.send(a.reading())
        rig.sub.wait(lambda ms: len(rig.readings()) == 5, 10)
        # with the broker down, what arrives stays in the spool; SIGTERM exits cleanly and says so
        mosquitto.stop()
        for _ in range(7):
            cable.send(a.reading())
        cable.send(a.alarm())
        wait_until(lambda: "lost the mqtt broker" in gw.log(), 10, "gateway notices")
        wait_until(lambda: (l := _lanes(rig.spool)).get(0) == 1 and l.get(3) == 7, 10, "the alarm and 7 readings spooled")
        t0 = time.monotonic()
        assert gw.terminate(20) == 0, gw.log()
        assert time.monotonic() - t0 < 10
        assert "stopping: ingest first" in gw.log() and "left in spool: alarm 1, event 0" in gw.log(), gw.log()
        with sqlite3.connect(rig.spool) as db:
            left = dict(db.execute("SELECT lane, sum(count) FROM outbox GROUP BY lane").fetchall())
        assert left[0] == 1 and left[3] == 7                # the alarm and the 7 readings, nothing lost
        # next start: the spool drains, alarm first
        mosquitto.start()
        gw2 = GatewayProcess(rig.config_path, tmp_path / "gateway2.log").start()
        try:
            # (at least once: a batch in flight to the subscriber when the broker stopped may come twice)
            rig.sub.wait(lambda ms: len({r["id"] for r in rig.readings()}) == 12 and rig.sub.on("/alarm"), 20)
            assert gw2.terminate(20) == 0
        finally:
            gw2.close()
        ids = list(dict.fromkeys(r["id"] for r in rig.readings()))          # first arrivals
        assert ids == [f"gw1:{a.dev:08x}:{n}" for n in range(1, 13)]    # in order, none lost
        order = [t.rsplit("/", 1)[-1] for t, _, _ in rig.sub.messages]
        assert order.index("alarm") < len(order) - 1 - order[::-1].index("reading")
        for log in (gw.log(), gw2.log()):          # key material never reaches a log line
            assert a.key.hex() not in log.lower() and a.key.hex().upper() not in log
        # a graceful stop says offline itself (t > 0), not the Will (t = 0; the broker's shutdown sent gw1's).
        # gw2 had its PUBACK before it exited, but the broker hands it to our subscriber on its own time: it
        # arrived 15-83 ms (median 43, 40 runs under load) before the exit, so reading without a wait lost it
        # once in ~135 loaded runs (only the Wills were there)
        rig.sub.wait(lambda ms: [d for t, d, _ in ms if t.endswith("/status") and not d["online"] and d["t"] > 0], 10)
        assert [d for d in rig.sub.on("/status") if not d["online"]][-1]["t"] > 0     # and no Will after it
        rig.validated()
    finally:
        gw.close()
        rig.close()
