"""Semtech UDP packet-forwarder protocol v2 (PUSH_DATA/PUSH_ACK/PULL_DATA/PULL_ACK/PULL_RESP/TX_ACK),
so a multi-channel LoRa concentrator feeds the gateway and carries downlinks.

Reference: Semtech packet_forwarder PROTOCOL.TXT; the format is protocol/semtech.py. Frames travel raw (no
COBS/CRC: the LoRa PHY has a CRC, SPEC 6); rxpk with a failed PHY CRC (stat != 1) are counted as noise.
Anything else malformed is a counted refusal (`udp_*`), never a traceback (issue 12 item 6).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os

from gasguard.protocol import semtech
from gasguard.protocol.semtech import PULL_ACK, PULL_DATA, PUSH_ACK, PUSH_DATA, TX_ACK
from gasguard.gateway.transports import DeliverNowait

log = logging.getLogger("gasguard.gateway.udp")

# rxpk fields the gateway reads, with the JSON types PROTOCOL.TXT gives them (bool is refused separately)
RXPK_TYPES = {"data": str, "stat": int, "rssi": (int, float), "lsnr": (int, float), "freq": (int, float),
              "datr": (str, int)}    # datr: "SF11BW125" for LoRa, bits/s for FSK
# txpk_ack "error" values of PROTOCOL.TXT (v2); anything else is logged as OTHER
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
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):     # RecursionError: "[[[[..." nested past the parser's depth
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


async def listen(bind: str, deliver_nowait, metrics, burst, allow: dict[str, str] | None = None):
    host, _, port = bind.rpartition(":")
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: SemtechUDP(deliver_nowait, metrics, burst, allow), local_addr=(host, int(port)))
    log.info("udp packet-forwarder listener on %s", bind)
    return transport, proto
