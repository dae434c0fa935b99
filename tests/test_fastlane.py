"""The reading lane (gateway/fastlane.py, issue 17) changes nothing but the cost: two gateways, one with the lane
and one without, fed the same groups of frames on the same clock, end every group with the same spool rows
(payload text included), the same counters, replay memory, rate buckets, presence, registry LRU order and
metrics. The groups mix what the lane takes (routine and non-routine readings, with and without inlet
pressure, values not available, a device's first reading) with everything it must leave to the general path:
unknown and decommissioned devices, forged MICs, replays and second-path copies, an empty rate bucket, alarms, and
the lane's readings that publish a state (first sight, state changes, the refresh) and one an rx the JSON encoder
refuses.

Each test runs twice: with the lane compiled (gateway/_lane.c: the gateway's lane wherever the package was built
with a C compiler, so these runs fail where it was not built) and with the Python lane (its reference)."""

import asyncio
import random
import sqlite3

import pytest

from gasguard.gateway.config import Config
from gasguard.gateway.daemon import Daemon
from gasguard.gateway.fastlane import ReadingLane
from gasguard.registry import Registry
from gasguard.testing.node import Node, make_registry

SERIAL = {"transport": "serial", "port": "tty0", "rssi": None, "snr": None}
RADIO = {"transport": "udp", "gw": "aa555a0000000001", "rssi": -97, "snr": 7.5, "freq": 470.3}
HUGE = {"transport": "udp", "gw": "aa555a0000000002", "rssi": -80, "snr": 1.0, "tmst": 1 << 70}


def _daemon(tmp_path, name, clock, lane: bool, compiled: bool = True) -> Daemon:
    """A gateway on its own spool under tmp_path/name (started again on it when the folder is there)."""
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    cfg = Config(gateway_id="gw", district="d", registry=tmp_path / "registry.db", spool=d / "spool.db",
                 mqtt_port=1, rate_per_min=600.0, rate_burst=3, offline_after=60.0)
    daemon = Daemon(cfg, clock=clock, plugins=[])
    if not lane:
        daemon.ingest.lane = None
    else:
        assert isinstance(daemon.ingest.lane, ReadingLane)
        assert daemon.ingest.lane.compiled, "the compiled lane is not built: pip install -e . with a C compiler"
        if not compiled:
            daemon.ingest.lane = ReadingLane(daemon.verifier, daemon.presence, compiled=False)
    return daemon


def _rows(daemon: Daemon) -> list:
    with sqlite3.connect(daemon.cfg.spool) as db:
        return [db.execute("SELECT lane, dev, topic, count, payload, msg_id, t, routine, retain FROM outbox "
                           "ORDER BY seq").fetchall(),
                db.execute("SELECT * FROM counters ORDER BY dev, dir").fetchall()]


