"""Semtech UDP packet-forwarder protocol v2 (PUSH_DATA/PUSH_ACK/PULL_DATA/PULL_ACK/PULL_RESP/TX_ACK),
so a multi-channel LoRa concentrator feeds the gateway and carries downlinks.

Reference: Semtech packet_forwarder PROTOCOL.TXT; the format is protocol/semtech.py. Frames travel raw (no COBS/CRC: the LoRa PHY has a CRC,
SPEC 6); rxpk with a failed PHY CRC (stat != 1) are counted as noise.
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


class SemtechUDP(asyncio.DatagramProtocol):
    def __init__(self, deliver_nowait, metrics, burst):
        self.deliver_nowait: DeliverNowait = deliver_nowait   # ingest's: a datagram cannot wait
        self.metrics, self.burst = metrics, burst
        self.transport: asyncio.DatagramTransport | None = None
        self.pull_addr: dict[str, tuple] = {}  # forwarder EUI -> address its PULL_DATA came from
        self.tx_errors: dict[str, int] = {}
        self.name = "udp"

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < semtech.HEADER_LEN or data[0] not in semtech.VERSIONS:
            self.burst.event("udp_junk", "udp: ignoring a datagram from %s that is not Semtech v1/v2", addr)
            return
        ident = data[3]
        body = semtech.HEADER_LEN + semtech.EUI_LEN
        if ident in semtech.WITH_EUI and len(data) < body:
            self.burst.event("udp_short", "udp: short %d datagram from %s", ident, addr)
            return
        eui = data[semtech.HEADER_LEN:body].hex()
        if ident == PUSH_DATA:
            self.transport.sendto(semtech.ack(data, PUSH_ACK), addr)
            try:
                doc = json.loads(data[body:] or b"{}")
            except ValueError:
                self.burst.event("udp_json", "udp: PUSH_DATA from %s (%s) is not JSON", eui, addr)
                return
            for pk in doc.get("rxpk") or []:
                self._rxpk(eui, pk)
        elif ident == PULL_DATA:
            if self.pull_addr.get(eui) != addr:
                log.info("udp: forwarder %s pulls from %s (downlinks go there)", eui, addr)
            self.pull_addr[eui] = addr
            self.transport.sendto(semtech.ack(data, PULL_ACK), addr)
        elif ident == TX_ACK:
            err = "NONE"
            if len(data) > body:
                try:
                    err = (json.loads(data[body:]).get("txpk_ack") or {}).get("error", "NONE")
                except ValueError:
                    err = "BAD_JSON"
            if err != "NONE":
                self.tx_errors[err] = self.tx_errors.get(err, 0) + 1
                self.burst.event("tx_" + err, "udp: forwarder %s could not send a downlink: %s", eui, err)

    def _rxpk(self, eui: str, pk: dict) -> None:
        rx = {"transport": "udp", "gw": eui, "rssi": pk.get("rssi"), "snr": pk.get("lsnr"),
              "freq": pk.get("freq"), "datr": pk.get("datr")}
        if pk.get("stat", 1) != 1:
            self.deliver_nowait(None, rx, "crc")
            return
        try:
            raw = base64.b64decode(pk.get("data", ""), validate=True)
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


async def listen(bind: str, deliver_nowait, metrics, burst):
    host, _, port = bind.rpartition(":")
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: SemtechUDP(deliver_nowait, metrics, burst), local_addr=(host, int(port)))
    log.info("udp packet-forwarder listener on %s", bind)
    return transport, proto
