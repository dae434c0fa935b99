# Runs protocol/vectors.json through the protocol modules and reports what it got.
# MicroPython-compatible: the same file runs under CPython and in the WebAssembly port, and the test
# compares both reports with the expected values in the vectors.

import binascii

from gasguard.protocol import counter, frame, framing
from gasguard.protocol.errors import ProtocolError

_BYTES = ("data", "args", "mic")


def _unhex(s):
    return binascii.unhexlify(s)


def _hex(b):
    return binascii.hexlify(b).decode()


def fields_from_json(d):
    out = {}
    for k in d:
        out[k] = _unhex(d[k]) if k in _BYTES and d[k] is not None else d[k]
    return out


def fields_to_json(d):
    out = {}
    for k in d:
        v = d[k]
        out[k] = _hex(v) if isinstance(v, (bytes, bytearray)) else v
    return out


def check(vectors):
    """{"valid": [{name, frame, wire, fields}], "invalid": [{name, reason}], "identity": [{name, identity}]}
    as computed here."""
    report = {"valid": [], "invalid": [], "identity": []}
    for v in vectors.get("identity", ()):
        report["identity"].append({"name": v["name"], "identity": counter.identity(v["fcnt"], v["seq"])})
    for v in vectors["valid"]:
        key = _unhex(v["key"])
        fields = fields_from_json(v["fields"])
        sealed = frame.seal(fields, key, v["direction"])
        opened = frame.open_frame(sealed, key, v["direction"], v["last"])
        report["valid"].append({"name": v["name"], "frame": _hex(sealed), "wire": _hex(framing.wrap(sealed)),
                                "fields": fields_to_json(opened)})
    for v in vectors["invalid"]:
        reason = None
        try:
            if v.get("layer") == "framing":
                framing.unwrap(_unhex(v["segment"]))
            else:
                frame.open_frame(_unhex(v["frame"]), _unhex(v["key"]), v["direction"], v["last"])
        except ProtocolError as e:
            reason = e.reason
        report["invalid"].append({"name": v["name"], "reason": reason})
    return report