def _memory(daemon: Daemon) -> dict:
    v, p = daemon.verifier, daemon.presence
    return {"replay": {d: (s.up, s.tokens, s.t_bucket, s.recent) for d, s in v.states.items()},
            "presence": {d: tuple(getattr(s, k) for k in s.__slots__ if k != "via") + (s.via,)
                         for d, s in p.devices.items()},
            # the retained states due, in order, with the text each would be published with now
            "due": [(d, t, p.state_text(d, p.devices[d].pub, p.devices[d])) for d, t in p.due.items()],
            "lru": list(v.registry.cached),
            "accepted": {tuple(s.labels.items()): s.value for m in daemon.metrics.accepted.collect()
                         for s in m.samples if s.name.endswith("_total")},
            "rejected": {tuple(s.labels.items()): s.value for m in daemon.metrics.rejected.collect()
                         for s in m.samples if s.name.endswith("_total")},
            "count": daemon.accepted_count}


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_lane_leaves_every_outcome_as_the_general_path_does(tmp_path, seed, compiled):
    rng = random.Random(seed)
    nodes = [Node(0x00D00000 + i) for i in range(12)]
    gone, stranger = Node(0x00D000FE), Node(0x00D000FF)
    make_registry(tmp_path / "registry.db", nodes + [gone])
    with Registry(tmp_path / "registry.db") as r:
        r.decommission(gone.dev)
    now = [1_700_000_000.25]
    clock = lambda: now[0]  # noqa: E731
    a, b = _daemon(tmp_path, "lane", clock, True, compiled), _daemon(tmp_path, "general", clock, False)
    sent: list[bytes] = []
    taken, due = [0], [0]
    lane_run = a.ingest.lane.run    # the lane's loop (compiled: one call takes a run of frames)

    def counting(group, i, *args):
        *rest, published, up = args

        def pub(dev, sbyte):         # the lane's readings that publish the retained state
            due[0] += 1
            return published(dev, sbyte)
        j = lane_run(group, i, *rest, pub, up)
        taken[0] += j - i
        return j
    a.ingest.lane.run = counting

    def one() -> bytes:
        k = rng.random()
        n = rng.choice(nodes)
        if k < 0.55:          # routine (mostly) or not, values and inlet as nodes send them
            return n.reading(gas=rng.choice([0, 3, 17, 250, 1000, None]), pressure=rng.choice([2000, 2100, 0, None]),
                             battery=rng.choice([90, 0, 100, None]),
                             state=rng.choice([0, 0, 0, 0, 0x08, 0x40, 0x15]),
                             **({"inlet": rng.choice([400_000, 300, None])} if rng.random() < 0.3 else {}))
        if k < 0.62:
            return n.alarm(code=rng.choice([1, 2, 3]))
        if k < 0.68 and sent:
            return rng.choice(sent)                     # a replay, or a second path's copy within the window
        if k < 0.72:
            raw = bytearray(n.reading())
            raw[-1] ^= 0x01                             # a forged MIC
            return bytes(raw)
        if k < 0.75:
            return rng.choice([gone, stranger]).reading()
        if k < 0.78:
            keep = n.fcnt
            n.fcnt += 20_000                            # past the counter window (the node itself goes on)
            raw = n.reading()
            n.fcnt = keep
            return raw
        return n.reading()

    async def run():
        a.ingest.start()
        b.ingest.start()
        for step in range(200):
            group = []
            for _ in range(rng.choice([1, 2, 8, 40])):
                raw = one()
                sent.append(raw)
                group.append((raw, rng.choice([SERIAL, SERIAL, SERIAL, RADIO, HUGE]), "serial:tty0"))
                if rng.random() < 0.02:
                    group.append((None, SERIAL, "crc"))
            a.process(list(group))
            b.process(list(group))
            assert _memory(a) == _memory(b), f"group {step}"
            assert _rows(a) == _rows(b), f"group {step}"
            # time passes: buckets refill (or not), the retained state falls due for refresh, devices go quiet
            # (offline, as the daemon's tick marks them: their next reading brings them back online)
            now[0] += rng.choice([0.0, 0.05, 0.5, 3.0, 25.0, 70.0, 130.0, 1000.0, 3000.0])
            for d in (a, b):
                quiet = d.presence.gone_quiet(now[0])
                if quiet:
                    d.outbox.commit([item for _dev, _s, item in quiet])
    asyncio.run(run())
    assert taken[0] > 300, "the lane took too few frames for the comparison to mean anything"
    assert due[0] > 30, "the lane published too few retained states for the comparison to mean anything"
    assert a.accepted_count > taken[0]            # and the general path decided the rest


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
def test_a_reading_the_lane_takes_is_the_general_paths_entry_text(tmp_path, compiled):
    """Field by field over the value ranges (the JSON text is written from parts in the lane)."""
    node = Node(0x00D10001)
    make_registry(tmp_path / "registry.db", [node])
    now = [1_700_000_123.4567]
    a, b = (_daemon(tmp_path, "lane", lambda: now[0], True, compiled),
            _daemon(tmp_path, "general", lambda: now[0], False))
    rng = random.Random(5)
    groups = []
    for _ in range(60):
        groups.append([(node.reading(gas=rng.choice([None, rng.randrange(0, 1001)]),
                                     pressure=rng.choice([None, rng.randrange(0, 32768),
                                                          32768 + rng.randrange(0, 10_000)]),
                                     battery=rng.choice([None, rng.randrange(0, 101)]), state=0,
                                     **({"inlet": rng.choice([None, rng.randrange(0, 32768), 400_000])}
                                        if rng.random() < 0.5 else {})), SERIAL, "serial:tty0")
                       for _ in range(3)])

    async def run():
        a.ingest.start()
        b.ingest.start()
        for g in groups:
            a.process(g)
            b.process(g)
            now[0] += 2.001            # within the rate bucket
    asyncio.run(run())
    ra, rb = _rows(a), _rows(b)
    assert ra == rb
    assert sum(r[3] for r in ra[0] if r[2] is None) == 180


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
def test_an_empty_frame_is_refused_alone_not_with_its_group(tmp_path, compiled):
    """A Semtech datagram may carry `"data": ""`. The Python lane read its header byte before its length and
    raised IndexError, and ingest refused the whole group (up to 512 frames) as internal_error."""
    nodes = [Node(0x00D20000 + i) for i in range(3)]
    make_registry(tmp_path / "registry.db", nodes)
    now = [1_700_000_000.25]
    d = _daemon(tmp_path, "d", lambda: now[0], True, compiled)

    async def run():
        d.ingest.start()
        for _ in range(2):      # heard: the lane takes their next readings
            d.process([(n.reading(), SERIAL, "serial:tty0") for n in nodes])
            now[0] += 2.0
        before = d.accepted_count
        d.process([(nodes[0].reading(), RADIO, "udp"), (b"", RADIO, "udp"), (nodes[1].reading(), RADIO, "udp"),
                   (nodes[2].reading(), RADIO, "udp")])
        assert d.accepted_count == before + 3
        rejected = _memory(d)["rejected"]
        assert not any(v for k, v in rejected.items() if ("reason", "internal_error") in k), rejected
        assert sum(rejected.values()) == 1, rejected
    asyncio.run(run())


