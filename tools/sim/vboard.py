"""The virtual board's launcher: a pty for the board's UART, raw-REPL emulation, and the control channel.

    python -m gasguard.tools.sim.vboard --flash DIR [--ctl SOCKET] [--virtual-clock] [--info FILE]

Process tree: this launcher (Python) + one Node process running the official MicroPython WebAssembly
port with the board's HAL (tools/sim/vboard_host.mjs). The launcher owns

- the pty: its slave path is printed on stdout (one JSON line: pty, ctl, flash, pid) and written to --info.
  pyserial, mpremote and the gateway open it like /dev/ttyUSB0. While the firmware runs, bytes from the pty
  go to the board's UART RX; `\\r\\x03` at a frame boundary interrupts it (as Ctrl-C on a real console),
  which leaves the board at the friendly REPL. Ctrl-A enters the raw REPL (Ctrl-B leaves it, Ctrl-C clears,
  Ctrl-D executes, Ctrl-D on an empty buffer soft-resets; raw-paste requests are answered `R\\x00` so
  mpremote falls back to plain raw mode). Ctrl-D at the friendly prompt soft-resets and runs /main.py.
- the control channel: a Unix socket, one JSON object per line each way (see firmware/README.md).

Files written through the REPL land in DIR (the board's flash) and persist across power cycles.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import random
import select
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
HOST = TOOLS / "vboard_host.mjs"
ROM = TOOLS / "vboard_machine.py"
BANNER = (b"MicroPython v1.27.0 on vboard; GasGuard virtual board (WebAssembly)\r\n"
          b"Type \"help()\" for more information.\r\n>>> ")
RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
MAX_HELD = 65536


class HostError(RuntimeError):
    pass


class UartFaults:
    """Fault injection on the board's transmit path (frames are 0x00-delimited segments, SPEC 6)."""

    def __init__(self):
        self.stall = False
        self.drop = 0
        self.dup = 0
        self.flip = 0
        self.ber = 0.0  # bit error rate on the line, both directions (independent bit flips)
        self.drop_rx = 0  # the next N frames *to* the board are lost (an ack that never arrives)
        self.stats = {"stalled_bytes": 0, "dropped": 0, "duplicated": 0, "flipped": 0, "overflow": 0,
                      "bit_errors_tx": 0, "bit_errors_rx": 0, "dropped_rx": 0}
        self.seg = bytearray()
        self.rx_seg = bytearray()  # downlink bytes held while drop_rx decides on the frame they belong to
        self.rng = random.Random(1)

    def noise(self, data: bytes, direction: str) -> bytes:
        """Flip each bit with probability `ber` (a noisy line); counted per direction."""
        if not self.ber or not data:
            return data
        b = bytearray(data)
        n = 0
        for i in range(len(b)):
            for bit in range(8):
                if self.rng.random() < self.ber:
                    b[i] ^= 1 << bit
                    n += 1
        self.stats["bit_errors_" + direction] += n
        return bytes(b)

    def active(self):
        return self.drop or self.dup or self.flip

    def apply_rx(self, data: bytes) -> bytes:
        """Downlink: drop whole 0x00-delimited frames while drop_rx lasts; pass the rest unchanged."""
        if not self.drop_rx and not self.rx_seg:
            return data
        out = bytearray()
        for b in data:
            self.rx_seg.append(b)
            if b == 0 and len(self.rx_seg) > 1:
                if self.drop_rx:
                    self.drop_rx -= 1
                    self.stats["dropped_rx"] += 1
                    out.append(0)
                else:
                    out += self.rx_seg
                self.rx_seg.clear()
            elif b == 0:
                out.append(0)
                self.rx_seg.clear()
        if not self.drop_rx and self.rx_seg:
            out += self.rx_seg
            self.rx_seg.clear()
        return bytes(out)

    def apply(self, data: bytes) -> bytes:
        if self.stall:
            self.stats["stalled_bytes"] += len(data)
            return b""
        if not self.active() and not self.seg:
            return data
        out = bytearray()
        for b in data:
            self.seg.append(b)
            if b == 0 and len(self.seg) > 1:
                seg = bytes(self.seg)
                self.seg.clear()
                out += self._frame(seg)
            elif b == 0:
                continue
            elif b == 0x0A and 0 not in self.seg:
                out += self.seg  # a log line
                self.seg.clear()
        if not self.active() and self.seg:
            out += self.seg
            self.seg.clear()
        return bytes(out)

    def _frame(self, seg: bytes) -> bytes:
        body = seg[:-1]
        lead = b""
        if body.startswith(b"\x00"):
            lead, body = b"\x00", body[1:]
        if self.drop:
            self.drop -= 1
            self.stats["dropped"] += 1
            return b"\x00"
        if self.flip and body:
            self.flip -= 1
            self.stats["flipped"] += 1
            b = bytearray(body)
            i = self.rng.randrange(len(b))
            for bit in range(8):
                if b[i] ^ (1 << bit):
                    b[i] ^= 1 << bit
                    break
            body = bytes(b)
        one = lead + body + b"\x00"
        if self.dup:
            self.dup -= 1
            self.stats["duplicated"] += 1
            return one + one
        return one


