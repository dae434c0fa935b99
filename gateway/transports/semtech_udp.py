"""Semtech UDP packet-forwarder protocol v2 (PUSH_DATA/PUSH_ACK/PULL_DATA/PULL_ACK/PULL_RESP/TX_ACK),
so a multi-channel LoRa concentrator feeds the gateway and carries downlinks.

Reference: Semtech packet_forwarder PROTOCOL.TXT; the format is protocol/semtech.py. Frames travel raw (no
COBS/CRC: the LoRa PHY has a CRC, SPEC 6); rxpk with a failed PHY CRC (stat != 1) are counted as noise.
Anything else malformed is a counted refusal (`udp_*`), never a traceback (issue 12 item 6).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import sys
import time
from collections import deque
from pathlib import Path

import orjson

from gasguard.protocol import semtech
from gasguard.protocol.semtech import PULL_ACK, PULL_DATA, PUSH_ACK, PUSH_DATA, TX_ACK
from gasguard.gateway.transports import DeliverNowait
from gasguard.gateway.transports.procnet import udp_socket_stats

log = logging.getLogger("gasguard.gateway.udp")

# rxpk fields the gateway reads, with the JSON types PROTOCOL.TXT gives them (bool is refused separately)
RXPK_TYPES = {"data": str, "stat": int, "rssi": (int, float), "lsnr": (int, float), "freq": (int, float),
              "datr": (str, int)}    # datr: "SF11BW125" for LoRa, bits/s for FSK
# txpk_ack "error" values of PROTOCOL.TXT (v2); anything else is logged as OTHER
# A readiness callback reads until the socket is empty, READ_MAX datagrams or READ_BUDGET s, whichever comes
# first: the loop's other work (an ingest group, an alarm ahead of the queue, the ticker) waits for it, and a
# datagram takes 46 µs to handle with 1 rxpk, 232 µs with 8 (SemtechUDP.datagram_received with its PUSH_ACK, on
# the loaded 2-core bench machine), so the time bound is the one that binds at 8 rxpk. Each datagram is read
# into a buffer of RECV_MAX (a UDP payload is at most 65,507 bytes over IPv4)
READ_MAX = 256
READ_BUDGET = 0.004       # s: an ingest group's (ingest.GROUP_BUDGET)
RECV_MAX = 65_536
RCVBUF = 4 << 20          # udp.rcvbuf_kb's default: SO_RCVBUF asked for (the kernel caps it at net.core.rmem_max)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)   # Linux's number; Python 3.11's socket module lacks the name
UNSENT_MAX = 1024         # downlink datagrams waiting for a full send buffer
TX_ERRORS = {"NONE", "TOO_LATE", "TOO_EARLY", "COLLISION_PACKET", "COLLISION_BEACON", "TX_FREQ", "TX_POWER",
             "GPS_UNLOCKED", "BAD_JSON"}


class SemtechUDP(asyncio.DatagramProtocol):
    def __init__(self, deliver_nowait, metrics, burst, allow: dict[str, str] | None = None):
        self.deliver_nowait: DeliverNowait = deliver_nowait   # ingest's: a datagram cannot wait
        self.metrics, self.burst = metrics, burst
        self.transport: asyncio.DatagramTransport | None = None
        self.pull_addr: dict[str, tuple] = {}  # forwarder EUI -> address its PULL_DATA came from
        # forwarder EUI -> the one host it may speak from: the [udp] forwarders allow-list when configured,
        # else the host it first spoke from (pinned). A datagram with a known EUI from another host is
        # refused: it would otherwise take over the downlink route and receive the alarm acks. The port is
        # not pinned: a packet forwarder pushes and pulls from two sockets, and a restart changes both.
        self.allow = {k.lower(): v for k, v in (allow or {}).items()}
        self.home: dict[str, str] = dict(self.allow)
        self.tx_errors: dict[str, int] = {}
        self.name = "udp"

    def connection_made(self, transport):
        self.transport = transport

    def error_received(self, exc: OSError) -> None:
        self.burst.event("udp:error", "udp: socket error %s", exc, level=logging.ERROR)

    def _refuse(self, reason: str, addr, msg: str, *args) -> None:
        """A datagram (or one packet in it) refused: counted by reason, logged once per burst."""
        self.metrics.rejected.labels(reason).inc()
        self.burst.event("udp:" + reason, "udp: refused a datagram from %s (%s): " + msg, addr, reason, *args)

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            self._datagram(data, addr)
        except Exception as e:  # noqa: BLE001 - the last line: a defect is counted, one traceback per burst
            self.metrics.rejected.labels("udp_internal").inc()
            self.burst.exception("udp:internal:" + type(e).__name__, "udp: handling a datagram from %s failed", addr)

    def _datagram(self, data: bytes, addr) -> None:
        if len(data) < semtech.HEADER_LEN or data[0] not in semtech.VERSIONS:
            self._refuse("udp_junk", addr, "not Semtech v1/v2")
            return
        ident = data[3]
        if ident not in semtech.WITH_EUI:
            self._refuse("udp_junk", addr, "identifier %d is not one a forwarder sends", ident)
            return
        body = semtech.HEADER_LEN + semtech.EUI_LEN
        if len(data) < body:
            self._refuse("udp_short", addr, "%d bytes", len(data))
            return
        eui = data[semtech.HEADER_LEN:body].hex()
        home = self.home.get(eui)
        if home is None and self.allow:
            self._refuse("udp_unknown_forwarder", addr, "EUI %s is not in [udp] forwarders", eui)
            return
        if home is not None and home != addr[0]:
            self._refuse("udp_foreign_forwarder", addr, "EUI %s belongs to the forwarder at %s", eui, home)
            return
        if home is None:
            self.home[eui] = addr[0]
            log.info("udp: forwarder %s speaks from %s (pinned to that host)", eui, addr[0])
        if ident == PUSH_DATA:
            self.transport.sendto(semtech.ack(data, PUSH_ACK), addr)
            doc = self._json(data[body:] or b"{}", addr, "PUSH_DATA")
            if doc is None:
                return
            rxpk = doc.get("rxpk", [])
            if not isinstance(rxpk, list):
                self._refuse("udp_json", addr, "rxpk is %s, not a list", type(rxpk).__name__)
                return
            if len(rxpk) > semtech.MAX_RXPK:     # a bound: a forwarder sends at most this many per datagram
                self._refuse("udp_rxpk", addr, "%d packets in one PUSH_DATA (at most %d)", len(rxpk),
                             semtech.MAX_RXPK)
                return
            for pk in rxpk:
                self._rxpk(eui, pk, addr)
        elif ident == PULL_DATA:
            if self.pull_addr.get(eui) != addr:
                log.info("udp: forwarder %s pulls from %s (downlinks go there)", eui, addr)
            self.pull_addr[eui] = addr
            self.transport.sendto(semtech.ack(data, PULL_ACK), addr)
        else:   # TX_ACK
            err = "NONE"
            if len(data) > body:
                doc = self._json(data[body:], addr, "TX_ACK")
                if doc is None:
                    return                # refused and counted
                ack = doc.get("txpk_ack")
                err = ack.get("error", "NONE") if isinstance(ack, dict) else "BAD_JSON"
                if not isinstance(err, str) or err not in TX_ERRORS:
                    err = "OTHER"         # a forwarder's string never becomes a log key or line as it is
            if err != "NONE":
                self.tx_errors[err] = self.tx_errors.get(err, 0) + 1
                self.burst.event("tx_" + err, "udp: forwarder %s could not send a downlink: %s", eui, err)

    def _json(self, body: bytes, addr, what: str) -> dict | None:
        # orjson, not json: json's C parser takes one level of the interpreter's recursion budget per level of
        # nesting, so a datagram of "[[[[..." ran it to the limit, and a collection that fell there ran finalizers
        # with no budget left (an unraisable RecursionError, seen once in CI). orjson stops at 1,024 levels on its
        # own, with a JSONDecodeError (a ValueError), and leaves the budget alone.
        try:
            doc = orjson.loads(body)
        except ValueError:
            self._refuse("udp_json", addr, "%s is not JSON", what)
            return None
        if not isinstance(doc, dict):
            self._refuse("udp_json", addr, "%s is a JSON %s, not an object", what, type(doc).__name__)
            return None
        return doc

    def _rxpk(self, eui: str, pk, addr) -> None:
        if not isinstance(pk, dict):
            self._refuse("udp_rxpk", addr, "an rxpk entry is %s, not an object", type(pk).__name__)
            return
        bad = [k for k, types in RXPK_TYPES.items() if k in pk and (not isinstance(pk[k], types)
                                                                    or isinstance(pk[k], bool))]
        if bad or "data" not in pk:
            self._refuse("udp_rxpk", addr, "rxpk fields of the wrong type or missing: %s", ", ".join(bad) or "data")
            return
        rx = {"transport": "udp", "gw": eui, "rssi": pk.get("rssi"), "snr": pk.get("lsnr"),
              "freq": pk.get("freq"), "datr": pk.get("datr")}
        if pk.get("stat", 1) != 1:
            self.deliver_nowait(None, rx, "crc")
            return
        try:
            raw = base64.b64decode(pk["data"], validate=True)
        except (ValueError, TypeError):
            self.deliver_nowait(None, rx, "base64")
            return
        self.deliver_nowait(raw, rx, self)

    def send(self, frame: bytes, rx: dict | None = None) -> bool:
        """PULL_RESP to the forwarder the device was last heard through, sent immediately (class C-like)."""
        eui = (rx or {}).get("gw")
        addr = self.pull_addr.get(eui) if eui else None
        if addr is None or self.transport is None:
            return False
        txpk = semtech.txpk(frame, freq=(rx or {}).get("freq") or semtech.CN470_UP_MHZ,
                            datr=(rx or {}).get("datr") or "SF11BW125")
        self.transport.sendto(semtech.pull_resp(int.from_bytes(os.urandom(2), "big"), txpk), addr)
        return True


class DatagramReader:
    """The listener's socket, read in bursts: until it is empty, READ_MAX datagrams or READ_BUDGET s per readiness
    callback, not one datagram. asyncio's datagram transport (CPython 3.11 `_SelectorDatagramTransport._read_ready`)
    reads one datagram per turn of the event loop, and each turn while frames wait also runs one ingest group
    (its commit and fsync): groups of one frame, the rest dropped by the kernel once the receive buffer (~166
    datagrams at the default 208 KiB) was full - 473 and 501 of the 10,000 frames offered in 2 s at 5,000/s
    accepted (`gasguard bench udp`), no loss counted anywhere (BENCHMARKS.md, issue 17). Read in bursts, the datagrams of a turn reach the verification
    queue together and the next group takes them all.

    Datagrams the kernel drops (the receive buffer full) are counted (`metrics.udp_kernel_drops`, and a log line
    per burst) from two views of the one kernel counter, the socket's sk_drops: SO_RXQ_OVFL, which each datagram
    read carries as it was when the datagram was queued (up to date with the first datagram read after a loss),
    and the socket's `drops` in /proc/net/udp{,6}, read on the daemon's tick (`poll_drops`), so a flood that
    stopped is counted in the quiet after it too, within a tick. One high-water mark (`drops`): whichever view
    sees an increase first counts it, the other then sees nothing new. Where /proc is unreadable (not Linux, a
    hardened mount) only SO_RXQ_OVFL counts, and the log says so once.

    Otherwise what asyncio's transport is to the protocol: `sendto` (sent at once; queued behind a full send
    buffer and written when the socket is writable), `get_extra_info`, `close`."""

    def __init__(self, loop, sock: socket.socket, protocol: "SemtechUDP", metrics, burst):
        self.loop, self.sock, self.protocol = loop, sock, protocol
        self.metrics, self.burst = metrics, burst
        self.read_max, self.budget = READ_MAX, READ_BUDGET
        self.drops = 0                  # the kernel's drop count last seen (SO_RXQ_OVFL or /proc: the same counter)
        self.inode = os.fstat(sock.fileno()).st_ino     # the socket's row in /proc/net/udp{,6}
        self.proc_drops = True          # False once /proc did not show the socket (logged then, once)
        self.unsent: deque = deque()    # (datagram, address) behind a full send buffer
        self.closed = False
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            self.anc = socket.CMSG_SPACE(4)
        except OSError:                 # not Linux: read without the drop count
            self.anc = 0
            log.warning("udp: this kernel does not report the socket's dropped datagrams (SO_RXQ_OVFL): a full "
                        "receive buffer loses datagrams uncounted")
        loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        recvmsg, received, anc = self.sock.recvmsg, self.protocol.datagram_received, self.anc
        clock = time.perf_counter
        until = clock() + self.budget
        for _ in range(self.read_max):       # bounded: the loop's other work (ingest, the ticker) gets its turn
            try:
                data, ancdata, _flags, addr = recvmsg(RECV_MAX, anc)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.protocol.error_received(e)
                return
            if ancdata:
                self._dropped(ancdata)
            received(data, addr)
            if self.closed or clock() >= until:
                return

    def _dropped(self, ancdata) -> None:
        for level, kind, value in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                self._count_drops(int.from_bytes(value[:4], sys.byteorder))

    def poll_drops(self) -> None:
        """The socket's `drops` from /proc/net/udp{,6} (the daemon's ticker calls this): drops of a flood after
        which no datagram came, which SO_RXQ_OVFL would only report with the next one. Both are the socket's one
        drop counter (sk_drops): the kernel stamps a datagram's SO_RXQ_OVFL value from it when it queues the
        datagram, and /proc/net/udp prints it. Checked on Linux 6.18: 300 datagrams into a 4 KiB buffer, /proc's
        drops 294 and the next datagram read carries SO_RXQ_OVFL 294; another 300, 588 and 588."""
        if self.closed or not self.proc_drops:
            return
        stats = udp_socket_stats(inode=self.inode)
        if stats is None:
            self.proc_drops = False
            log.warning("udp: /proc/net/udp does not show the listener's socket (not Linux, or not readable "
                        "here): datagrams the kernel drops are counted only when a later datagram is read "
                        "(SO_RXQ_OVFL), not in the quiet after a flood")
            return
        self._count_drops(stats[1])

    def _count_drops(self, total: int) -> None:
        """`total`: the socket's sk_drops as SO_RXQ_OVFL or /proc show it; what it adds is counted once."""
        if total > self.drops:
            n, self.drops = total - self.drops, total
            self.metrics.udp_kernel_drops.inc(n)
            self.burst.event("udp:kernel_drops", "udp: the kernel dropped %d datagrams (%d since start): the "
                             "socket's receive buffer was full - the gateway is saturated, or raise "
                             "udp.rcvbuf_kb (and net.core.rmem_max)", n, total, level=logging.ERROR)

    def sendto(self, data: bytes, addr) -> None:
        if self.closed:
            return
        if not self.unsent:
            try:
                self.sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.sock.fileno(), self._write_ready)
            except OSError as e:
                self.protocol.error_received(e)
                return
        if len(self.unsent) >= UNSENT_MAX:
            self.burst.event("udp:unsent", "udp: %d datagrams wait for the send buffer; one more dropped",
                             len(self.unsent), level=logging.ERROR)
            return
        self.unsent.append((data, addr))

    def _write_ready(self) -> None:
        while self.unsent:
            data, addr = self.unsent[0]
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.protocol.error_received(e)
            self.unsent.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def get_extra_info(self, name: str, default=None):
        if name == "socket":
            return self.sock
        if name == "sockname":
            return self.sock.getsockname()
        return default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        if self.unsent:
            self.loop.remove_writer(self.sock.fileno())
        self.sock.close()
        self.protocol.connection_lost(None)


