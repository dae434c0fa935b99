"""The far ends of the gateway's links, as real as a test can have them: a serial cable made of a pty (that
can be unplugged), a Semtech UDP packet forwarder on loopback, and a TCP hop to the broker that can clog or cut
one MQTT connection while the others go on."""

from __future__ import annotations

import base64
import os
import socket
import struct
import threading
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


def _shut(*socks: socket.socket) -> None:
    """Both directions down: the thread blocked reading either socket wakes and ends."""
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def mqtt_client_id(connect: bytes) -> str | None:
    """The client id in the first bytes a client sends (an MQTT 3.1.1 / 5 CONNECT); None if it is not one."""
    if not connect or connect[0] != 0x10:
        return None
    i = 1
    while i < len(connect) and connect[i] & 0x80:      # remaining length (variable-length integer)
        i += 1
    i += 1
    if len(connect) < i + 2:
        return None
    i += 2 + int.from_bytes(connect[i:i + 2], "big")   # protocol name
    if len(connect) < i + 4:
        return None
    level = connect[i]
    i += 4                                             # level, flags, keepalive
    if level == 5:                                     # MQTT 5: properties (their length a variable integer)
        n, shift = 0, 0
        while i < len(connect):
            b = connect[i]
            n |= (b & 0x7F) << shift
            shift += 7
            i += 1
            if not b & 0x80:
                break
        i += n
    if len(connect) < i + 2:
        return None
    n = int.from_bytes(connect[i:i + 2], "big")
    return connect[i + 2:i + 2 + n].decode(errors="replace")


class TcpProxy:
    """A TCP hop between MQTT clients and their broker on loopback. Each connection is named by the client id
    of its CONNECT; `hold(client_id)` stops forwarding what that client sends (its connection and any new one:
    the broker reads nothing more, PUBACKs nothing, and the client's socket fills as on a clogged link) until
    `release(client_id)`; `cut(client_id)` closes its connections (the client sees the broker gone and
    reconnects through the proxy); `refuse(client_id)` closes every new connection of it at once, until
    `release`; `delay(client_id, s)` makes a slow broker of it: each new connection's first bytes (its
    CONNECT) reach the broker only `s` seconds after they came. Threads forward 64 KiB at a time; `close()`
    ends everything."""

    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.cond = threading.Condition()
        self.held: set[str] = set()
        self.refused: set[str] = set()
        self.delays: dict[str, float] = {}
        self.conns: list[tuple[str | None, socket.socket, socket.socket]] = []
        self.closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="proxy-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            first = client.recv(65536)
            cid = mqtt_client_id(first)
            if cid in self.refused or not first:
                client.close()
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        conn = (cid, client, upstream)
        with self.cond:
            self.conns.append(conn)
            pause = self.delays.get(cid, 0.0)
            if pause:       # a slow broker: the CONNECT waits (a close of the proxy ends the wait)
                self.cond.wait_for(lambda: self.closed, timeout=pause)
        threading.Thread(target=self._pump, args=(upstream, client, None, b""), name="proxy-down",
                         daemon=True).start()
        self._pump(client, upstream, conn, first)

    def _pump(self, src: socket.socket, dst: socket.socket, conn: tuple | None, data: bytes) -> None:
        """Forward src -> dst; the client's direction (conn given) waits while its client id is held, and
        what it held is dropped if the connection is cut meanwhile (the broker never sees it)."""
        try:
            while True:
                if conn is not None:
                    with self.cond:
                        self.cond.wait_for(lambda: conn[0] not in self.held or self.closed)
                        if conn not in self.conns:
                            return
                if data:
                    dst.sendall(data)
                if self.closed:
                    return
                data = src.recv(65536)
                if not data:
                    return
        except OSError:
            pass
        finally:
            _shut(src, dst)
            src.close()
            dst.close()

    def hold(self, client_id: str) -> None:
        with self.cond:
            self.held.add(client_id)

    def release(self, client_id: str) -> None:
        with self.cond:
            self.held.discard(client_id)
            self.refused.discard(client_id)
            self.cond.notify_all()

    def delay(self, client_id: str, seconds: float) -> None:
        with self.cond:
            self.delays[client_id] = seconds

    def refuse(self, client_id: str) -> None:
        with self.cond:
            self.refused.add(client_id)

    def cut(self, client_id: str) -> int:
        """Close the connections of `client_id` (a hold on it ends: a new connection goes through). Returns
        how many were open."""
        with self.cond:
            self.held.discard(client_id)
            victims = [c for c in self.conns if c[0] == client_id]
            self.conns = [c for c in self.conns if c[0] != client_id]
            self.cond.notify_all()
        for _cid, a, b in victims:
            _shut(a, b)
        return len(victims)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            conns, self.conns = self.conns, []
            self.cond.notify_all()
        self.listener.close()
        for _cid, a, b in conns:
            _shut(a, b)

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
