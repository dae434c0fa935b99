"""The daemon's clock: real time, or a drill/training clock (`gasguard gateway run --clock ...`).

  real       wall time (production; the default)
  speed=N    N daemon seconds per wall second from `t0` (default: the start): the plan's 20- and 45-minute
             reporting deadlines (plan 4.1.2) fall due in 20 s and 45 s of wall time at speed=60
  virtual    stands still at `t0` until told to move: a message {"advance_s": 1200} (or {"t": epoch}) on
             `<root>/drill/clock`, e.g. from `gasguard gateway advance-clock 20m`

Any clock but real marks every message the gateway publishes with "drill": {"clock": "<mode>"}, so a drill
never passes for a real alarm downstream; the metrics carry it too (gasguard_gateway_info{clock=...}).
"""

from __future__ import annotations

import re
import time


class ClockError(ValueError):
    pass


class Clock:
    """Real time. `mode` is what the messages and metrics say."""
    mode = "real"
    speed = 1.0

    def __call__(self) -> float:
        return time.time()


class SpeedClock(Clock):
    def __init__(self, speed: float, t0: float | None = None, wall=time.time):
        self.speed, self.wall = speed, wall
        self.t0 = wall() if t0 is None else t0      # the same instant in wall and daemon time
        self.mode = f"speed={speed:g}"

    def __call__(self) -> float:
        return self.t0 + (self.wall() - self.t0) * self.speed


class VirtualClock(Clock):
    mode = "virtual"
    speed = 0.0

    def __init__(self, t0: float | None = None):
        self.t = time.time() if t0 is None else t0   # daemon time; moves only by advance()/set()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ClockError("a drill clock does not run backwards: advance_s must be >= 0")
        self.t += seconds
        return self.t

    def set(self, t: float) -> float:
        return self.advance(t - self.t)


def parse(spec: str, t0: float | None = None) -> Clock:
    """`real`, `speed=N` (N > 0) or `virtual` -> a clock; ClockError says what is accepted."""
    if spec == "real":
        if t0 is not None:
            raise ClockError("--t0 needs a drill clock (speed=N or virtual); real time starts now")
        return Clock()
    if spec == "virtual":
        return VirtualClock(t0)
    if spec.startswith("speed="):
        try:
            speed = float(spec[6:])
        except ValueError:
            speed = 0.0
        if 0 < speed < float("inf"):
            return SpeedClock(speed, t0)
    raise ClockError(f"--clock {spec!r}: use real, speed=N (e.g. speed=60: an hour a minute) or virtual")


DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h)?")


def duration(text: str) -> float:
    """'90', '90s', '20m', '1.5h' -> seconds."""
    m = DURATION.fullmatch(text.strip())
    if not m:
        raise ClockError(f"{text!r} is not a duration: e.g. 90s, 20m, 1.5h")
    return float(m.group(1)) * {"s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]


def drill_client(mode: str, base=None):
    """A paho Client class (a subclass of `base`, paho's Client by default; the publisher's is the broker
    failover client) whose every publish and Last Will carries the drill mark (the one place all the
    gateway's MQTT output passes)."""
    import paho.mqtt.client as mqtt

    class DrillClient(base or mqtt.Client):
        def publish(self, topic, payload=None, *args, **kw):
            return super().publish(topic, None if payload is None else mark(payload, mode), *args, **kw)

        def will_set(self, topic, payload=None, *args, **kw):
            return super().will_set(topic, None if payload is None else mark(payload, mode), *args, **kw)
    return DrillClient


def mark(payload: bytes | str, mode: str) -> bytes:
    """A JSON object payload with "drill": {"clock": mode} first (no re-serialisation: hot path in drills)."""
    if isinstance(payload, str):
        payload = payload.encode()
    head = b'{"drill":{"clock":"' + mode.encode() + b'"}'
    body = payload.lstrip()
    return head + (b"," + body[1:] if body[1:].lstrip() != b"}" else b"}")