def receive_buffer(sock: socket.socket, want: int) -> int:
    """SO_RCVBUF asked for `want` bytes; what the kernel gave (it doubles the request for its bookkeeping and
    caps it at net.core.rmem_max): a capped request is logged with the cap and how to raise it."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if got < (2 * want if sys.platform.startswith("linux") else want):
        try:
            cap = Path("/proc/sys/net/core/rmem_max").read_text().strip()
        except OSError:
            cap = "unknown"
        log.warning("udp: receive buffer of %d KiB asked (udp.rcvbuf_kb), the kernel capped it (SO_RCVBUF reads %d "
                    "KiB): net.core.rmem_max is %s bytes; raise it (sysctl -w net.core.rmem_max=%d) or a burst "
                    "overflows sooner", want // 1024, got // 1024, cap, want)
    return got


async def listen(bind: str, deliver_nowait, metrics, burst, allow: dict[str, str] | None = None,
                 rcvbuf: int = RCVBUF):
    host, _, port = bind.rpartition(":")
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned no address")
    err = None
    for family, kind, proto_, _, addr in infos:   # the first address that binds, as create_datagram_endpoint
        sock = socket.socket(family, kind, proto_)
        try:
            sock.setblocking(False)
            sock.bind(addr)
            break
        except OSError as e:
            sock.close()
            err = e
    else:
        raise err
    got = receive_buffer(sock, rcvbuf)
    proto = SemtechUDP(deliver_nowait, metrics, burst, allow)
    transport = DatagramReader(loop, sock, proto, metrics, burst)
    proto.connection_made(transport)
    log.info("udp packet-forwarder listener on %s (receive buffer %d KiB)", bind, got // 1024)
    return transport, proto
