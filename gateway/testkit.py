"""Test and benchmark parts that behave like the real edges: a node that seals frames, a pty cable that
can be unplugged, a Semtech packet forwarder, and an MQTT subscriber. Used by tests and `gasguard bench`."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
import time
import tty
from pathlib import Path

import paho.mqtt.client as mqtt

from gasguard.protocol import frame, framing
from gasguard.protocol.const import DOWN, UP

from .registry import Device, Registry


class Node:
    """A device's sending side: its key and uplink counter; checks the gateway's downlinks."""

    def __init__(self, dev: int, key: bytes | None = None):
        self.dev, self.key = dev, key or os.urandom(16)
        self.fcnt = 0
        self.down_last = 0
        self.aseq = 0
        self.eseq = 0

    def reading(self, gas=0, pressure=2000, battery=90, state=0, **kw) -> bytes:
        self.fcnt += 1
        return frame.seal({"type": "reading", "dev": self.dev, "fcnt": self.fcnt, "gas": gas, "pressure": pressure,
                           "battery": battery, "state": state, **kw}, self.key, UP)

    def alarm(self, code=2, value=260, state=0x15, aseq=None, cleared=False) -> bytes:
        self.fcnt += 1
        if aseq is None:
            self.aseq = (self.aseq + 1) & 0xFF
            aseq = self.aseq
        return frame.seal({"type": "alarm", "dev": self.dev, "fcnt": self.fcnt, "code": code, "cleared": cleared,
                           "aseq": aseq, "age": 3, "value": value, "state": state}, self.key, UP)

    def event(self, code=1, data=b"\x01\x01\x00\x01") -> bytes:
        self.fcnt += 1
        self.eseq = (self.eseq + 1) & 0xFF
        return frame.seal({"type": "event", "dev": self.dev, "fcnt": self.fcnt, "code": code, "eseq": self.eseq,
                           "data": data}, self.key, UP)

    def ack(self, ref_type, ref, result=0) -> bytes:
        self.fcnt += 1
        return frame.seal({"type": "ack", "dev": self.dev, "fcnt": self.fcnt, "ref_type": ref_type, "ref": ref,
                           "result": result}, self.key, UP)

    def open_downlink(self, buf: bytes) -> dict:
        f = frame.open_frame(buf, self.key, DOWN, self.down_last)
        self.down_last = f["fcnt"]
        return f


def make_registry(path, nodes, *, state="commissioned", **extra) -> None:
    with Registry(path) as r:
        r.add_many([Device(dev_id=n.dev, key=n.key, profile="household", state=state, site_name=f"site {n.dev}",
                           households=1, **extra) for n in nodes])


class PtyCable:
    """A serial cable made of a pty. The gateway opens `link` (a stable symlink, like /dev/serial/by-id);
    `unplug()` closes the master (the gateway's reads fail with EIO), `replug()` makes a new pty."""

    def __init__(self, link: Path):
        self.link = Path(link)
        self.master = None
        self.replug()

    def replug(self) -> None:
        m, s = os.openpty()
        tty.setraw(s)            # raw from the start: no echo of frames back to the writer
        tty.setraw(m)
        self._slave_keep = s
        path = os.ttyname(s)
        tmp = self.link.with_suffix(".new")
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(path)
        os.replace(tmp, self.link)
        self.master = m
        self.dframer = framing.Deframer()
        os.set_blocking(m, False)

    def unplug(self) -> None:
        # The link goes first, as /dev/serial/by-id does on a real unplug: a closed pty's number is reused
        # by the next openpty() anywhere on the machine, and a stale link would hand the gateway a stranger's
        # port (seen under parallel tests as frames from another test's devices).
        try:
            self.link.unlink()
        except FileNotFoundError:
            pass
        for fd in (self.master, self._slave_keep):
            try:
                os.close(fd)
            except OSError:
                pass
        self.master = None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 5
        while view:
            try:
                n = os.write(self.master, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("pty: the gateway is not reading") from None
                time.sleep(0.001)

    def send(self, raw_frame: bytes) -> None:
        self.write(framing.wrap(raw_frame))

    def downlinks(self) -> list[bytes]:
        """Frames the gateway wrote to the device side so far (non-blocking)."""
        out = []
        while self.master is not None:
            try:
                data = os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            out.extend(p for k, p in self.dframer.feed(data) if k == framing.FRAME)
        return out

    def close(self) -> None:
        self.unplug()


class PacketForwarder:
    """A Semtech UDP packet forwarder (protocol v2) on loopback: PUSH_DATA up, PULL_DATA keepalive,
    PULL_RESP down (answered by TX_ACK)."""

    def __init__(self, server: tuple[str, int], eui: bytes = b"\xaa\x55\x5a\x00\x00\x00\x00\x01"):
        self.server, self.eui = server, eui
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.acks: list[tuple[int, bytes]] = []   # (ident, token)
        self.txpk: list[dict] = []
        self.token = 0

    def _tok(self) -> bytes:
        self.token = (self.token + 1) & 0xFFFF
        return struct.pack(">H", self.token)

    def push(self, raw: bytes, rssi=-97, lsnr=7.5, stat=1) -> bytes:
        tok = self._tok()
        pk = {"tmst": int(time.monotonic() * 1e6) & 0xFFFFFFFF, "chan": 2, "rfch": 0, "freq": 470.9, "stat": stat,
              "modu": "LORA", "datr": "SF11BW125", "codr": "4/5", "rssi": rssi, "lsnr": lsnr, "size": len(raw),
              "data": base64.b64encode(raw).decode()}
        self.sock.sendto(b"\x02" + tok + b"\x00" + self.eui + json.dumps({"rxpk": [pk]}).encode(), self.server)
        return tok

    def pull(self) -> bytes:
        tok = self._tok()
        self.sock.sendto(b"\x02" + tok + b"\x02" + self.eui, self.server)
        return tok

    def poll(self, seconds: float = 0.2) -> None:
        """Read what the gateway sent: acks, and PULL_RESP (answered with a TX_ACK like a real forwarder)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data, _ = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            ident, tok = data[3], data[1:3]
            if ident == 3:
                self.txpk.append(json.loads(data[4:])["txpk"])
                self.sock.sendto(b"\x02" + tok + b"\x05" + self.eui + b'{"txpk_ack":{"error":"NONE"}}', self.server)
            else:
                self.acks.append((ident, tok))

    def downlinks(self) -> list[bytes]:
        return [base64.b64decode(t["data"]) for t in self.txpk]

    def close(self) -> None:
        self.sock.close()


class Subscriber:
    """Collects every message under a topic filter (QoS 1, persistent session so a broker restart loses
    nothing that was queued for it)."""

    def __init__(self, port: int, topic: str = "gasguard/#", client_id: str | None = None, clean: bool = True,
                 username: str | None = None, password: str | None = None):
        self.messages: list[tuple[str, dict, bool]] = []
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"sub-{os.getpid()}-{id(self)}",
                             clean_session=clean)
        if username:
            self.c.username_pw_set(username, password)
        self.c.on_connect = lambda c, u, fl, rc, p: c.subscribe(topic, qos=1)
        self.c.on_message = self._msg
        self.c.reconnect_delay_set(1, 1)
        self.subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not self.subscribed.wait(5):
            raise TimeoutError("subscriber: no SUBACK in 5 s")

    def _msg(self, c, u, m) -> None:
        try:
            doc = json.loads(m.payload) if m.payload else {}
        except ValueError:
            doc = {"_raw": m.payload.decode(errors="replace")}
        with self.cond:
            self.messages.append((m.topic, doc, m.retain))
            self.cond.notify_all()

    def wait(self, pred, timeout: float = 10.0) -> list:
        """Block until pred(messages) is truthy; returns it. Raises with what arrived on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                r = pred(self.messages)
                if r:
                    return r
                left = deadline - time.monotonic()
                if left <= 0:
                    topics = sorted({t for t, _, _ in self.messages})
                    raise TimeoutError(f"condition not met in {timeout} s; got {len(self.messages)} messages on {topics}")
                self.cond.wait(left)

    def on(self, suffix: str) -> list[dict]:
        with self.lock:
            return [d for t, d, _ in self.messages if t.endswith(suffix)]

    def reading_ids(self) -> set[str]:
        with self.lock:
            return {r["id"] for t, d, _ in self.messages if t.endswith("/reading") for r in d.get("readings", [])}

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def write_config(path: Path, *, registry: Path, spool: Path, mqtt_port: int, serial: list[str] = (),
                 udp: str | None = None, extra: str = "", gateway_id: str = "gw1", district: str = "d1",
                 mqtt_extra: str = "") -> Path:
    lines = [f'[gateway]\nid = "{gateway_id}"\ndistrict = "{district}"\nregistry = "{registry}"\nspool = "{spool}"\n'
             'log_level = "INFO"\n']
    for p in serial:
        lines.append(f'[[serial]]\nport = "{p}"\n')
    if udp:
        lines.append(f'[udp]\nbind = "{udp}"\n')
    lines.append(f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\nreconnect_min = 1\nreconnect_max = 2\n{mqtt_extra}')
    lines.append(extra)
    path.write_text("\n".join(lines))
    return path


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