def test_a_frame_the_lane_declines_is_offered_to_it_once(tmp_path):
    """Where the lane's run stops (a frame take() declines: here alarms, between readings it takes), the general
    path goes on from that frame without asking the lane again: one take() a frame. (The Python lane: its loop
    calls the take that is counted here.)"""
    nodes = [Node(0x00D30000 + i) for i in range(40)]
    make_registry(tmp_path / "registry.db", nodes)
    now = [1_700_000_000.25]
    d = _daemon(tmp_path, "lane", lambda: now[0], True, compiled=False)
    lane, calls = d.ingest.lane, [0]
    take = lane.take

    def counting(*args):
        calls[0] += 1
        return take(*args)
    lane.take = counting

    async def run():
        d.ingest.start()
        d.process([(n.reading(), SERIAL, "serial:tty0") for n in nodes[:20]])           # heard: the lane takes these
        calls[0] = 0
        group = [(raw, SERIAL, "serial:tty0") for n in nodes[:20] for raw in (n.reading(), n.alarm(code=1))]
        d.process(group)
        return len(group)
    n = asyncio.run(run())
    assert d.accepted_count == 20 + n
    assert calls[0] == n, f"{calls[0]} take() calls for {n} frames"


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
def test_the_lane_takes_a_devices_first_reading_and_the_first_after_a_restart(tmp_path, compiled):
    """A device's first reading (no replay state, no presence) and its first after the gateway restarted (a counter
    loaded from the spool, an untouched rate bucket) are the lane's, and leave what the general path leaves: the
    replay state, a full bucket less one, the device counted heard and its retained state published."""
    nodes = [Node(0x00D40000 + i) for i in range(30)]
    make_registry(tmp_path / "registry.db", nodes)
    now = [1_700_000_000.25]
    clock = lambda: now[0]  # noqa: E731

    def counted(d):
        taken = [0]
        lane_run = d.ingest.lane.run

        def run(group, i, *args):
            j = lane_run(group, i, *args)
            taken[0] += j - i
            return j
        d.ingest.lane.run = run
        return taken

    async def feed(pairs, groups):
        for a, b in pairs:
            a.ingest.start()
            b.ingest.start()
        for group in groups:
            for a, b in pairs:
                a.process(list(group))
                b.process(list(group))
                assert _memory(a) == _memory(b)
                assert _rows(a) == _rows(b)
            now[0] += 1.0

    a, b = _daemon(tmp_path, "lane", clock, True, compiled), _daemon(tmp_path, "general", clock, False)
    taken = counted(a)
    groups = [[(n.reading(), SERIAL, "serial:tty0") for n in nodes[k:k + 10]] for k in (0, 10, 20)]
    asyncio.run(feed([(a, b)], groups))
    assert taken[0] == len(nodes), f"the lane took {taken[0]} of {len(nodes)} first readings"
    assert a.presence.counts() == (len(nodes), 0) and list(a.presence.due) == [n.dev for n in nodes]
    for d in (a, b):
        d.spool.close()
    # restarted on the same spools: the counters come back, nothing else does - the states that were due (never
    # published: no broker here) neither, and each device's is due again with its first reading after the restart
    a2, b2 = _daemon(tmp_path, "lane", clock, True, compiled), _daemon(tmp_path, "general", clock, False)
    assert set(a2.verifier.states) == {n.dev for n in nodes} and not a2.presence.devices and not a2.presence.due
    assert a2.spool.depth()["state"][0] == 0
    taken = counted(a2)
    asyncio.run(feed([(a2, b2)], [[(n.reading(), SERIAL, "serial:tty0") for n in nodes]]))
    assert taken[0] == len(nodes), f"the lane took {taken[0]} of {len(nodes)} first readings after the restart"
    assert list(a2.presence.due) == [n.dev for n in nodes]
    assert {s.tokens for s in a2.verifier.states.values()} == {a2.verifier.burst - 1.0}

