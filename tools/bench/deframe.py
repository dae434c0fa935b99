"""`gasguard bench deframe`: the UART deframer's cost per frame, the per-byte design vs the current one (issue 17).

200,000 sealed 19-byte readings (20,000 devices x 10), wrapped as on a wire (0x00 | COBS(frame|CRC) | 0x00),
concatenated and fed in 4096-byte chunks, what SerialTransport._pump reads at a time. One core, this process;
best of a few rounds (the minimum is the figure least disturbed by the other loads on the machine).

ReferenceDeframer below is the deframer as it was before issue 17 (a Python step per byte), kept verbatim as
the baseline here and as the oracle of the differential test (tests/test_framing.py): the current
protocol.framing.Deframer must give the same items and counters for any byte stream, however chunked.
"""

from __future__ import annotations

import hashlib
import json
import time

import click

from gasguard.protocol import framing
from gasguard.protocol.errors import ProtocolError

FRAMES = 200_000
CHUNK = 4096


# ---- the per-byte deframer (protocol/framing.py before issue 17), unchanged ----

def _ref_cobs_decode(data):
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


def ref_unwrap(segment):
    raw = _ref_cobs_decode(segment)
    if len(raw) < 3:
        raise ProtocolError("short", "segment shorter than a CRC")
    body = raw[:-2]
    if framing.crc16(body) != (raw[-2] << 8 | raw[-1]):
        raise ProtocolError("crc", "CRC-16 mismatch (line noise)")
    return body


def _ref_is_text(seg):
    for b in seg:
        if b < 0x20 and b not in (9, 10, 13):
            return False
        if b == 0x7F:
            return False
    return True


class ReferenceDeframer:
    def __init__(self, max_segment=framing.MAX_SEGMENT):
        self.max_segment = max_segment
        self.buf = bytearray()
        self.dropping = False
        self.frames = 0
        self.text = 0
        self.noise = {}

    def _noise(self, reason, out):
        self.noise[reason] = self.noise.get(reason, 0) + 1
        out.append((framing.NOISE, reason))

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
                out.append((framing.FRAME, ref_unwrap(seg)))
                self.frames += 1
            except ProtocolError as e:
                if _ref_is_text(seg):
                    self.text += 1
                    out.append((framing.TEXT, seg))
                else:
                    self._noise(e.reason, out)
        return out

    def pending_text(self):
        return bytes(self.buf) if self.buf and _ref_is_text(self.buf) else b""


# ---- the benchmark ----

def reading_stream(n: int = FRAMES) -> tuple[bytes, bytes]:
    """n sealed readings (10 per device) wrapped back to back, and a digest of the frames in order."""
    from gasguard.protocol import const, frame
    parts, h = [], hashlib.sha256()
    for i in range(n):
        dev = 0x100000 + i // 10
        raw = frame.seal({"type": "reading", "dev": dev, "fcnt": 1 + i % 10, "gas": (i * 7) % 60,
                          "pressure": 1800 + (i * 13) % 600, "battery": 90 - i % 10, "state": 0},
                         hashlib.sha256(b"bench%d" % dev).digest()[:16], const.UP)
        h.update(raw)
        parts.append(framing.wrap(raw))
    return b"".join(parts), h.digest()


def time_feed(make, stream: bytes, chunk: int = CHUNK) -> tuple[float, bytes, int]:
    """Seconds in feed() for `stream` in `chunk`-byte reads to a fresh make(); a digest of the frames it gave
    (checked after the clock stops); the deframer's frame counter."""
    d = make()
    chunks = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
    feed = d.feed
    t0 = time.perf_counter()
    results = [feed(c) for c in chunks]
    dt = time.perf_counter() - t0
    h = hashlib.sha256()
    for items in results:
        for kind, payload in items:
            h.update(payload if kind == framing.FRAME else repr((kind, payload)).encode())
    return dt, h.digest(), d.frames


def deframe_figures(frames: int = FRAMES, chunk: int = CHUNK, rounds: int = 3) -> dict:
    from gasguard.gateway import deframe
    stream, want = reading_stream(frames)
    best = {"old": float("inf"), "new": float("inf")}
    makers = [("old", ReferenceDeframer), ("new", framing.Deframer)]
    if deframe.COMPILED:      # the gateway's: the segment loop in C (gateway/_lane.c), where it was built
        best["compiled"] = float("inf")
        makers.append(("compiled", deframe.Deframer))
    for _ in range(rounds):   # alternated, so a burst of load elsewhere hits each alike
        for name, make in makers:
            s, got, n = time_feed(make, stream, chunk)
            if got != want or n != frames:
                raise RuntimeError(f"the {name} deframer lost or changed frames ({n:,} of {frames:,})")
            best[name] = min(best[name], s)
    old_us, new_us = best["old"] / frames * 1e6, best["new"] / frames * 1e6
    out = {"frames": frames, "frame_bytes": len(stream) // frames, "chunk": chunk, "rounds": rounds,
           "old_us_per_frame": round(old_us, 3), "new_us_per_frame": round(new_us, 3),
           "speedup": round(old_us / new_us, 1)}
    if "compiled" in best:
        out["compiled_us_per_frame"] = round(best["compiled"] / frames * 1e6, 3)
    return out


def print_deframe(r: dict, echo=click.echo) -> None:
    echo(f"{r['frames']:,} sealed readings, {r['frame_bytes']} B each on the wire, fed in {r['chunk']}-byte "
         f"chunks; best of {r['rounds']}, one core")
    echo(f"{'deframer':28} {'us/frame':>9} {'frames/s':>12}")
    for name, key in (("per byte (before issue 17)", "old_us_per_frame"), ("split + slices (protocol)", "new_us_per_frame"),
                      ("segment loop in C (gateway)", "compiled_us_per_frame")):
        if key in r:
            echo(f"{name:28} {r[key]:9.3f} {1e6 / r[key]:12,.0f}")
    echo(f"speed-up x{r['speedup']:.1f} (split + slices against per byte)"
         + (f"; the gateway's compiled loop x{r['new_us_per_frame'] / r['compiled_us_per_frame']:.1f} against the "
            "protocol's" if "compiled_us_per_frame" in r else "; the compiled loop is not built"))


@click.command("deframe")
@click.option("--frames", default=FRAMES, show_default=True, help="wrapped readings in the stream")
@click.option("--chunk", default=CHUNK, show_default=True, help="bytes per feed() (a serial read)")
@click.option("--rounds", default=3, show_default=True, help="timed rounds of each; the best counts")
@click.option("--json", "as_json", is_flag=True)
def deframe_bench(frames, chunk, rounds, as_json):
    """UART deframer (feed + COBS + CRC) per frame: the per-byte design, the protocol's and the gateway's compiled
    segment loop (issue 17)."""
    r = deframe_figures(frames, chunk, rounds)
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        print_deframe(r)
