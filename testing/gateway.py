"""The gateway under test: in this process on its own event loop (`DaemonThread`: a test can read its
metrics and spool), or as the real command in a child process (`GatewayProcess`: SIGKILL, SIGTERM)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


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
    """`gasguard gateway run --config ...` as a child process (SIGKILL / SIGTERM tests). Its log goes to a
    file so a failing test can show it."""

    def __init__(self, config: Path, log: Path):
        self.config, self.log_path = config, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GatewayProcess":
        self.offset = self.log_path.stat().st_size if self.log_path.exists() else 0   # this run's part of the log
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gasguard.cli", "gateway", "run", "--config",
                                      str(self.config)], stdout=self.logf, stderr=subprocess.STDOUT)
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
