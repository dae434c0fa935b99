# MIC = HMAC-SHA256(K, B0 | frame-without-MIC)[0:6]  (SPEC 5).
# CPython uses the C HMAC and hmac.compare_digest (constant time). MicroPython has neither `hmac`
# nor compare_digest, so HMAC is built from hashlib.sha256 and the compare XOR-accumulates every byte.

import struct
import sys

from .const import MIC_LEN, VERSION

_MICROPYTHON = sys.implementation.name == "micropython"

if _MICROPYTHON:
    import hashlib

    def hmac_sha256(key, msg):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key + bytes(64 - len(key))
        inner = hashlib.sha256(bytes([b ^ 0x36 for b in key]))
        inner.update(msg)
        outer = hashlib.sha256(bytes([b ^ 0x5C for b in key]))
        outer.update(inner.digest())
        return outer.digest()

    def equal(a, b):
        if len(a) != len(b):
            return False
        acc = 0
        for i in range(len(a)):
            acc |= a[i] ^ b[i]
        return acc == 0

else:
    import hmac as _hmac

    def hmac_sha256(key, msg):
        return _hmac.digest(key, msg, "sha256")

    equal = _hmac.compare_digest


def b0(direction, fcnt):
    return struct.pack(">BBBBI", 0x47, 0x47, VERSION, direction, fcnt)


def compute(key, direction, fcnt, data):
    """The 6-byte MIC of `data` (the frame up to, not including, its MIC)."""
    return hmac_sha256(key, b0(direction, fcnt) + data)[:MIC_LEN]


def check(key, direction, fcnt, data, mic):
    """Constant-time check of `mic` against the MIC of `data`."""
    return equal(compute(key, direction, fcnt, data), mic)
