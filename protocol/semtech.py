"""Semtech UDP packet-forwarder protocol v2 (lora_pkt_fwd PROTOCOL.TXT): packets as bytes, nothing else.

    PUSH_DATA  0x00  up    ver|token|0x00|EUI(8)|JSON {"rxpk": [...]} or {"stat": {...}}
    PUSH_ACK   0x01  down  ver|token|0x01
    PULL_DATA  0x02  up    ver|token|0x02|EUI(8)              (keep-alive; tells the server our address)
    PULL_RESP  0x03  down  ver|token|0x03|JSON {"txpk": {...}}
    PULL_ACK   0x04  down  ver|token|0x04
    TX_ACK     0x05  up    ver|token|0x05|EUI(8)|JSON {"txpk_ack": {"error": "NONE"}}

The one definition of the format for both sides: the gateway daemon is the "server"
(gateway/transports/semtech_udp.py), the fleet simulator and the test kit play the packet forwarder.
Gateway-side only: kept off the node's flash (provisioning/image.py HOST_ONLY).
"""

import base64
import json
import struct
import time

VERSION = 2                  # what we send
VERSIONS = (1, 2)            # what a server accepts: v1 forwarders differ only in the stat object
PUSH_DATA, PUSH_ACK, PULL_DATA, PULL_RESP, PULL_ACK, TX_ACK = range(6)
NAMES = {0: "PUSH_DATA", 1: "PUSH_ACK", 2: "PULL_DATA", 3: "PULL_RESP", 4: "PULL_ACK", 5: "TX_ACK"}
WITH_EUI = (PUSH_DATA, PULL_DATA, TX_ACK)   # upstream messages carry the forwarder's EUI after the header
HEADER_LEN = 4               # ver | token (2) | ident
EUI_LEN = 8
MAX_RXPK = 8                 # lora_pkt_fwd NB_PKT_MAX: packets per PUSH_DATA
MAX_DATAGRAM = 65507         # largest UDP payload over IPv4
CN470_UP_MHZ = 470.3         # CN470 uplink channel 0; channels are 0.2 MHz apart


class SemtechError(ValueError):
    """A datagram that is not a valid packet-forwarder message; the text says what is wrong."""


def _head(token, ident):
    return struct.pack(">BHB", VERSION, token & 0xFFFF, ident)


def ack(datagram, ident):
    """The server's PUSH_ACK / PULL_ACK to `datagram`: its version and token echoed."""
    return datagram[:3] + bytes([ident])


def push_data(token, eui, obj):
    return _head(token, PUSH_DATA) + eui + json.dumps(obj, separators=(",", ":")).encode()


def pull_data(token, eui):
    return _head(token, PULL_DATA) + eui


def tx_ack(token, eui, error="NONE"):
    return _head(token, TX_ACK) + eui + json.dumps({"txpk_ack": {"error": error}}).encode()


def txpk(data, freq=CN470_UP_MHZ, datr="SF11BW125", powe=17):
    """A downlink as a PULL_RESP carries it: sent at once (class C-like), inverted polarity as LoRa
    downlinks are."""
    return {"imme": True, "freq": freq, "rfch": 0, "powe": powe, "modu": "LORA", "datr": datr, "codr": "4/5",
            "ipol": True, "size": len(data), "data": base64.b64encode(data).decode()}


def pull_resp(token, txpk_obj):
    return _head(token, PULL_RESP) + json.dumps({"txpk": txpk_obj}).encode()


def rxpk(data, radio, tmst_us, now=None):
    """One received-packet record as a forwarder reports it (rssi/lsnr from the node's link)."""
    now = time.time() if now is None else now
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%06dZ" % int((now % 1) * 1e6),
        "tmst": tmst_us & 0xFFFFFFFF, "chan": radio.chan, "rfch": 0,
        "freq": round(CN470_UP_MHZ + 0.2 * radio.chan, 1), "stat": 1, "modu": "LORA",
        "datr": "SF%dBW125" % radio.sf, "codr": "4/5", "rssi": int(round(radio.rssi)),
        "lsnr": round(radio.lsnr, 1), "size": len(data), "data": base64.b64encode(data).decode(),
    }


def parse(datagram):
    """(ident, token, eui or None, json object or None). Raises SemtechError."""
    if len(datagram) < HEADER_LEN:
        raise SemtechError("datagram of %d bytes is shorter than a header" % len(datagram))
    ver, token, ident = struct.unpack_from(">BHB", datagram, 0)
    if ver not in VERSIONS:
        raise SemtechError("protocol version %d, expected one of %r" % (ver, VERSIONS))
    if ident not in NAMES:
        raise SemtechError("unknown identifier 0x%02x" % ident)
    eui, rest = None, datagram[HEADER_LEN:]
    if ident in WITH_EUI:
        if len(rest) < EUI_LEN:
            raise SemtechError("%s without a gateway EUI" % NAMES[ident])
        eui, rest = rest[:EUI_LEN], rest[EUI_LEN:]
    obj = None
    if rest:
        try:
            obj = json.loads(rest)
        except ValueError as e:
            raise SemtechError("%s JSON does not parse: %s" % (NAMES[ident], e)) from None
    if ident == PULL_RESP and not (isinstance(obj, dict) and isinstance(obj.get("txpk"), dict)):
        raise SemtechError("PULL_RESP without a txpk object")
    return ident, token, eui, obj


def txpk_data(obj):
    """The frame bytes of a PULL_RESP txpk (base64 'data', checked against 'size' when present)."""
    txpk = obj["txpk"]
    try:
        data = base64.b64decode(txpk["data"], validate=True)
    except (KeyError, ValueError, TypeError):
        raise SemtechError("txpk 'data' is missing or not base64") from None
    if "size" in txpk and txpk["size"] != len(data):
        raise SemtechError("txpk size %r but data has %d bytes" % (txpk["size"], len(data)))
    return data
