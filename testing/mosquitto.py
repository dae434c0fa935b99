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
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from gasguard.testing.waits import wait_until

# the TCP listeners a configuration adds (`listener PORT [ADDRESS]`); port 0 is a unix socket
LISTENER_RE = re.compile(r"^[ \t]*listener[ \t]+([1-9][0-9]*)", re.M)


class BrokerError(RuntimeError):
    pass


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")
                                               if Path(p).exists()), None)


def free_port(avoid=()) -> int:
    """A loopback TCP port nobody holds now, none of `avoid`. Nothing keeps it free: whoever binds it should
    say clearly when it was taken meanwhile. The kernel may hand the same port out twice in a row (seen: 5 of
    20,000 calls), hence `avoid` for ports picked a moment ago."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def free_ports(n: int, avoid=()) -> list[int]:
    """n distinct free ports (free_port), none of `avoid`."""
    ports: list[int] = []
    while len(ports) < n:
        ports.append(free_port(avoid=(*avoid, *ports)))
    return ports


def tcp_sockets(pid: int) -> list[tuple[int, int, str]] | None:
    """(fd, local port, state) of each TCP socket process `pid` holds, from Linux's /proc: the socket inodes
    among its open files, looked up in the kernel's TCP tables (state "0A" listening, "01" established).
    None where /proc cannot tell (another OS)."""
    inodes = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:                         # closed since the listing
            continue
        if link.startswith("socket:["):
            inodes[link[8:-1]] = int(fd)
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()                     # sl local_address rem_address st ... inode (the 10th)
            if f[9] in inodes:
                out.append((inodes[f[9]], int(f[1].rsplit(":", 1)[1], 16), f[3]))
    return out


def listening_ports(pid: int) -> set[int] | None:
    """The TCP ports on which process `pid` holds a listening socket; None where /proc cannot tell."""
    socks = tcp_sockets(pid)
    return None if socks is None else {port for _, port, state in socks if state == "0A"}


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


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


AUTOSAVE_DEFAULT = 1800    # s: mosquitto's own autosave_interval, which a district's broker keeps (gasguard.conf sets none)


def autosave_of(autosave: int | None) -> int:
    """The seconds between saves of a Mosquitto(autosave=...)."""
    return AUTOSAVE_DEFAULT if autosave is None else autosave


class Mosquitto:
    kind = "mosquitto"
    extra_ports: tuple[int, ...] = ()      # the TCP listeners of extra_config, beside self.port

    def __init__(self, port: int | None = None, workdir: str | Path | None = None, extra_config: str = "",
                 autosave: int | None = 1):
        """`autosave`: s between saves of the broker's database. 1 (the tests': a message PUBACKed a second
        before a SIGKILL is in the database the restarted broker reads); None: mosquitto's own default
        (AUTOSAVE_DEFAULT), as a district's broker runs (gasguard.conf sets none). A save writes every retained message and queued
        session message while the broker serves nobody: the alarm benchmarks use None (BENCHMARKS.md, issue
        17: `gasguard bench autosave`)."""
        self.binary = find_mosquitto()
        if not self.binary:
            raise BrokerError("mosquitto is not installed: run 'make setup' as root or 'apt-get install mosquitto'")
        self.extra_ports = tuple(int(p) for p in LISTENER_RE.findall(extra_config))
        self.port = port or free_port(avoid=self.extra_ports)
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="gg-mosquitto-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        # as root, mosquitto switches to the 'mosquitto' user, which cannot write our persistence folder:
        # sessions would then be lost on restart. Staying root keeps the broker's state like production's.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.autosave_s = autosave_of(autosave)
        save = "" if autosave is None else f"autosave_interval {autosave}\n"
        self.conf.write_text(
            f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.dir}/\n{save}max_queued_messages 1000000\n"
            f"max_inflight_messages 1000\nlog_dest file {self.log}\nlog_type error\nlog_type warning\n"
            f"{extra_config}")
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        """Start the broker and return once it listens on every port of its configuration. mosquitto opens its
        listeners one after the other, and a TLS listener's certificates are loaded before the next one opens
        (~9 ms for a small CA file, more on a loaded machine), so the first port accepting says nothing of the
        later ones: a client of a TLS listener was refused now and then (tests/test_gateway_tls.py). Where
        /proc tells, the sockets must be this process's own: a port taken by someone else since free_port
        makes mosquitto exit ("Address already in use", said here) instead of a connection answering."""
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        want = {self.port, *self.extra_ports}

        def listening():
            if self.proc.poll() is not None:
                raise BrokerError(f"{self.kind} exited at start: "
                                  f"{self.proc.stderr.read().decode(errors='replace')}{self._log_tail()}")
            held = listening_ports(self.proc.pid)
            return want <= held if held is not None else all(accepts(p) for p in want)
        try:
            wait_until(listening, timeout, "listening")
        except TimeoutError:
            held = listening_ports(self.proc.pid) if self.proc else None
            self.stop()
            missing = sorted(want - held) if held is not None else sorted(want)
            raise BrokerError(f"{self.kind} did not listen on port(s) {missing} within {timeout} s") from None
        return self

    def client_sockets(self) -> list[socket.socket]:
        """Copies of the broker's own sockets of its connected clients (Linux 5.6+ pidfd_getfd; the broker is
        our child, so we may take its files), to read the options mosquitto set on them. Close them after."""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            out = []
            for fd, _, state in tcp_sockets(self.proc.pid) or ():
                if state == "01":
                    n = libc.syscall(438, pidfd, fd, 0)              # 438: pidfd_getfd on every architecture
                    if n < 0:
                        raise OSError(ctypes.get_errno(), f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
                    out.append(socket.socket(fileno=n))
            return out
        finally:
            os.close(pidfd)

    def _log_tail(self, chars: int = 2000) -> str:
        """The end of the broker's own log: mosquitto says why it exited there once log_dest is a file."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

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

    @contextlib.contextmanager
    def frozen(self):
        """The broker held with SIGSTOP inside the block, let go after it: its connections stay open and nothing
        is answered (no PUBACK), so what a client sends meanwhile stays in flight and what it would send next
        waits."""
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield self
        finally:
            self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
