"""Issue 17: a commit's rows handed to a caught-up publisher in memory (Outbox._spool -> Publisher.take) instead
of read back from the spool (Spool.fetch). The real daemon in-process over a pty, a real mosquitto, a real
SQLite spool: the common case reads nothing back; a backlog drains by fetch, in order, and then the handoff
takes over; with the sync thread (`[ingest] commit_thread`) no row goes out before its fsync; the seqs a
commit hands over are the rows' own (their PUBACKs delete exactly them). Kills: tests/test_gateway_faults.py."""

import threading

import pytest

from gasguard.gateway import spool as spool_mod
from gasguard.gateway.spool import ALARM, EVENT, READING, Item, Spool
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(90)]

FAST = "[limits]\nrate_per_min = 1000000\nburst = 100000\n"


class Counted:
    """Spool.fetch, counting its calls (the daemon's loop thread calls it; the test thread reads)."""

    def __init__(self, spool):
        self.real, self.calls, self.lock = spool.fetch, 0, threading.Lock()
        spool.fetch = self

    def __call__(self, *a, **kw):
        with self.lock:
            self.calls += 1
        return self.real(*a, **kw)


def _accepted(rig, typ="reading"):
    return rig.metric("gasguard_gateway_accepted_total", type=typ)


def _send(rig, node, n, *, alarm_every=0, other=None, base=0):
    """n readings of `node` (and an alarm of `other` every `alarm_every`), paced so the gateway keeps up."""
    cable = rig.cables[0]
    for i in range(n):
        cable.send(node.reading())
        if alarm_every and i % alarm_every == 0:
            cable.send(other.alarm(code=1, value=150))
        if i % 50 == 49:
            want = base + i + 1
            wait_until(lambda: _accepted(rig) >= want, 20, f"{want} readings accepted")


def _in_order(rig, node, upto):
    ids = [r["id"] for r in rig.readings() if r["dev"] == f"{node.dev:08x}"]
    assert ids == [f"gw1:{node.dev:08x}:{n}" for n in range(1, upto + 1)], "lost, repeated or out of order"


def _drained(rig):
    d = rig.daemon
    wait_until(lambda: rig.runner.call(lambda: not d.publisher.inflight and not d.publisher.acked
                                       and all(n == 0 for n, _ in d.spool.depth().values())), 10,
               "every row PUBACKed and deleted")
    # the ranges deleted on PUBACK were the handed rows' own seqs: nothing is left, and the size agrees
    assert rig.runner.call(d.spool._measure) == d.spool.size


def test_a_caught_up_publisher_is_handed_the_rows_and_reads_nothing_back(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, extra=FAST + "[batch]\ndelay = 0.05\n")
    try:
        d = rig.start()
        a, b = rig.nodes
        rig.settle(a)                       # the first fill read each lane once (nothing there): settled
        fetch = Counted(d.spool)
        _send(rig, a, 400, alarm_every=40, other=b, base=1)
        rig.settle(a)
        rig.sub.wait(lambda ms: len(rig.sub.on("/alarm")) == 10, 10)
        assert fetch.calls == 0, f"{fetch.calls} reads of rows the publisher was handed"
        _in_order(rig, a, 402)
        assert len({x["id"] for x in rig.sub.on("/alarm")}) == 10
        _drained(rig)
        rig.validated()
    finally:
        rig.close()


