"""Start a virtual board and drive it: the Python side used by tests, the HIL suite and the demo.

    from gasguard.tools.sim.vboard_client import VBoardProcess, install
    install(flash_dir, config, key)                      # lay out the board's flash like a flashed board
    with VBoardProcess(flash_dir, virtual_clock=True) as vb:
        vb.pty                                           # open with pyserial / mpremote / the gateway
        vb.ctl.set(gas=vb.gas_raw(300))                  # 30 % LEL at the sensor (raw ADC counts)
        vb.ctl.advance(3000)                             # virtual time
        vb.ctl.get()["valve"]                            # 1 = closed

The control channel speaks JSON lines on a Unix socket (protocol in firmware/README.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gasguard.firmware import sensing
from gasguard.provisioning.image import MAIN_STUB, device_files


class VBoardError(RuntimeError):
    pass


def install(flash: Path, config: dict, key: bytes, files=None) -> Path:
    """Write firmware, /main.py, /gg_config.json and /gg_key.bin into a flash folder (README layout)."""
    flash = Path(flash)
    for host, target in (files if files is not None else device_files()):
        dst = flash / target.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(host, dst)
    (flash / "main.py").write_text(MAIN_STUB)
    (flash / "gg_config.json").write_text(json.dumps(config))
    kp = flash / "gg_key.bin"
    kp.write_bytes(bytes(key))
    os.chmod(kp, 0o600)
    return flash


def gas_raw(tenths_lel: int, cal: dict | None = None) -> int:
    """Raw ADC counts the gas front end shows at `tenths_lel` (0.1 % LEL) for a calibration."""
    cal = cal or {}
    z = int(cal.get("zero", sensing.GAS_ZERO_DEFAULT))
    s = int(cal.get("span", sensing.GAS_SPAN_DEFAULT))
    g = int(cal.get("span_gas", sensing.GAS_SPAN_GAS_DEFAULT))
    return z + (s - z) * tenths_lel // g


def pressure_raw(pa: int, full_scale: int, kind: str = "ratiometric") -> int:
    z, s, _, _ = sensing.KINDS[kind]
    return z + (s - z) * pa // full_scale


class Control:
    """The control channel: one request, one reply, JSON lines over a Unix socket; every call has a timeout."""

    def __init__(self, path: str, timeout: float = 30.0):
        self.path = path
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.rf = self.sock.makefile("rb")

    def request(self, op: str, **kw) -> dict:
        self.sock.sendall((json.dumps(dict(kw, op=op)) + "\n").encode())
        line = self.rf.readline()
        if not line:
            raise VBoardError("the virtual board closed the control channel")
        rep = json.loads(line)
        if not rep.get("ok", False):
            raise VBoardError(f"{op}: {rep.get('error', 'failed')}")
        return rep

    def get(self):
        return self.request("get")

    def set(self, **adc):
        """Analog front end in raw ADC counts: gas, pressure, inlet, battery; noise (bool)."""
        return self.request("set", **adc)

    def advance(self, ms: int):
        return self.request("advance", ms=int(ms))

    def power(self, on: bool):
        return self.request("power", on=bool(on))

    def power_cycle(self):
        return self.request("power_cycle")

    def reset(self):
        return self.request("reset")

    def uart(self, **kw):
        """stall (bool), drop/dup/flip (next N frames the board sends), drop_rx (next N frames to the board)."""
        return self.request("uart", **kw)

    def valve(self) -> int:
        return self.get()["valve"]

    def close(self):
        try:
            self.rf.close()
            self.sock.close()
        except OSError:
            pass


class VBoardProcess:
    """`gasguard sim vboard` as a child process (its own process tree); stops it on exit."""

    def __init__(self, flash: Path, virtual_clock: bool = False, ctl: Path | None = None, start_timeout: float = 30,
                 keep: bool = False):
        self.keep = keep  # keep the temp dir (launcher log vboard.log, info.json) after stop()
        self.flash = Path(flash)
        self.virtual_clock = virtual_clock
        self.tmp = Path(tempfile.mkdtemp(prefix="vboard-"))
        self.ctl_path = Path(ctl) if ctl else self.tmp / "ctl.sock"
        self.info_path = self.tmp / "info.json"
        self.start_timeout = start_timeout
        self.proc = None
        self.ctl: Control | None = None

    def start(self):
        args = [sys.executable, "-m", "gasguard.tools.sim.vboard", "--flash", str(self.flash), "--ctl", str(self.ctl_path),
                "--info", str(self.info_path)]
        if self.virtual_clock:
            args.append("--virtual-clock")
        self.log = open(self.tmp / "vboard.log", "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while not self.info_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.tmp / "vboard.log").read_text()[-2000:]
                self.stop()
                raise VBoardError(f"the virtual board did not start (is node installed? run make setup); log: {log}")
            time.sleep(0.05)
        self.info = json.loads(self.info_path.read_text())
        self.pty = self.info["pty"]
        self.ctl = Control(str(self.ctl_path))
        return self

    def wait_console(self, want="firmware", timeout=20.0):
        """Wait until the board's console is in `want` (firmware | friendly | raw | off)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.ctl.request("info")
            if st["console"] == want:
                return st
            if time.monotonic() > deadline:
                raise VBoardError(f"console is {st['console']!r}, waited {timeout:.0f} s for {want!r}")
            time.sleep(0.05)

    gas_raw = staticmethod(gas_raw)
    pressure_raw = staticmethod(pressure_raw)

    def stop(self):
        if self.ctl:
            self.ctl.close()
            self.ctl = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if getattr(self, "log", None):
            self.log.close()
            self.log = None
        if self.proc is not None and not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
