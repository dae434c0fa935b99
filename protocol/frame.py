# Frame encode/decode (SPEC 2-5). Parsers take bytes and return dicts, or raise ProtocolError.
#
# A frame as a dict: {"type": "reading", "dev": 0x1234, "fcnt": 7, ...body fields...}.
# decode() gives "fcnt16" (what is on air); open_frame() adds the reconstructed "fcnt".

import struct

from . import counter, mic
from .const import (ACK, ALARM, AL_CLEARED, AL_OPSO, AL_UPSO, COMMAND, EVENT, FLAG_INLET, HEAD_LEN,
                    MAX_DATA, MAX_FCNT, MAX_GAP, MIC_LEN, READING, TYPE_NAMES, VERSION)
from .errors import ProtocolError  # noqa: F401  (re-exported)
from .units import (battery_from_wire, battery_to_wire, gas_from_wire, gas_to_wire, pressure_from_wire,
                    pressure_to_wire)

_TYPES = {"reading": READING, "alarm": ALARM, "event": EVENT, "command": COMMAND, "ack": ACK}
_MIN_LEN = HEAD_LEN + MIC_LEN


def _pressure_code(code):
    return (code & 0x7F) == AL_OPSO or (code & 0x7F) == AL_UPSO


def _u8(fields, name):
    v = fields[name]
    if v < 0 or v > 255:
        raise ProtocolError("range", "%s %r outside 0..255" % (name, v))
    return v


def _u16(v, name):
    if v < 0 or v > 0xFFFF:
        raise ProtocolError("range", "%s %r outside 0..65535" % (name, v))
    return v


def _body(ftype, f):
    """(flags, body bytes) for the fields of one frame."""
    if ftype == READING:
        inlet = f.get("inlet")
        body = struct.pack(">HHBB", gas_to_wire(f["gas"]), pressure_to_wire(f["pressure"]),
                           battery_to_wire(f["battery"]), _u8(f, "state"))
        if inlet is None and "inlet" not in f:
            return 0, body
        return FLAG_INLET, body + struct.pack(">H", pressure_to_wire(inlet))
    if ftype == ALARM:
        code = _u8(f, "code")
        if code == 0 or code > 0x7F:
            raise ProtocolError("range", "alarm code %r outside 1..127" % code)
        if f.get("cleared"):
            code |= AL_CLEARED
        value = f["value"]
        value = pressure_to_wire(value) if _pressure_code(code) else _u16(value, "value")
        age = f["age"]
        age = 0xFFFF if age > 0xFFFF else _u16(int(age), "age")
        return 0, struct.pack(">BBHHB", code, _u8(f, "aseq"), age, value, _u8(f, "state"))
    if ftype == EVENT or ftype == COMMAND:
        a, b, c = ("code", "eseq", "data") if ftype == EVENT else ("cmd", "cid", "args")
        data = bytes(f.get(c) or b"")
        if len(data) > MAX_DATA:
            raise ProtocolError("range", "%s longer than %d bytes" % (c, MAX_DATA))
        return 0, bytes([_u8(f, a), _u8(f, b)]) + data
    if ftype == ACK:
        return 0, bytes([_u8(f, "ref_type"), _u8(f, "ref"), _u8(f, "result")])
    raise ProtocolError("type", "unknown frame type %r" % ftype)


def seal(fields, key, direction):
    """Encode and sign one frame. `fields` has type, dev, fcnt (full 32 bits) and the body fields."""
    try:
        ftype = _TYPES[fields["type"]]
    except KeyError:
        raise ProtocolError("type", "unknown frame type %r" % fields.get("type"))
    dev = fields["dev"]
    if dev <= 0 or dev >= 0xFFFFFFFF:
        raise ProtocolError("range", "device id %r outside 1..0xFFFFFFFE" % dev)
    fcnt = fields["fcnt"]
    if fcnt < 0 or fcnt > MAX_FCNT:
        raise ProtocolError("counter_exhausted", "counter %r outside 32 bits" % fcnt)
    flags, body = _body(ftype, fields)
    data = struct.pack(">BIH", (VERSION << 6) | (ftype << 3) | flags, dev, fcnt & 0xFFFF) + body
    return data + mic.compute(key, direction, fcnt, data)


def _expect(n, want, name):
    if n < want:
        raise ProtocolError("short", "%s needs %d bytes, got %d" % (name, want, n))
    if n > want:
        raise ProtocolError("long", "%s needs %d bytes, got %d" % (name, want, n))


def peek(buf):
    """(frame type, device id) from the header alone, unchecked, or None when shorter than a header: for
    routing before the full decode and verification (the gateway moves alarms ahead at ingest)."""
    if len(buf) < HEAD_LEN:
        return None
    hdr, dev = struct.unpack_from(">BI", buf, 0)
    return (hdr >> 3) & 7, dev


