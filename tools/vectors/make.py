"""Regenerate protocol/vectors.json (run: python -m gasguard.tools.vectors.make).

Keys and fields are fixed, so the output is deterministic; the expected bytes come from the CPython
implementation and are then checked on MicroPython, and the MICs independently with the stdlib hmac.
"""

import json
from pathlib import Path

import gasguard.protocol
from gasguard.protocol import frame, framing
from gasguard.protocol.const import DOWN, UP
from gasguard.tools.vectors.check import fields_from_json, fields_to_json

OUT = Path(gasguard.protocol.__file__).resolve().parent / "vectors.json"
K1 = "000102030405060708090a0b0c0d0e0f"
K2 = "8f3a1c5e9b7d2f4061a3c5e7092b4d6f"

VALID = [
    ("household reading", K1, UP, 0, {"type": "reading", "dev": 0x00012345, "fcnt": 1, "gas": 0,
                                      "pressure": 2000, "battery": 97, "state": 0}),
    ("household reading, gas warning, low battery", K1, UP, 41, {"type": "reading", "dev": 0x00012345,
                                                                  "fcnt": 42, "gas": 112, "pressure": 1985,
                                                                  "battery": 9, "state": 0x08}),
    ("household reading, sensor fault: no gas value", K1, UP, 99, {"type": "reading", "dev": 0x00012345,
                                                                    "fcnt": 100, "gas": None, "pressure": 2010,
                                                                    "battery": 80, "state": 0x21}),
    ("station reading with inlet, high-pressure A 4.0 MPa", K2, UP, 0x1FFFF,
     {"type": "reading", "dev": 0x80000001, "fcnt": 0x20000, "gas": 15, "pressure": 300000,
      "battery": None, "state": 0, "inlet": 4000000}),
    ("station reading, counter wraps its low half", K2, UP, 0x1FFFE,
     {"type": "reading", "dev": 0x80000001, "fcnt": 0x1FFFF, "gas": 1000, "pressure": 32767,
      "battery": None, "state": 0x40 | 0x10, "inlet": None}),
    ("alarm: household gas level 2, valve closed and latched", K1, UP, 200,
     {"type": "alarm", "dev": 0x00012345, "fcnt": 201, "code": 2, "cleared": False, "aseq": 7, "age": 0,
      "value": 260, "state": 0x01 | 0x04 | 0x10}),
    ("alarm: station OPSO", K2, UP, 5, {"type": "alarm", "dev": 0x80000001, "fcnt": 6, "code": 3,
                                        "cleared": False, "aseq": 1, "age": 3, "value": 495000,
                                        "state": 0x80 | 0x01 | 0x04}),
    ("alarm cleared", K2, UP, 6, {"type": "alarm", "dev": 0x80000001, "fcnt": 7, "code": 3, "cleared": True,
                                  "aseq": 2, "age": 65535, "value": 300000, "state": 0x05}),
    ("alarm: sensor fault open circuit", K1, UP, 10, {"type": "alarm", "dev": 0x00012345, "fcnt": 11, "code": 5,
                                                      "cleared": False, "aseq": 255, "age": 1, "value": 0x0101,
                                                      "state": 0x21}),
    ("event: boot", K1, UP, 255, {"type": "event", "dev": 0x00012345, "fcnt": 257, "code": 1, "eseq": 0,
                                  "data": "00010001"}),
    ("event: valve closed on gas", K1, UP, 300, {"type": "event", "dev": 0x00012345, "fcnt": 301, "code": 5,
                                                 "eseq": 3, "data": "0101"}),
    ("event: calibration, 8 data bytes", K1, UP, 400, {"type": "event", "dev": 0x00012345, "fcnt": 401,
                                                       "code": 6, "eseq": 4, "data": "01000f0ba2000000"}),
    ("command: reset", K1, DOWN, 0, {"type": "command", "dev": 0x00012345, "fcnt": 1, "cmd": 1, "cid": 17,
                                     "args": ""}),
    ("command: set gas level 1 to 12 % LEL", K1, DOWN, 1, {"type": "command", "dev": 0x00012345, "fcnt": 2,
                                                          "cmd": 2, "cid": 18, "args": "010078"}),
    ("ack of an alarm (downlink)", K1, DOWN, 2, {"type": "ack", "dev": 0x00012345, "fcnt": 3, "ref_type": 1,
                                                 "ref": 7, "result": 0}),
    ("ack of a command, refused (uplink)", K1, UP, 500, {"type": "ack", "dev": 0x00012345, "fcnt": 501,
                                                         "ref_type": 3, "ref": 17, "result": 1}),
]


