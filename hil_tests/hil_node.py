"""A node under test, seen like the gateway sees it: a pytest-embedded DUT on its serial port, every uplink
frame verified with the device key (MIC and counter), plus the rig for stimulus.

Expectations run in *board time*: `expect_frame(pred, within_ms=...)` lets the board run (the rig's
`elapse`: virtual time on the virtual board, real time on hardware) until a matching frame arrives, and
fails with the frames and text seen, the pytest-embedded buffer and the per-test log path.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pexpect
import pytest

from gasguard.protocol import const, frame, framing
from gasguard.protocol.errors import ProtocolError
from gasguard.tools.sim.vboard_client import gas_raw, pressure_raw

ANY = re.compile(rb"[\s\S]+")


@dataclass
class BoardInfo:
    """One board of the bench: its port, identity and key (from its gg_config.json / gg_key.bin)."""
    role: str
    port: str
    config: dict
    key: bytes = field(repr=False)
    rig: object | None = None
    flash: Path | None = None       # virtual boards: the flash folder on the host
    vb: object | None = None        # virtual boards: the VBoardProcess
    state_dir: Path | None = None   # where the downlink counter of a real board is kept between runs

    @property
    def dev(self) -> int:
        return int(self.config["dev_id"])


class Node:
    def __init__(self, dut, board: BoardInfo):
        self.dut = dut
        self.board = board
        self.rig = board.rig
        self.dev, self.key = board.dev, board.key
        self.cal = board.config.get("calibration") or {}
        self.frames: list[dict] = []        # every verified uplink frame, in order
        self.rejected: list[tuple[str, bytes]] = []   # (reason, payload) frames that failed verification
        self.noise: dict[str, int] = {}
        self.text = bytearray()             # log lines and REPL output, without frames
        self.deframer = framing.Deframer()
        self.last_up = 0
        self.received = 0
        self.tx_base = 0
        self.down = self._load_down()
        self.cursor = 0                     # expect_frame looks at frames from here (past the last match)

    # ---- downlink counter: a real board remembers the last one it accepted across test runs ----
    def _down_file(self):
        return self.board.state_dir / f"hil_downlink_{self.dev:08x}.json" if self.board.state_dir else None

    def _load_down(self) -> int:
        p = self._down_file()
        if p and p.exists():
            return int(json.loads(p.read_text())["down"])
        return 0

    def _save_down(self) -> None:
        p = self._down_file()
        if p:
            tmp = p.with_suffix(".tmp")
            tmp.write_text(json.dumps({"down": self.down}))
            tmp.replace(p)

    # ---- reading the port ----
    def start(self) -> "Node":
        """Drain what the board said before the test (its boot) and start counting from here."""
        base = None
        if self.rig is not None:
            self.rig.start()
            base = self.rig.settle()          # the board has finished speaking (virtual: its boot frames)
        self._read_quiet(0.3)
        self.tx_base = base or 0
        self.received = 0
        return self

    def _read_once(self, timeout: float) -> bool:
        try:
            m = self.dut.expect(ANY, timeout=timeout)
        except pexpect.TIMEOUT:
            return False
        self._feed(m.group(0))
        return True

    def _read_quiet(self, gap: float, limit: float = 5.0) -> None:
        deadline = time.monotonic() + limit
        while self._read_once(gap) and time.monotonic() < deadline:
            pass

    def pump(self, timeout: float = 15.0) -> None:
        """Take in everything the node has sent so far. On the virtual board the rig counts the bytes it put
        on the port, so this waits exactly until all of them arrived; on hardware, until the line is quiet."""
        sent = self.rig.tx_bytes() if self.rig is not None else None
        if sent is None:
            self._read_quiet(0.2)
            return
        want = sent - self.tx_base
        deadline = time.monotonic() + timeout
        while self.received < want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the port delivered {self.received} of the {want} bytes the board sent in "
                                     f"{timeout} s; log: {self.dut.logfile}")
            self._read_once(min(left, 0.5))

    def _feed(self, data: bytes) -> None:
        self.received += len(data)
        for kind, p in self.deframer.feed(data):
            if kind == framing.TEXT:
                self.text += p
            elif kind == framing.NOISE:
                self.noise[p] = self.noise.get(p, 0) + 1
            else:
                self._frame(p)

    def console(self) -> bytes:
        """Log lines and REPL output so far, with the last line even when no frame has closed it yet."""
        return bytes(self.text) + self.deframer.pending_text()

    def _frame(self, p: bytes) -> None:
        try:
            f = frame.decode(p)
            if f["dev"] != self.dev:
                raise ProtocolError("dev", f"frame from device {f['dev']:08x}, expected {self.dev:08x}")
            f["fcnt"] = frame.verify(p, f, self.key, const.UP, self.last_up)
        except ProtocolError as e:
            self.rejected.append((e.reason, p))
            return
        self.last_up = f["fcnt"]
        self.frames.append(f)

    # ---- time ----
    def run(self, ms: int, step: int | None = None) -> dict:
        """Let the board run `ms` of its time, in steps, and take in what it sent."""
        st = {}
        step = step or ms
        done = 0
        while done < ms:
            d = min(step, ms - done)
            st = self.rig.elapse(d) if self.rig is not None else time.sleep(d / 1000) or {}
            done += d
        self.pump()
        return st

    def mark(self) -> int:
        return len(self.frames)

    def expect_frame(self, pred, within_ms: int, what: str, since: int | None = None, step: int = 250) -> dict:
        """The first frame (from index `since`, default: after the previous match) for which pred(frame)
        holds, letting the board run up to `within_ms` of its time."""
        start = self.cursor if since is None else since
        waited = 0
        while True:
            self.pump()
            for i in range(start, len(self.frames)):
                if pred(self.frames[i]):
                    self.cursor = i + 1
                    return self.frames[i]
            if waited >= within_ms:
                self.fail(f"{what}: not seen within {within_ms} ms of board time")
            d = min(step, within_ms - waited)
            self.run(d)
            waited += d

    def expect_no_frame(self, pred, for_ms: int, what: str, step: int = 500) -> None:
        start = self.mark()
        self.run(for_ms, step)
        bad = [f for f in self.frames[start:] if pred(f)]
        if bad:
            self.fail(f"{what}: {len(bad)} unexpected frame(s), first {bad[0]}")

    def fail(self, msg: str):
        recent = "\n  ".join(_short(f) for f in self.frames[-12:]) or "(none)"
        raise AssertionError(
            f"{msg}\nlast frames from {self.dev:08x}:\n  {recent}\nrejected: {[r for r, _ in self.rejected]} "
            f"noise: {self.noise}\ntext (last 600 bytes): {self.console()[-600:]!r}\n"
            f"pytest-embedded buffer: {self.dut.pexpect_proc.buffer_debug_str}\nfull device log: {self.dut.logfile}")

    # ---- stimulus through the rig ----
    def set_gas(self, tenths_lel: int) -> None:
        self.rig.set_inputs(gas=gas_raw(tenths_lel, self.cal.get("gas")))

    def set_pressure(self, pa: int) -> None:
        c = self.cal.get("pressure") or {}
        self.rig.set_inputs(pressure=pressure_raw(pa, int(c.get("full_scale", 10000)), c.get("kind", "ratiometric")))

    def valve(self) -> int:
        return self.rig.valve()

    def valve_closes_within(self, limit_ms: int, step: int) -> int | None:
        """Board time (ms, to a step) until the rig sees the valve line closed; None if not within limit_ms."""
        for t in range(step, limit_ms + 1, step):
            self.run(step)
            if self.rig.valve() == 1:
                return t
        return None

    # ---- downlink ----
    def send(self, fields: dict, key: bytes | None = None) -> bytes:
        raw = frame.seal(dict(fields, dev=self.dev), key or self.key, const.DOWN)
        data = framing.wrap(raw)
        self.dut.write(data)
        if self.rig is not None:
            self.rig.rx_settled(len(data))
        else:
            time.sleep(len(data) * 10 / 115200 + 0.05)
        return data

    def next_down(self) -> int:
        self.down += 1
        self._save_down()
        return self.down

    def command(self, cmd: int, cid: int, args: bytes = b"", key: bytes | None = None, fcnt: int | None = None):
        fc = self.next_down() if fcnt is None else fcnt
        return self.send({"type": "command", "fcnt": fc, "cmd": cmd, "cid": cid, "args": args}, key)

    def ack(self, f: dict) -> None:
        """Ack an alarm or event as the gateway does (sealed DOWN with the next downlink counter)."""
        ref_type, ref = (const.ALARM, f["aseq"]) if f["type"] == "alarm" else (const.EVENT, f["eseq"])
        self.send({"type": "ack", "fcnt": self.next_down(), "ref_type": ref_type, "ref": ref, "result": 0})

    def expect_ack(self, cid: int, within_ms: int = 3000, since: int | None = None) -> dict:
        return self.expect_frame(lambda f: f["type"] == "ack" and f["ref_type"] == const.COMMAND and f["ref"] == cid,
                                 within_ms, f"ack of command cid {cid}", since=since, step=100)


def _short(f: dict) -> str:
    keep = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in f.items() if k not in ("dev", "mic")}
    return json.dumps(keep, default=str)


def is_alarm(code, cleared=False):
    return lambda f: f["type"] == "alarm" and f["code"] == code and f["cleared"] == cleared


def is_event(code):
    return lambda f: f["type"] == "event" and f["code"] == code


def state_of(f: dict) -> dict:
    return frame.state_fields(f["state"])


def need_rig(node, what="stimulus"):
    """Skip (the one allowed skip) when a real board has no rig for this test's stimulus."""
    if node.rig is None:
        pytest.skip(f"needs a rig for {what}: no --rig-port for this board. Wire the helper board as in "
                    "hil_tests/README.md and give --rig-port=/dev/ttyACM0")
