"""With `[ingest] commit_thread` (issue 17), ingest writes a group of readings that arrives while more frames
wait at once, and syncs it on its sync thread while it verifies and writes the next group. A group is counted, published and observed only once its
fsync returned (the publisher is not handed rows that are not on disk); an alarm never waits for that thread
(its own commit is synced at once, which makes the groups before it durable: they are acted on first, in
arrival order);
writes stay in order on the event loop, so the next group is verified on every counter written before it;
a failed fsync is loud and counted; the spool runs SQLite at synchronous=NORMAL and fsyncs the log itself
after every commit, which is what synchronous=FULL does."""

import asyncio
import os
import threading

from gasguard.gateway import ingest as ingest_mod
from gasguard.gateway.config import Config
from gasguard.gateway.daemon import Daemon
from gasguard.gateway.spool import Item, Spool, SpoolError, READING
from gasguard.testing.node import Node, make_registry
from gasguard.testing.waits import until

RX = {"transport": "test"}


def _daemon(tmp_path, nodes, fail_first=False):
    """The daemon with its first sync held until `go` (and failing then, with fail_first): the disk is slow."""
    make_registry(tmp_path / "registry.db", nodes)
    cfg = Config(gateway_id="gw", district="d", registry=tmp_path / "registry.db", spool=tmp_path / "spool.db",
                 mqtt_port=1, rate_burst=100, commit_thread=True)
    daemon = Daemon(cfg, plugins=[])
    real = daemon.spool.sync
    entered, go = threading.Event(), threading.Event()
    calls = []

    def sync():
        calls.append(threading.current_thread().name)
        if len(calls) == 1 and threading.current_thread() is not threading.main_thread():
            entered.set()
            go.wait(10)
            if fail_first:
                raise SpoolError("io", cfg.spool, "fsync of its write-ahead log failed (Input/output error)")
        real()
    daemon.spool.sync = sync
    return daemon, entered, go, calls


def _rows(daemon) -> int:
    return daemon.spool.db.execute("SELECT coalesce(sum(count), 0) FROM outbox WHERE lane = ?", (READING,)).fetchone()[0]


def _close(daemon):
    daemon.spool.close()
    daemon.registry.close()
    daemon.gate.close()


