"""A gateway under test with its real edges: signed frames over pty cables (and a Semtech forwarder on
loopback UDP), a real mosquitto, a subscriber that checks every message against gateway/schemas/.

Used by tests/test_gateway_*.py. Two ways to run the daemon: in-process (`Rig.start()`, a DaemonThread, so a
test can read metrics and the spool) and as the real command (`GatewayProcess`, `gasguard gateway run`),
for SIGKILL and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
from referencing import Registry as SchemaRegistry, Resource

import gasguard.gateway
from gasguard.authority.bootstrap import bootstrap
from gasguard.authority.envelope import sign_request
from gasguard.gateway import config as gwconfig
from gasguard.gateway import testkit
from gasguard.gateway.daemon import Daemon

SCHEMA_DIR = Path(gasguard.gateway.__file__).parent / "schemas"


def _schemas():
    docs = {p.name: json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.schema.json")}
    reg = SchemaRegistry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs.values())
    return {name.removesuffix(".schema.json"): jsonschema.Draft202012Validator(d, registry=reg)
            for name, d in docs.items()}


VALIDATORS = _schemas()


def schema_for(topic: str, root: str) -> str:
    """The schema a topic's payload must follow (the topic tree of gateway/README.md)."""
    assert topic.startswith(root + "/"), f"{topic} is outside the gateway's tree {root}"
    rest = topic[len(root) + 1:].split("/")
    if len(rest) == 1:
        return {"reading": "readings", "status": "gateway-status", "event": "gateway-event",
                "stats": "stats"}[rest[0]]
    leaf = "/".join(rest[1:])
    if rest[0] == "command" and rest[1] == "result":
        return "request-result"
    return {"state": "state", "alarm": "alarm", "event": "event", "cmd/result": "command-result",
            "cmd": "command-request"}[leaf]


def validate(topic: str, doc: dict, root: str) -> str:
    name = schema_for(topic, root)
    VALIDATORS[name].validate(doc)
    return name


def wait_until(pred, timeout: float, what: str, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        r = pred()
        if r:
            return r
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(step)


PEOPLE = {"root": "admin", "eng": "engineer", "op": "operator", "web": "console"}


class Rig:
    """Registry + pty cables + config for one gateway; `start()` runs the daemon in this process."""

    def __init__(self, tmp_path: Path, broker_port: int, *, nodes: int = 2, cables: int = 1, udp: bool = False,
                 extra: str = "", metrics: str = "tick_interval = 0.1\n", gateway_id: str = "gw1",
                 district: str = "d1", sub_topic: str = "gasguard/#", sub: bool = True, mqtt_extra: str = "",
                 authority=None):
        self.tmp = tmp_path
        self.port = broker_port
        self.nodes = [testkit.Node(0x00A10000 + i) for i in range(nodes)]
        self.registry = tmp_path / "registry.db"
        testkit.make_registry(self.registry, self.nodes)
        self.cables = [testkit.PtyCable(tmp_path / f"ttyGG{i}") for i in range(cables)]
        self.udp_addr = ("127.0.0.1", _free_udp_port()) if udp else None
        self.spool = tmp_path / "spool.db"
        # the district's authority (issue 14): an admin, an engineer, an operator and a web console
        self.authority = authority or bootstrap(tmp_path / "authority", district, PEOPLE)
        extra = self.authority.gateway_toml() + extra
        self.config_path = testkit.write_config(
            tmp_path / "gateway.toml", registry=self.registry, spool=self.spool, mqtt_port=broker_port,
            serial=[str(c.link) for c in self.cables], udp=f"{self.udp_addr[0]}:{self.udp_addr[1]}" if udp else None,
            gateway_id=gateway_id, district=district, extra=f"[metrics]\n{metrics}\n{extra}", mqtt_extra=mqtt_extra)
        self.cfg = gwconfig.load(self.config_path)
        self.root = self.cfg.root
        # a persistent session: what the gateway publishes while a restarted broker waits for this
        # subscriber to come back is queued for it, as for the district's real consumers
        self.sub = testkit.Subscriber(broker_port, sub_topic, client_id=f"rig-{os.getpid()}-{id(self)}",
                                      clean=False) if sub else None
        self.daemon: Daemon | None = None
        self.runner: testkit.DaemonThread | None = None

    def signed(self, who: str, topic: str, body: dict, **kw) -> bytes:
        """`body` on `topic`, signed by `who` of the rig's district (see PEOPLE)."""
        return sign_request(self.authority.key(who), who, topic, body, **kw)

    def cmd_topic(self, dev: int) -> str:
        return f"{self.root}/{dev:08x}/cmd"

    def start(self, wait: bool = True, **kw) -> Daemon:
        """Run the daemon; with `wait`, return once its ports are open and it is connected to the broker."""
        self.daemon = Daemon(self.cfg, **kw)
        self.runner = testkit.DaemonThread(self.daemon)
        if not wait:
            return self.daemon
        self.runner.wait_ports(10)
        wait_until(lambda: self.daemon.publisher.connected, 10, "gateway connects to the broker")
        return self.daemon

    def stop(self) -> None:
        if self.runner:
            self.runner.stop(20)
            self.runner = None

    def metric(self, name: str, **labels) -> float:
        return self.daemon.metrics.value(name, **labels)

    def rejected(self, reason: str) -> float:
        return self.metric("gasguard_gateway_rejected_total", reason=reason)

    def validated(self, ms=None) -> dict[str, int]:
        """Every message received so far checked against its schema; returns {schema: count}."""
        out: dict[str, int] = {}
        with self.sub.lock:
            ms = list(self.sub.messages if ms is None else ms)
        for topic, doc, _ in ms:
            if topic.endswith("/cmd"):
                continue            # the command's requests (tests send bad ones on purpose), not our output
            name = validate(topic, doc, self.root)
            out[name] = out.get(name, 0) + 1
        return out

    def readings(self) -> list[dict]:
        with self.sub.lock:
            return [r for t, d, _ in self.sub.messages if t == f"{self.root}/reading" for r in d["readings"]]

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self.sub:
                self.sub.close()
            for c in self.cables:
                c.close()


class GatewayProcess:
    """`gasguard gateway run --config ...` as a child process (SIGKILL / SIGTERM tests). Its log goes to a
    file so a failing test can show it."""

    def __init__(self, config: Path, log: Path, env: dict | None = None):
        self.config, self.log_path = config, log
        self.env = None if env is None else {**os.environ, **env}     # e.g. NOTIFY_SOCKET (systemd)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GatewayProcess":
        self.offset = self.log_path.stat().st_size if self.log_path.exists() else 0   # this run's part of the log
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gasguard.cli", "gateway", "run", "--config",
                                      str(self.config)], stdout=self.logf, stderr=subprocess.STDOUT, env=self.env)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.logf.close()

    def terminate(self, timeout: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.logf.close()

    def started(self) -> bool:
        """The daemon logged its start: signal handlers are set, SIGTERM now means a graceful stop."""
        return "starting; spool" in self.log_path.read_bytes()[self.offset:].decode(errors="replace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill()


def _free_udp_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
