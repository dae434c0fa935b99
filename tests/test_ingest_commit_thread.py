"""Ingest writes a group of readings on its commit thread while it verifies the next group (issue 17), when
the two share no device. When the write fails (a full disk) its group is refused and counted and undone;
the group verified meanwhile depends on nothing of it and is written as it is. A group sharing a device
waits for the write and is verified on what is on disk. Every frame is counted once, nothing refused can
be slipped in later, nothing accepted replayed."""

import asyncio
import json
import threading

from gasguard.gateway.config import Config
from gasguard.gateway.daemon import Daemon
from gasguard.gateway.spool import SpoolFull
from gasguard.testing.node import Node, make_registry

RX = {"transport": "test"}


async def _until(pred, what, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.002)


def _daemon(tmp_path, nodes):
    make_registry(tmp_path / "registry.db", nodes)
    cfg = Config(gateway_id="gw", district="d", registry=tmp_path / "registry.db", spool=tmp_path / "spool.db",
                 mqtt_port=1, rate_burst=100)
    daemon = Daemon(cfg, plugins=[])
    outbox = daemon.outbox
    real = outbox.commit_readings
    entered, go = threading.Event(), threading.Event()
    calls = []

    def commit_readings(items, counters):          # the disk: full for the first write, then fine
        calls.append(len(items))
        if len(calls) == 1:
            entered.set()
            go.wait(10)
            raise SpoolFull(cfg.spool, "database or disk is full")
        real(items, counters)
    outbox.commit_readings = commit_readings
    return daemon, entered, go, calls


def _ids(daemon) -> list[str]:
    rows = daemon.spool.fetch(3, 0, 100)           # the readings share rows (spool.Item)
    return [e["id"] for r in rows for e in json.loads("[" + r.payload + "]")]


def _close(daemon):
    daemon.spool.close()
    daemon.registry.close()
    daemon.gate.close()


async def _stop(ing, task):
    ing.drain()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_a_group_of_other_devices_is_verified_during_a_write_and_kept_when_that_write_fails(tmp_path):
    a, b = Node(0x00E00001), Node(0x00E00002)
    daemon, entered, go, calls = _daemon(tmp_path, [a, b])
    ing = daemon.ingest
    first = [a.reading(pressure=2000 + k) for k in range(5)]
    second = [b.reading(pressure=3000 + k) for k in range(5)]

    async def run():
        ing.start()
        task = asyncio.create_task(ing.run())
        for raw in first:
            await ing.deliver(raw, RX, "test")
        await _until(entered.is_set, "the first group on the commit thread")
        for raw in second:
            await ing.deliver(raw, RX, "test")
        await _until(lambda: ing.prepared is not None, "the second group verified during the write")
        go.set()
        await _until(lambda: ing.accepted_count == 5 and ing.committing is None, "the second group written")
        for raw in first + second:                  # a's frames were refused: now they are new; b's are replays
            await ing.deliver(raw, RX, "test")
        await _until(lambda: ing.accepted_count == 10, "a's frames accepted when sent again")
        await _stop(ing, task)

    asyncio.run(run())
    stats = daemon.stats()
    assert stats["rejected"].get("spool_full") == 5 and stats["rejected"].get("duplicate") == 5
    assert len(calls) == 3                          # the failed write, then b's, then a's: all on the thread
    assert sorted(_ids(daemon)) == sorted([f"gw:{b.dev:08x}:{c}" for c in range(1, 6)]
                                          + [f"gw:{a.dev:08x}:{c}" for c in range(1, 6)])
    frames_in = sum(s.value for m in daemon.metrics.frames_in.collect() for s in m.samples
                    if s.name.endswith("_total"))
    assert frames_in == 20 == ing.accepted_count + 5 + 5     # each frame counted once: accepted or refused
    _close(daemon)


def test_a_group_sharing_a_device_waits_for_the_write_and_is_verified_on_what_is_on_disk(tmp_path):
    node = Node(0x00E00001)
    daemon, entered, go, calls = _daemon(tmp_path, [node])
    ing = daemon.ingest
    first = [node.reading(pressure=2000 + k) for k in range(5)]     # counters 1..5
    second = [node.reading(pressure=3000 + k) for k in range(5)]    # counters 6..10

    async def run():
        ing.start()
        task = asyncio.create_task(ing.run())
        for raw in first:
            await ing.deliver(raw, RX, "test")
        await _until(entered.is_set, "the first group on the commit thread")
        for raw in second:
            await ing.deliver(raw, RX, "test")
        await _until(lambda: ing.queue.empty(), "the second group taken")
        assert ing.prepared is None and ing.verifier.states[node.dev].up == 5   # not verified on top of it
        go.set()
        await _until(lambda: ing.accepted_count == 5 and ing.committing is None, "the second group written")
        for raw in first + second:                  # replays of both now: refused, nothing accepted
            await ing.deliver(raw, RX, "test")
        await _until(lambda: sum(daemon.stats()["rejected"].get(r, 0) for r in ("replay", "duplicate")) == 10,
                     "the replays refused")
        await _stop(ing, task)

    asyncio.run(run())
    assert daemon.stats()["rejected"].get("spool_full") == 5   # the first group: refused, counted
    assert ing.accepted_count == 5                              # the second: verified after it, accepted
    assert daemon.spool.counters()[(node.dev, 0)] == 10
    assert ing.verifier.states[node.dev].up == 10
    assert _ids(daemon) == [f"gw:{node.dev:08x}:{c}" for c in range(6, 11)]
    _close(daemon)


def test_the_verification_queue_is_bounded_in_frames_whatever_the_reads_hold():
    from gasguard.gateway.ingest import FrameQueue

    async def run():
        q = FrameQueue(10)
        await q.put([(b"a", RX, "r")] * 6)          # one read of 6 frames
        q.put_nowait((b"b", RX, "r"))
        assert q.qsize() == 7 and not q.full()
        await q.put([(b"c", RX, "r")] * 4)          # passes the bound by at most one read
        assert q.full()
        blocked = asyncio.ensure_future(q.put([(b"d", RX, "r")]))
        await asyncio.sleep(0)
        assert not blocked.done()                   # a stream transport waits (back-pressure)
        frames = [raw for raw, _, _ in q.take_all()]
        assert frames == [b"a"] * 6 + [b"b"] + [b"c"] * 4 and q.qsize() == 0
        await asyncio.wait_for(blocked, 1)
        assert q.qsize() == 1

    asyncio.run(run())
