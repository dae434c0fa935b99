"""`gasguard bench peers`: GasGuard beside the gateways a district might run instead, same workload, same run.

Each peer gets its own pty (the serial line from the nodes), its own private mosquitto, and an independent
subscriber on that broker that counts the **distinct** readings it receives. The runs are interleaved in
one invocation (round 1: GasGuard, ThingsBoard, Node-RED; round 2: the same again ...), so a change of load
on this shared machine hits every peer alike; the figures are medians over the rounds.

- GasGuard: the real gateway process (`gasguard gateway run`) reading signed, COBS-framed frames; each
  reading is verified (MIC, counter, registry), committed to the SQLite spool with synchronous=FULL and
  published at QoS 1; the subscriber sees it only after that.
- GasGuard on two buses (`gasguard-2`): what a substation with two serial buses runs, one gateway process per
  bus (the systemd template `gasguard-gateway@`), each with its own pty, gateway id, spool and half the
  devices; one broker and one subscriber for both. This is how GasGuard uses a second core.
- ThingsBoard IoT Gateway 3.8.5 (PyPI `thingsboard-gateway`) with its serial extension and SQLite event
  storage, pointed at the private broker as its "platform". It publishes nothing until the platform answers
  its `getSessionLimits` RPC, so the harness answers that one request (no limits, as a self-hosted platform
  with rate limits off would). Its serial connector maps one port to one device, reads a line per reading.
- Node-RED 4 (npm `node-red`, `node-red-node-serialport`): serial in (split on newline) -> join (200 lines
  or 50 ms) -> MQTT out at QoS 1. No storage, no verification.

The peers cannot verify GasGuard frames, so they get the same readings as text lines ("dev,fcnt,gas,
pressure,battery,state"); each is counted by its (dev, fcnt). The rate is distinct readings / (last new
reading at the subscriber - first byte written). Every peer's broker runs as the district's does (`bench buses`
and `bench alarms` too): `set_tcp_nodelay true` from `gasguard authority broker-config` (a PUBACK goes at once,
not after the client's delayed TCP ACK: 41 ms here) and mosquitto's own autosave interval (the tests' broker
saves its database every second, and serves nobody while it writes the retained states). The peers are installed
into a bench-only folder (`.bench-peers/` in the checkout, from `tools/bench/peers_env/`), never into the
product's environment.
"""

from __future__ import annotations

import gc
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import orjson
import paho.mqtt.client as mqtt

from gasguard.authority.broker import PUBACK_AT_ONCE

HERE = Path(__file__).resolve().parent
ENV_SRC = HERE / "peers_env"                      # package.json + lock, thingsboard.lock
DEFAULT_HOME = HERE.parents[1] / ".bench-peers"   # the checkout's root (gitignored)
IDLE_S = 10.0          # a peer that delivers nothing new for this long is done (what it lost stays lost)
RUN_CAP_S = 300.0      # one run never takes longer
# each peer's private broker: the district's setting (authority/broker.py; and autosave=None), the same for every peer
BROKER = PUBACK_AT_ONCE + "\n"
PROBE_DEV = 0x00FFFFF0 # readiness probe: written until it comes out the other end, not counted
IDLE_CAP_S = 10.0      # s after the clock a peer may stay busy before its CPU is read anyway (_until_idle)
GG_EXTRA = os.environ.get("GG_PEERS_GATEWAY_EXTRA", "")   # extra gateway.toml lines (A/B runs by hand)
# the interpreter the gateway runs under, e.g. ".venv/bin/python -m cProfile -o gw.prof" to profile the real process
GG_PYTHON = os.environ.get("GG_PEERS_GATEWAY_PYTHON", "").split() or [sys.executable]
PROBE_LINE = b"%08x,1,0,0,0,0\n" % PROBE_DEV
# "gasguard-2": a substation with two serial buses runs one gateway per bus (systemd gasguard-gateway@), which
# is how GasGuard uses a second core today; each gateway gets its own pty and half the devices
PEERS = ("gasguard", "gasguard-2", "thingsboard", "node-red")


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


