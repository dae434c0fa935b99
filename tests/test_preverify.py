"""The verification worker (issue 17, gateway/preverify.py) proposes; the main process decides. The same
frame sequence - fresh readings, an exact duplicate, a replay, a forged MIC, an unknown device, a key
rotated mid-stream, a rate-limited device, alarms - must give the same accepted messages and the same
rejections by reason with the worker as without it, and the worker must actually have done the work."""

import sqlite3

import pytest

from gasguard.gateway.config import Config
from gasguard.gateway.daemon import Daemon
from gasguard.registry import Registry
from gasguard.testing.gateway import DaemonThread
from gasguard.testing.node import Node, make_registry
from gasguard.testing.mosquitto import free_port
from gasguard.testing.waits import wait_until

RX = {"transport": "test"}


def _sequence(nodes, rotated, new_key, stranger):
    a, b, c, r = nodes
    out = []
    for k in range(10):
        out += [a.reading(pressure=2000 + k), b.reading(pressure=2100 + k)]
    dup = a.reading(pressure=1)
    out += [dup, dup]                               # an exact copy: "duplicate"
    old = b.reading()
    out += [b.reading(), old]                       # an older counter after a newer one: "replay"
    forged = bytearray(c.reading())
    forged[-1] ^= 1
    out += [bytes(forged), c.reading()]             # a bad MIC, then a good frame
    out += [stranger.reading()]                     # not in the registry
    out += [c.reading() for _ in range(40)]         # past the burst of 30: rate_limit
    out += [a.alarm(), b.alarm(), a.reading()]
    rotated.key = new_key
    out += [rotated.reading() for _ in range(3)]    # the key was rotated in the registry: new key verifies
    return out


def _run(tmp_path, name, worker: bool):
    nodes = [Node(0x00E00000 + i, bytes([i + 1]) * 16) for i in range(4)]
    d = tmp_path / name
    d.mkdir()
    make_registry(d / "registry.db", nodes)
    new_key = bytes([0x5A]) * 16
    with Registry(d / "registry.db") as r:
        r.rotate_key(nodes[3].dev, new_key)
    frames = _sequence(nodes, nodes[3], new_key, Node(0x00EFFFFF))
    cfg = Config(gateway_id="gw1", district="d1", registry=d / "registry.db", spool=d / "spool.db",
                 udp_bind=f"127.0.0.1:{free_port()}", mqtt_port=free_port(), spool_audit=True, rate_burst=30, rate_per_min=1e-3,
                 verify_worker=worker)
    gw = DaemonThread(Daemon(cfg, plugins=[]))
    daemon = gw.daemon
    try:
        if worker:                                    # it starts in the background; until then: in-process
            wait_until(lambda: daemon.pre.ready, 30, "the verification worker to start")
        gw.call(lambda: [daemon._deliver_nowait(raw, RX, "test") for raw in frames] and None)
        total = len(frames)

        def seen():
            rej = sum(daemon.stats()["rejected"].values())
            return daemon.accepted_count + rej
        wait_until(lambda: seen() >= total, 30, f"all {total} frames decided")
        rejected = {k: v for k, v in daemon.stats()["rejected"].items() if v}
        used = daemon.verifier.pre_used
    finally:
        gw.stop()
    with sqlite3.connect(d / "spool.db") as db:
        accepted = sorted(m for (m,) in db.execute("SELECT msg_id FROM audit") if ":state:" not in m)
    return accepted, rejected, used


def test_the_worker_proposes_and_the_main_process_decides_exactly_as_without_it(tmp_path):
    acc0, rej0, used0 = _run(tmp_path, "inproc", worker=False)
    acc1, rej1, used1 = _run(tmp_path, "worker", worker=True)
    assert used0 == 0
    # c: one good reading, then 40 more against a burst of 30 that (almost) does not refill
    assert rej0 == {"duplicate": 1, "replay": 1, "mic": 1, "unknown_device": 1, "rate_limit": 11}, rej0
    assert rej1 == rej0
    assert acc1 == acc0 and len(acc0) > 50
    assert used1 >= len(acc0) - 5      # the worker verified (nearly) everything that was accepted


@pytest.mark.parametrize("raw", [b"", b"\x00" * 3, b"\xff" * 40])
def test_the_worker_refuses_garbage_without_deciding(raw):
    from gasguard.gateway import preverify
    preverify._W.update(registry=type("R", (), {"get": lambda self, d: None})(), gid="gw", last={})
    assert preverify._verify(0.0, [(raw, RX)]) == [None]
