"""The spool's disk policy, in-process over a pty and a real mosquitto: past spool.max_mb routine readings are
thinned with a published, counted event (alarms, events and non-routine readings never); a full disk is a
loud error that accepts nothing (so nothing is acked) and recovers; a backlog drains while a new alarm
goes first."""

import logging
import sqlite3
import time

import pytest

from gasguard.protocol import frame
from gasguard.protocol.const import ALARM
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(90)]

FAST = "[limits]\nrate_per_min = 1000000\nburst = 100000\n"


def _broker_down(rig, mosquitto):
    mosquitto.stop()
    wait_until(lambda: not rig.daemon.publisher.connected, 10, "gateway sees the broker gone")


def _accepted(rig, typ):
    return rig.metric("gasguard_gateway_accepted_total", type=typ)


def test_past_the_size_bound_routine_readings_are_thinned_and_reported(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, extra=FAST + "[spool]\nmax_mb = 0.03\n[batch]\ndelay = 0.1\n")
    skew = [0.0]
    try:
        rig.start(clock=lambda: time.time() + skew[0])
        _broker_down(rig, mosquitto)
        a, b = rig.nodes
        cable = rig.cables[0]
        keep = []                                    # ids that must survive: non-routine readings
        for i in range(600):
            cable.send(a.reading(gas=20, state=0))  # routine: no gas level, no fault, no trip
            if i % 50 == 0:
                cable.send(b.reading(gas=150, state=frame.make_state(0, False, 1, False, False, False)))
                keep.append(f"gw1:{b.dev:08x}:{b.fcnt}")
                cable.send(b.alarm(code=1, value=150))
                cable.send(a.event())
            if i % 100 == 99:                        # the gateway keeps up with the pty before more comes
                sent = i + 1 + len(keep)
                wait_until(lambda: _accepted(rig, "reading") == sent, 20, f"{sent} readings accepted")
        wait_until(lambda: _accepted(rig, "reading") == 600 + len(keep), 20, "all readings accepted")
        # (thinning runs right after the group's commit, so give the last group its moment)
        wait_until(lambda: rig.daemon.spool.size <= rig.cfg.spool_max_bytes, 5, "spool back under its bound")
        thinned = rig.runner.call(rig.metric, "gasguard_gateway_thinned_readings_total")
        assert thinned > 0
        mosquitto.start()
        skew[0] = 11.0                               # reports are at most one per 10 s: the next one is due
        n_keep = len(keep)
        rig.sub.wait(lambda ms: len(rig.sub.on("/alarm")) == n_keep and len(rig.sub.on(f"{a.dev:08x}/event")) == n_keep
                     and rig.sub.on("gw1/event"), 20)
        expected = 600 + n_keep - thinned
        rig.sub.wait(lambda ms: len(rig.readings()) >= expected, 20)
        rig.sub.wait(lambda ms: sum(r["detail"]["readings"] for r in rig.sub.on("gw1/event")) >= thinned, 10)
        ids = [r["id"] for r in rig.settle(b)]      # everything before this last reading: all there is
        assert len(ids) == len(set(ids)) == expected
        assert set(keep) <= set(ids)                 # non-routine readings are never thinned
        reports = rig.sub.on("gw1/event")
        assert all(r["event"] == "thinned" for r in reports)
        assert sum(r["detail"]["readings"] for r in reports) == thinned
        assert set().union(*(r["detail"]["devices"] for r in reports)) == {f"{a.dev:08x}"}
        rig.validated()
    finally:
        rig.close()