def decode(buf):
    """Structural decode without a key: every field, "fcnt16" and "mic". Raises ProtocolError."""
    n = len(buf)
    if n < _MIN_LEN:
        raise ProtocolError("short", "%d bytes, a frame has at least %d" % (n, _MIN_LEN))
    hdr, dev, c16 = struct.unpack_from(">BIH", buf, 0)
    if hdr >> 6 != VERSION:
        raise ProtocolError("version", "version %d, expected %d" % (hdr >> 6, VERSION))
    ftype = (hdr >> 3) & 7
    flags = hdr & 7
    if ftype > ACK:
        raise ProtocolError("type", "reserved frame type %d" % ftype)
    if dev == 0 or dev == 0xFFFFFFFF:
        raise ProtocolError("field", "reserved device id")
    if flags and not (ftype == READING and flags == FLAG_INLET):
        raise ProtocolError("flags", "flags %d not allowed on %s" % (flags, TYPE_NAMES[ftype]))
    blen = n - _MIN_LEN
    f = {"type": TYPE_NAMES[ftype], "dev": dev, "fcnt16": c16, "mic": bytes(buf[n - MIC_LEN:])}
    if ftype == READING:
        _expect(blen, 8 if flags else 6, "reading")
        g, p, bat, st = struct.unpack_from(">HHBB", buf, HEAD_LEN)
        f["gas"] = gas_from_wire(g)
        f["pressure"] = pressure_from_wire(p)
        f["battery"] = battery_from_wire(bat)
        f["state"] = st
        f["inlet"] = pressure_from_wire(struct.unpack_from(">H", buf, HEAD_LEN + 6)[0]) if flags else None
    elif ftype == ALARM:
        _expect(blen, 7, "alarm")
        code, aseq, age, value, st = struct.unpack_from(">BBHHB", buf, HEAD_LEN)
        if code & 0x7F == 0:
            raise ProtocolError("field", "alarm code 0 is reserved")
        f["code"] = code & 0x7F
        f["cleared"] = bool(code & AL_CLEARED)
        f["aseq"] = aseq
        f["age"] = age
        f["value"] = pressure_from_wire(value) if _pressure_code(code) else value
        f["state"] = st
    elif ftype == EVENT or ftype == COMMAND:
        if blen < 2:
            raise ProtocolError("short", "%s body needs 2 bytes" % TYPE_NAMES[ftype])
        if blen > 2 + MAX_DATA:
            raise ProtocolError("long", "%s body longer than %d bytes" % (TYPE_NAMES[ftype], 2 + MAX_DATA))
        a, b, c = ("code", "eseq", "data") if ftype == EVENT else ("cmd", "cid", "args")
        f[a] = buf[HEAD_LEN]
        f[b] = buf[HEAD_LEN + 1]
        f[c] = bytes(buf[HEAD_LEN + 2:n - MIC_LEN])
    else:
        _expect(blen, 3, "ack")
        f["ref_type"] = buf[HEAD_LEN]
        f["ref"] = buf[HEAD_LEN + 1]
        f["result"] = buf[HEAD_LEN + 2]
    return f


def verify(buf, f, key, direction, last, max_gap=MAX_GAP):
    """Reconstruct the counter and check the MIC (SPEC 4). Returns the full counter or raises.

    `f` is decode(buf); `last` is the highest counter accepted so far in this direction (0 if none).
    """
    data = buf[:len(buf) - MIC_LEN]
    tag = f["mic"]
    fwd = counter.forward(f["fcnt16"], last)
    if fwd <= MAX_FCNT and mic.check(key, direction, fwd, data, tag):
        if fwd - last <= max_gap:
            return fwd
        raise ProtocolError("counter_gap", "counter jumped from %d to %d" % (last, fwd), fwd)
    back = fwd - 0x10000
    if back >= 0 and mic.check(key, direction, back, data, tag):
        raise ProtocolError("replay", "counter %d not above %d" % (back, last), back)
    if fwd > MAX_FCNT:
        raise ProtocolError("counter_exhausted", "counter passed 32 bits")
    raise ProtocolError("mic", "MIC does not verify")


def open_frame(buf, key, direction, last, max_gap=MAX_GAP):
    """decode + verify: the frame's fields with "fcnt" set, or ProtocolError."""
    f = decode(buf)
    f["fcnt"] = verify(buf, f, key, direction, last, max_gap)
    return f


def state_fields(st):
    """The state byte (SPEC 3.2) as named fields."""
    return {"valve": st & 3, "latched": bool(st & 4), "gas_level": (st >> 3) & 3,
            "fault": bool(st & 0x20), "over_range": bool(st & 0x40), "ptrip": bool(st & 0x80)}


def make_state(valve, latched, gas_level, fault, over_range, ptrip):
    return ((valve & 3) | (4 if latched else 0) | ((gas_level & 3) << 3) | (0x20 if fault else 0)
            | (0x40 if over_range else 0) | (0x80 if ptrip else 0))
