"""The compiled reading lane (gateway/_lane.c, issue 17): built with the package, its SHA-256 and HMAC the same
bytes as hashlib's and hmac's (with the CPU's SHA extensions and without), inputs it does not know left to the
general path with nothing changed, no memory kept per call, and the gateway saying which lane it runs.
tests/test_fastlane.py holds its outcomes equal to the general path's."""

import asyncio
import gc
import hashlib
import hmac
import random
import tracemalloc

import pytest

from gasguard.gateway.config import Config
from gasguard.gateway.daemon import Daemon
from gasguard.testing.node import Node, make_registry

from gasguard.gateway import fastlane

SERIAL = {"transport": "serial", "port": "tty0", "rssi": None, "snr": None}


def test_the_compiled_lane_is_built():
    assert fastlane._lane is not None, ("gasguard.gateway._lane is not built: reinstall with a C compiler and "
                                        "Python's headers (pip install -e .)")


@pytest.fixture(params=[True, False], ids=["sha-extensions", "portable"])
def sha(request):
    lane = fastlane._lane
    if request.param and not lane.SHA_EXTENSIONS:
        pytest.skip("this CPU has no SHA extensions")
    assert lane.use_shani(request.param) == request.param
    yield lane
    lane.use_shani(True)


def test_sha256_and_hmac_are_hashlibs_bytes(sha):
    rng = random.Random(7)
    # every length around the block and padding edges, then some long ones; keys around the 64-byte block
    for n in list(range(0, 200)) + [1000, 4096, 65_537]:
        msg = rng.randbytes(n)
        assert sha.sha256(msg) == hashlib.sha256(msg).digest(), n
        for k in (0, 1, 16, 32, 55, 63, 64, 65, 128, 300):
            key = rng.randbytes(k)
            assert sha.hmac_sha256(key, msg) == hmac.digest(key, msg, "sha256"), (n, k)


def _daemon(tmp_path, nodes, now):
    make_registry(tmp_path / "registry.db", nodes)
    cfg = Config(gateway_id="gw", district="d", registry=tmp_path / "registry.db", spool=tmp_path / "spool.db",
                 mqtt_port=1, rate_per_min=6000.0, rate_burst=100)
    d = Daemon(cfg, clock=lambda: now[0], plugins=[])
    d.ingest.start()
    for _ in range(2):          # heard: the lane takes a device's readings from its second one
        d.process([(n.reading(), SERIAL, "serial:tty0") for n in nodes])
        now[0] += 1.0
    assert d.ingest.lane.compiled
    return d


def _state(d, dev):
    s, p = d.verifier.states[dev], d.presence.devices[dev]
    return (s.up, s.tokens, s.t_bucket, s.recent, tuple(getattr(p, k) for k in p.__slots__),
            list(d.verifier.registry.cached))


def test_what_the_lane_does_not_know_is_left_unchanged(tmp_path):
    nodes = [Node(0x00E00000 + i) for i in range(4)]
    now = [1_700_000_000.5]

    async def run():
        d = _daemon(tmp_path, nodes, now)
        lane = d.ingest.lane
        shared = lane.group("gw", now[0], SERIAL)
        raw = nodes[0].reading()
        before = _state(d, nodes[0].dev)
        # not bytes, not a float clock, a shared tuple of the wrong shape or not ASCII (the Python lane's text):
        # None, and nothing changed; a frame cut short or one byte longer: not a reading
        for args in [(bytearray(raw), now[0], shared), (raw, int(now[0]), shared), (raw, now[0], shared[:3]),
                     (raw, now[0], ("gw:",) + shared[1:3] + ('{"port":"\u00e9"}',)),
                     (raw[:-1], now[0], shared), (raw + b"\x00", now[0], shared)]:
            assert lane.take(*args) is None
            assert _state(d, nodes[0].dev) == before
        forged = bytearray(raw)
        forged[-3] ^= 0x40
        assert lane.take(bytes(forged), now[0], shared) is None
        assert _state(d, nodes[0].dev)[:5] == before[:5]       # (the LRU's order moves, as the Python lane's)
        taken = lane.take(raw, now[0], shared)
        assert taken is not None and taken[0] == nodes[0].dev and taken[1] == before[0] + 1
        assert lane.take(raw, now[0], shared) is None          # the same frame again: a replay, not the lane's
    asyncio.run(run())


def test_the_lane_keeps_no_memory_per_call(tmp_path):
    """A reference leaked per call would grow the heap with every reading a gateway hears."""
    nodes = [Node(0x00E10000 + i) for i in range(50)]
    now = [1_700_000_000.5]

    async def run():
        d = _daemon(tmp_path, nodes, now)
        lane = d.ingest.lane
        frames = [[n.reading(gas=g, pressure=p, **({"inlet": 300} if g % 2 else {})) for n in nodes]
                  for g, p in zip(range(1, 61), range(2000, 2060))]
        forged = [bytes(f[:-1]) + bytes([f[-1] ^ 1]) for f in frames[0]]

        def burst(rounds):
            taken = 0
            for fr in rounds:
                shared = lane.group("gw", now[0], SERIAL)
                for raw in fr:
                    taken += lane.take(raw, now[0], shared) is not None
                for raw in forged:
                    lane.take(raw, now[0], shared)
                now[0] += 0.5
            return taken
        assert burst(frames[:10]) == 500           # warm: every pressure text and key pad made
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        assert burst(frames[10:]) == 2500
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        assert grown < 64 * 1024, f"{grown} bytes kept over 5,000 calls"
    asyncio.run(run())


def test_the_gateway_says_which_lane_it_runs(tmp_path):
    now = [1_700_000_000.5]
    d = _daemon(tmp_path, [Node(0x00E20001)], now)
    assert d.ingest.lane.describe().startswith("compiled, ")
    python = fastlane.ReadingLane(d.verifier, d.presence, compiled=False)
    assert python.describe() == "in Python" and not python.compiled
    saved = fastlane._lane
    try:
        fastlane._lane = None               # as where the package was installed without a C compiler
        unbuilt = fastlane.ReadingLane(d.verifier, d.presence)
        assert not unbuilt.compiled and "not built" in unbuilt.describe()
    finally:
        fastlane._lane = saved


def test_the_installed_gateway_runs_the_compiled_lane(tmp_path):
    """The real `gasguard gateway run`, as installed: its start log names the compiled lane."""
    from gasguard.testing.config import write_config
    from gasguard.testing.gateway import GatewayProcess
    from gasguard.testing.mosquitto import free_port
    make_registry(tmp_path / "registry.db", [Node(7)])
    cfg = write_config(tmp_path / "gateway.toml", registry=tmp_path / "registry.db",
                       spool=tmp_path / "spool" / "spool.db", mqtt_port=free_port(),
                       udp=f"127.0.0.1:{free_port()}")
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    try:
        gw.wait_log("reading lane: compiled, ", timeout=30)
    finally:
        gw.close()
