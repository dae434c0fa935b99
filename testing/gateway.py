"""The gateway under test: in this process on its own event loop (`DaemonThread`: a test can read its
metrics and spool), or as the real command in a child process (`GatewayProcess`: SIGKILL, SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def scrape(bind: str, name: str, **labels) -> float:
    """A gateway in another process, by its /metrics (`[metrics] bind`, host:port): the sum of the samples
    called `name` whose labels include `labels` (all of them: every label value summed). prometheus_client's
    own parser reads the text."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"http://{bind}/metrics", timeout=5).read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and labels.items() <= s.labels.items())


class DaemonThread:
    """Run a Daemon on its own event loop in a thread (in-process tests: inspect metrics and spool)."""

    def __init__(self, daemon):
        import asyncio
        self.daemon = daemon
        self.loop = asyncio.new_event_loop()
        self.stop_ev = None
        self.error: BaseException | None = None
        ready = threading.Event()

        def main():
            asyncio.set_event_loop(self.loop)

            async def go():
                self.stop_ev = asyncio.Event()
                ready.set()
                await daemon.run(self.stop_ev)
            try:
                self.loop.run_until_complete(go())
            except BaseException as e:  # noqa: BLE001 - handed to the test thread
                self.error = e
                ready.set()
        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        ready.wait(10)

    def wait_ports(self, timeout: float = 10.0) -> None:
        """Block until every serial port of the daemon is open. Send nothing before: pyserial's open()
        flushes the input buffer, so a frame written to the pty earlier is gone (as on a real UART)."""
        deadline = time.monotonic() + timeout
        while any(t.ser is None for t in self.daemon.serial):
            if self.error or time.monotonic() > deadline:
                raise TimeoutError(f"serial ports not open within {timeout} s: "
                                   f"{[t.spec.port for t in self.daemon.serial if t.ser is None]}") from self.error
            time.sleep(0.01)

    def call(self, fn, *args, timeout: float = 5.0):
        """Run fn(*args) on the daemon's loop and return its result."""
        import concurrent.futures
        fut = concurrent.futures.Future()

        def run():
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001
                fut.set_exception(e)
        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self.stop_ev is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError("daemon did not stop")
        if self.error:
            raise self.error


class GatewayProcess:
    """`gasguard gateway run --config ...` as a child process (SIGKILL / SIGTERM / restart tests), in a session
    of its own. Its log goes to a file (kept with the test's files) that a failing test can show; restarts
    append to it, and `run_log()` is this run's part."""

    def __init__(self, config: Path, log: Path, env: dict | None = None, args: tuple = ()):
        self.config, self.log_path = Path(config), Path(log)
        self.args = list(args)                                        # e.g. ("--clock", "speed=60")
        self.env = None if env is None else {**os.environ, **env}     # e.g. NOTIFY_SOCKET (systemd)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.offset = 0            # where this run's part of the log begins

    def start(self) -> "GatewayProcess":
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as lf:
            self.offset = lf.tell()          # the log holds only the daemon's lines: tests parse every one
            self.proc = subprocess.Popen([sys.executable, "-m", "gasguard.cli", "gateway", "run", "--config",
                                          str(self.config), *self.args], stdout=lf, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=self.env)
        return self

    def log(self) -> str:
        """The whole log file, every run."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def run_log(self) -> str:
        """This run's part of the log."""
        return self.log_path.read_bytes()[self.offset:].decode(errors="replace")

    def wait_log(self, needle: str, timeout: float = 10.0) -> None:
        """Wait until this run has logged `needle`; fail with the exit code and the log's tail."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.run_log()
            if needle in text:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway: {needle!r} not logged in {timeout} s (exit {self.proc.poll()}); "
                                     f"log {self.log_path}:\n{text[-2000:]}")
            time.sleep(0.05)

    def started(self) -> bool:
        """The daemon logged its start: signal handlers are set, SIGTERM now means a graceful stop."""
        return "starting; spool" in self.run_log()

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM (a graceful stop); the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, and SIGKILL to its session when it does not stop in time."""
        if self.proc and self.proc.poll() is None:
            try:
                self.terminate(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye, as when the gateway's machine loses power."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