def test_full_disk_is_loud_accepts_nothing_and_recovers(tmp_path, mosquitto, caplog):
    caplog.set_level(logging.WARNING)
    rig = Rig(tmp_path, mosquitto.port, extra=FAST + "[batch]\ndelay = 0.1\n")
    try:
        rig.start(spool_max_pages=24)                # a "disk" of 24 SQLite pages: fills like a real one
        _broker_down(rig, mosquitto)
        a, b = rig.nodes
        cable = rig.cables[0]
        sent = 0
        while rig.rejected("spool_full") == 0 and sent < 3000:
            cable.send(a.reading())
            sent += 1
            if sent % 20 == 0:                       # each frame accepted or refused before more comes
                wait_until(lambda: _accepted(rig, "reading") + rig.rejected("spool_full") >= sent, 10, "handled")
        wait_until(lambda: rig.rejected("spool_full") > 0, 10, "the spool fills up")
        # a big group may fail where one small frame still fits: fill the last corners one frame at a time
        for _ in range(200):
            before = (_accepted(rig, "reading"), rig.rejected("spool_full"))
            cable.send(a.reading())
            wait_until(lambda: (_accepted(rig, "reading"), rig.rejected("spool_full")) != before, 5, "handled")
            if rig.rejected("spool_full") > before[1]:
                break
        assert "SPOOL WRITE FAILED" in caplog.text and "free disk space" in caplog.text
        assert any(r.levelno == logging.CRITICAL for r in caplog.records)
        # an alarm now cannot be written: it is not acked, so the device keeps it and retransmits
        full_before = rig.rejected("spool_full")
        raw = b.alarm(code=2)
        cable.send(raw)
        wait_until(lambda: rig.rejected("spool_full") > full_before, 10, "alarm refused while full")
        # (a refused group is counted after its acks would have been written: none can still come)
        assert [f for f in map(frame.decode, cable.downlinks()) if f["dev"] == b.dev] == []
        assert rig.runner.thread.is_alive() and rig.metric("gasguard_gateway_spool_errors_total") > 0
        with sqlite3.connect(rig.spool) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        accepted = int(_accepted(rig, "reading"))
        # the broker is back: the backlog drains, space frees, the retransmitted alarm goes through
        mosquitto.start()
        rig.sub.wait(lambda ms: len(rig.readings()) >= accepted, 20)
        acks = []
        for _ in range(20):                          # the node retransmits until acked: new counter, same aseq
            cable.send(b.alarm(code=2, aseq=b.aseq))
            try:
                acks = wait_until(lambda: [b.open_downlink(x) for x in cable.downlinks()], 0.5, "ack")
                break
            except TimeoutError:
                continue                             # (the last PUBACKs may not have freed the space yet)
        (al,) = rig.sub.wait(lambda ms: rig.sub.on("/alarm"), 10)
        assert acks[0]["ref_type"] == ALARM and acks[0]["ref"] == b.aseq and al["aseq"] == b.aseq
        ids = [r["id"] for r in rig.readings()]
        assert len(set(ids)) == accepted            # everything accepted before the disk filled is there
        frames_in = rig.metric("gasguard_gateway_frames_in_total", transport="serial")
        rejected = sum(s.value for m in rig.daemon.metrics.rejected.collect() for s in m.samples
                       if s.name.endswith("_total"))
        assert frames_in == accepted + 1 + rejected  # every frame either accepted or counted as rejected
        rig.validated()
    finally:
        rig.close()


def test_backlog_drains_while_a_new_alarm_goes_first(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, extra=FAST + "[batch]\ncount = 10\ndelay = 0.05\n")
    try:
        rig.cfg.inflight = 1                         # one batch per round trip: the drain takes ~300 of them,
        #                                              while alarms keep their own in-flight slots
        rig.start()
        _broker_down(rig, mosquitto)
        a, b = rig.nodes
        cable = rig.cables[0]
        for i in range(3000):
            cable.send(a.reading())
            if i % 100 == 99:                        # the gateway keeps up with the pty before more comes
                wait_until(lambda: _accepted(rig, "reading") == i + 1, 20, f"{i + 1} readings accepted")
        wait_until(lambda: _accepted(rig, "reading") == 3000, 20, "backlog spooled")
        mosquitto.start()
        rig.sub.wait(lambda ms: rig.readings(), 15)  # draining has begun
        cable.send(b.alarm(code=2))
        rig.sub.wait(lambda ms: rig.sub.on("/alarm"), 10)
        rig.sub.wait(lambda ms: len(rig.readings()) >= 3000, 30)
        order = [t.rsplit("/", 1)[-1] for t, _, _ in rig.sub.messages]
        at = order.index("alarm")
        backlog_after = order[at:].count("reading")
        assert backlog_after > 10, f"the alarm waited for the backlog ({backlog_after} batches after it)"
        ids = [r["id"] for r in rig.readings()]
        assert ids[:3000] == [f"gw1:{a.dev:08x}:{n}" for n in range(1, 3001)]   # in order, none lost
    finally:
        rig.close()
