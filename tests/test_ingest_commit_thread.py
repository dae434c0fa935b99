"""Ingest writes a group of readings on its commit thread while it verifies the next group (issue 17). The
next group is verified on top of the counters of the one being written; when that write fails (a full
disk), both are undone newest first, the failed group is refused and counted, the next is verified again
from the durable counters and accepted - and nothing of the refused group can be slipped in later, nor
anything of the accepted one replayed."""

import asyncio
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


def test_a_failed_write_undoes_the_group_verified_behind_it_and_verifies_it_again(tmp_path):
    node = Node(0x00E00001)
    make_registry(tmp_path / "registry.db", [node])
    cfg = Config(gateway_id="gw", district="d", registry=tmp_path / "registry.db", spool=tmp_path / "spool.db",
                 mqtt_port=1, rate_burst=100)
    daemon = Daemon(cfg, plugins=[])
    ing, outbox = daemon.ingest, daemon.outbox
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

    first = [node.reading(pressure=2000 + k) for k in range(5)]     # counters 1..5
    second = [node.reading(pressure=3000 + k) for k in range(5)]    # counters 6..10

    async def go_():
        ing.start()
        task = asyncio.create_task(ing.run())
        for raw in first:
            await ing.deliver(raw, RX, "test")
        await _until(entered.is_set, "the first group on the commit thread")
        for raw in second:
            await ing.deliver(raw, RX, "test")
        await _until(lambda: ing.prepared is not None, "the second group verified behind it")
        assert ing.verifier.states[node.dev].up == 10     # on top of the first group's counters
        go.set()
        await _until(lambda: ing.accepted_count == 5, "the second group accepted")
        await _until(lambda: ing.committing is None, "nothing left on the commit thread")
        # replays of both groups now: all refused, nothing accepted
        for raw in first + second:
            await ing.deliver(raw, RX, "test")
        await _until(lambda: sum(daemon.stats()["rejected"].get(r, 0) for r in ("replay", "duplicate")) == 10,
                     "the replays refused")
        ing.drain()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go_())
    rej = daemon.stats()["rejected"]
    assert rej.get("spool_full") == 5                  # the first group: refused, counted
    assert ing.accepted_count == 5                     # the second: verified again, accepted
    assert len(calls) == 1 and calls[0] >= 5          # the second group went to disk at once, not threaded
    assert daemon.spool.counters()[(node.dev, 0)] == 10
    assert ing.verifier.states[node.dev].up == 10
    readings = [r for r in daemon.spool.fetch(3, 0, 100)]
    assert [r.msg_id for r in readings] == [f"gw:{node.dev:08x}:{c}" for c in range(6, 11)]
    daemon.spool.close()
    daemon.registry.close()
    daemon.gate.close()
