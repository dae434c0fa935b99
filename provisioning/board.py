"""A board on a serial port: its raw REPL through mpremote (the library), and its link frames.

One connection serves both, as a technician's cable does: `repl()` interrupts the firmware and gives a
clean interpreter (mpremote's soft reset in raw mode), `run_firmware()` leaves the REPL and soft-resets so
/main.py runs, and `frames()` reads what the node sends, deframed (SPEC 6) and decoded. Every wait here
has a deadline.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import hashlib
import os
import threading
import time

import serial

from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

from gasguard.firmware import boards
from gasguard.protocol import const, frame, framing
from gasguard.protocol.errors import ProtocolError

from . import ports
from .errors import ProvisioningError

CHUNK = 1024   # bytes per raw-REPL write: fewer round trips than mpremote's 256, fits any board's RX buffer
MAX_LOG = 50   # node log lines kept for error messages
WDT_MS = min(p["wdt_ms"] for p in boards.PROFILES.values())   # the firmware's watchdog (firmware/boards.py)
FEED = b"try:\n _gg_wdt.feed()\nexcept NameError:\n pass\n"
HANDSHAKE_S = 7.0        # a port with no MicroPython REPL behind it is reported after this: the whole command in 10 s
READ_TIMEOUT_S = 2.0     # no single read on the port blocks longer (mpremote reads without a limit on a pty)
# What an ESP32's boot ROM prints (it runs before MicroPython, or instead of it when none is flashed)
ROM_SIGNS = (b"rst:0x", b"boot:0x", b"ets Jun", b"ets_main", b"ESP-ROM:", b"waiting for download",
             b"load:0x", b"entry 0x", b"invalid header")
RAW_PROMPT = b"raw REPL; CTRL-B to exit"


def diagnose(port: str, seen: bytes, seconds: float) -> ProvisioningError:
    """Why no MicroPython REPL answered on `port` in `seconds`, from what the port printed meanwhile."""
    text = bytes(seen).decode("utf-8", "replace")
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    # the last reset reason (rst:...) and the last two lines say most about a boot loop
    tail = " | ".join(dict.fromkeys([l for l in lines if "rst:" in l][-1:] + lines[-2:]))[-300:]
    if not seen:
        return ProvisioningError(
            f"nothing answered on {port} in {seconds:.0f} s: check that the board is powered (its LED), that "
            "this is its console port (a board with two USB ports: the one marked UART/USB), that the cable "
            "carries data (not charge-only), and press RESET once; a board held in download mode stays silent")
    if any(s in seen for s in ROM_SIGNS):
        return ProvisioningError(
            f"{port} prints the ESP32 boot ROM but no MicroPython REPL answered in {seconds:.0f} s: MicroPython "
            "is not on the board or does not start; flash MicroPython first (esptool.py --port "
            f"{port} write_flash 0x1000 ESP32_GENERIC.bin), then run this command again. It printed: {tail!r}")
    return ProvisioningError(
        f"something on {port} prints text but no MicroPython REPL answered in {seconds:.0f} s: check the baud "
        f"rate (--baud, MicroPython uses 115200) and that the board runs MicroPython. It printed: {tail!r}")


class _Transport(SerialTransport):
    """mpremote's transport, feeding the board's watchdog at the start of every command it sends.

    The firmware starts a hardware watchdog that survives a soft reset and cannot be stopped (ESP32 task
    WDT, RP2040 watchdog): a REPL session on a board that ran the firmware must keep feeding it, or the board
    resets under the technician's feet (mid-flash)."""

    feeding = False

    def exec_raw_no_follow(self, command):
        if self.feeding:
            command = FEED + (command if isinstance(command, bytes) else command.encode())
        return super().exec_raw_no_follow(command)


