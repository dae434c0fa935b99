"""Ctrl-C and SIGTERM stop the whole demo: no process of its tree outlives it (broker, gateway, virtual boards
and their Node interpreters), its broker port is closed and its working folder removed.

Ctrl-C is sent as a terminal sends it, to the demo's whole process group (the broker started by the demo is
in that group and gets it too); SIGTERM only to the demo, as `kill` or a service manager does. Every pty of
the demo was held by one of these processes (the fleet's by the demo itself, the boards' by their
launchers, the gateway's ends by the gateway), so none is left open once they are all gone."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.micropython, pytest.mark.mosquitto]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(p.name))
    return kids


def _tree(pid: int) -> set[int]:
    kids, out, todo = _children(), set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.add(k)
            todo.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_stops_everything_on_a_signal(sig):
    proc = subprocess.Popen([sys.executable, "-m", "gasguard.cli", "sim", "demo", "--fast", "--no-tui"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    up = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "fleet:" in line:          # the last part to start: everything is running
                up.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert up.wait(60), "".join(lines)
        text = "".join(lines)
        workdir = Path(re.search(r"in (\S+)/registry\.db", text).group(1))
        port = int(re.search(r"mosquitto on 127\.0\.0\.1:(\d+)", text).group(1))
        tree = _tree(proc.pid)
        # broker, gateway, 2 board launchers and their Node processes at least
        assert len(tree) >= 6, (tree, text)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        rc = proc.wait(45)
        reader.join(5)
        text = "".join(lines)
        assert rc == 128 + sig, text
        try:                                      # orphans (if any) are reaped by init
            wait_until(lambda: not any(_alive(p) for p in tree), 5, "the demo's process tree ends", step=0.1)
        except TimeoutError:
            pass
        assert [p for p in tree if _alive(p)] == [], text
        assert not workdir.exists(), text
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        assert "Traceback" not in text, text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_a_killed_demo_takes_its_gateway_and_broker_with_it():
    """SIGKILL gives the demo no chance to clean up: the gateway, the command service and the broker die with it
    all the same
    (PR_SET_PDEATHSIG, tools/demo/broker.py --exec). The virtual boards do not (their launcher starts them in a
    session of their own, tools/sim/vboard_client.py): this test stops them by pid, as tools/demo/README.md tells users."""
    proc = subprocess.Popen([sys.executable, "-m", "gasguard.cli", "sim", "demo", "--fast", "--no-tui"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    tree: set[int] = set()
    try:
        for line in proc.stdout:
            lines.append(line)
            if "fleet:" in line:
                break
        text = "".join(lines)
        broker = int(re.search(r"mosquitto on \S+ \(pid (\d+)\)", text).group(1))
        gateway = int(re.search(r"gateway sub-017: .*\(pid (\d+)\)", text).group(1))
        command = int(re.search(r"command service: .*\(pid (\d+)\)", text).group(1))
        tree = _tree(proc.pid)
        assert {broker, gateway, command} <= tree, (tree, text)
        proc.kill()
        proc.wait(10)
        # each gets SIGTERM and stops as it would under systemd: bounded (the gateway flushes for at most 3 s),
        # with room for a machine loaded by the rest of the suite
        parts = {"broker": broker, "gateway": gateway, "command service": command}
        try:
            wait_until(lambda: not any(_alive(p) for p in parts.values()), 30, "they die with it", step=0.1)
        except TimeoutError:
            pass
        left = [name for name, pid in parts.items() if _alive(pid)]
        workdir = Path(re.search(r"in (\S+)/registry\.db", text).group(1))
        logs = "".join(f"\n--- {f} ---\n" + (workdir / f).read_text(errors="replace")[-2000:]
                       for f in ("gateway.log", "command.log") if (workdir / f).exists())
        assert not left, f"still running after the demo's SIGKILL: {left}\n{text}{logs}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for pid in tree:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        workdir = re.search(r"in (\S+)/registry\.db", "".join(lines))
        if workdir:
            import shutil
            shutil.rmtree(workdir.group(1), ignore_errors=True)
