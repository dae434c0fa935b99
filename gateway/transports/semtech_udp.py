"""Semtech UDP packet-forwarder protocol v2 (PUSH_DATA/PUSH_ACK/PULL_DATA/PULL_ACK/PULL_RESP/TX_ACK),
so a multi-channel LoRa concentrator feeds the gateway and carries downlinks.

Reference: Semtech packet_forwarder PROTOCOL.TXT. Frames travel raw (no COBS/CRC: the LoRa PHY has a CRC,
SPEC 6); rxpk with a failed PHY CRC (stat != 1) are counted as noise.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os

log = logging.getLogger("gasguard.gateway.udp")

PUSH_DATA, PUSH_ACK, PULL_DATA, PULL_RESP, PULL_ACK, TX_ACK = 0, 1, 2, 3, 4, 5
VERSION = 2
MAX_DATAGRAM = 65507


class SemtechUDP(asyncio.DatagramProtocol):
    def __init__(self, deliver_nowait, metrics, burst):
        self.deliver_nowait = deliver_nowait   # (raw | None, rx, route_or_reason) -> None
        self.metrics, self.burst = metrics, burst
        self.transport: asyncio.DatagramTransport | None = None
        self.pull_addr: dict[str, tuple] = {}  # forwarder EUI -> address its PULL_DATA came from
        self.tx_errors: dict[str, int] = {}
        self.name = "udp"

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < 4 or data[0] not in (1, 2):
            self.burst.event("udp_junk", "udp: ignoring a datagram from %s that is not Semtech v1/v2", addr)
            return
        ver, token, ident = data[0], data[1:3], data[3]
        if ident in (PUSH_DATA, PULL_DATA, TX_ACK) and len(data) < 12:
            self.burst.event("udp_short", "udp: short %d datagram from %s", ident, addr)
            return
        eui = data[4:12].hex()
        if ident == PUSH_DATA:
            self.transport.sendto(bytes([ver]) + token + bytes([PUSH_ACK]), addr)
            try:
                doc = json.loads(data[12:] or b"{}")
            except ValueError:
                self.burst.event("udp_json", "udp: PUSH_DATA from %s (%s) is not JSON", eui, addr)
                return
            for pk in doc.get("rxpk") or []:
                self._rxpk(eui, pk)
        elif ident == PULL_DATA:
            if self.pull_addr.get(eui) != addr:
                log.info("udp: forwarder %s pulls from %s (downlinks go there)", eui, addr)
            self.pull_addr[eui] = addr
            self.transport.sendto(bytes([ver]) + token + bytes([PULL_ACK]), addr)
        elif ident == TX_ACK:
            err = "NONE"
            if len(data) > 12:
                try:
                    err = (json.loads(data[12:]).get("txpk_ack") or {}).get("error", "NONE")
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
        txpk = {"imme": True, "freq": (rx or {}).get("freq") or 470.3, "rfch": 0, "powe": 17, "modu": "LORA",
                "datr": (rx or {}).get("datr") or "SF11BW125", "codr": "4/5", "ipol": True, "size": len(frame),
                "data": base64.b64encode(frame).decode()}
        self.transport.sendto(bytes([VERSION]) + os.urandom(2) + bytes([PULL_RESP])
                              + json.dumps({"txpk": txpk}).encode(), addr)
        return True


async def listen(bind: str, deliver_nowait, metrics, burst):
    host, _, port = bind.rpartition(":")
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: SemtechUDP(deliver_nowait, metrics, burst), local_addr=(host, int(port)))
    log.info("udp packet-forwarder listener on %s", bind)
    return transport, proto
