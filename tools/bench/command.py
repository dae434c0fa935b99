"""`gasguard bench command`: the district command service's figures (issue 15 item 7).

Everything real, each in its own process: mosquitto; 20 gateway daemons (`gasguard gateway run`, Semtech UDP
listeners, grading off as in a district); the command service as leader and hot standby (`gasguard command
serve`, SQLite or a throwaway PostgreSQL); the district simulator (tools/sim/fleet.py, this process) sending
the district's readings through the 20 gateways at the storm rate (~5,500 readings/s; 5 % of the nodes heard
by two gateways, so the command deduplicates); a console subscriber on the district's incident topic.

- latency: probe alarms, one every `probe_every` s, each from a household far from the others (a new leak
  incident each), sealed beforehand and pushed to a gateway as its packet forwarder would. Clock: from the
  push (the frame at the gateway) to the console receiving the incident's first revision; the service
  publishes only what it has committed, so "visible" implies "stored". p50 / p99 under the background.
- incident rate: `storm` alarms from distinct households pushed as fast as the forwarders go, spread over the
  gateways; first push -> the console has them all; incidents per second sustained.
- takeover: a second storm; the leader is SIGKILLed when a third of it is in; the time until the standby
  leads (lease taken), until it publishes its first incident, and a check that every alarm of the storm is
  stored exactly once (one incident, revision 1, each).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

DISTRICT = "lixia"
SEED = 1
PROBE_BASE = 0x03E00000      # households the generator never uses: probes and storm alarms
GAS_L2 = 2


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def _far_homes(first: int, n: int, lat0: float):
    """Households ~330 m apart on a grid north of the district: every alarm is a leak incident of its own."""
    from gasguard.registry import Device
    from gasguard.tools.sim.district import sim_key
    return [Device(dev_id=first + i, key=sim_key(SEED, first + i), profile="household", households=1,
                   site_name=f"bench home {i}", lat=lat0 + 0.003 * (i // 100), lon=117.0 + 0.004 * (i % 100),
                   state="commissioned") for i in range(n)]


def _gateway_toml(path: Path, gid: str, registry: Path, port: int, udp: int) -> Path:
    path.write_text(
        f'[gateway]\nid = "{gid}"\ndistrict = "{DISTRICT}"\nregistry = "{registry}"\nspool = "{path.with_suffix(".db")}"\n'
        f'log_level = "INFO"\n\n[udp]\nbind = "127.0.0.1:{udp}"\n\n[mqtt]\nhost = "127.0.0.1"\nport = {port}\n\n'
        # the simulator's clock runs fast: a station's 60-s period is well under a second of wall time
        '[limits]\nrate_per_min = 100000\nburst = 1000\noffline_after = 86400\n\n'
        '[batch]\ndelay = 0.05\n\n[metrics]\ntick_interval = 0.5\nstats_interval = 5\n')
    return path


def _command_toml(path: Path, store: str, registry: Path, port: int) -> Path:
    path.write_text(f'[command]\ndistrict = "{DISTRICT}"\nstore = "{store}"\nregistry = "{registry}"\n'
                    f'lease_ttl = 5.0\ntick_interval = 1.0\n\n[command.mqtt]\nport = {port}\n')
    return path


def _wait_log(proc, log: Path, marker: str, what: str, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}")
        if log.exists() and marker in log.read_text(errors="replace"):
            return time.time()
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not log {marker!r} within {timeout:.0f} s: see {log}")


class Console:
    """The district's incident topic, as a console sees it: first arrival of each (incident, revision)."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt
        self.first: dict[str, float] = {}          # incident id -> wall time its revision 1 arrived
        self.alarm_at: dict[int, float] = {}       # device -> wall time a gateway's alarm message arrived
        self.revisions: dict[tuple, int] = {}      # (incident, revision) -> copies received
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-console-{os.getpid()}")
        ready = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(f"gasguard/v1/{DISTRICT}/command/incident/+", 1), (f"gasguard/v1/{DISTRICT}/+/+/alarm", 1)])
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._msg
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the bench console could not subscribe")

    def _msg(self, c, u, m):
        t = time.time()
        d = json.loads(m.payload)
        if m.topic.endswith("/alarm"):
            with self.lock:
                self.alarm_at.setdefault(int(d["dev"], 16), t)
            return
        with self.lock:
            key = (d["incident_id"], d["revision"])
            self.revisions[key] = self.revisions.get(key, 0) + 1
            if d["revision"] == 1:
                self.first.setdefault(d["incident_id"], t)

    def of_dev(self, dev: int) -> float | None:
        part = f"-{dev:08x}-"
        with self.lock:
            return next((t for iid, t in self.first.items() if part in iid), None)

    def count_devs(self, devs) -> int:
        want = {f"{d:08x}" for d in devs}
        with self.lock:
            return sum(1 for iid in self.first if iid.split("-")[2] in want)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def command_figures(*, gateways: int = 20, rate: float = 5500.0, households: int = 20_000, scale: float = 0.25,
                    probes: int = 200, probe_every: float = 0.1, storm: int = 1000, store: str = "sqlite",
                    echo=click.echo) -> dict:
    from gasguard.command.store import open_store
    from gasguard.registry import Registry
    from gasguard.testing.links import PacketForwarder
    from gasguard.testing.mosquitto import Mosquitto, free_port
    from gasguard.testing.node import Node
    from gasguard.tools.sim import district
    from gasguard.tools.sim.fleet import Fleet, device_nodes
    from gasguard.tools.sim.fleet_transport import OverlapTransport, UdpTransport

    d = Path(tempfile.mkdtemp(prefix="gg-bench-command-"))
    procs: list[subprocess.Popen] = []
    logs: list = []
    pg = None
    broker = console = fleet = None
    out: dict = {"gateways": gateways, "store": store}
    try:
        broker = Mosquitto(workdir=d / "broker").start()
        devs = district.generate(seed=SEED, scale=scale, households=households, sim_keys=True)
        probe_homes = _far_homes(PROBE_BASE, probes, 37.0)
        storm_homes = _far_homes(PROBE_BASE + 0x10000, 2 * storm, 37.5)
        reg = d / "registry.db"
        with Registry(reg) as r:
            r.add_many(devs + probe_homes + storm_homes)
        if store == "postgresql":
            from gasguard.testing.postgres import Postgres
            pg = Postgres().start()
            url = pg.create_database("command")
        else:
            url = f"sqlite:///{d / 'command.db'}"

        def spawn(args, name):
            f = open(d / f"{name}.log", "wb")
            logs.append(f)
            p = subprocess.Popen([sys.executable, "-m", "gasguard.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            procs.append(p)
            return p

        ccfg = _command_toml(d / "command.toml", url, reg, broker.port)
        leader = spawn(["command", "serve", "--config", str(ccfg), "--instance", "cmd-a"], "cmd-a")
        _wait_log(leader, d / "cmd-a.log", "is the leader", "the command service")
        standby = spawn(["command", "serve", "--config", str(ccfg), "--instance", "cmd-b"], "cmd-b")
        udp_ports = []
        for i in range(gateways):
            udp = free_port()
            udp_ports.append(udp)
            gid = f"gw{i + 1:02d}"
            p = spawn(["gateway", "run", "-c", str(_gateway_toml(d / f"{gid}.toml", gid, reg, broker.port, udp))], gid)
        for i, p in enumerate(procs[2:]):
            _wait_log(p, d / f"gw{i + 1:02d}.log", "connected to mqtt broker", f"gateway {i + 1}")
        console = Console(broker.port)
        st = open_store(url)

        # the district's background through the 20 gateways, at the storm rate
        nodes = device_nodes(devs, SEED)
        base = sum(1.0 / n.params["report_s"] for n in nodes)
        speed = rate / base
        transport = OverlapTransport([UdpTransport(f"127.0.0.1:{u}", keepalive_s=3600) for u in udp_ports],
                                     overlap=0.05)
        fleet = Fleet(nodes, transport, seed=SEED, speed=speed)
        fleet_out: dict = {}
        fleet_thread = threading.Thread(target=lambda: fleet_out.update(
            r=fleet.run("quiet", duration=3600 * speed, realtime=True, wall_timeout=3600)), daemon=True)
        fleet_thread.start()
        echo(f"{len(nodes):,} simulated nodes ({sum(1 for n in devs if n.profile == 'station'):,} stations) through "
             f"{gateways} gateways at x{speed:.0f} (~{rate:,.0f} readings/s); command store {store}")
        time.sleep(5)                                      # the background settles

        fwds = [PacketForwarder(("127.0.0.1", u)) for u in udp_ports]
        # latency: probes under the background
        lat, gw_lat = [], []
        sent: dict[int, float] = {}
        for i, h in enumerate(probe_homes):
            raw = Node(h.dev_id, h.key).alarm(code=GAS_L2, value=300, state=0x15, aseq=1)
            sent[h.dev_id] = time.time()
            fwds[i % gateways].push(raw)
            time.sleep(probe_every)
        # a probe whose alarm no gateway published within 3 s is sent again as its node would (a retransmission:
        # new counter, same aseq; UDP from a busy forwarder can be dropped): timed from its first push
        resent = 0
        nodes_p = {h.dev_id: Node(h.dev_id, h.key) for h in probe_homes}
        for _ in range(3):
            time.sleep(3)
            with console.lock:
                missing = [dv for dv in sent if dv not in console.alarm_at]
            for i, dv in enumerate(missing):
                nodes_p[dv].fcnt = 10 * (_ + 1)
                fwds[(i + 1) % gateways].push(nodes_p[dv].alarm(code=GAS_L2, value=300, state=0x15, aseq=1))
                resent += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and console.count_devs(sent) < len(sent):
            time.sleep(0.1)
        for dev, t in sent.items():
            got = console.of_dev(dev)
            if got is not None:
                lat.append((got - t) * 1000)
            if dev in console.alarm_at:
                gw_lat.append((console.alarm_at[dev] - t) * 1000)
        f0 = fleet.report
        out["latency_ms"] = {"n": len(lat), "of": len(sent), "p50": _pct(lat, 50), "p99": _pct(lat, 99),
                             "max": max(lat) if lat else float("nan"),
                             "gateway_p50": _pct(gw_lat, 50), "gateway_p99": _pct(gw_lat, 99), "resent": resent}
        echo(f"alarm at a gateway -> incident stored and at the console: p50 {_pct(lat, 50):.0f} ms, "
             f"p99 {_pct(lat, 99):.0f} ms, max {out['latency_ms']['max']:.0f} ms ({len(lat)} of {len(sent)} probes, {resent} resent); "
             f"of which push -> the gateway's alarm message at a subscriber: p50 {_pct(gw_lat, 50):.0f} ms, "
             f"p99 {_pct(gw_lat, 99):.0f} ms")

        def burst(homes):
            frames = [Node(h.dev_id, h.key).alarm(code=GAS_L2, value=300, state=0x15) for h in homes]
            t0 = time.time()
            for i, raw in enumerate(frames):
                fwds[i % gateways].push(raw)
            return t0, time.time()

        # incident rate: a storm of alarms from distinct households
        first = storm_homes[:storm]
        t0, t_pushed = burst(first)
        deadline = time.monotonic() + 300
        devs1 = [h.dev_id for h in first]
        while time.monotonic() < deadline and console.count_devs(devs1) < storm:
            time.sleep(0.05)
        with console.lock:
            last = max(t for iid, t in console.first.items() if int(iid.split("-")[2], 16) in set(devs1))
        n_got = console.count_devs(devs1)
        out["incident_rate"] = {"n": n_got, "of": storm, "push_s": t_pushed - t0, "s": last - t0,
                                "per_s": n_got / (last - t0)}
        echo(f"incident rate: {n_got} of {storm} storm alarms stored and published in {last - t0:.1f} s "
             f"(pushed in {t_pushed - t0:.1f} s): {n_got / (last - t0):.0f} incidents/s")

        # takeover: a second storm, the leader SIGKILLed a third of the way in
        second = storm_homes[storm:]
        devs2 = [h.dev_id for h in second]
        pusher = threading.Thread(target=burst, args=(second,), daemon=True)
        pusher.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and console.count_devs(devs2) < storm // 3:
            time.sleep(0.01)
        os.killpg(leader.pid, signal.SIGKILL)
        killed = time.time()
        leader.wait(10)
        t_lead = _wait_log(standby, d / "cmd-b.log", "is the leader", "the standby", timeout=60)
        with console.lock:
            before = set(console.first)
        t_first = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and t_first is None:
            with console.lock:
                new = [t for iid, t in console.first.items() if iid not in before and t > killed]
            t_first = min(new) if new else None
            time.sleep(0.02)
        pusher.join(60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and console.count_devs(devs2) < storm:
            time.sleep(0.1)
        stored = [i for i in st.list_incidents(limit=100_000) if int(i["incident_id"].split("-")[2], 16) in set(devs2)]
        revs = [len(st.get_incident(i["incident_id"])["revisions"]) for i in stored]
        lease = st.lease()
        out["takeover"] = {"lease_s": t_lead - killed, "first_publish_s": (t_first - killed) if t_first else None,
                           "stored": len(stored), "of": storm, "one_revision_each": all(r == 1 for r in revs),
                           "holder": lease["holder"], "epoch": lease["epoch"]}
        echo(f"takeover: leader SIGKILLed mid-storm; standby leads after {t_lead - killed:.1f} s, first incident "
             f"published after {out['takeover']['first_publish_s'] or float('nan'):.1f} s; {len(stored)} of {storm} "
             f"storm alarms stored, one revision each: {out['takeover']['one_revision_each']}")
        fleet.stop()
        fleet_thread.join(30)
        r = fleet_out.get("r") or f0
        if r is not None:
            out["background"] = {"readings": r.sent.get("reading", 0), "wall_s": r.wall_s,
                                 "per_s": r.sent.get("reading", 0) / max(r.wall_s, 1e-9),
                                 "heard_twice": transport.heard_twice}
            echo(f"background: {out['background']['per_s']:,.0f} readings/s sent by the simulator over "
                 f"{r.wall_s:.0f} s ({transport.heard_twice:,} frames heard by two gateways)")
        st.close()
        for f in fwds:
            f.close()
        return out
    finally:
        if fleet is not None:
            fleet.stop()
        if console is not None:
            console.close()
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(15)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    p.kill()
        for f in logs:
            f.close()
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(d, ignore_errors=True)


@click.command("command")
@click.option("--gateways", default=20, show_default=True, help="gateway daemons (processes)")
@click.option("--rate", default=5500.0, show_default=True, help="background readings/s from the simulator")
@click.option("--households", default=20_000, show_default=True, help="simulated household-meter nodes")
@click.option("--probes", default=200, show_default=True, help="latency probe alarms")
@click.option("--storm", default=1000, show_default=True, help="alarms per storm (incident rate, takeover)")
@click.option("--store", type=click.Choice(["sqlite", "postgresql"]), default="sqlite", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def command_bench(gateways, rate, households, probes, storm, store, as_json):
    """The district command service: alarm -> incident stored and visible (p50/p99) under the storm-rate
    background through 20 gateways, incidents per second, and the standby's takeover time."""
    out = command_figures(gateways=gateways, rate=rate, households=households, probes=probes, storm=storm,
                          store=store, echo=(lambda *_: None) if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(out, indent=2))