# -- installing the peers (bench only) ---------------------------------------------------------------
def setup(home: Path = DEFAULT_HOME, echo=click.echo) -> Path:
    """Install ThingsBoard IoT Gateway into its own venv and Node-RED into its own node_modules, from the
    pinned files in tools/bench/peers_env/. Idempotent (stamp files)."""
    home.mkdir(parents=True, exist_ok=True)
    tb = home / "thingsboard"
    if not (tb / ".installed").exists():
        echo(f"installing ThingsBoard IoT Gateway 3.8.5 into {tb} (pip, pinned by tools/bench/peers_env/thingsboard.lock)")
        subprocess.run([sys.executable, "-m", "venv", str(tb)], check=True)
        subprocess.run([str(tb / "bin" / "pip"), "install", "--quiet", "-r", str(ENV_SRC / "thingsboard.lock")],
                       check=True)
        (tb / ".installed").touch()
    nr = home / "node-red"
    if not (nr / ".installed").exists():
        if not shutil.which("npm"):
            raise click.ClickException("npm is needed for the Node-RED peer: apt-get install nodejs npm")
        echo(f"installing Node-RED into {nr} (npm ci, pinned by tools/bench/peers_env/package-lock.json)")
        nr.mkdir(parents=True, exist_ok=True)
        for f in ("package.json", "package-lock.json"):
            shutil.copy(ENV_SRC / f, nr / f)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=nr, check=True)
        (nr / ".installed").touch()
    return home


# -- the workload -------------------------------------------------------------------------------------
class Workload:
    def __init__(self, devices: int, readings: int, warm: bool = False):
        from gasguard.testing.node import Node
        import hashlib
        self.nodes = [Node(0x00300000 + i, hashlib.sha256(b"peer%d" % i).digest()[:16]) for i in range(devices)]
        self.probe = Node(PROBE_DEV, hashlib.sha256(b"probe").digest()[:16])
        per = readings // devices
        self.n = per * devices
        # the gateway's per-device token bucket holds every reading of a device the bench sends back to back (a
        # device sends them within seconds here, not over hours): what it would refuse is not the figure
        self.burst = max(60, per + 11)
        # `warm` (--warm): one reading of every device first, before the clock, so the timed readings are the
        # steady state of a gateway that has heard its devices (each device's first reading costs a registry
        # read and publishes its retained state; a gateway runs for months after that)
        self.warm = [(nd.dev, 1, 0, 2000, 90, 0) for nd in self.nodes] if warm else []
        first = 2 if warm else 1
        # round-robin over the devices, as a district's nodes report: every device's counters ascend
        self.fields = [(nd.dev, k + first, 0, 2000 + k, 90, 0) for k in range(per) for nd in self.nodes]

    def frames(self, bus: int = 0, buses: int = 1, *, warm: bool = False) -> bytes:
        """The framed stream of one serial bus of `buses`: a device is wired to one bus (dev % buses)."""
        from gasguard.protocol import frame, framing
        from gasguard.protocol.const import UP
        keys = {nd.dev: nd.key for nd in self.nodes}
        return b"".join(framing.wrap(frame.seal({"type": "reading", "dev": d, "fcnt": fc, "gas": g, "pressure": p,
                                                 "battery": b, "state": s}, keys[d], UP))
                        for d, fc, g, p, b, s in (self.warm if warm else self.fields) if d % buses == bus)

    def lines(self, *, warm: bool = False) -> bytes:
        return "".join(f"{d:08x},{fc},{g},{p},{b},{s}\n" for d, fc, g, p, b, s in (self.warm if warm else self.fields)
                       ).encode()


