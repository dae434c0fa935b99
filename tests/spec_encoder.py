"""An encoder written from protocol/SPEC.md alone, for checking protocol/vectors.json (which the CPython
implementation generated) against something that is not that implementation. Deliberately does not import
gasguard.protocol: every number below is read off the SPEC section named next to it. (paho.mqtt's tests do
the same: packets built by an independent generator, never the implementation's own output.)"""

import hashlib
import hmac
import struct

VERSION = 1                                                    # SPEC 2: HDR bits 7-6 = 01
TYPES = {"reading": 0, "alarm": 1, "event": 2, "command": 3, "ack": 4}   # SPEC 2, frame types
FLAG_INLET = 0x01                                              # SPEC 2: reading bit 0
NO_VALUE = 0xFFFF                                              # SPEC 3.1
PRESSURE_CODES = (3, 4)                                        # SPEC 3.4: OPSO, UPSO carry a pressure


def gas(tenths):
    """SPEC 3.1: u16 in 0.1 % LEL, clamped to 1000; 0xFFFF = no valid value."""
    return NO_VALUE if tenths is None else min(int(tenths), 1000)


def pressure(pa):
    """SPEC 3.1: 1 Pa steps below 32,768 Pa, else bit 15 set and 125 Pa steps (nearest); 0xFFFF = none."""
    if pa is None:
        return NO_VALUE
    if pa < 32768:
        return int(pa)
    return 0x8000 | int(round(pa / 125))


def battery(pct):
    """SPEC 3.1: u8 percent; 0xFF = mains / not measured."""
    return 0xFF if pct is None else int(pct)


def body(f):
    t = f["type"]
    if t == "reading":                                         # SPEC 3.3
        b = struct.pack(">HHBB", gas(f["gas"]), pressure(f["pressure"]), battery(f["battery"]), f["state"])
        if "inlet" in f:
            b += struct.pack(">H", pressure(f["inlet"]))
        return b
    if t == "alarm":                                           # SPEC 3.4
        code = f["code"] | (0x80 if f["cleared"] else 0)
        value = pressure(f["value"]) if f["code"] in PRESSURE_CODES else f["value"]
        return struct.pack(">BBHHB", code, f["aseq"], min(f["age"], 65535), value, f["state"])
    if t == "event":                                           # SPEC 3.5
        return bytes([f["code"], f["eseq"]]) + bytes.fromhex(f["data"])
    if t == "command":                                         # SPEC 3.6
        return bytes([f["cmd"], f["cid"]]) + bytes.fromhex(f["args"])
    if t == "ack":                                             # SPEC 3.7
        return bytes([f["ref_type"], f["ref"], f["result"]])
    raise ValueError(t)


def seal(f, key: bytes, direction: int) -> bytes:
    """SPEC 2 layout HDR | DEV | FCNT16 | BODY | MIC, the MIC of SPEC 5."""
    flags = FLAG_INLET if f["type"] == "reading" and "inlet" in f else 0
    hdr = (VERSION << 6) | (TYPES[f["type"]] << 3) | flags
    head = struct.pack(">BIH", hdr, f["dev"], f["fcnt"] & 0xFFFF)
    b0 = b"\x47\x47" + bytes([VERSION, direction]) + struct.pack(">I", f["fcnt"])
    msg = head + body(f)
    return msg + hmac.new(key, b0 + msg, hashlib.sha256).digest()[:6]


def crc16_ccitt_false(data: bytes) -> int:
    """SPEC 6: poly 0x1021, init 0xFFFF, no reflection, no final XOR."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def cobs(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing (Cheshire & Baker 1999), as SPEC 6 names it."""
    out, block = bytearray(), bytearray()
    for byte in data:
        if byte == 0:
            out += bytes([len(block) + 1]) + block
            block = bytearray()
        else:
            block.append(byte)
            if len(block) == 254:
                out += bytes([255]) + block
                block = bytearray()
    out += bytes([len(block) + 1]) + block
    return bytes(out)


def wire(frame: bytes) -> bytes:
    """SPEC 6: 0x00 | COBS(frame | CRC16 big-endian) | 0x00."""
    return b"\x00" + cobs(frame + struct.pack(">H", crc16_ccitt_false(frame))) + b"\x00"