class Board:
    def __init__(self, port: str, baud: int = 115200, wdt_ms: int = WDT_MS):
        ports.probe(port)      # turns "busy / not there / permission" into a fix before mpremote hides it
        self.port = port
        try:
            self.t = _Transport(port, baudrate=baud, exclusive=True, timeout=READ_TIMEOUT_S)
        except TransportError as e:
            raise ports.explain(port, e) from None
        self.in_repl = False
        self.deframer = framing.Deframer()
        self.log_lines: list[str] = []
        self.wdt_ms = wdt_ms
        self.lock = threading.RLock()      # one command at a time on the wire (keepalive() runs in a thread)

    def close(self) -> None:
        """Release the port; a firmware this session stopped is started again, even after an error, so a
        failed command never leaves a node at the REPL protecting nothing."""
        try:
            if self.in_repl:
                self.run_firmware()
        except Exception:  # noqa: BLE001 - a cable pulled mid-command fails any way it likes; best effort
            pass
        try:
            self.t.close()
        except Exception:  # noqa: BLE001 - as above
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def cable(self, e: BaseException, doing: str) -> ProvisioningError | None:
        """A pulled cable (or a board that lost power) rather than a board-side error: the port went away or
        reads end of file. None when `e` is something else."""
        if isinstance(e, TransportExecError):
            return None             # the board answered with an error: it is there
        gone = (not os.path.exists(self.port) or isinstance(e, serial.SerialException)
                or getattr(e, "errno", None) in (errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF))
        if not gone:
            return None
        return ProvisioningError(f"the cable to {self.port} was pulled (or the board lost power) while {doing}: "
                                 "plug it back in and run the same command again; a file cut off mid-write is "
                                 "never used (it is written under a temporary name first)")

    # ---- the REPL ----
    def handshake(self, timeout: float = HANDSHAKE_S) -> None:
        """Interrupt whatever runs and wait, with one deadline, for MicroPython's raw REPL prompt; then back
        to the friendly REPL for mpremote. A silent port, a boot ROM without MicroPython or another program
        fails here within `timeout`, saying what to check (mpremote alone would wait without end on a
        silent pty, and a port that keeps printing resets its per-character timeout for ever)."""
        ser = self.t.serial
        deadline = time.monotonic() + timeout
        seen = bytearray()
        ask = 0.0
        try:
            while time.monotonic() < deadline:
                if time.monotonic() >= ask:          # ask again every second: the first may land mid-boot
                    ser.write(b"\r\x03\x03\r\x01")
                    ask = time.monotonic() + 1.0
                ser.timeout = max(0.01, min(0.1, deadline - time.monotonic()))
                data = ser.read(4096)
                if data:
                    seen += data
                    del seen[:-4096]                   # bounded: a chatty port keeps only its last 4 KB
                if RAW_PROMPT in seen:
                    ser.write(b"\r\x02")             # friendly REPL: mpremote enters raw mode its own way
                    ser.timeout = READ_TIMEOUT_S
                    return
        except (serial.SerialException, OSError) as e:
            raise (self.cable(e, "looking for MicroPython") or ports.explain(self.port, e)) from None
        ser.timeout = READ_TIMEOUT_S
        raise diagnose(self.port, bytes(seen), timeout)

    def repl(self) -> None:
        """Stop the firmware and enter the raw REPL with a fresh interpreter (idempotent)."""
        if self.in_repl:
            return
        self.handshake()
        try:
            self.t.enter_raw_repl(soft_reset=True)
        except (serial.SerialException, OSError) as e:
            raise (self.cable(e, "entering the REPL") or ports.explain(self.port, e)) from None
        except TransportError as e:
            raise ProvisioningError(f"no MicroPython REPL on {self.port} ({e}): is MicroPython on the board "
                                    "(flash it with esptool / the UF2 first), and is this its console port?") from None
        self.in_repl = True
        # a board with /main.py ran the firmware, whose watchdog still counts: take it over and feed it
        self.t.feeding = False
        out, _ = self.t.exec_raw("import os, machine\ntry:\n os.stat('/main.py')\n _gg_wdt = machine.WDT(timeout=%d)"
                                 "\n print('fed')\nexcept Exception:\n pass" % self.wdt_ms)
        self.t.feeding = b"fed" in out

    @contextlib.contextmanager
    def keepalive(self):
        """While the technician is busy (a prompt), feed the watchdog from a thread every quarter timeout."""
        stop = threading.Event()

        def feed():
            while not stop.wait(self.wdt_ms / 4000):
                with self.lock:
                    if not (self.in_repl and self.t.feeding):
                        continue
                    try:
                        self.t.exec_raw("pass")   # the transport puts the feed in front
                    except TransportError:
                        return                    # the next command on the main thread reports the cable

        th = threading.Thread(target=feed, daemon=True)
        th.start()
        try:
            yield
        finally:
            stop.set()
            th.join(self.wdt_ms / 1000)

    def exec(self, code: str, timeout: float = 10) -> str:
        self.repl()
        try:
            with self.lock:
                out, err = self.t.exec_raw(code, timeout=timeout)
        except (serial.SerialException, OSError) as e:
            raise (self.cable(e, "running a command on the board") or ProvisioningError(
                f"the board stopped answering on {self.port} ({e}): check the cable, then run the command again")) \
                from None
        except TransportError as e:
            raise ProvisioningError(f"the board stopped answering on {self.port} ({e}): check the cable, "
                                    "then run the command again") from None
        if err:
            last = err.decode("utf-8", "replace").strip().splitlines()[-1:]
            raise ProvisioningError(f"on the board: {' '.join(last)}")
        return out.decode("utf-8", "replace")

    def eval(self, expr: str):
        return ast.literal_eval(self.exec(f"print(repr({expr}))").strip())

    def eval_code(self, code: str, timeout: float = 10):
        """Run `code`, whose last line prints one Python literal; return that value."""
        return ast.literal_eval(self.exec(code, timeout).strip().splitlines()[-1])

    def read_file(self, path: str) -> bytes | None:
        self.repl()
        try:
            return bytes(self.t.fs_readfile(path, chunk_size=CHUNK))
        except OSError as e:
            gone = self.cable(e, f"reading {path}")
            if gone is not None:
                raise gone from None
            return None
        except TransportExecError as e:
            if "ENOENT" in e.error_output:
                return None
            raise ProvisioningError(f"cannot read {path} on the board: {e.error_output.strip()!r}") from None

    def write_file(self, path: str, data: bytes, progress=None) -> None:
        """Write `data` to `path` through a temporary name and a rename, so a pulled cable never leaves a
        half-written config or key under the real name."""
        self.repl()
        tmp = path + ".part"
        try:
            self.t.fs_writefile(tmp, data, chunk_size=CHUNK, progress_callback=progress)
        except (TransportExecError, OSError) as e:
            gone = self.cable(e, f"writing {path}")
            if gone is not None:
                raise gone from None
            full = "ENOSPC" in str(e) or "28" in str(getattr(e, "error_output", ""))
            raise ProvisioningError(f"cannot write {path} on the board ({e})" + (
                ": the flash is full; flash with --compile or remove files ('mpremote df', 'mpremote rm')"
                if full else ": run the command again; if it fails twice, check the board's filesystem with "
                "'mpremote df'")) from None
        self.exec(f"import os\nos.rename({tmp!r}, {path!r})")

    def sha256(self, path: str) -> bytes | None:
        self.repl()
        try:
            return self.t.fs_hashfile(path, "sha256", chunk_size=CHUNK)
        except (TransportExecError, OSError) as e:
            gone = self.cable(e, f"verifying {path}")
            if gone is not None:
                raise gone from None
            return None

    def makedirs(self, path: str) -> None:
        self.exec("import os\np = ''\nfor part in %r.strip('/').split('/'):\n p += '/' + part\n try:\n"
                  "  os.mkdir(p)\n except OSError:\n  pass" % (path,))

    def remove(self, path: str) -> None:
        self.exec(f"import os\ntry:\n os.remove({path!r})\nexcept OSError:\n pass")

    # ---- the running firmware ----
    def run_firmware(self) -> None:
        """Leave the REPL and soft-reset: /main.py runs, as after power-on."""
        self.repl()
        self.t.exit_raw_repl()
        self.t.serial.read(self.t.serial.in_waiting or 0)
        self.t.serial.write(b"\x04")   # Ctrl-D at the friendly prompt: soft reboot, runs /main.py
        self.in_repl = False
        self.deframer = framing.Deframer()

    def frames(self, deadline: float, on_text=None):
        """Yield decoded frames ({"raw": bytes, fields...}) until `deadline` (time.monotonic()); the node's
        log lines go to on_text(line) as they arrive (and are kept, bounded, in .log_lines)."""
        ser = self.t.serial
        while time.monotonic() < deadline:
            ser.timeout = max(0.01, min(0.2, deadline - time.monotonic()))
            data = ser.read(4096)
            if not data:
                continue
            for kind, payload in self.deframer.feed(data):
                if kind == framing.TEXT:   # one segment between frames may hold several lines
                    for line in payload.decode("utf-8", "replace").splitlines():
                        if line.strip():
                            self.log_lines = self.log_lines[-(MAX_LOG - 1):] + [line.strip()]
                            if on_text is not None:
                                on_text(line.strip())
                elif kind == framing.FRAME:
                    try:
                        f = frame.decode(payload)
                    except ProtocolError:
                        continue
                    f["raw"] = payload
                    yield f

    def write_frame(self, raw: bytes) -> None:
        self.t.serial.write(framing.wrap(raw))
        self.t.serial.flush()

    def _frames_ticking(self, deadline: float, on_wait=None):
        """frames() until `deadline`, calling on_wait(seconds_left) about once a second meanwhile."""
        while (now := time.monotonic()) < deadline:
            if on_wait is not None:
                on_wait(deadline - now)
            yield from self.frames(min(deadline, now + 1.0))

    def wait_boot(self, dev_id: int, key: bytes, timeout: float = 30.0, on_wait=None) -> dict:
        """The node's BOOT event, MIC-verified with `key`: proof it runs with this identity.
        on_wait(seconds_left) is called about once a second while it is awaited."""
        deadline = time.monotonic() + timeout
        wrong = 0
        for f in self._frames_ticking(deadline, on_wait):
            if f["dev"] != dev_id:
                wrong += 1
                continue
            if f["type"] != "event" or f["code"] != const.EV_BOOT:
                continue
            try:
                f["fcnt"] = frame.verify(f["raw"], f, key, const.UP, 0, max_gap=const.MAX_FCNT)
            except ProtocolError as e:
                raise ProvisioningError(f"the board boots as {dev_id:08x} but its frames do not verify with "
                                        f"the registry's key ({e.reason}): flash it again") from None
            return f
        seen = f"; it sent frames as another device ({wrong})" if wrong else ""
        logs = f"; last log lines: {' | '.join(self.log_lines[-3:])}" if self.log_lines else ""
        raise ProvisioningError(f"no BOOT event from {dev_id:08x} within {timeout:.0f} s{seen}{logs}: "
                                "check the log with 'gasguard device monitor', then flash again")


def file_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