# -- the subscriber that counts ------------------------------------------------------------------------
class Counter:
    """Counts distinct (dev, fcnt) arriving on the private broker; `parse(topic, payload)` -> keys."""

    def __init__(self, port: int, topic: str, parse, on_message=None):
        self.seen: set = set()
        self.messages = 0
        self.last_new = 0.0
        self.parse, self.extra = parse, on_message
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-count-{port}")
        ok = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([(topic, 1)] + ([("v1/devices/me/rpc/request/+", 1)]
                                                                              if on_message else []))
        self.c.on_subscribe = lambda *a: ok.set()
        self.c.on_message = self._msg
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not ok.wait(10):
            raise click.ClickException("bench subscriber: no SUBACK from the private broker")

    def _msg(self, c, u, m):
        if self.extra and m.topic.startswith("v1/devices/me/rpc/request/"):
            self.extra(c, m)
            return
        try:
            keys = self.parse(m.payload)
        except (ValueError, KeyError, TypeError):
            return
        now = time.perf_counter()
        with self.lock:
            self.messages += 1
            before = len(self.seen)
            self.seen.update(keys)
            if len(self.seen) > before:
                self.last_new = now

    def has(self, key) -> bool:
        with self.lock:
            return key in self.seen

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def _gg_keys(payload: bytes):
    # orjson, as the gateway writes it: the bench's subscriber shares the two cores with the peer it measures,
    # so its own parsing should take as little of them as it can (json.loads: ~6-8 µs a reading)
    rows = orjson.loads(payload)["readings"]
    if rows and type(rows[0]) is dict:      # gasguard.readings/1: an earlier commit's gateway (A/B runs by hand)
        return [(int(r["dev"], 16), r["fcnt"]) for r in rows]
    return [(int(r[0], 16), r[1]) for r in rows]           # gasguard.readings/2 and /3 rows: dev, fcnt, ...


def _line_key(line: str):
    d, fc = line.split(",", 2)[:2]
    return int(d, 16), int(fc)


def _nr_keys(payload: bytes):
    return [_line_key(x) for x in payload.decode().split("\n") if x]


def _tb_keys(payload: bytes):
    doc = json.loads(payload)
    return [_line_key(e["values"]["r"]) for entries in doc.values() for e in entries if "r" in e.get("values", {})]


def _tb_session_limits(client, m):
    """The platform's answer to the gateway's getSessionLimits RPC: no rate limits (a self-hosted platform
    with them off); without an answer the gateway publishes nothing."""
    try:
        req = json.loads(m.payload)
    except ValueError:
        return
    if req.get("method") == "getSessionLimits":
        rid = m.topic.rsplit("/", 1)[1]
        client.publish(f"v1/devices/me/rpc/response/{rid}", json.dumps(
            {"maxPayloadSize": 65536, "maxInflightMessages": 100,
             "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
             "gatewayRateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"}}),
            qos=1)


# -- one peer run ----------------------------------------------------------------------------------------
def _write_all(cable, data: bytes, chunk: int = 4096) -> None:
    """As fast as the reader drains the pty (its buffer is the back-pressure a UART's reader gives); a slow
    reader (ThingsBoard reads a byte at a time) is waited for up to RUN_CAP_S, not declared dead."""
    view = memoryview(data)
    deadline = time.monotonic() + RUN_CAP_S
    while view and time.monotonic() < deadline:
        select.select([], [cable.master], [], 1.0)
        try:
            n = os.write(cable.master, view[:chunk])
        except BlockingIOError:
            continue
        view = view[n:]


