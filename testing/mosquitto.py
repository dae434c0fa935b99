"""Start a real mosquitto on loopback for tests, benchmarks and the demo.

    with Mosquitto() as b:            # a free port on 127.0.0.1, its own config and data folder
        client.connect("127.0.0.1", b.port)
        b.restart()                   # for fault tests: broker down and up on the same port

    # logins and subscription ACLs that the broker enforces (a denied SUBSCRIBE is answered 0x80)
    Mosquitto(extra_config=dynamic_security(folder, {"op": ("secret", ["gasguard/v1/lixia/command/#"])}))

Persistence is on, so QoS 1 sessions survive a restart like a production broker's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class BrokerError(RuntimeError):
    pass


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")
                                               if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dynamic_security(folder: str | Path, users: dict[str, tuple[str, list[str]]]) -> str:
    """`extra_config` for a broker behind mosquitto's dynamic-security plugin (Debian's mosquitto ships it):
    no anonymous clients; each of `users` logs in with its password and may subscribe to its topic filters
    only, anything else answered with SUBACK 0x80; publishing is left open. mosquitto's acl_file cannot be
    used for that: mosquitto 2.0 grants every SUBSCRIBE under it and checks read access only on delivery."""
    plugin = next(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"), None)
    if plugin is None:
        raise BrokerError("mosquitto_dynamic_security.so not found: apt-get install mosquitto (Debian ships it)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clients, roles = [], []
    for user, (password, subscribe) in users.items():
        salt = os.urandom(12)
        # the plugin's own hash: PBKDF2-SHA512, 64 bytes, its iteration count per client (101 is its default)
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
        clients.append({"username": user, "password": base64.b64encode(digest).decode(),
                        "salt": base64.b64encode(salt).decode(), "iterations": 101, "roles": [{"rolename": user}]})
        roles.append({"rolename": user, "acls": [{"acltype": "subscribePattern", "topic": t, "allow": True}
                                                 for t in subscribe]})
    conf = folder / "dynamic-security.json"
    conf.write_text(json.dumps({"defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True,
                                                     "subscribe": False, "unsubscribe": True},
                                "clients": clients, "groups": [], "roles": roles}))
    return f"allow_anonymous false\nplugin {plugin}\nplugin_opt_config_file {conf}\n"


class Mosquitto:
    def __init__(self, port: int | None = None, workdir: str | Path | None = None, extra_config: str = ""):
        self.binary = find_mosquitto()
        if not self.binary:
            raise BrokerError("mosquitto is not installed: run 'make setup' as root or 'apt-get install mosquitto'")
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="gg-mosquitto-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        # as root, mosquitto switches to the 'mosquitto' user, which cannot write our persistence folder:
        # sessions would then be lost on restart. Staying root keeps the broker's state like production's.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.dir}/\nautosave_interval 1\nmax_queued_messages 1000000\n"
            f"max_inflight_messages 1000\nlog_dest file {self.log}\nlog_type error\nlog_type warning\n"
            f"{extra_config}")
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"mosquitto exited at start: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crashed broker."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
