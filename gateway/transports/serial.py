"""A UART: a wired node or a LoRa modem in transparent mode (same SPEC 6 framing).

Survives unplug/replug and a busy port: each failure is logged once with what to do, and the port is
re-opened with capped backoff. Reads are non-blocking on the event loop (add_reader), never a thread.
"""

from __future__ import annotations

import asyncio
import logging

import serial

from gasguard import logs
from gasguard.protocol import framing
from gasguard.gateway import payloads
from gasguard.gateway.transports import DeliverMany

from .. import deframe
from ..burstlog import BurstLog, untrusted

log = logging.getLogger("gasguard.gateway.serial")

WAKE_MAX = 65536     # bytes read a wake-up at most (~2,700 frames; ingest's STREAM_MAX stops frames well before)


class SerialTransport:
    def __init__(self, spec, deliver, metrics, burst: BurstLog | None = None, *, node_lines: int = 20,
                 backoff_min: float = 0.2, backoff_max: float = 5.0):
        self.spec = spec                 # config.SerialPort
        self.name = f"{spec.kind}:{spec.name}"
        self.deliver: DeliverMany = deliver   # ingest's, with back-pressure
        self.metrics = metrics
        self.burst = burst or BurstLog(log)
        self.node_lines = node_lines     # node log lines logged per port and BurstLog window (limits.node_log_lines)
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.ser: serial.Serial | None = None
        self.deframer = deframe.Deframer()
        self.opened = 0                  # how many times the port was (re)opened
        metrics.port(spec.name, spec.kind)

    def _open(self) -> serial.Serial:
        s = serial.serial_for_url(self.spec.port, baudrate=self.spec.baud, timeout=0, write_timeout=0.5,
                                  do_not_open=True)
        if hasattr(s, "exclusive"):
            s.exclusive = True           # flock: a second program on the port is an error, not a silent split
        s.open()
        return s

    async def run(self) -> None:
        delay = self.backoff_min
        failing = None
        while True:
            try:
                self.ser = self._open()
            except (serial.SerialException, OSError) as e:
                self.metrics.port_up.labels(self.spec.name, self.spec.kind).set(0)
                msg = str(e)
                why = ("busy: another program holds it (find it with 'fuser %s')" % self.spec.port
                       if "lock" in msg.lower() or "busy" in msg.lower() else
                       "not present: check the cable / USB adapter and the path in [[serial]] port")
                if failing != why:
                    log.error("serial %s %s (%s); retrying every <= %.0f s", self.spec.port, why, msg, self.backoff_max,
                              extra=logs.fields(port=self.spec.name))
                    failing = why
                await asyncio.sleep(delay)
                delay = min(self.backoff_max, delay * 2)
                continue
            delay, failing = self.backoff_min, None
            self.opened += 1
            self.metrics.port_up.labels(self.spec.name, self.spec.kind).set(1)
            self.metrics.port_opens.labels(self.spec.name, self.spec.kind).inc()
            self.deframer = deframe.Deframer()   # a partial frame from before the unplug is noise, not a frame
            log.info("serial %s open (%s, %d baud)%s", self.spec.port, self.spec.kind, self.spec.baud,
                     " again after a disconnect" if self.opened > 1 else "", extra=logs.fields(port=self.spec.name))
            try:
                await self._pump(self.ser)
            except (serial.SerialException, OSError) as e:
                log.warning("serial %s disconnected (%s); waiting for it to come back", self.spec.port, e,
                            extra=logs.fields(port=self.spec.name))
            finally:
                self.metrics.port_up.labels(self.spec.name, self.spec.kind).set(0)
                try:
                    self.ser.close()
                except Exception:  # noqa: BLE001 - closing a dead port may fail any way it likes
                    pass
                self.ser = None

    async def _pump(self, ser: serial.Serial) -> None:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        fd = ser.fileno()
        loop.add_reader(fd, ready.set)
        rx = payloads.wire_rx(self.spec.kind, self.spec.name)
        try:
            while True:
                await ready.wait()
                ready.clear()
                # What the line holds is read on, a tty's 4 KB at a time, until it is empty, ingest has no room
                # (deliver waits then: the rest stays on the line, where the next read's alarms still go ahead)
                # or WAKE_MAX bytes were read (a node's text, which ingest does not queue, gives the loop a turn).
                # One read a wake-up made each 4 KB (~170 frames) a commit and an fsync of its own while the
                # sender waited for room (issue 17). (pyserial with timeout=0: one os.read a call, and a tty's
                # read flushes what the sender queued into the line discipline first: `in_waiting` does not,
                # and says 0 with 14 KB there.)
                n = 0
                while n < WAKE_MAX and (data := ser.read(4096)):
                    n += len(data)
                    frames = []              # one queue operation per read (ingest.deliver_many), order kept
                    for kind, payload in self.deframer.feed(data):
                        if kind == framing.FRAME:
                            frames.append((payload, rx, self))
                        elif kind == framing.TEXT:
                            self.metrics.text_lines.inc()
                            # the node's text is data, not log syntax: escaped (no newline can forge a line) and
                            # limited per port (a babbling or hostile node cannot flood the log)
                            self.burst.event(f"node_text:{self.spec.name}", "node log on %s: %s", self.spec.name,
                                             untrusted(payload.strip()), level=logging.INFO, allow=self.node_lines)
                        else:
                            frames.append((None, rx, payload))     # noise: counted by reason
                    await self.deliver(frames)
        finally:
            loop.remove_reader(fd)

    def send(self, frame: bytes, rx: dict | None = None) -> bool:
        s = self.ser
        if s is None:
            return False
        try:
            s.write(framing.wrap(frame))
            return True
        except (serial.SerialException, OSError) as e:
            log.warning("serial %s write failed (%s)", self.spec.port, e)
            return False
