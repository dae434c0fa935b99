"""How the fleet's frames reach a gateway. Transports only move bytes; nodes sign, the fleet schedules.

Every transport has `send(batch)` (batch = [(frame bytes, SimNode)]), `receive()` (downlink frames that
arrived, never blocking), `close()`, `has_downlink` and `stats` (a dict of counters).

- PtyTransport: a real pseudo-terminal. The fleet writes `framing.wrap(frame)` to the master, many nodes
  multiplexed on one line like a LoRa modem in transparent mode; the gateway opens the slave
  (`transport.port`) with pyserial. Downlinks written by the gateway are deframed from the master.
- UdpTransport: the Semtech UDP packet forwarder towards a gateway on loopback.
- NullTransport: counts frames and bytes (benchmarks); CallbackTransport hands each frame to a function
  in-process (tests, demo glue) and takes its downlinks back.
"""

import ipaddress
import os
import select
import socket
import threading
import time
import tty

from gasguard.protocol import framing, semtech



def wrap(frame):
    """framing.wrap() for CPython at simulator rates: the same bytes, COBS done with bytes.split.

    Valid while frame + CRC is under 254 bytes (every v1 frame is under 30); longer input falls back to
    framing.wrap. tests/test_fleet_transports.py checks both give identical bytes.
    """
    c = framing.crc16(frame)
    data = bytes(frame) + bytes((c >> 8, c & 0xFF))
    if len(data) >= 254:
        return framing.wrap(frame)
    return b"\x00" + b"".join([bytes((len(s) + 1,)) + s for s in data.split(b"\x00")]) + b"\x00"


class TransportError(Exception):
    """A transport that cannot be opened or used; the message says what to do."""


class NullTransport:
    has_downlink = False

    def __init__(self, wrap=False):
        self.wrap = wrap
        self.stats = {"frames": 0, "bytes": 0}

    def send(self, batch):
        n = 0
        for raw, _node in batch:
            n += len(wrap(raw)) if self.wrap else len(raw)
        self.stats["frames"] += len(batch)
        self.stats["bytes"] += n

    def receive(self):
        return []

    def close(self):
        pass


class CallbackTransport:
    """In-process link: `deliver(raw, node)` gets every frame and may return downlink frames (bytes)."""
    has_downlink = True

    def __init__(self, deliver):
        self.deliver = deliver
        self.inbox = []
        self.stats = {"frames": 0, "downlinks": 0}

    def send(self, batch):
        for raw, node in batch:
            self.stats["frames"] += 1
            self.inbox.extend(self.deliver(raw, node) or ())

    def receive(self):
        out, self.inbox = self.inbox, []
        self.stats["downlinks"] += len(out)
        return out

    def close(self):
        pass


