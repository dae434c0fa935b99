"""A real 3-node NATS cluster with JetStream and its MQTT listener, on loopback, for tests and benchmarks.

    with NatsCluster(workdir) as cl:       # 3 nodes, free ports, each its own JetStream folder
        cl.mqtt_ports                       # [p0, p1, p2]: MQTT 3.1.1 listeners, one per node
        cl.kill(0)                          # SIGKILL node 0 (a crashed broker node)

Why NATS (docs/SCALE_OUT.md, measured): Debian's nats-server (2.9) starts a node in well under a second, the
3 nodes form a cluster with no extra tooling, and its MQTT layer keeps sessions, QoS-1 messages for
subscribers and retained messages in JetStream streams replicated on every node (`stream_replicas: 3`),
so a consumer's persistent session and what is queued for it survive the death of any one node.

Every wait has a deadline; a node that does not come up raises with the tail of its log.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from gasguard.testing.mosquitto import BrokerError, free_ports

NODES = 3


class NodeExited(BrokerError):
    def __init__(self, node: int, message: str):
        super().__init__(message)
        self.node = node


def find_nats() -> str | None:
    return shutil.which("nats-server") or next((p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server")
                                                 if Path(p).exists()), None)


class NatsCluster:
    def __init__(self, workdir: str | Path | None = None, nodes: int = NODES, ack_wait: str = "2s"):
        self.binary = find_nats()
        if not self.binary:
            raise BrokerError("nats-server is not installed: 'apt-get install nats-server' (.ci/run does it)")
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="gg-nats-"))
        self.n = nodes
        self.ack_wait = ack_wait
        self.procs: list[subprocess.Popen | None] = [None] * nodes
        self._configure()

    def _configure(self) -> None:
        """Fresh, distinct free ports for every listener of every node, and each node's config file."""
        nodes = self.n
        ports = sorted(free_ports(4 * nodes))
        self.client_ports, self.route_ports = ports[:nodes], ports[nodes:2 * nodes]
        self.mqtt_ports, self.http_ports = ports[2 * nodes:3 * nodes], ports[3 * nodes:]
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.route_ports)
        for i in range(nodes):
            d = self.dir / f"n{i}"
            d.mkdir(parents=True, exist_ok=True)
            # ack_wait: how long a QoS-1 message delivered to a subscriber waits for its PUBACK before the
            # stream re-delivers it (30 s by default; a consumer that moved nodes gets it again sooner)
            (d / "nats.conf").write_text(
                f"server_name: n{i}\nlisten: 127.0.0.1:{self.client_ports[i]}\n"
                f"http: 127.0.0.1:{self.http_ports[i]}\n"
                f"jetstream {{ store_dir: \"{d / 'js'}\", max_memory_store: 64MB, max_file_store: 2GB }}\n"
                f"cluster {{ name: gasguard, listen: 127.0.0.1:{self.route_ports[i]}, routes: [{routes}] }}\n"
                f"mqtt {{ listen: 127.0.0.1:{self.mqtt_ports[i]}, stream_replicas: {nodes}, "
                f"ack_wait: \"{self.ack_wait}\", max_ack_pending: 10000 }}\n")

    def log(self, i: int) -> Path:
        return self.dir / f"n{i}" / "nats.log"

    def start_node(self, i: int) -> None:
        conf = self.dir / f"n{i}" / "nats.conf"
        self.procs[i] = subprocess.Popen([self.binary, "-c", str(conf), "-l", str(self.log(i))],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _healthy(self, i: int) -> bool:
        """JetStream is up on this node and the cluster has a meta leader (MQTT needs its streams)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_ports[i]}/healthz", timeout=1) as r:
                return json.load(r).get("status") == "ok"
        except (OSError, ValueError):
            return False

    def _mqtt_ok(self, i: int) -> bool:
        """An MQTT CONNECT gets a CONNACK accepting it (the node's MQTT streams exist)."""
        try:
            with socket.create_connection(("127.0.0.1", self.mqtt_ports[i]), timeout=2) as s:
                cid = b"gg-probe-%d" % i
                body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
                s.sendall(bytes([0x10, len(body)]) + body)
                s.settimeout(5)
                ack = s.recv(4)
                s.sendall(b"\xe0\x00")              # DISCONNECT
                return len(ack) == 4 and ack[0] == 0x20 and ack[3] == 0
        except OSError:
            return False

    def wait_ready(self, nodes=None, timeout: float = 30.0) -> None:
        nodes = range(self.n) if nodes is None else nodes
        deadline = time.monotonic() + timeout
        for i in nodes:
            while not (self._healthy(i) and self._mqtt_ok(i)):
                # every node, not only the one awaited: a peer that died at start leaves this one waiting for
                # a quorum that never comes ("no suitable peers for placement")
                for j in nodes:
                    p = self.procs[j]
                    if p is not None and p.poll() is not None:
                        raise NodeExited(j, f"nats node {j} exited at start:\n{self._tail(j)}")
                if time.monotonic() > deadline:
                    raise BrokerError(f"nats cluster not ready (JetStream + MQTT) in {timeout:.0f} s; node {i} "
                                      "waited:\n" + "\n".join(f"--- node {j} ---\n{self._tail(j)}" for j in nodes))
                time.sleep(0.1)

    def _tail(self, i: int) -> str:
        try:
            return "\n".join(self.log(i).read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return "(no log)"

    def start(self, timeout: float = 30.0, attempts: int = 3) -> "NatsCluster":
        for attempt in range(attempts):
            for i in range(self.n):
                self.start_node(i)
            try:
                self.wait_ready(timeout=timeout)
                return self
            except NodeExited as e:
                self.stop()
                # a port picked free was taken by another process before the node bound it: new ports
                if "address already in use" not in str(e) or attempt == attempts - 1:
                    raise
                shutil.rmtree(self.dir, ignore_errors=True)
                self._configure()
            except BrokerError:
                self.stop()
                raise
        return self

    def kill(self, i: int) -> None:
        """SIGKILL one node: a crashed broker node (no goodbye to its clients or peers)."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        self.procs[i] = None

    def freeze(self, i: int) -> None:
        """SIGSTOP one node: a frozen broker node (a paused VM): its connections stay open, nothing answers."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGSTOP)

    def stop(self, timeout: float = 5.0) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)      # a frozen node would not act on the SIGTERM
                p.terminate()
        for i, p in enumerate(self.procs):
            if p is not None:
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self.procs[i] = None

    def __enter__(self) -> "NatsCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class ClusterConsumer:
    """A command-side consumer on the cluster: one persistent session (fixed id, clean_session=False) with
    the list of nodes to move to (gasguard.brokers.FailoverClient), keeping the first copy of each frame
    (command.dedup.FrameDedup by device, direction, counter). Counts what it received, for tests and
    `gasguard bench failover`."""

    def __init__(self, endpoints, store: str, topic: str, client_id: str = "command-1", timeout: float = 15.0):
        import threading

        import paho.mqtt.client as mqtt

        from gasguard.brokers import FailoverClient
        from gasguard.command.dedup import FrameDedup
        self.lock = threading.Lock()
        self.raw: list[dict] = []          # every reading entry received, in order, with its gateway
        self.kept: list[tuple] = []        # frame identities let through by the dedup, in order
        self.times: list[float] = []       # monotonic arrival of each kept identity
        self.dedup = FrameDedup(store)
        self.c = FailoverClient(endpoints, mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                clean_session=False)
        self.c.reconnect_delay_set(0.2, 1)
        subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_message = self._msg
        self.c.start(keepalive=10)
        if not subscribed.wait(timeout):
            raise BrokerError(f"consumer: no SUBACK from the cluster in {timeout:.0f} s")

    def _msg(self, c, u, m) -> None:
        from gasguard.command.dedup import frame_key
        from gasguard.command.readings import readings_of
        doc = json.loads(m.payload)
        now = time.monotonic()
        with self.lock:
            for r in readings_of(doc):
                r["gateway"] = doc["gateway"]
                self.raw.append(r)
                if self.dedup.first(r):
                    self.kept.append(frame_key(r))
                    self.times.append(now)

    def distinct(self) -> int:
        with self.lock:
            return len(self.kept)

    def copies(self) -> int:
        with self.lock:
            return len(self.raw) - len(self.kept)

    def arrivals(self) -> list[float]:
        with self.lock:
            return list(self.times)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
        self.dedup.close()