def test_a_backlog_drains_by_fetch_in_order_then_the_handoff_takes_over(tmp_path, mosquitto):
    """2,500 readings spooled while the broker is away (past a page, PAGE_READINGS), more arriving during the
    drain (their commits find the cursor behind: not handed, fetched after the backlog), then the publisher is
    caught up and reads nothing back."""
    rig = Rig(tmp_path, mosquitto.port, extra=FAST + "[batch]\ncount = 50\ndelay = 0.05\n")
    try:
        rig.cfg.inflight = 2                 # a slow drain: readings arrive while it runs
        d = rig.start()
        a, b = rig.nodes
        mosquitto.stop()
        wait_until(lambda: not d.publisher.connected, 10, "gateway sees the broker gone")
        _send(rig, a, 2500)
        wait_until(lambda: _accepted(rig) == 2500, 20, "backlog spooled")
        fetch = Counted(d.spool)
        mosquitto.start()
        rig.sub.wait(lambda ms: rig.readings(), 15)                     # draining has begun
        _send(rig, a, 300, alarm_every=100, other=b, base=2500)         # during the drain
        rig.sub.wait(lambda ms: len(rig.readings()) >= 2800, 30)
        assert fetch.calls >= 2, "the backlog was not read back a page at a time"
        # caught up: a reading now is handed over (its batch waits for company, so the buffer is not empty
        # when the commits that follow it come: they are appended)
        rig.settle(a)
        fetch.calls = 0
        _send(rig, a, 200, alarm_every=50, other=b, base=2801)
        got = rig.settle(a)
        assert fetch.calls == 0, f"{fetch.calls} fetches once caught up"
        _in_order(rig, a, 3002)
        assert len(got) == 3001
        rig.sub.wait(lambda ms: len(rig.sub.on("/alarm")) == 7, 10)
        _drained(rig)
    finally:
        rig.close()


class Published(dict):
    """Publisher.inflight, checking each spooled message as it goes out: none of its rows past durable_upto."""

    def __init__(self, d, was):
        super().__init__(was)
        self.spool, self.early, self.out = d.spool, [], 0

    def __setitem__(self, mid, flight):
        self.out += 1
        if flight.last > self.spool.durable_upto:
            self.early.append((flight, self.spool.durable_upto))
        super().__setitem__(mid, flight)


def test_with_the_sync_thread_no_row_goes_out_before_its_fsync(tmp_path, mosquitto):
    """`[ingest] commit_thread`: a burst's groups are written with durable=False and synced on a thread; those
    rows are not handed over (nor fetched) before synced(); an alarm's commit, synced at once, is handed."""
    rig = Rig(tmp_path, mosquitto.port, extra=FAST + "[ingest]\ncommit_thread = true\n[batch]\ndelay = 0.02\n")
    try:
        d = rig.start()
        a, b = rig.nodes
        rig.settle(a)
        deferred, taken = [], []
        commit, take = d.spool.commit, d.publisher.take

        def noting(items, *args, durable=True, **kw):
            deferred.append(not durable and d.spool.deferred_sync)
            return commit(items, *args, durable=durable, **kw)

        def taking(items, last, before):
            n = sum(len(x) for x in d.publisher.buf.values())
            take(items, last, before)
            taken.append(sum(len(x) for x in d.publisher.buf.values()) - n)

        def install():
            d.spool.commit, d.publisher.take = noting, taking
            d.publisher.inflight = published = Published(d, d.publisher.inflight)
            return published
        published = rig.runner.call(install)
        route = d.serial[0]
        rx = {"transport": "serial", "port": route.name if hasattr(route, "name") else "ttyGG0"}
        sent = 1
        for burst in range(6):
            # a burst queued at once, as a transport's reads under load: frames wait behind each group, and
            # its groups of readings are written durable=False (the deferred sync's case)
            frames = []
            for i in range(1000):
                frames.append((a.reading(), rx, route))
                if i % 250 == 0:
                    frames.append((b.alarm(code=1, value=150), rx, route))
            rig.runner.call(lambda: [d.ingest.deliver_nowait(*f) for f in frames])
            sent += 1000
            wait_until(lambda: _accepted(rig) >= sent, 30, f"{sent} readings accepted")
        got = rig.settle(a)
        assert any(deferred), "no commit was deferred to the sync thread: the test proves nothing"
        assert any(taken), "nothing was handed over"
        assert published.out > 0 and published.early == [], f"published before synced: {published.early[:3]}"
        assert len(got) == sent
        _in_order(rig, a, sent + 1)
        assert rig.rejected("ingest_overflow") == 0
        rig.sub.wait(lambda ms: len(rig.sub.on("/alarm")) == 24, 10)
        _drained(rig)
    finally:
        rig.close()


# --- the seqs a commit reports ---------------------------------------------------------------------------

