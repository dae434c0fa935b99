"""Storage faults mid-run refuse, they do not crash (issue 12 item 4): the registry replaced by garbage or
deleted under a running gateway, the spool damaged under it. Each frame is refused and counted with a
reason, a metric and a CRITICAL line say so, the ingest task never restarts, and once the file is good again
the next alarm goes through. Real ptys, real mosquitto, the daemon in-process (metrics and log readable)."""

import logging
import os
import shutil
import sqlite3
import time

import pytest

from gasguard.protocol import frame
from gasguard.protocol.const import ALARM
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.mosquitto]

FAULT_FRAMES = 30


def _rejected_total(rig) -> float:
    return sum(s.value for m in rig.daemon.metrics.rejected.collect() for s in m.samples if s.name.endswith("_total"))


def _accepted_total(rig) -> float:
    return sum(s.value for m in rig.daemon.metrics.accepted.collect() for s in m.samples if s.name.endswith("_total"))


def _every_frame_counted(rig) -> None:
    frames_in = rig.metric("gasguard_gateway_frames_in_total", transport="serial")
    wait_until(lambda: _accepted_total(rig) + _rejected_total(rig) == frames_in, 10,
               "every frame in is accepted or counted as rejected")


def _alarm_goes_through(rig, node, cable) -> None:
    """A node retransmits an alarm until it is acked: new counter, same aseq (SPEC 3.4)."""
    raw = node.alarm(code=2)
    for _ in range(40):
        cable.send(raw)
        try:
            acks = wait_until(lambda: [node.open_downlink(x) for x in cable.downlinks()], 0.5, "ack")
            break
        except TimeoutError:
            raw = node.alarm(code=2, aseq=node.aseq)
    else:
        raise AssertionError("the alarm was never acked after the fault cleared")
    assert acks[0]["ref_type"] == ALARM and acks[0]["ref"] == node.aseq
    rig.sub.wait(lambda ms: [d for d in rig.sub.on("/alarm") if d["aseq"] == node.aseq], 10)


def _send_during_fault(rig, node, cable, reason: str) -> None:
    before = rig.rejected(reason)
    for i in range(FAULT_FRAMES):
        cable.send(node.alarm(code=2) if i % 5 == 0 else node.reading())
    wait_until(lambda: rig.rejected(reason) - before >= FAULT_FRAMES, 15, f"{FAULT_FRAMES} frames refused as {reason}")
    time.sleep(0.2)
    assert rig.rejected(reason) - before == FAULT_FRAMES
    # refused, so not acked: the node keeps its alarms and retransmits them
    assert [f for f in map(frame.decode, cable.downlinks()) if f["type"] == "ack"] == []


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["garbage", "deleted"])
def test_registry_replaced_by_garbage_or_deleted_mid_run_refuses_counts_and_recovers(tmp_path, mosquitto, caplog, how):
    caplog.set_level(logging.INFO)
    rig = Rig(tmp_path, mosquitto.port, extra="[batch]\ndelay = 0.1\n")
    good = tmp_path / "registry.good"
    shutil.copy(rig.registry, good)
    try:
        rig.start()
        a, b = rig.nodes
        cable = rig.cables[0]
        cable.send(a.reading())
        wait_until(lambda: _accepted_total(rig) == 1, 10, "a reading accepted")
        if how == "garbage":
            bad = tmp_path / "registry.bad"
            bad.write_bytes(os.urandom(16384))
            os.replace(bad, rig.registry)          # a botched copy over the real file
        else:
            rig.registry.unlink()
        time.sleep(1.2)                            # past the cache's stat interval (1 s): the change is seen
        _send_during_fault(rig, b, cable, "registry_unreadable")
        assert rig.metric("gasguard_gateway_storage_errors_total", store="registry", kind="unreadable") >= FAULT_FRAMES
        crit = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
        assert any("REGISTRY UNREADABLE" in m and str(rig.registry) in m and "import-registry" in m for m in crit), crit
        assert rig.runner.thread.is_alive()
        assert rig.metric("gasguard_gateway_task_restarts_total", task="ingest") == 0
        _every_frame_counted(rig)
        os.replace(good, rig.registry)             # restored: the next retransmission is accepted
        _alarm_goes_through(rig, b, cable)
        _every_frame_counted(rig)
        assert rig.metric("gasguard_gateway_task_restarts_total", task="ingest") == 0
    finally:
        rig.close()


@pytest.mark.timeout(90)
def test_a_spool_damaged_mid_run_refuses_and_counts_each_frame_and_keeps_running(tmp_path, mosquitto, caplog):
    caplog.set_level(logging.INFO)
    rig = Rig(tmp_path, mosquitto.port, extra="[batch]\ndelay = 0.1\n")
    try:
        rig.start()
        a, b = rig.nodes
        cable = rig.cables[0]
        for _ in range(5):
            cable.send(a.reading())
        wait_until(lambda: _accepted_total(rig) == 5, 10, "readings accepted")
        rig.runner.call(rig.daemon.spool.wait_checkpoint)     # every page in the main file, none in the WAL
        size = rig.spool.stat().st_size
        with sqlite3.connect(rig.spool) as db:
            page = db.execute("PRAGMA page_size").fetchone()[0]
        with open(rig.spool, "r+b") as f:                      # page 1 (the schema) stays, every page after is noise
            f.seek(page)
            f.write(os.urandom(size - page))
        # another writer touches page 1 only: the daemon's page cache is stale and it reads the file again, as
        # it would once the damaged pages fell out of its cache
        db = sqlite3.connect(rig.spool)
        db.execute("PRAGMA user_version = 1")
        db.close()
        _send_during_fault(rig, b, cable, "spool_corrupt")
        crit = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
        assert any("SPOOL WRITE FAILED (corrupt)" in m and str(rig.spool) in m and "move the damaged file aside" in m
                   for m in crit), crit
        assert rig.metric("gasguard_gateway_storage_errors_total", store="spool", kind="corrupt") > 0
        rig.ticks(10)                                          # the ticker reads the damaged file too
        assert rig.runner.thread.is_alive()
        for task in ("ingest", "publisher", "ticker"):
            assert rig.metric("gasguard_gateway_task_restarts_total", task=task) == 0, task
        _every_frame_counted(rig)
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged for a storage fault"
    finally:
        rig.close()