def _until_ready(cable, counter, probe_bytes: bytes, key, timeout: float, what: str, proc) -> None:
    """Write the probe until it comes out at the subscriber (`key`)."""
    deadline = time.monotonic() + timeout
    while not counter.has(key):
        if proc.poll() is not None:
            raise click.ClickException(f"{what} exited at start (code {proc.returncode}); see its log")
        if time.monotonic() > deadline:
            raise click.ClickException(f"{what} delivered no probe reading in {timeout:.0f} s; see its log")
        cable.write(probe_bytes)
        time.sleep(0.5)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its threads (/proc): a figure the machine's load moves far
    less than a rate, so runs on a shared machine can be compared by it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(cables: list, counter, datas: list, n: int, pids: list) -> dict:
    """Every cable written at once (one writer each), until the subscriber has all n readings or nothing new
    came for IDLE_S; the CPU is the sum over the peer's processes."""
    with counter.lock:
        counter.seen.clear()
        counter.messages = 0
        counter.last_new = 0.0
    # This process's collector off while the clock runs, as timeit does: a full collection here held the GIL for
    # 38-92 ms within a ~1 s run (gc.callbacks, /tmp wrapper), and the writers fed no pty meanwhile - a pause
    # landing at random in one peer's run. What the run leaves is collected after it.
    gc.collect()
    gc.disable()
    try:
        cpu0, own0 = sum(_cpu_s(p) for p in pids), _cpu_s(os.getpid())
        t0 = _write_until(cables, datas, counter, lambda: len(counter.seen), n)
        cpu, own = sum(_cpu_s(p) for p in pids) - cpu0, _cpu_s(os.getpid()) - own0
    finally:
        gc.enable()
    with counter.lock:
        got, last, msgs = len(counter.seen & counter.expected), counter.last_new, counter.messages
    secs = max(1e-9, (last or time.perf_counter()) - t0)
    res = {"readings": n, "received": got, "lost": n - got, "seconds": secs, "per_s": got / secs,
           "messages": msgs, "cpu_s": cpu, "cpu_us_per_reading": cpu / max(1, got) * 1e6,
           # this process: the writers and the subscriber, on the same cores as the peer
           "bench_cpu_us_per_reading": own / max(1, got) * 1e6, "t_last": last or time.perf_counter()}
    _until_idle(res, pids, cpu + cpu0)
    return res


def _until_idle(res: dict, pids: list, cpu_at_end: float, quiet_s: float = 0.15, cap_s: float = IDLE_CAP_S) -> None:
    """After the clock: the peer's processes until their CPU stops growing (under 10 % of a core for `quiet_s`),
    so that work a peer leaves for after its readings is in a figure too: GasGuard's retained states follow the
    readings ready to go (issue 17, gateway/publisher.py STATE_WAIT). Adds `idle_after_s` (from the last new
    reading to the start of the quiet; None if still busy after `cap_s`: ThingsBoard's serial connector polls) and
    `cpu_us_until_idle` (per reading, the run's CPU and what came after, up to the quiet or the cap)."""
    step = 0.05
    last, quiet_since = sum(_cpu_s(p) for p in pids), None
    res["idle_after_s"] = None                    # still busy at cap_s
    deadline = time.monotonic() + cap_s
    while time.monotonic() < deadline:
        time.sleep(step)
        now, cpu = time.perf_counter(), sum(_cpu_s(p) for p in pids)
        if cpu - last >= 0.1 * step:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now - step
        elif now - quiet_since >= quiet_s:
            res["idle_after_s"] = max(0.0, quiet_since - res["t_last"])
            break
        last = cpu
    res["cpu_us_until_idle"] = (res["cpu_s"] + last - cpu_at_end) / max(1, res["received"]) * 1e6


def _retained(port: int, topic: str, expected: int, timeout: float = 10.0) -> int:
    """How many retained messages the broker holds under `topic`, up to `expected` (a fresh subscriber's retained
    copies, waited for until all `expected` came or `timeout`)."""
    from gasguard.testing.subscriber import Subscriber
    sub = Subscriber(port, topic)

    def topics(ms) -> set:
        return {t for t, _doc, retained in ms if retained}
    try:
        sub.wait(lambda ms: len(topics(ms)) >= expected, timeout)
    except TimeoutError:
        pass                        # fewer: the figure says how many
    finally:
        sub.close()
    with sub.lock:
        return len(topics(sub.messages))


