"""systemd readiness and watchdog over a real unix datagram NOTIFY_SOCKET (what systemd listens on): the daemon
says READY=1 once its loops run, feeds WATCHDOG=1 while they make progress, stops feeding while a loop is
stuck (naming it in STATUS=), feeds again when it recovers, and says STOPPING=1 on SIGTERM."""

import os
import shutil
import socket
import tempfile
import threading
import time

import pytest

from gasguard.gateway.plugin import Plugin
from gasguard.testing.gateway import GatewayProcess
from gasguard.testing.rig import Rig

WATCHDOG_USEC = 300_000          # systemd's WatchdogSec=0.3 s: fed every 0.1 s
STALL = "tick_interval = 0.1\nstall_after = 0.5\n"


class NotifySocket:
    """The receiving end systemd binds (a path socket, SOCK_DGRAM). Messages in arrival order."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="gg-notify-", dir="/tmp")     # sun_path holds 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.seen: list[str] = []

    def next(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            msg = self.sock.recv(4096).decode()
        except TimeoutError:
            return None
        self.seen.append(msg)
        return msg

    def expect(self, pred, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.next(left)
            if msg is not None and pred(msg):
                return msg
        raise AssertionError(f"{what}: not within {timeout} s; got {self.seen[-10:]}")

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify():
    n = NotifySocket()
    yield n
    n.close()


def _watchdogs(n: NotifySocket, count: int, timeout: float) -> None:
    for i in range(count):
        n.expect(lambda m: m == "WATCHDOG=1", timeout, f"WATCHDOG=1 number {i + 1}")


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_the_command_says_ready_feeds_the_watchdog_and_says_stopping(tmp_path, mosquitto, notify):
    rig = Rig(tmp_path, mosquitto.port, metrics=STALL, sub=False)
    proc = GatewayProcess(rig.config_path, tmp_path / "gw.log",
                          env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}).start()
    try:
        ready = notify.expect(lambda m: "READY=1" in m, 30, "READY=1")
        assert "STATUS=gateway gw1: 1 serial port(s)" in ready, ready
        _watchdogs(notify, 5, 2.0)
        assert proc.terminate() == 0, proc.log()
        notify.expect(lambda m: m == "STOPPING=1", 2.0, "STOPPING=1")
    finally:
        proc.close()
        rig.close()


class Hang(Plugin):
    """A plugin stuck in a blocking call on the event loop (e.g. a network call without a timeout)."""
    name = "hang"

    def __init__(self):
        self.armed = threading.Event()
        self.release = threading.Event()

    def tick(self, now):
        if self.armed.is_set():
            self.armed.clear()
            self.release.wait(30)
        return []


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_watchdog_starves_while_a_loop_is_stuck_and_resumes_after(tmp_path, mosquitto, notify, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    rig = Rig(tmp_path, mosquitto.port, metrics=STALL, sub=False)
    hang = Hang()
    try:
        rig.start(plugins=[hang])
        notify.expect(lambda m: "READY=1" in m, 10, "READY=1")
        _watchdogs(notify, 3, 2.0)
        hang.armed.set()
        stuck = notify.expect(lambda m: m.startswith("STATUS=stuck"), 5, "STATUS=stuck naming the loop")
        assert "ticker (no progress for" in stuck and "event loop itself is blocked" in stuck, stuck
        # 10 feeding intervals: none may be fed while the ticker is stuck
        assert notify.next(10 * WATCHDOG_USEC / 3e6) is None, notify.seen[-3:]
        hang.release.set()
        notify.expect(lambda m: m == "STATUS=running", 5, "STATUS=running once the ticker is back")
        _watchdogs(notify, 3, 2.0)
    finally:
        hang.release.set()
        rig.close()
    notify.expect(lambda m: m == "STOPPING=1", 2, "STOPPING=1 on the graceful stop")
