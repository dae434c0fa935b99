"""The UART deframer the gateway runs: protocol/framing.py's Deframer with its segment loop compiled
(gateway/_lane.c, `segments`; issue 17) where the package was built with a C compiler, the protocol's own loop -
the one the nodes run under MicroPython, and the reference tests/test_deframe_c.py holds the two equal to -
where it was not. Everything else (the carried partial segment, the overflow drop, the counters) is the
protocol's."""

from __future__ import annotations

from gasguard.protocol import framing

from .fastlane import _lane

COMPILED = _lane is not None


class Deframer(framing.Deframer):
    def __init__(self, max_segment: int = framing.MAX_SEGMENT, compiled: bool = True):
        super().__init__(max_segment)
        self.compiled = compiled and COMPILED

    def _segments(self, parts: list, out: list) -> int:
        start = len(out)
        r = _lane.segments(parts, self.max_segment, out) if self.compiled else None
        if r is None:          # not built, or a segment past 255 bytes within max_segment: the protocol's loop
            return super()._segments(parts, out)
        frames, texts = r
        self.text += texts
        if len(out) - start != frames + texts:       # noise, counted by reason as framing.Deframer._noise does
            noise = self.noise
            for kind, why in out[start:]:
                if kind == framing.NOISE:
                    noise[why] = noise.get(why, 0) + 1
        return frames