# SPEC 3.4 alarm identity: (counter of this copy, aseq) -> counter of the first copy. The expected values are
# written out by hand from the SPEC text, not computed by protocol.counter.
IDENTITY = [
    ("first copy: aseq is the counter's low byte", 201, 201, 201),
    ("a copy 3 counters later", 204, 201 & 0xFF, 201),
    ("a copy across a low-byte wrap", 0x10005, 0xFE, 0x0FFFE),
    ("a copy 255 counters later (the last exact one)", 0x1FF, 0x00, 0x100),
    ("a copy 256 counters later is taken as a new alarm", 0x200, 0x00, 0x200),
    ("after a power cut the counter jumps past the ceiling: a new identity", 0x301, 0x01, 0x301),
]


def _seal(key, direction, fields):
    return frame.seal(fields_from_json(fields), bytes.fromhex(key), direction)


def _invalid():
    base = {"type": "reading", "dev": 0x00012345, "fcnt": 50, "gas": 5, "pressure": 2000, "battery": 90,
            "state": 0}
    good = _seal(K1, UP, base)
    bad_mic = good[:-1] + bytes([good[-1] ^ 0x01])
    out = [
        {"name": "bad MIC (last bit flipped)", "frame": bad_mic.hex(), "last": 49, "reason": "mic"},
        {"name": "wrong key", "frame": _seal(K2, UP, base).hex(), "last": 49, "reason": "mic"},
        {"name": "uplink frame checked as downlink", "frame": good.hex(), "last": 49, "direction": DOWN,
         "reason": "mic"},
        {"name": "short frame (truncated)", "frame": good[:12].hex(), "last": 49, "reason": "short"},
        {"name": "reading one byte short", "frame": (good[:12] + good[13:]).hex(), "last": 49, "reason": "short"},
        {"name": "reading one byte long", "frame": (good[:13] + b"\x00" + good[13:]).hex(), "last": 49,
         "reason": "long"},
        {"name": "wrong version (v2)", "frame": (bytes([(good[0] & 0x3F) | 0x80]) + good[1:]).hex(), "last": 49,
         "reason": "version"},
        {"name": "reserved frame type 6", "frame": (bytes([0x40 | (6 << 3)]) + good[1:]).hex(), "last": 49,
         "reason": "type"},
        {"name": "flags on an alarm", "frame": (bytes([0x40 | (1 << 3) | 1]) + good[1:]).hex(), "last": 49,
         "reason": "flags"},
        {"name": "replayed counter (same frame again)", "frame": good.hex(), "last": 50, "reason": "replay"},
        {"name": "replayed old counter", "frame": good.hex(), "last": 4000, "reason": "replay"},
        {"name": "counter jumped past MAX_GAP", "frame": _seal(K1, UP, dict(base, fcnt=50 + 16385)).hex(),
         "last": 50, "reason": "counter_gap"},
        {"name": "gas above 100 % LEL on the wire",
         "frame": (good[:7] + b"\x03\xe9" + good[9:]).hex(), "last": 49, "reason": "field"},
        {"name": "reserved device id 0", "frame": (good[:1] + b"\x00\x00\x00\x00" + good[5:]).hex(), "last": 49,
         "reason": "field"},
    ]
    for v in out:
        v.setdefault("direction", UP)
        v["key"] = K1
    wire = framing.wrap(good)[1:-1]
    noisy = bytearray(wire)
    noisy[5] ^= 0x10
    out += [
        {"name": "line noise: one bit flipped", "layer": "framing", "segment": bytes(noisy).hex(), "reason": "crc"},
        {"name": "COBS block runs past the end", "layer": "framing", "segment": "05aabb", "reason": "cobs"},
        {"name": "segment shorter than a CRC", "layer": "framing", "segment": "0201", "reason": "short"},
    ]
    return out


def build():
    valid = []
    for name, key, direction, last, fields in VALID:
        sealed = _seal(key, direction, fields)
        opened = frame.open_frame(sealed, bytes.fromhex(key), direction, last)
        valid.append({"name": name, "key": key, "direction": direction, "last": last, "fields": fields,
                      "frame": sealed.hex(), "wire": framing.wrap(sealed).hex(), "decoded": fields_to_json(opened)})
    identity = [{"name": n, "fcnt": fc, "seq": sq, "identity": i} for n, fc, sq, i in IDENTITY]
    return {"spec": "GasGuard protocol v1 (protocol/SPEC.md)", "valid": valid, "invalid": _invalid(),
            "identity": identity}


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT}")
