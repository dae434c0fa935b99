"""The far ends of the gateway's links, as real as a test can have them: a serial cable made of a pty (that
can be unplugged), and a Semtech UDP packet forwarder on loopback."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
import tty
from pathlib import Path

from gasguard.protocol import framing, semtech


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

    def __init__(self, server: tuple[str, int], eui: bytes = b"\xaa\x55\x5a\x00\x00\x00\x00\x01",
                 host: str = "127.0.0.1"):
        self.server, self.eui = server, eui
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))      # another loopback address (127.0.0.2) is another host to the gateway
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
        self.sock.sendto(semtech.push_data(int.from_bytes(tok, "big"), self.eui, {"rxpk": [pk]}), self.server)
        return tok

    def pull(self) -> bytes:
        tok = self._tok()
        self.sock.sendto(semtech.pull_data(int.from_bytes(tok, "big"), self.eui), self.server)
        return tok

    def poll(self, seconds: float = 0.2) -> None:
        """Read what the gateway sent: acks, and PULL_RESP (answered with a TX_ACK like a real forwarder)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data, _ = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            ident, token, _eui, obj = semtech.parse(data)
            if ident == semtech.PULL_RESP:
                self.txpk.append(obj["txpk"])
                self.sock.sendto(semtech.tx_ack(token, self.eui), self.server)
            else:
                self.acks.append((ident, token.to_bytes(2, "big")))

    def downlinks(self) -> list[bytes]:
        return [base64.b64decode(t["data"]) for t in self.txpk]

    def close(self) -> None:
        self.sock.close()
