# UART framing: 0x00 | COBS(frame | CRC16) | 0x00  (SPEC 6).
# The Deframer takes bytes and never touches a port; it is bounded and counts what it throws away.

import sys

from .errors import ProtocolError

MAX_SEGMENT = 255

if sys.implementation.name != "micropython":
    from binascii import crc_hqx as _crc_hqx

    def crc16(data):
        """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF)."""
        return _crc_hqx(data, 0xFFFF)
else:
    def crc16(data):
        crc = 0xFFFF
        for b in data:
            crc ^= b << 8
            for _ in range(8):
                crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        return crc


def cobs_encode(data):
    out = bytearray()
    block = bytearray()
    for b in data:
        if b == 0:
            out.append(len(block) + 1)
            out.extend(block)
            block = bytearray()
        else:
            block.append(b)
            if len(block) == 254:
                out.append(255)
                out.extend(block)
                block = bytearray()
    out.append(len(block) + 1)
    out.extend(block)
    return bytes(out)


def cobs_decode(data):
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise ProtocolError("cobs", "zero byte inside a COBS block")
        end = i + code
        if end > n:
            raise ProtocolError("cobs", "block runs past the end")
        for j in range(i + 1, end):
            if data[j] == 0:
                raise ProtocolError("cobs", "zero byte inside a COBS block")
        out.extend(data[i + 1:end])
        i = end
        if code != 255 and i < n:
            out.append(0)
    return bytes(out)


def wrap(frame):
    """Bytes to write on a UART for one frame (leading delimiter included)."""
    c = crc16(frame)
    return b"\x00" + cobs_encode(bytes(frame) + bytes([c >> 8, c & 0xFF])) + b"\x00"


def unwrap(segment):
    """One segment (between delimiters) -> frame bytes, or ProtocolError('cobs'|'crc'|'short')."""
    raw = cobs_decode(segment)
    if len(raw) < 3:
        raise ProtocolError("short", "segment shorter than a CRC")
    body = raw[:-2]
    if crc16(body) != (raw[-2] << 8 | raw[-1]):
        raise ProtocolError("crc", "CRC-16 mismatch (line noise)")
    return body


def _is_text(seg):
    for b in seg:
        if b < 0x20 and b not in (9, 10, 13):
            return False
        if b == 0x7F:
            return False
    return True


FRAME = 0
TEXT = 1
NOISE = 2


class Deframer:
    """Feed bytes as they arrive; get back (kind, payload) items.

    kind FRAME: payload is the frame (CRC checked). TEXT: a log line from the node. NOISE: payload is the
    reason ('crc', 'cobs', 'short', 'overflow'). Counters say how much of each was seen.
    """

    def __init__(self, max_segment=MAX_SEGMENT):
        self.max_segment = max_segment
        self.buf = bytearray()
        self.dropping = False
        self.frames = 0
        self.text = 0
        self.noise = {}

    def _noise(self, reason, out):
        self.noise[reason] = self.noise.get(reason, 0) + 1
        out.append((NOISE, reason))

    def feed(self, data):
        out = []
        for b in data:
            if b != 0:
                if self.dropping:
                    continue
                if len(self.buf) >= self.max_segment:
                    self.dropping = True
                    self.buf = bytearray()
                    self._noise("overflow", out)
                    continue
                self.buf.append(b)
                continue
            if self.dropping:
                self.dropping = False
                continue
            if not self.buf:
                continue
            seg = bytes(self.buf)
            self.buf = bytearray()
            try:
                out.append((FRAME, unwrap(seg)))
                self.frames += 1
            except ProtocolError as e:
                if _is_text(seg):
                    self.text += 1
                    out.append((TEXT, seg))
                else:
                    self._noise(e.reason, out)
        return out

    def pending_text(self):
        """Text received since the last delimiter (a log line not yet closed by a frame)."""
        return bytes(self.buf) if self.buf and _is_text(self.buf) else b""
