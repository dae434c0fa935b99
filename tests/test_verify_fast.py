"""The reading fast path (gateway/verify.py `Verifier._reading`, issue 17) gives exactly what the general path
(protocol.frame.open_frame through `Verifier.check`) gives: the same fields in the same order for every
frame it takes, and it takes nothing the general path would refuse or name differently (it answers None
and the general path decides)."""

import random
import struct

import pytest

from gasguard.gateway.verify import RegistryCache, Rejected, Verifier
from gasguard.protocol import frame
from gasguard.protocol.const import UP
from gasguard.protocol.units import P_MAX
from gasguard.registry import Registry
from gasguard.testing.node import Node, make_registry


@pytest.fixture
def setup(tmp_path):
    nodes = [Node(0x00C00000 + i) for i in range(8)]
    gone = Node(0x00C000FF)
    make_registry(tmp_path / "registry.db", nodes + [gone])
    with Registry(tmp_path / "registry.db") as r:
        r.decommission(gone.dev)
    cache = RegistryCache(tmp_path / "registry.db")
    yield nodes, gone, cache
    cache.close()


def _fields(rng: random.Random, node: Node, fcnt: int) -> dict:
    f = {"type": "reading", "dev": node.dev, "fcnt": fcnt,
         "gas": rng.choice([None, 0, 1, 77, 1000, rng.randrange(0, 1001)]),
         "pressure": rng.choice([None, 0, 2000, 32767, 32768 + rng.randrange(0, 10_000), P_MAX]),
         "battery": rng.choice([None, 0, 55, 100]), "state": rng.randrange(0, 256)}
    if rng.random() < 0.4:
        f["inlet"] = rng.choice([None, 0, 400_000, rng.randrange(0, 32768)])
    return f


def test_every_reading_the_fast_path_takes_has_the_general_paths_fields_and_counter(setup):
    nodes, _gone, cache = setup
    rng = random.Random(17)
    v = Verifier(cache, {}, rate_per_min=1e9, burst=10**9)
    last = {n.dev: 0 for n in nodes}
    taken = 0
    for _ in range(3000):
        n = rng.choice(nodes)
        # forward steps of every size the counter window allows, 16-bit wraps included
        step = rng.choice([1, 1, 1, 2, 0xFFFF, 0x10000, 0x10001, 16384, 16385, rng.randrange(1, 16385)])
        fcnt = last[n.dev] + step
        raw = frame.seal(_fields(rng, n, fcnt), n.key, UP)
        want = frame.open_frame(raw, n.key, UP, last[n.dev], 16384) if step <= 16384 else None
        got = v._reading(raw, len(raw), 0.0)
        if want is None:
            assert got is None                      # past the gap: the general path names it
            continue
        assert got is not None
        assert list(got.f.items()) == list(want.items())   # same keys, same order, same values
        v.accept(got, 0.0)
        last[n.dev] = fcnt
        taken += 1
    assert taken > 1500


def test_the_fast_path_declines_whatever_the_general_path_refuses_or_names(setup):
    nodes, gone, cache = setup
    a, b = nodes[0], nodes[1]
    v = Verifier(cache, {a.dev: 10, b.dev: 5}, rate_per_min=60, burst=2)
    a.fcnt = 10
    declined = {
        "forged": bytearray(a.reading()),
        "replay": None,
        "unknown": Node(0x00DEAD01).reading(),
        "decommissioned": gone.reading(),
        "gas past 100 % LEL": None,
        "battery past 100 %": None,
        "reserved device": None,
        "truncated": a.reading()[:-1],
    }
    declined["forged"][-1] ^= 1
    declined["forged"] = bytes(declined["forged"])
    b.fcnt = 2
    declined["replay"] = b.reading()                # counter 3 after 5
    body = struct.pack(">HHBB", 1001, 2000, 90, 0)  # gas 1001 on the wire: a field error
    hdr = struct.pack(">BIH", 0x40, a.dev, 99)
    declined["gas past 100 % LEL"] = _signed(hdr + body, a.key, 99)
    declined["battery past 100 %"] = _signed(hdr + struct.pack(">HHBB", 1, 2000, 101, 0), a.key, 99)
    declined["reserved device"] = _signed(struct.pack(">BIH", 0x40, 0, 99) + struct.pack(">HHBB", 1, 2, 3, 0),
                                          a.key, 99)
    for name, raw in declined.items():
        if len(raw) in (19, 21):
            assert v._reading(raw, len(raw), 0.0) is None, name
        with pytest.raises(Rejected):
            v.check(raw, 0.0)                       # the general path refuses each, with its own reason
    # the rate limit is the same decision on both paths: the third reading of a burst of 2 is refused
    for _ in range(2):
        v.accept(v.check(a.reading(), 0.0), 0.0)
    with pytest.raises(Rejected) as r:
        v.check(a.reading(), 0.0)
    assert r.value.reason == "rate_limit"


def _signed(data: bytes, key: bytes, fcnt: int) -> bytes:
    from gasguard.protocol import mic
    return data + mic.compute(key, UP, fcnt, data)


@pytest.mark.parametrize("klen", [1, 16, 32, 63, 64, 65, 100])
def test_mic_from_pads_equals_hmac(klen):
    """The fast paths' HMAC from precomputed pads (verify.hmac_sha256) gives hmac.digest's bytes, for keys
    shorter than, equal to and longer than SHA-256's block (hashed first), and again once the pads are kept."""
    import hmac

    from gasguard.gateway import verify
    rng = random.Random(klen)
    key = bytes(rng.randrange(256) for _ in range(klen))
    for n in (0, 26, 64, 200):
        msg = bytes(rng.randrange(256) for _ in range(n))
        want = hmac.digest(key, msg, "sha256")
        assert verify.hmac_sha256(key, msg) == want
        assert verify.hmac_sha256(key, msg) == want       # from the kept pads: copied, not consumed
    assert key in verify._PADS


def test_pads_are_bounded(monkeypatch):
    from gasguard.gateway import verify
    monkeypatch.setattr(verify, "PADS_MAX", 4)
    monkeypatch.setattr(verify, "_PADS", {})
    for i in range(10):
        verify.hmac_sha256(bytes([i]) * 16, b"m")
        assert len(verify._PADS) <= 4
