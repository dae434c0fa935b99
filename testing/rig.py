"""A gateway under test with its real edges: signed frames over pty cables (and a Semtech forwarder on
loopback UDP), a real mosquitto, a subscriber that checks every message against gateway/schemas/.

Used by tests/test_gateway_*.py. `Rig.start()` runs the daemon in this process (a DaemonThread, so a test can
read metrics and the spool); for the real command (SIGKILL, SIGTERM) use `gasguard.testing.gateway.GatewayProcess`
with `Rig.config_path`."""

from __future__ import annotations

import os
from pathlib import Path

from gasguard.authority.bootstrap import District, bootstrap
from gasguard.authority.envelope import sign_request
from gasguard.command.readings import readings_of
from gasguard.gateway import config as gwconfig
from gasguard.gateway.daemon import Daemon
from gasguard.protocol.topics import CMD
from gasguard.testing.config import write_config
from gasguard.testing.gateway import DaemonThread
from gasguard.testing.links import PtyCable
from gasguard.testing.node import Node, make_registry
from gasguard.testing.schemas import validate
from gasguard.testing.subscriber import Subscriber
from gasguard.testing.waits import wait_until


# the district's people in every rig (issue 14): requests are signed by one of them (Rig.signed)
PEOPLE = {"root": "admin", "eng": "engineer", "op": "operator", "web": "console"}


class Rig:
    """Registry + pty cables + config for one gateway; `start()` runs the daemon in this process."""

    def __init__(self, tmp_path: Path, broker_port: int, *, nodes: int = 2, cables: int = 1, udp: bool = False,
                 extra: str = "", metrics: str = "tick_interval = 0.1\n", gateway_id: str = "gw1",
                 district: str = "d1", sub_topic: str = "gasguard/#", sub: bool = True, mqtt_extra: str = "",
                 udp_extra: str = "", authority: District | None = None):
        self.tmp = tmp_path
        self.port = broker_port
        self.nodes = [Node(0x00A10000 + i) for i in range(nodes)]
        self.registry = tmp_path / "registry.db"
        make_registry(self.registry, self.nodes)
        self.cables = [PtyCable(tmp_path / f"ttyGG{i}") for i in range(cables)]
        self.udp_addr = ("127.0.0.1", _free_udp_port()) if udp else None
        self.spool = tmp_path / "spool.db"
        # the district's authority and roster (admin, engineer, operator, web console), unless a test brings one
        self.authority = authority or bootstrap(tmp_path / "authority", district, PEOPLE)
        extra = self.authority.gateway_toml() + extra
        self.config_path = write_config(
            tmp_path / "gateway.toml", registry=self.registry, spool=self.spool, mqtt_port=broker_port,
            serial=[str(c.link) for c in self.cables], udp=f"{self.udp_addr[0]}:{self.udp_addr[1]}" if udp else None,
            gateway_id=gateway_id, district=district, extra=f"[metrics]\n{metrics}\n{extra}", mqtt_extra=mqtt_extra,
            udp_extra=udp_extra)
        self.cfg = gwconfig.load(self.config_path)
        self.root = self.cfg.root
        # a persistent session: what the gateway publishes while a restarted broker waits for this
        # subscriber to come back is queued for it, as for the district's real consumers
        self.sub = Subscriber(broker_port, sub_topic, client_id=f"rig-{os.getpid()}-{id(self)}",
                                      clean=False) if sub else None
        self.daemon: Daemon | None = None
        self.runner: DaemonThread | None = None

    def signed(self, who: str, topic: str, body: dict, **kw) -> bytes:
        """`body` on `topic`, signed by `who` of the rig's district (PEOPLE)."""
        return sign_request(self.authority.key(who), who, topic, body, **kw)

    def cmd_topic(self, dev: int) -> str:
        return self.cfg.topics.device(dev, CMD)

    def start(self, wait: bool = True, **kw) -> Daemon:
        """Run the daemon; with `wait`, return once its ports are open and it is connected to the broker."""
        self.daemon = Daemon(self.cfg, **kw)
        self.runner = DaemonThread(self.daemon)
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
            return [r for t, d, _ in self.sub.messages if t == f"{self.root}/reading" for r in readings_of(d)]

    def settle(self, node=None, cable=None, timeout: float = 10.0) -> list[dict]:
        """Wait until everything sent so far is published, on an event rather than a pause: a reading sent
        now (by `node`, on `cable`) comes out after every reading sent before it and after every alarm and
        event (the publisher drains lanes in order and MQTT keeps one connection's order on a topic; alarms and
        events, on the gateway's alarms' connection, leave at once, the marker only after batch.delay, 1 s here,
        waiting for company), so once it is here, what came before it is all there is. Returns the readings
        before it."""
        node = node or self.nodes[0]
        cable = cable or self.cables[0]
        cable.send(node.reading())
        mid = f"{self.cfg.gateway_id}:{node.dev:08x}:{node.fcnt}"
        self.sub.wait(lambda ms: any(r["id"] == mid for r in self.readings()), timeout)
        got = self.readings()
        return got[:[r["id"] for r in got].index(mid)]

    def ticks(self, n: int = 2, timeout: float = 10.0) -> None:
        """Wait until the daemon's ticker has finished `n` more rounds (command retries, presence, plugin ticks,
        spool upkeep): what each round would do has been done, on an event rather than a pause."""
        seen: list[float] = []

        def moved():
            t = self.daemon.beats.last.get("ticker")
            if t is not None and (not seen or t != seen[-1]):
                seen.append(t)
            return len(seen) > n
        wait_until(moved, timeout, f"{n} rounds of the daemon's ticker", step=0.005)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self.sub:
                self.sub.close()
            for c in self.cables:
                c.close()


def _free_udp_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