class VBoard:
    def __init__(self, flash: Path, ctl: Path | None = None, virtual_clock: bool = False, heap: int = 512 * 1024):
        self.flash = Path(flash).resolve()
        self.flash.mkdir(parents=True, exist_ok=True)
        self.own_ctl_dir = None if ctl else Path(tempfile.mkdtemp(prefix="vboard-"))
        self.ctl_path = Path(ctl) if ctl else self.own_ctl_dir / "ctl.sock"
        self.virtual_clock = virtual_clock
        self.heap = heap
        self.ids = itertools.count(1)
        self.replies: dict[int, queue.Queue] = {}
        self.lock = threading.Lock()
        self.mode = "off"          # as the host reports: off | firmware | repl
        self.repl = "friendly"     # friendly | raw (when mode == repl)
        self.interrupting = False
        self.mode_changed = threading.Condition()
        self.modes_seen: list[str] = []   # since the last power op: a boot that dies at once still booted
        self.faults = UartFaults()
        self.stop = threading.Event()
        self.rx_stats = {"to_board": 0, "stalled": 0}
        self.out_overflow = 0
        self.tx_bytes = 0  # bytes written to the pty: a reader knows when it has seen all of them

    # ---- lifecycle ----
    def start(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.pty = os.ttyname(self.slave)
        args = ["node", "--expose-gc", str(HOST), "--flash", str(self.flash), "--rom", str(ROM), "--heap", str(self.heap)]
        if self.virtual_clock:
            args.append("--virtual-clock")
        self.node = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(TOOLS),
                                     text=True, bufsize=1)
        threading.Thread(target=self._node_reader, daemon=True).start()
        threading.Thread(target=self._pty_reader, daemon=True).start()
        if self.ctl_path.exists():
            self.ctl_path.unlink()
        board = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                for line in self.rfile:
                    try:
                        req = json.loads(line)
                        rep = board.control(req)
                    except Exception as e:  # a bad request must not take the board down
                        rep = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                    self.wfile.write((json.dumps(rep) + "\n").encode())
                    self.wfile.flush()

        self.server = socketserver.ThreadingUnixStreamServer(str(self.ctl_path), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self._send({"op": "boot"})
        return self

    def info(self):
        return {"pty": self.pty, "ctl": str(self.ctl_path), "flash": str(self.flash), "pid": os.getpid(),
                "virtual_clock": self.virtual_clock}

    def close(self):
        self.stop.set()
        try:
            self.server.shutdown()
            self.server.server_close()
        except Exception:
            pass
        if self.node.poll() is None:
            self.node.terminate()
            try:
                self.node.wait(5)
            except subprocess.TimeoutExpired:
                self.node.kill()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.ctl_path.unlink()
            if self.own_ctl_dir:
                self.own_ctl_dir.rmdir()
        except OSError:
            pass

    # ---- talking to the host ----
    def _send(self, msg):
        with self.lock:
            self.node.stdin.write(json.dumps(msg) + "\n")
            self.node.stdin.flush()

    def call(self, msg, timeout=60.0):
        i = next(self.ids)
        q: queue.Queue = queue.Queue()
        self.replies[i] = q
        self._send(dict(msg, id=i))
        try:
            return q.get(timeout=timeout)
        except queue.Empty:
            raise HostError(f"the board did not answer {msg.get('op')} within {timeout:.0f} s") from None
        finally:
            self.replies.pop(i, None)

    def _node_reader(self):
        for line in self.node.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            kind = ev.get("ev")
            if kind == "uart":
                self._to_pty(self.faults.noise(self.faults.apply(bytes.fromhex(ev["hex"])), "tx"))
            elif kind == "reply":
                q = self.replies.get(ev.get("id"))
                if q:
                    q.put(ev)
            elif kind == "mode":
                self._on_mode(ev["mode"])
            elif kind == "log":
                sys.stderr.write(f"vboard: {ev.get('msg')}\n")
        self.stop.set()

    def _on_mode(self, mode):
        with self.mode_changed:
            prev = self.mode
            self.mode = mode
            self.modes_seen.append(mode)
            if mode == "repl" and (prev == "firmware" or self.interrupting):
                self.interrupting = False
                self.repl = "friendly"
                self._to_pty(b"\r\n" + BANNER)
            self.mode_changed.notify_all()

    def _wait_mode(self, want, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.mode_changed:
            while self.mode != want:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.mode_changed.wait(left)
        return True

    def _to_pty(self, data: bytes):
        if not data:
            return
        try:
            self.tx_bytes += os.write(self.master, data)
        except BlockingIOError:
            self.out_overflow += len(data)  # nobody is reading the port: bytes are lost, as on a real UART
        except OSError:
            pass

    # ---- the pty side: UART RX and the REPL ----
    def _pty_reader(self):
        buf = bytearray()
        prev = None
        held_cr = False
        while not self.stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.2)
            if not r:
                continue
            try:
                data = os.read(self.master, 4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                time.sleep(0.05)
                continue
            rx = bytearray()
            for b in data:
                if self.mode == "firmware" and not self.interrupting:
                    # frames are 0x00 ... 0x00 and a frame's first bytes are never CR then ETX,
                    # so "\r\x03" at a boundary can only be a console interrupt
                    if held_cr:
                        held_cr = False
                        if b == 0x03:
                            self._rx(bytes(rx))
                            rx.clear()
                            self._interrupt()
                            prev = None
                            continue
                        rx.append(0x0D)
                    if b == 0x0D and (prev is None or prev == 0):
                        held_cr = True
                        continue
                    if b == 0x03 and prev is None:
                        self._rx(bytes(rx))
                        rx.clear()
                        self._interrupt()
                        continue
                    rx.append(b)
                    prev = b
                else:
                    prev = None
                    buf.append(b)
            if rx:
                self._rx(bytes(rx))
            if self.interrupting:
                if not self._wait_mode("repl", 5.0):
                    self.interrupting = False
                    buf.clear()
                    continue
            if self.mode == "repl" and buf:
                data = bytes(buf)
                buf.clear()
                self._repl_bytes(data)
            elif self.mode == "off":
                buf.clear()

    def _rx(self, data: bytes):
        if not data:
            return
        if self.faults.stall:
            self.rx_stats["stalled"] += len(data)
            return
        n = len(data)
        data = self.faults.apply_rx(data)
        self.rx_stats["stalled"] += n - len(data)   # lost on the line: counted so rx_settled still adds up
        if not data:
            return
        self._send({"op": "rx", "hex": self.faults.noise(data, "rx").hex()})
        self.rx_stats["to_board"] += len(data)  # counted once queued to the board, ahead of later control ops

    def _interrupt(self):
        self.interrupting = True
        self._send({"op": "interrupt"})

    def _repl_bytes(self, data: bytes):
        if not hasattr(self, "_line"):
            self._line = bytearray()
        line = self._line
        for b in data:
            if self.repl == "raw":
                if b == 0x01:
                    if len(line) == 2 and line[0] == 0x05:
                        line.clear()
                        self._to_pty(b"R\x00")  # raw-paste not supported: mpremote falls back to raw mode
                        continue
                    line.clear()
                    self._to_pty(RAW_PROMPT)
                elif b == 0x02:
                    line.clear()
                    self.repl = "friendly"
                    self._to_pty(b"\r\n" + BANNER)
                elif b == 0x03:
                    line.clear()
                elif b == 0x04:
                    self._to_pty(b"OK")
                    if not line:
                        self._to_pty(b"\r\n")
                        self.call({"op": "soft_reset", "run_main": False})
                        self._to_pty(b"MPY: soft reboot\r\n" + RAW_PROMPT)
                        continue
                    code = bytes(line).decode("utf-8", "replace")
                    line.clear()
                    rep = self.call({"op": "exec", "code": code}, timeout=120)
                    if self.mode == "firmware":  # the code reset the board (machine.reset())
                        self._to_pty(b"\x04\x04")
                        continue
                    self._to_pty(rep.get("out", "").encode() + b"\x04" + rep.get("err", "").encode() + b"\x04>")
                else:
                    line.append(b)
            else:
                if b == 0x01:
                    line.clear()
                    self.repl = "raw"
                    self._to_pty(b"\r\n" + RAW_PROMPT)
                elif b == 0x02:
                    line.clear()
                    self._to_pty(b"\r\n" + BANNER)
                elif b == 0x03:
                    line.clear()
                    self._to_pty(b"\r\nKeyboardInterrupt\r\n>>> ")
                elif b == 0x04:
                    line.clear()
                    self._to_pty(b"\r\nMPY: soft reboot\r\n")
                    self.call({"op": "soft_reset", "run_main": True})
                    if self.mode != "firmware":
                        self._to_pty(BANNER)
                    return
                elif b in (0x0D, 0x0A):
                    if b == 0x0A and not line:
                        continue
                    code = bytes(line).decode("utf-8", "replace")
                    line.clear()
                    self._to_pty(b"\r\n")
                    if code.strip():
                        rep = self.call({"op": "exec", "code": code}, timeout=120)
                        self._to_pty(rep.get("out", "").encode() + rep.get("err", "").encode())
                    self._to_pty(b">>> ")
                elif b == 0x08 or b == 0x7F:
                    if line:
                        line.pop()
                        self._to_pty(b"\x08 \x08")
                else:
                    line.append(b)
                    self._to_pty(bytes([b]))

    # ---- the control channel ----
    def control(self, req: dict) -> dict:
        op = req.get("op")
        if op in ("get", "set", "advance", "hang", "cut_at_write"):
            rep = self.call(req)
        elif op == "power":
            on = bool(req.get("on"))
            self.modes_seen = []
            rep = self.call({"op": "power", "on": on})
            if on and not {"firmware", "repl"} & set(self.modes_seen):
                self._wait_mode("firmware", 10) or self._wait_mode("repl", 1)
        elif op == "power_cycle":
            self.call({"op": "power", "on": False})
            rep = self.call({"op": "power", "on": True})
            self._wait_mode("firmware", 10)
        elif op == "reset":
            rep = self.call({"op": "soft_reset", "run_main": True})
        elif op == "uart":
            f = self.faults
            for k in ("drop", "dup", "flip", "drop_rx"):
                if k in req:
                    setattr(f, k, max(0, int(req[k])))
            if "stall" in req:
                f.stall = bool(req["stall"])
            if "ber" in req:
                ber = float(req["ber"])
                if not 0 <= ber < 0.5:
                    return {"ok": False, "error": f"ber {ber}: a bit error rate is 0 <= ber < 0.5 (e.g. 1e-3)"}
                f.ber = ber
            rep = {"ok": True}
        elif op == "info":
            rep = {"ok": True}
        else:
            return {"ok": False, "error": f"unknown op {op!r}: use get, set, power, power_cycle, reset, "
                                          f"advance, uart, hang, cut_at_write or info"}
        rep = dict(rep)
        rep.pop("id", None)
        rep.pop("ev", None)
        rep.update(self.info())
        rep["uart"] = dict(self.faults.stats, stall=self.faults.stall, pending_drop=self.faults.drop,
                           pending_dup=self.faults.dup, pending_flip=self.faults.flip,
                           pending_drop_rx=self.faults.drop_rx,
                           rx_to_board=self.rx_stats["to_board"], rx_stalled=self.rx_stats["stalled"],
                           out_overflow=self.out_overflow, tx_bytes=self.tx_bytes, ber=self.faults.ber)
        rep["console"] = self.mode if self.mode != "repl" else self.repl
        return rep


def main(argv=None):
    ap = argparse.ArgumentParser(description="GasGuard virtual board")
    ap.add_argument("--flash", required=True, help="the board's flash folder on the host")
    ap.add_argument("--ctl", help="control socket path (default: a new temp dir)")
    ap.add_argument("--virtual-clock", action="store_true", help="time advances only by the control channel")
    ap.add_argument("--info", help="also write the JSON info line to this file")
    ap.add_argument("--heap", type=int, default=512 * 1024)
    a = ap.parse_args(argv)
    vb = VBoard(Path(a.flash), Path(a.ctl) if a.ctl else None, a.virtual_clock, a.heap).start()
    line = json.dumps(vb.info())
    if a.info:
        tmp = a.info + ".tmp"
        Path(tmp).write_text(line + "\n")
        os.replace(tmp, a.info)
    print(line, flush=True)

    def bye(*_):
        vb.stop.set()

    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, bye)
    try:
        while not vb.stop.is_set():
            vb.stop.wait(0.5)
    finally:
        vb.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
