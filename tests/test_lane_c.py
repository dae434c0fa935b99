"""The compiled reading lane (gateway/_lane.c, issue 17): built with the package, its SHA-256 and HMAC the same
bytes as hashlib's and hmac's (with the CPU's SHA extensions and without), inputs it does not know left to the
general path with nothing changed, no memory kept per call, and the gateway saying which lane it runs.
tests/test_fastlane.py holds its outcomes equal to the general path's."""

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


def test_the_lane_keeps_no_memory_per_call(tmp_path):
    """A reference leaked per call would grow the heap with every reading a gateway hears."""
    nodes = [Node(0x00E10000 + i) for i in range(50)]
    now = [1_700_000_000.5]
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


def test_a_lane_built_for_another_reading_layout_refuses_to_start(tmp_path):
    """The reading's layout sizes the C lane's buffers: a protocol whose layout changed without this module
    refuses at the lane's construction, naming the file, instead of reading past a frame."""
    d = _daemon(tmp_path, [Node(0x00E40001)], [1_700_000_000.5])
    args = dict(gas_txt=fastlane._GAS_TXT, battery_txt=fastlane._BATTERY_TXT, state_txt=fastlane._STATE_TXT,
                pressure_from_wire=fastlane.pressure_from_wire, pressure_txt=fastlane._pressure_txt,
                header=fastlane._READING_HDR, inlet_flag=fastlane.FLAG_INLET, recent=fastlane.RECENT,
                b0_head=fastlane._B0_HEAD, pads_max=fastlane.PADS_MAX, max_gap=fastlane.MAX_GAP,
                max_fcnt=fastlane.MAX_FCNT)
    lane = fastlane._lane.Lane(d.verifier, d.presence, layout=(fastlane._READING_LEN, fastlane.MIC_LEN,
                                                                fastlane.NA16, fastlane._REC), **args)
    assert callable(lane.take)
    with pytest.raises(ValueError, match="gateway/_lane.c was built for a reading of 19 bytes"):
        fastlane._lane.Lane(d.verifier, d.presence, layout=(fastlane._READING_LEN + 1, fastlane.MIC_LEN,
                                                             fastlane.NA16, fastlane._REC), **args)


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


def test_the_compiled_lane_answers_as_the_python_lane_on_mutated_frames(tmp_path):
    """A differential fuzz of the C lane's parsing and checks (the ingest fuzzer runs with the grading plugin,
    which turns the lane off): two daemons in the same state, one lane each, fed the same inputs - valid
    readings, the same with bytes flipped, cut or grown, headers of other types, random bytes - and the same
    odd per-device states (no rate bucket yet, another state byte, a retained state due, None where a number
    was). Each input must get the same answer from both and leave the same state behind."""
    rng = random.Random(11)
    nodes = [Node(0x00E30000 + i) for i in range(20)]
    make_registry(tmp_path / "registry.db", nodes)
    now = [1_700_000_000.5]

    def daemon(name, compiled):
        cfg = Config(gateway_id="gw", district="d", registry=tmp_path / "registry.db", spool=tmp_path / f"{name}.db",
                     mqtt_port=1, rate_per_min=600.0, rate_burst=5, offline_after=60.0)
        d = Daemon(cfg, clock=lambda: now[0], plugins=[])
        d.ingest.lane = fastlane.ReadingLane(d.verifier, d.presence, compiled=compiled)
        d.ingest.start()
        return d

    c, p = daemon("c", True), daemon("p", False)
    assert c.ingest.lane.compiled and not p.ingest.lane.compiled
    for _ in range(2):
        group = [(n.reading(), SERIAL, "serial:tty0") for n in nodes]
        c.process(group)
        p.process(group)
        now[0] += 1.0
    taken, restore = 0, []
    for i in range(30_000):
        n = rng.choice(nodes)
        k = rng.random()
        if k < 0.3:
            raw = n.reading(gas=rng.choice([0, 5, 1000, None]), pressure=rng.choice([2000, 40000, None]),
                            battery=rng.choice([90, None]), state=rng.choice([0, 0, 0, 0x08]),
                            **({"inlet": rng.choice([300, None, 50000])} if rng.random() < 0.3 else {}))
        elif k < 0.85:
            raw = bytearray(n.reading(**({"inlet": 400} if rng.random() < 0.3 else {})))
            for _ in range(rng.choice([1, 1, 2, 3])):
                what = rng.random() if raw else 1.0
                if what < 0.6:
                    raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
                elif what < 0.8:
                    del raw[rng.randrange(len(raw)):]
                else:
                    raw += bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 3])))
            raw = bytes(raw)
        else:
            raw = rng.randbytes(rng.choice([0, 1, 5, 19, 21, 40]))
        if rng.random() < 0.005:        # the same odd state on both sides, put back 200 inputs later
            dev = rng.choice(nodes).dev
            field, value = rng.choice([("tokens", None), ("tokens", 0.5), ("tokens", 3),
                                       ("sbyte", None), ("sbyte", 0x08), ("pub", -1e18), ("silence", 0),
                                       ("silence", 90), ("online", False), ("up", 0)])
            for d in (c, p):
                obj = d.verifier.states[dev] if field in ("tokens", "up") else d.presence.devices[dev]
                restore.append((i + 200, obj, field, getattr(obj, field)))
                setattr(obj, field, value)
        while restore and restore[0][0] <= i:
            _, obj, field, value = restore.pop(0)
            setattr(obj, field, value)
        # (~700 s in all: under a third of the devices' offline timeout, when the retained state's refresh
        # falls due; "pub" above puts that case in, which the lane takes and reports as due)
        now[0] += 0.01 if rng.random() < 0.995 else rng.choice([0.0, 0.5, 7.0])
        shared = c.ingest.lane.group("gw", now[0], SERIAL)
        a = c.ingest.lane.take(raw, now[0], shared)
        b = p.ingest.lane.take(raw, now[0], shared)
        assert a == b, (i, raw.hex())
        taken += a is not None
        dev = int.from_bytes(raw[1:5], "big") if len(raw) >= 5 else None
        if dev in c.verifier.states:
            assert _state(c, dev) == _state(p, dev), (i, raw.hex())
    assert taken > 3_000, "too few readings taken for the comparison to mean anything"