def _write_until(cables: list, datas: list, counter, arrived, n: int) -> float:
    """Every cable written at once (one writer each) until `arrived()` (read under the counter's lock) reaches n,
    or nothing new came for IDLE_S after the writing, or RUN_CAP_S passed. Returns when the writing started."""
    writers = [threading.Thread(target=_write_all, args=(c, data), daemon=True) for c, data in zip(cables, datas)]
    t0 = time.perf_counter()
    for w in writers:
        w.start()
    while True:
        time.sleep(0.1)
        with counter.lock:
            got, last = arrived(), counter.last_new
        now = time.perf_counter()
        if got >= n or now - t0 > RUN_CAP_S or (not any(w.is_alive() for w in writers)
                                                  and now - max(last, t0) > IDLE_S):
            break
    for w in writers:
        w.join(30)
    return t0


def _warm_up(cables: list, counter, warm: tuple) -> int:
    """--warm: write every device's first reading (`warm`: (data per cable, their keys)) and wait until the
    subscriber has all of them or, as in _measure, nothing new came for IDLE_S after the writing (a peer that
    loses readings - ThingsBoard's serial connector - never delivers them all). Returns how many arrived."""
    datas, keys = warm
    _write_until(cables, datas, counter, lambda: len(keys & counter.seen), len(keys))
    with counter.lock:
        return len(keys & counter.seen)


def _run_peer(procs: list, cables: list, counter, logs: list, probes: list, what: str, ready_s: float,
              datas: list, warm: tuple | None = None) -> dict:
    """Wait until a probe reading (`probes`: (bytes, key) per cable) comes out of each of the peer's processes,
    (--warm: hand it every device's first reading,) measure, then stop them and close their ptys."""
    try:
        for proc, cable, (probe, key) in zip(procs, cables, probes):
            _until_ready(cable, counter, probe, key, ready_s, what, proc)
        warmed = _warm_up(cables, counter, warm) if warm is not None else 0
        res = _measure(cables, counter, datas, len(counter.expected), [p.pid for p in procs])
        res["warmed"] = warmed      # first readings delivered before the clock (--warm)
        return res
    finally:
        for proc in procs:
            _stop(proc)
        counter.close()
        for c in cables:
            c.close()
        for log in logs:
            log.close()


def _stop(proc, timeout=10.0):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_gasguard(wl: Workload, d: Path, datas: list, expected: set, warm: tuple | None = None) -> dict:
    """One gateway process per bus (`datas`: each bus's framed stream), each with its own pty, configuration,
    gateway id and spool, as `gasguard-gateway@<bus>` runs them; one broker, one subscriber for all."""
    from gasguard.protocol import frame, framing
    from gasguard.protocol.const import UP
    from gasguard.testing.config import write_config
    from gasguard.testing.links import PtyCable
    from gasguard.testing.node import make_registry
    from gasguard.testing.mosquitto import Mosquitto
    d.mkdir(parents=True, exist_ok=True)
    make_registry(d / "registry.db", wl.nodes + [wl.probe])
    with Mosquitto(workdir=d / "broker", extra_config=BROKER, autosave=None) as broker:
        counter = Counter(broker.port, "gasguard/v1/bench/+/reading", _gg_keys)
        counter.expected = expected
        procs, cables, logs, probes = [], [], [], []
        for bus in range(len(datas)):
            gid = "peer" if bus == 0 else f"peer-{bus}"
            cable = PtyCable(d / f"tty{bus}")
            cfg = write_config(d / f"{gid}.toml", registry=d / "registry.db", spool=d / f"{gid}.db",
                               mqtt_port=broker.port, serial=[str(cable.link)], gateway_id=gid, district="bench",
                               extra=f"[batch]\ndelay = 0.05\n[limits]\nburst = {wl.burst}\n" + GG_EXTRA)
            cables.append(cable)
            logs.append(open(d / f"{gid}.log", "w"))
            procs.append(subprocess.Popen([*GG_PYTHON, "-m", "gasguard.cli", "gateway", "run", "-c", str(cfg)],
                                          stdout=logs[-1], stderr=subprocess.STDOUT))
            # a counter of its own on each bus (the subscriber tells the gateways' probes apart by it); each
            # round's gateways start with fresh spools (their counters)
            probes.append((framing.wrap(frame.seal({"type": "reading", "dev": PROBE_DEV, "fcnt": bus + 1, "gas": 0,
                                                    "pressure": 0, "battery": 0, "state": 0}, wl.probe.key, UP)),
                           (PROBE_DEV, bus + 1)))
        res = _run_peer(procs, cables, counter, logs, probes, "the GasGuard gateway", 60, datas, warm)
        # every device's retained state at the broker (they follow the readings: issue 17), and the probe's on
        # each bus (a gateway of its own each: its own topics)
        res["states_expected"] = len(wl.nodes) + len(datas)
        res["states"] = _retained(broker.port, "gasguard/v1/bench/+/+/state", res["states_expected"])
        return res