class PtyTransport:
    """One pty carrying every node's frames. `port` is the slave device for the gateway to open.

    `link` (optional) is a path made a symlink to the slave, so a gateway can be configured with a fixed
    name. Writes wait at most `write_timeout` s; while nobody reads the line (the pty buffer is full),
    frames are dropped and counted (`tx_dropped`) instead of stalling the simulation.
    """
    has_downlink = True

    def __init__(self, link=None, write_timeout=0.5):
        self.master, self.slave = os.openpty()
        # raw at once: no echo of our bytes back to us, no CR/LF translation of binary frames
        tty.setraw(self.slave)
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self.slave)
        self.link = None
        if link:
            try:
                if os.path.islink(link):
                    os.unlink(link)
                os.symlink(self.port, link)
            except OSError as e:
                self.close()
                raise TransportError(f"cannot make {link} point to {self.port} ({e}): choose another --target "
                                     "path or remove the file") from None
            self.link = link
        self.write_timeout = write_timeout
        self.lock = threading.Lock()        # the fleet and inject() may write from different threads
        self.deframer = framing.Deframer()
        self.stalled = False
        self.stats = {"frames": 0, "bytes": 0, "tx_dropped": 0, "downlinks": 0, "rx_noise": 0, "rx_text": 0}

    def inject(self, data):
        """Write raw bytes onto the same line (mixed benches: a virtual board's UART output, line noise).
        Returns how many bytes went out (the rest was dropped: nobody is reading)."""
        with self.lock:
            return self._write(bytes(data))

    def _write(self, data):
        view = memoryview(data)
        deadline = time.monotonic() + (0 if self.stalled else self.write_timeout)
        while view:
            try:
                n = os.write(self.master, view)
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [self.master], [], left)[1]:
                self.stalled = True
                return len(data) - len(view)
        self.stalled = False
        return len(data)

    def send(self, batch):
        frames = [wrap(raw) for raw, _node in batch]
        data = b"".join(frames)
        with self.lock:
            sent = self._write(data)
        # count whole frames that made it; a partial one is line noise to the reader (CRC catches it)
        done, acc = 0, 0
        for fr in frames:
            if acc + len(fr) > sent:
                break
            acc += len(fr)
            done += 1
        self.stats["frames"] += done
        self.stats["bytes"] += sent
        self.stats["tx_dropped"] += len(frames) - done

    def receive(self):
        out = []
        while True:
            try:
                data = os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            for kind, payload in self.deframer.feed(data):
                if kind == framing.FRAME:
                    out.append(payload)
                elif kind == framing.TEXT:
                    self.stats["rx_text"] += 1
                else:
                    self.stats["rx_noise"] += 1
        self.stats["downlinks"] += len(out)
        return out

    def close(self):
        for fd in (getattr(self, "master", None), getattr(self, "slave", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.master = self.slave = None
        if self.link and os.path.islink(self.link):
            os.unlink(self.link)


def parse_target(target, default_port=1700):
    """'host:port' or 'port' -> (host, port); loopback only (the simulator never sends off this machine)."""
    host, _, port = str(target).rpartition(":")
    host = host or "127.0.0.1"
    try:
        port = int(port or default_port)
        addr = ipaddress.ip_address(socket.gethostbyname(host))
    except (ValueError, OSError):
        raise TransportError(f"target {target!r}: give HOST:PORT, e.g. 127.0.0.1:1700") from None
    if not addr.is_loopback or not (0 < port < 65536):
        raise TransportError(f"target {target!r}: the simulator sends to a loopback address only "
                             "(127.0.0.1:PORT)")
    return str(addr), port


class UdpTransport:
    """The fleet as a Semtech UDP packet forwarder (protocol v2) talking to a gateway on loopback.

    Like lora_pkt_fwd: an "up" socket sends PUSH_DATA (up to 8 rxpk each, plus a periodic stat) and gets
    PUSH_ACK; a "down" socket sends PULL_DATA every `keepalive_s`, gets PULL_ACK and PULL_RESP (downlink
    txpk) and answers each PULL_RESP with TX_ACK. Datagrams that fail to parse are counted, not fatal.
    """
    has_downlink = True

    def __init__(self, target, port_down=None, eui=b"\xaa\x55\x5a\x00\x00\x00\x00\x01", keepalive_s=5.0,
                 stat_s=30.0):
        host, port = parse_target(target)
        if len(eui) != 8:
            raise TransportError("a gateway EUI is 8 bytes")
        self.eui = bytes(eui)
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.down = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (self.up, self.down):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        self.up.connect((host, port))
        self.down.connect((host, port_down or port))
        self.keepalive_s = keepalive_s
        self.stat_s = stat_s
        self.lock = threading.Lock()        # send() may be called from the fleet and a mixed bench
        self.token = int.from_bytes(os.urandom(2), "big")
        self.unacked_push = {}        # token -> send time
        self.tmst0 = time.monotonic()
        self.next_pull = 0.0
        self.next_stat = time.monotonic() + stat_s
        self.stats = {"frames": 0, "bytes": 0, "push_data": 0, "push_ack": 0, "pull_data": 0, "pull_ack": 0,
                      "pull_resp": 0, "tx_ack": 0, "downlinks": 0, "bad_datagrams": 0, "send_errors": 0,
                      "rxnb": 0, "dwnb": 0}
        self._keepalive()

    def _tok(self):
        self.token = (self.token + 1) & 0xFFFF
        return self.token

    def _send(self, sock, data):
        try:
            sock.send(data)
            return True
        except OSError:           # nobody listening yet (ICMP refused) or buffer full: counted
            self.stats["send_errors"] += 1
            return False

    def _keepalive(self):
        now = time.monotonic()
        if now >= self.next_pull:
            self.next_pull = now + self.keepalive_s
            if self._send(self.down, semtech.pull_data(self._tok(), self.eui)):
                self.stats["pull_data"] += 1
        if now >= self.next_stat:
            self.next_stat = now + self.stat_s
            st = {"time": time.strftime("%Y-%m-%d %H:%M:%S GMT", time.gmtime()), "rxnb": self.stats["rxnb"],
                  "rxok": self.stats["rxnb"], "rxfw": self.stats["rxnb"],
                  "ackr": round(100.0 * self.stats["push_ack"] / max(1, self.stats["push_data"]), 1),
                  "dwnb": self.stats["dwnb"], "txnb": self.stats["tx_ack"]}
            self.stats["rxnb"] = self.stats["dwnb"] = 0
            self._push({"stat": st})

    def _push(self, obj):
        tok = self._tok()
        if self._send(self.up, semtech.push_data(tok, self.eui, obj)):
            self.stats["push_data"] += 1
            if len(self.unacked_push) < 1024:     # bounded: the oldest are forgotten, counted as unacked
                self.unacked_push[tok] = time.monotonic()
            return True
        return False

    def send(self, batch):
        """Forward frames as received packets. `batch` items are (frame, node); only node.radio is read,
        so a mixed bench can pass any object with a `radio` (fleet_node.Radio) for a virtual board."""
        with self.lock:
            self._send_batch(batch)

    def _send_batch(self, batch):
        now = time.time()
        for i in range(0, len(batch), semtech.MAX_RXPK):
            part = batch[i:i + semtech.MAX_RXPK]
            tmst = int((time.monotonic() - self.tmst0) * 1e6)
            pk = [semtech.rxpk(raw, node.radio, tmst + j * 1000, now) for j, (raw, node) in enumerate(part)]
            if self._push({"rxpk": pk}):
                self.stats["frames"] += len(part)
                self.stats["rxnb"] += len(part)
                self.stats["bytes"] += sum(len(r) for r, _ in part)

    def receive(self):
        self._keepalive()
        out = []
        for sock in (self.up, self.down):
            for _ in range(4096):             # bounded per call
                try:
                    data = sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    self.stats["send_errors"] += 1
                    break
                try:
                    ident, token, _eui, obj = semtech.parse(data)
                except semtech.SemtechError:
                    self.stats["bad_datagrams"] += 1
                    continue
                if ident == semtech.PUSH_ACK:
                    self.stats["push_ack"] += 1
                    self.unacked_push.pop(token, None)
                elif ident == semtech.PULL_ACK:
                    self.stats["pull_ack"] += 1
                elif ident == semtech.PULL_RESP:
                    self.stats["pull_resp"] += 1
                    try:
                        raw = semtech.txpk_data(obj)
                    except semtech.SemtechError:
                        # lora_pkt_fwd logs "invalid JSON, TX aborted" and sends no TX_ACK
                        self.stats["bad_datagrams"] += 1
                        continue
                    if self._send(self.down, semtech.tx_ack(token, self.eui)):
                        self.stats["tx_ack"] += 1
                    self.stats["dwnb"] += 1
                    out.append(raw)
                else:
                    self.stats["bad_datagrams"] += 1
        self.stats["downlinks"] += len(out)
        return out

    def close(self):
        self.stats["push_unacked"] = len(self.unacked_push)
        self.up.close()
        self.down.close()


class OverlapTransport:
    """Several gateways hearing one fleet (issue 8 scale-out): each node has a home transport, and a share
    `overlap` of the nodes is also heard by the next one, as a node between two substations is.

    Which nodes overlap depends only on the device id, so runs are repeatable. Downlinks from every
    transport come back to the fleet (a node takes an ack from whichever gateway sends it first; the copy
    from the other gateway is then a replay or a stale ack, as on air).
    """

    def __init__(self, transports, overlap=0.0):
        if len(transports) < 2:
            raise TransportError("overlap needs at least two transports")
        if not 0.0 <= overlap <= 1.0:
            raise TransportError("overlap is a share of the nodes, 0.0 to 1.0")
        self.transports = list(transports)
        self.overlap = overlap
        self.has_downlink = any(t.has_downlink for t in transports)
        self.heard_twice = 0

    def route(self, dev):
        """Indexes of the transports that hear `dev`: its home, and the next one for the overlapping share."""
        h = (dev * 2654435761) & 0xFFFFFFFF            # Knuth multiplicative hash: spreads sequential ids
        home = h % len(self.transports)
        if (h >> 8) % 10_000 < self.overlap * 10_000:
            return (home, (home + 1) % len(self.transports))
        return (home,)

    def send(self, batch):
        parts = [[] for _ in self.transports]
        for item in batch:
            r = self.route(item[1].dev)
            if len(r) > 1:
                self.heard_twice += 1
            for i in r:
                parts[i].append(item)
        for t, part in zip(self.transports, parts):
            if part:
                t.send(part)

    def receive(self):
        out = []
        for t in self.transports:
            if t.has_downlink:
                out.extend(t.receive())
        return out

    @property
    def stats(self):
        d = {"heard_twice": self.heard_twice}
        for i, t in enumerate(self.transports):
            d.update({f"{i}.{k}": v for k, v in t.stats.items()})
        return d

    def close(self):
        for t in self.transports:
            t.close()
