"""The gateway's compiled deframer loop (gateway/_lane.c `segments`, through gateway/deframe.py; issue 17) against
the protocol's own (protocol/framing.py, which the nodes run under MicroPython and which test_framing holds to
the per-byte design): the same random streams, cut into the same random chunks, must give after every feed() the
same items, counters, carried segment and pending text. These tests fail where the module was not built."""

import collections
import random

import pytest

from gasguard.gateway import deframe
from gasguard.gateway.fastlane import _lane
from gasguard.protocol import framing
from test_framing import MAX_SEGMENTS, _state, chunks, stream


def test_the_module_is_built():
    assert deframe.COMPILED and _lane is not None, "pip install -e . with a C compiler and Python's headers"
    assert deframe.Deframer().compiled and not deframe.Deframer(compiled=False).compiled


@pytest.mark.parametrize("seed", [3, 33])
def test_the_compiled_loop_gives_what_the_protocols_gives(seed):
    r = random.Random(seed)
    seen = collections.Counter()
    for case in range(2500):
        data = stream(r)
        limit = r.choice(MAX_SEGMENTS)
        new, ref = deframe.Deframer(limit), framing.Deframer(limit)
        for c in chunks(r, data):
            got, want = new.feed(c), ref.feed(c)
            assert got == want, (case, limit, data.hex())
            assert all(type(p) is bytes for k, p in got if k != framing.NOISE)
            assert _state(new) == _state(ref), (case, limit, data.hex())
            seen.update(p if k == framing.NOISE else k for k, p in got)
    assert all(seen[o] > 200 for o in (framing.FRAME, framing.TEXT, "crc", "cobs", "short", "overflow")), seen


def test_a_long_segment_within_the_bound_goes_to_the_protocols_loop():
    """Past 255 bytes a segment needs the general COBS decode (a block of 254 precedes another): the compiled
    loop hands the whole feed back, having appended nothing."""
    frame = bytes(range(1, 256)) + bytes(range(1, 46))
    w = framing.wrap(frame)
    out = []
    assert _lane.segments([w[1:-1]], 400, out) is None and out == []
    d = deframe.Deframer(max_segment=400)
    assert d.feed(framing.wrap(b"short") + w + b"text\r\n\x00") == [
        (framing.FRAME, b"short"), (framing.FRAME, frame), (framing.TEXT, b"text\r\n")]
    assert (d.frames, d.text) == (2, 1)


def test_bad_arguments_are_a_type_error_not_a_crash():
    for args in (([b"x"], 255), ([b"x"], 255, ()), ([bytearray(b"x")], 255, []), ((b"x",), 255, []),
                 ([b"x"], "255", [])):
        with pytest.raises(TypeError):
            _lane.segments(*args)


def test_the_serial_transport_uses_it():
    from gasguard.gateway.config import SerialPort
    from gasguard.gateway.metrics import Metrics
    from gasguard.gateway.transports.serial import SerialTransport
    t = SerialTransport(SerialPort("/dev/null", name="tty0"), None, Metrics())
    assert type(t.deframer) is deframe.Deframer and t.deframer.compiled
