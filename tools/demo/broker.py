"""The demo's MQTT broker: mosquitto when it is installed, else amqtt (a pure-Python broker) when that is.

    broker = start_broker(workdir)      # .kind "mosquitto" | "amqtt", .port, .stop()

amqtt 0.11.4 was checked with paho-mqtt 2.x for what the gateway and console rely on: QoS 1 with PUBACK,
retained messages, and the gateway's will (tools/demo/README.md). It is installed by `make demo` only when
mosquitto is missing; tests always use mosquitto. As a module this file runs the amqtt broker:

    python -m gasguard.tools.demo.broker --port 1883 --log amqtt.log
    python -m gasguard.tools.demo.broker --exec /usr/sbin/mosquitto -c mosquitto.conf   # dies with its parent

(--exec starts any of the demo's children that way: the gateway too.)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import sys
from pathlib import Path

from gasguard.testing.mosquitto import BrokerError, Mosquitto, find_mosquitto, free_port

INSTALL_HINT = ("an MQTT broker is needed: install mosquitto ('sudo apt-get install mosquitto'; 'make demo' does "
                "it when run as root) or the pure-Python fallback ('.venv/bin/pip install amqtt==0.11.4')")


class AmqttBroker(Mosquitto):
    """amqtt in a child process, started and stopped like testing/mosquitto.py's mosquitto."""

    kind = "amqtt"

    def __init__(self, workdir: Path, port: int | None = None):   # noqa: D107 - no mosquitto binary needed
        self.port = port or free_port()
        self.dir = Path(workdir)
        self._own_dir = False
        self.log = self.dir / "amqtt.log"
        self.proc = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gasguard.tools.demo.broker", "--port", str(self.port), "--log", str(self.log)]


class _Mosquitto(Mosquitto):
    """mosquitto started through `--exec` below, so it dies with the demo even when the demo is killed."""

    kind = "mosquitto"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gasguard.tools.demo.broker", "--exec", *super().command()]


def available() -> str | None:
    """Which broker the demo would start: "mosquitto", "amqtt" or None."""
    if find_mosquitto():
        return "mosquitto"
    if importlib.util.find_spec("amqtt") is not None:
        return "amqtt"
    return None


def die_with_parent() -> None:
    """Linux: get SIGTERM when the process that started us dies, even by SIGKILL (prctl PR_SET_PDEATHSIG), so a
    killed demo leaves no gateway or broker behind. Elsewhere, or if prctl is missing, nothing happens."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)          # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:                                # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)



def start_broker(workdir: Path, prefer: str | None = None):
    """Start mosquitto (or amqtt when mosquitto is missing, or when `prefer` says so) on a free loopback port."""
    kind = prefer or available()
    if kind == "mosquitto":
        return _Mosquitto(workdir=Path(workdir) / "mosquitto").start()
    if kind == "amqtt":
        if importlib.util.find_spec("amqtt") is None:
            raise BrokerError(INSTALL_HINT)
        return AmqttBroker(workdir).start()
    raise BrokerError(INSTALL_HINT)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    die_with_parent()
    if argv[:1] == ["--exec"]:
        os.execv(argv[1], argv[1:])        # the parent-death signal survives exec: mosquitto inherits it
    ap = argparse.ArgumentParser(description="amqtt broker on 127.0.0.1 (the demo's fallback)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True, help="amqtt's log file (its stderr is a pipe nobody drains)")
    a = ap.parse_args(argv)
    import logging
    logging.basicConfig(filename=a.log, level=logging.WARNING)
    from amqtt.broker import Broker
    cfg = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{a.port}"}}, "sys_interval": 0,
           "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]}, "topic-check": {"enabled": False}}

    async def run():
        broker = Broker(cfg)
        await broker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