async def _stop(ing, task):
    ing.drain()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_the_next_group_is_verified_and_written_while_the_last_syncs_and_counted_after_its_sync(tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.setattr(ingest_mod, "GROUP_MAX", 5)   # a group of 5: its copy waits behind it in the queue
    node, other = Node(0x00E00001), Node(0x00E00002)
    daemon, entered, go, calls = _daemon(tmp_path, [node, other])
    ing = daemon.ingest
    seen = []                                       # the devices of the frames acted on, in order
    committed = ing._committed

    def noting(g, **kw):
        seen.extend(dev for dev, _via, _rx in g.routes)
        committed(g, **kw)
    ing._committed = noting
    first = [node.reading(pressure=2000 + k) for k in range(5)]     # counters 1..5
    second = [node.reading(pressure=3000 + k) for k in range(5)]    # counters 6..10: the same device

    async def run():
        ing.start()
        task = asyncio.create_task(ing.run())
        # more frames waiting behind each group (a copy, refused as a duplicate): the groups are deferred
        await ing.deliver_many([(raw, RX, "test") for raw in first])
        await ing.deliver_many([(first[0], RX, "test")])      # (a read is never split: the copy is another)
        await until(entered.is_set, 10, "the first group's sync on the thread")
        assert ing.accepted_count == 0 and _rows(daemon) == 5     # written, not yet acted on
        await ing.deliver_many([(raw, RX, "test") for raw in second])
        await ing.deliver_many([(second[0], RX, "test")])
        await until(lambda: len(ing.written) == 1, 10, "the second group written during the sync")
        assert _rows(daemon) == 10 and ing.accepted_count == 0
        assert daemon.spool.counters()[(node.dev, 0)] == 10       # verified on the counters written before
        assert daemon.spool.fetch(READING, 0, 100) == []          # not on disk yet: not for the publisher
        # an alarm meanwhile: synced by itself and taken at once, not behind the held sync
        await ing.deliver(other.alarm(), RX, "test")
        await until(lambda: ing.accepted_count == 11, 10, "the alarm accepted while the readings' sync is held")
        # its own fsync made everything written before it durable: the readings went first (arrival order) and
        # may go out now
        assert sum(r.count for r in daemon.spool.fetch(READING, 0, 100)) == 10
        assert seen == [node.dev] * 10 + [other.dev]      # the readings, then the alarm
        go.set()                                    # the held sync returns late: nothing is acted on twice
        await until(lambda: ing.syncing is None, 10, "the sync thread done")
        for raw in first + second:                  # replays: refused
            await ing.deliver(raw, RX, "test")
        await until(lambda: sum(daemon.stats()["rejected"].get(r, 0) for r in ("replay", "duplicate")) == 12,
                    10, "the replays refused")
        await _stop(ing, task)

    asyncio.run(run())
    assert calls[0].startswith("spool-sync") and "MainThread" in calls      # the thread's, and the alarm's own
    assert ing.accepted_count == 11 and len(seen) == 11
    assert daemon.metrics.spool_errors._value.get() == 0      # both syncs (thread's, alarm's) succeeded
    _close(daemon)


def test_a_failed_fsync_is_loud_and_counted_and_what_was_written_still_goes_out(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(ingest_mod, "GROUP_MAX", 5)
    node = Node(0x00E00001)
    daemon, entered, go, calls = _daemon(tmp_path, [node], fail_first=True)
    ing = daemon.ingest

    async def run():
        ing.start()
        task = asyncio.create_task(ing.run())
        group = [node.reading() for _ in range(5)]
        await ing.deliver_many([(raw, RX, "test") for raw in group])
        await ing.deliver_many([(group[0], RX, "test")])       # waiting behind it: the group is deferred
        await until(entered.is_set, 10, "the sync on the thread")
        go.set()
        await until(lambda: ing.accepted_count == 5, 10, "the group acted on after its failed sync")
        await _stop(ing, task)

    asyncio.run(run())
    assert daemon.metrics.spool_errors._value.get() >= 1
    assert "SPOOL WRITE FAILED (io)" in caplog.text and "fsync" in caplog.text
    assert _rows(daemon) == 5                       # a commit cannot be taken back: it is published
    _close(daemon)


def test_deferred_sync_runs_sqlite_at_normal_and_fsyncs_the_log_after_every_durable_commit(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):                                  # the real fsync, noting which file it made durable
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    s = Spool(tmp_path / "spool.db", deferred_sync=True)
    try:
        assert s.db.execute("PRAGMA synchronous").fetchone() == (1,)          # NORMAL: SQLite does not sync
        item = Item(READING, 1, '{"id":"x"}', "x", 0.0)
        synced.clear()
        s.commit([item], {(1, 0): 1})
        assert synced == [f"{tmp_path}/spool.db-wal"]                         # ... the spool does, at once
        s.commit([item], {(1, 0): 2}, durable=False)
        assert synced == [f"{tmp_path}/spool.db-wal"]                         # deferred to the caller's sync()
        s.sync()
        assert len(synced) == 2
    finally:
        s.close()
    full = Spool(tmp_path / "full.db")                                        # the default: SQLite's FULL
    try:
        assert full.db.execute("PRAGMA synchronous").fetchone() == (2,)
    finally:
        full.close()


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
        await asyncio.sleep(0)                      # (one turn of the loop: the put runs and waits)
        assert not blocked.done()                   # a stream transport waits (back-pressure)
        frames = [raw for raw, _, _ in q.take_all()]
        assert frames == [b"a"] * 6 + [b"b"] + [b"c"] * 4 and q.qsize() == 0
        await asyncio.wait_for(blocked, 1)
        assert q.qsize() == 1

    asyncio.run(run())