def test_the_lane_reads_and_writes_a_class_that_overrides_attribute_access_through_it(tmp_path):
    """The lane reads and writes ReplayState's and Presence's slots by their offsets (_lane.c, slots_t), taken from
    the classes' own descriptors. A class whose attribute access is its own - here a Presence that records what is
    set on it - must still see every change go through it, and the plain class, met again after it, must still be
    read and written right (the offsets are those of the class in hand)."""
    from gasguard.gateway.presence import Presence

    class Recording(Presence):
        __slots__ = ("sets",)

        def __setattr__(self, name, value):
            if name != "sets" and hasattr(self, "sets"):     # (not while __init__ sets the slots)
                self.sets.append(name)
            super().__setattr__(name, value)

    nodes = [Node(0x00E40000 + i) for i in range(3)]
    now = [1_700_000_000.5]
    d = _daemon(tmp_path, nodes, now)
    lane = d.ingest.lane
    rec = Recording()
    rec.sets = []
    for k in Presence.__slots__:
        object.__setattr__(rec, k, getattr(d.presence.devices[nodes[1].dev], k))
    d.presence.devices[nodes[1].dev] = rec
    for n in nodes:
        shared = lane.group("gw", now[0], SERIAL)
        taken = lane.take(n.reading(gas=7), now[0], shared)
        assert taken is not None and taken[0] == n.dev
        p = d.presence.devices[n.dev]
        assert (p.last_seen, p.r_gas, p.r_t, d.verifier.states[n.dev].up) == (now[0], 7, now[0], taken[1])
        now[0] += 1.0
    assert set(rec.sets) == {"last_seen", "r_fcnt", "r_gas", "r_pressure", "r_battery", "r_state", "r_inlet", "r_t"}


def test_a_groups_headers_read_in_c_are_the_python_loops(monkeypatch):
    """_lane.has_type and _lane.devices (ingest.has_alarm, ingest.group_devices) against their Python forms,
    on frames of every type, line noise (None), empty and short frames; a raw that is not bytes is left to the
    Python form (None)."""
    from gasguard.gateway import ingest
    rng = random.Random(5)
    lane = fastlane._lane
    for _ in range(3000):
        group = []
        for _ in range(rng.choice([0, 1, 2, 5, 40])):
            k = rng.random()
            raw = None if k < 0.1 else rng.randbytes(rng.choice([0, 1, 4, 5, 19, 21]))
            group.append((raw, SERIAL, "serial:tty0"))
        compiled = ingest.has_alarm(group), ingest.group_devices(group)
        monkeypatch.setattr(ingest, "_has_type", None)
        monkeypatch.setattr(ingest, "_frame_devices", None)
        assert (ingest.has_alarm(group), ingest.group_devices(group)) == compiled
        monkeypatch.undo()
    odd = [(bytearray(b"\x08\x00\x00\x00\x01"), SERIAL, "serial:tty0")]
    assert lane.devices(odd) is None and lane.has_type(odd, 1) is None
    assert ingest.has_alarm(odd) is True and ingest.group_devices(odd) == [1]