TB_LOGS = {"version": 1, "disable_existing_loggers": False,
           "formatters": {"f": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
           "handlers": {"file": {"class": "logging.FileHandler", "formatter": "f", "filename": "tb.log"}},
           "root": {"level": "ERROR", "handlers": ["file"]}}


def run_thingsboard(home: Path, d: Path, data: bytes, expected: set, warm: tuple | None = None) -> dict:
    from gasguard.testing.links import PtyCable
    from gasguard.testing.mosquitto import Mosquitto
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "config"
    conf.mkdir(exist_ok=True)
    with Mosquitto(workdir=d / "broker", extra_config=BROKER, autosave=None) as broker:
        cable = PtyCable(d / "ttyTB")
        stock = json.loads((home / "thingsboard" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
                            / "site-packages" / "thingsboard_gateway" / "config" / "tb_gateway.json").read_text())
        tbc = stock["thingsboard"]
        tbc.update(host="127.0.0.1", port=broker.port, remoteConfiguration=False, remoteShell=False,
                   security={"type": "accessToken", "accessToken": "bench"})
        tbc["statistics"]["enable"] = False
        stock["storage"] = {"type": "sqlite", "data_file_path": str(d / "tb-storage.db"), "messages_ttl_check_in_hours": 1,
                            "messages_ttl_in_days": 7, "max_read_records_count": 1000}
        stock["connectors"] = [{"type": "serial", "name": "Serial", "configuration": "serial.json",
                                "class": "SerialConnector"}]
        (conf / "tb_gateway.json").write_text(json.dumps(stock, indent=2))
        (conf / "serial.json").write_text(json.dumps({
            "name": "Serial", "logLevel": "ERROR", "uplinkQueueSize": 100000,
            "devices": [{"name": "SerialDevice1", "type": "default", "port": str(cable.link), "baudrate": 115200,
                         "delimiter": "\n", "converter": "SerialUplinkConverter",
                         "telemetry": [{"type": "string", "key": "r"}]}]}))
        (conf / "logs.json").write_text(json.dumps(TB_LOGS))
        counter = Counter(broker.port, "v1/gateway/telemetry", _tb_keys, on_message=_tb_session_limits)
        counter.expected = expected
        log = open(d / "thingsboard.out", "w")
        env = dict(os.environ, TB_GW_CONFIG_DIR=str(conf))
        proc = subprocess.Popen([str(home / "thingsboard" / "bin" / "python"), "-c",
                                 "from thingsboard_gateway.tb_gateway import main; main()"],
                                cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT)
        return _run_peer([proc], [cable], counter, [log], [(PROBE_LINE, (PROBE_DEV, 1))], "ThingsBoard IoT Gateway",
                         120, [data], warm)


def _nr_flow(tty: str, port: int) -> list:
    # ids unlike any type name or value: Node-RED takes a property equal to a node id for a reference
    return [
        {"id": "f0a1", "type": "tab", "label": "bench"},
        {"id": "c0a1", "type": "serial-port", "serialport": tty, "serialbaud": "115200", "databits": "8",
         "parity": "none", "stopbits": "1", "waitfor": "", "dtr": "none", "rts": "none", "cts": "none",
         "dsr": "none", "newline": "\\n", "bin": "false", "out": "char", "addchar": "", "responsetimeout": "10000"},
        {"id": "n0a1", "type": "serial in", "z": "f0a1", "serial": "c0a1", "x": 100, "y": 100, "wires": [["n0a2"]]},
        {"id": "n0a2", "type": "join", "z": "f0a1", "x": 300, "y": 100, "mode": "custom", "build": "string", "property": "payload",
         "propertyType": "msg", "key": "topic", "joiner": "", "joinerType": "str", "accumulate": False,
         "timeout": "0.05", "count": "200", "reduceRight": False, "wires": [["n0a3"]]},
        {"id": "n0a3", "type": "mqtt out", "z": "f0a1", "x": 500, "y": 100, "broker": "c0a2", "topic": "nr/readings", "qos": "1",
         "retain": "false", "wires": []},
        {"id": "c0a2", "type": "mqtt-broker", "broker": "127.0.0.1", "port": str(port), "clientid": "nr-bench",
         "usetls": False, "protocolVersion": "4", "keepalive": "60", "cleansession": True, "autoConnect": True},
    ]


def run_nodered(home: Path, d: Path, data: bytes, expected: set, warm: tuple | None = None) -> dict:
    from gasguard.testing.links import PtyCable
    from gasguard.testing.mosquitto import Mosquitto, free_port
    d.mkdir(parents=True, exist_ok=True)
    user = d / "userdir"
    user.mkdir(exist_ok=True)
    with Mosquitto(workdir=d / "broker", extra_config=BROKER, autosave=None) as broker:
        cable = PtyCable(d / "ttyNR")
        # the serial node splits on newline and keeps the newline: the join concatenates whole lines
        (user / "flows.json").write_text(json.dumps(_nr_flow(os.path.realpath(cable.link), broker.port)))
        counter = Counter(broker.port, "nr/readings", _nr_keys)
        counter.expected = expected
        log = open(d / "node-red.log", "w")
        red = home / "node-red" / "node_modules" / "node-red" / "red.js"
        proc = subprocess.Popen(["node", str(red), "--userDir", str(user), "--port", str(free_port()), "flows.json"],
                                stdout=log, stderr=subprocess.STDOUT)
        return _run_peer([proc], [cable], counter, [log], [(PROBE_LINE, (PROBE_DEV, 1))], "Node-RED", 120, [data], warm)


def peers_figures(*, devices=5000, readings=100_000, rounds=3, only=PEERS, home=DEFAULT_HOME, echo=click.echo,
                  workdir=None, warm=False) -> dict:
    setup(home, echo)
    wl = Workload(devices, readings, warm)
    frames, lines = wl.frames(), wl.lines()
    buses = [wl.frames(0, 2), wl.frames(1, 2)] if "gasguard-2" in only else []
    expected = {(d, fc) for d, fc, *_ in wl.fields}
    # --warm: each peer's first readings of every device, written and delivered before its clock starts
    keys = {(d, fc) for d, fc, *_ in wl.warm}
    w_frames = (([wl.frames(warm=True)], keys), ([wl.frames(0, 2, warm=True), wl.frames(1, 2, warm=True)], keys),
                ([wl.lines(warm=True)], keys)) if warm else (None, None, None)
    base = Path(workdir or tempfile.mkdtemp(prefix="gg-bench-peers-", dir="/var/tmp"))
    out: dict = {"devices": devices, "readings": wl.n, "rounds": rounds, "warm": warm, "load_before": load(),
                 "bytes_per_reading": {"gasguard": len(frames) / wl.n, "lines": len(lines) / wl.n}, "runs": {}}
    echo(f"workload: {wl.n:,} readings of {devices:,} devices; {len(frames) / wl.n:.0f} B/reading framed for "
         f"GasGuard, {len(lines) / wl.n:.0f} B/reading as text lines for the peers"
         f"{'; every device heard once before the clock (--warm)' if warm else ''} ({load()})")
    try:
        for r in range(rounds):
            for peer in only:
                d = base / f"r{r}-{peer}"
                if peer == "gasguard":
                    res = run_gasguard(wl, d, [frames], expected, w_frames[0])
                elif peer == "gasguard-2":
                    res = run_gasguard(wl, d, buses, expected, w_frames[1])
                elif peer == "thingsboard":
                    res = run_thingsboard(home, d, lines, expected, w_frames[2])
                else:
                    res = run_nodered(home, d, lines, expected, w_frames[2])
                res["load"] = load()
                out["runs"].setdefault(peer, []).append(res)
                warmed = f" after {res['warmed']:,}/{len(wl.warm):,} first readings" if warm else ""
                states = (f"; {res['states']:,}/{res['states_expected']:,} retained states"
                          if "states" in res else "")
                idle = (f"still busy {IDLE_CAP_S:.0f} s after the last reading" if res["idle_after_s"] is None
                        else f"idle {res['idle_after_s']:.2f} s after the last reading")
                echo(f"  round {r + 1} {peer:12}: {res['received']:,}/{res['readings']:,} distinct readings "
                     f"({res['lost']:,} lost){warmed} in {res['seconds']:.1f} s = {res['per_s']:,.0f}/s; CPU per reading: the peer's "
                     f"processes {res['cpu_us_per_reading']:.1f} µs, the bench's writer and subscriber "
                     f"{res['bench_cpu_us_per_reading']:.1f} µs; {idle}, {res['cpu_us_until_idle']:.1f} µs a "
                     f"reading until then{states}  ({res['load']})")
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    out["median_per_s"] = {p: statistics.median(x["per_s"] for x in rs) for p, rs in out["runs"].items()}
    out["load_after"] = load()
    return out


@click.command("peers")
@click.option("--devices", default=5000, show_default=True)
@click.option("--readings", default=100_000, show_default=True)
@click.option("--rounds", default=3, show_default=True,
              help="interleaved rounds (every peer once per round; odd, so the median is a round's)")
@click.option("--only", multiple=True, type=click.Choice(PEERS), help="run only these peers (repeatable)")
@click.option("--home", type=click.Path(path_type=Path), default=DEFAULT_HOME, show_default=True,
              help="where the peers are installed (bench only)")
@click.option("--warm", is_flag=True, help="every device's first reading before the clock starts: the steady state "
              "of a gateway that has heard its devices (without it, each device's first sighting - a registry "
              "read, its retained state - is in the figure, as the issue's workload has it)")
@click.option("--setup-only", is_flag=True, help="install the peers and stop")
@click.option("--json", "as_json", is_flag=True)
def peers_bench(devices, readings, rounds, only, home, warm, setup_only, as_json):
    """GasGuard vs ThingsBoard IoT Gateway vs a Node-RED flow: same readings over a pty, distinct readings/s."""
    echo = (lambda *_: None) if as_json else click.echo
    if setup_only:
        setup(home, echo)
        return
    out = peers_figures(devices=devices, readings=readings, rounds=rounds, only=only or PEERS, home=home, echo=echo,
                        warm=warm)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for p, v in out["median_per_s"].items():
        lost = [x["lost"] for x in out["runs"][p]]
        click.echo(f"{p:12} median {v:,.0f} distinct readings/s over {len(lost)} rounds; lost per round {lost}")