@pytest.mark.parametrize("deferred", [False, True])
def test_a_commit_reports_the_seqs_its_rows_got_and_each_lane_s_last(tmp_path, monkeypatch, deferred):
    """One writer, one executemany: a commit's AUTOINCREMENT seqs are consecutive and end at the returned
    last (what Publisher.take builds its rows' seqs from) - with rows deleted before (gaps in the table), mixed
    lanes, a fold of the counter log in the commit, the audit, and after a reopen. With deferred_sync a commit
    that folds is still synced (durable_upto reaches it) and counted in the size."""
    monkeypatch.setattr(spool_mod, "LOG_ROWS", 2)          # a fold every few commits
    path = tmp_path / "spool.db"
    s = Spool(path, audit=True, deferred_sync=deferred)
    lanes = (READING, ALARM, READING, EVENT, READING)
    n = folds = 0
    expect = [0] * 4            # each lane's last seq committed (deleted rows included: the publisher's cursor)
    try:
        for k in range(12):
            if k == 6:
                s.close()
                s = Spool(path, audit=True, deferred_sync=deferred)
                expect = [s.db.execute("SELECT coalesce(max(seq), 0) FROM outbox WHERE lane = ?", (lane,)).fetchone()[0]
                          for lane in range(4)]
            items = []
            for j in range(k % 4 + 1):
                n += 1
                items.append(Item(lanes[(k + j) % len(lanes)], 1, "{}", f"m{n}", float(n)))
            last = s.commit(items, {(k, 0): k + 1})
            rows = s.db.execute("SELECT seq, lane, msg_id FROM outbox ORDER BY seq DESC LIMIT ?",
                                (len(items),)).fetchall()[::-1]
            assert rows == [(last - len(items) + 1 + i, it.lane, it.msg_id) for i, it in enumerate(items)]
            for i, it in enumerate(items):
                expect[it.lane] = last - len(items) + 1 + i
            assert s.lane_last == expect
            folds += s.log_rows == 0        # this commit folded the log (its counters with it)
            if deferred:
                assert s.durable_upto == s.written_upto == last
            assert s.size == s._measure()
            if k % 3 == 2:        # PUBACKed rows go: the next seqs still follow on (AUTOINCREMENT, not max + 1)
                s.delete_ranges([(lane, 0, last) for lane in range(4)], s.size)
        assert s.commit([], {(99, 0): 1}) == 0
        assert folds >= 2
    finally:
        s.close()


def test_a_commit_that_would_take_the_buffer_past_a_page_is_left_for_fetch(tmp_path):
    """Bounded memory: a publisher that falls behind while caught up (its buffer not drained) is handed rows
    only up to a page's bounds (PAGE, PAGE_READINGS, PAGE_BYTES); the rest stays in the spool and is read
    back after the buffer, in order, none twice. (The publisher is never started; `connected` stands for a
    broker that takes nothing.)"""
    import time

    from gasguard.gateway import config as gwconfig
    from gasguard.gateway.metrics import Metrics
    from gasguard.gateway.publisher import PAGE, PAGE_READINGS, Publisher
    from gasguard.testing.config import write_config

    spool = Spool(tmp_path / "spool.db")
    cfg = gwconfig.load(write_config(tmp_path / "gateway.toml", registry=tmp_path / "registry.db",
                                     spool=tmp_path / "spool.db", mqtt_port=1, udp="127.0.0.1:1700"))
    try:
        pub = Publisher(cfg, spool, Metrics(), time.time, "test")
        pub.connected = True
        fetch = Counted(spool)
        assert pub._peek(READING) is None and fetch.calls == 1        # caught up with an empty spool
        payloads = []
        for k in range(40):                  # 40 rows of 100 readings: twice a page
            p = ",".join(f'{{"id":"r{k}-{j}"}}' for j in range(100))
            payloads.append(p)
            items = [Item(READING, 1, p, f"r{k}-0", float(k), count=100)]
            before = spool.lane_last[:]
            last = spool.commit(items)
            pub.take(items, last, before)
            pub.notify({READING})
            b = pub.buf[READING]
            assert len(b) <= PAGE and sum(r.count for r in b) <= PAGE_READINGS
        assert fetch.calls == 1 and len(pub.buf[READING]) == PAGE_READINGS // 100    # handed: one page
        seen = []
        while pub._peek(READING) is not None:
            seen.append(pub.buf[READING].popleft().payload)
        assert seen == payloads and fetch.calls >= 2
    finally:
        spool.close()
