"""Issue 17: a spool row may carry many readings. Real SQLite spools and, where a message goes out, the real
daemon and a real mosquitto: rows merge into batch messages by readings and bytes with the readings' bytes
unchanged, a spool written by the gateway before the change keeps working, pages and thinning stay bounded
and count readings."""

import json
import sqlite3
import time

import orjson
import pytest

from gasguard.gateway import config as gwconfig, payloads
from gasguard.gateway.metrics import Metrics
from gasguard.gateway.publisher import PAGE, PAGE_BYTES, PAGE_READINGS, Publisher
from gasguard.gateway.spool import ALARM, READING, Item, Spool
from gasguard.testing.config import write_config
from gasguard.testing.rig import Rig
from gasguard.testing.subscriber import Subscriber
from gasguard.testing.waits import wait_until

RX = {"transport": "serial", "port": "ttyGG0", "rssi": None, "snr": None}


def _entries(dev: int, first: int, n: int, t: float = 1_700_000_000.0, state: int = 0) -> list[str]:
    """n readings of `dev` as ingest encodes them (counters first..first+n-1)."""
    out = []
    for fcnt in range(first, first + n):
        f = {"dev": dev, "fcnt": fcnt, "gas": 0, "pressure": 2000, "battery": 90, "state": state}
        out.append(payloads.reading_json(f, t + fcnt / 1000, RX))
    return out


def _fields(entry: str) -> dict:
    """An entry's fields by name, as consumers read it (gasguard.readings/3: the id made from the gateway's)."""
    return payloads.reading_fields("gw1", json.loads(entry))


def _row(entries: list[str], dev: int, routine: bool = True) -> Item:
    first = _fields(entries[0])
    return Item(READING, dev, ",".join(entries), first["id"], first["t"], routine=routine, count=len(entries))


def _rows(dev: int, sizes: list[int], first: int = 1, **kw) -> tuple[list[Item], list[list[str]]]:
    """Rows of the given sizes of consecutive readings of `dev`; also each row's entries."""
    items, parts = [], []
    for n in sizes:
        e = _entries(dev, first, n)
        first += n
        items.append(_row(e, dev, **kw))
        parts.append(e)
    return items, parts


class RawSubscriber(Subscriber):
    """The rig's subscriber, keeping each reading message's bytes as well."""

    def __init__(self, *a, **kw):
        self.raw: list[bytes] = []
        super().__init__(*a, **kw)

    def _msg(self, c, u, m) -> None:
        if m.topic.endswith("/reading"):
            with self.cond:
                self.raw.append(m.payload)
        super()._msg(c, u, m)


# --- the schema written before issue 17 (gateway/spool.py as of e2b909c): the outbox without `count` ----------
OLD_OUTBOX = """
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    lane INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    topic TEXT,              -- NULL: a reading that travels in a batch message
    payload TEXT NOT NULL,   -- JSON
    msg_id TEXT NOT NULL,
    t REAL NOT NULL,
    routine INTEGER NOT NULL DEFAULT 0,
    retain INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_lane ON outbox(lane, seq);
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_a_spool_written_before_the_upgrade_keeps_its_rows_and_drains_them_first(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, extra="[batch]\ndelay = 0.05\n")
    old_dev = 0x00B00001                       # (not in the registry: its readings were accepted by the old run)
    new = _entries(old_dev, 1, 5)
    # what the old gateway left: a row per reading, each a gasguard.readings/1 object
    old = [json.dumps(_fields(e), separators=(",", ":")) for e in new]
    with sqlite3.connect(rig.spool) as db:
        db.executescript(OLD_OUTBOX)
        db.executemany("INSERT INTO outbox (lane, dev, topic, payload, msg_id, t, routine) "
                       "VALUES (3, ?, NULL, ?, ?, ?, 1)",
                       [(old_dev, e, json.loads(e)["id"], json.loads(e)["t"]) for e in old])
    try:
        mosquitto.stop()
        rig.start(wait=False)
        rig.runner.wait_ports(10)
        spool = rig.daemon.spool
        assert rig.runner.call(spool.depth)["reading"] == (5, json.loads(old[0])["t"])
        with sqlite3.connect(rig.spool) as db:
            assert "count" in {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
            # rewritten as rows at the start (the publisher merges rows into one batch format), once
            assert db.execute("SELECT count, payload FROM outbox ORDER BY seq").fetchall() == [(1, e) for e in new]
            assert db.execute("SELECT v FROM meta WHERE k = 'reading_rows'").fetchone() == ("2",)
        assert spool.size == spool._measure()
        a = rig.nodes[0]
        rig.cables[0].send(a.reading())        # a new reading, after the upgrade
        wait_until(lambda: rig.metric("gasguard_gateway_accepted_total", type="reading") == 1, 10, "accepted")
        mosquitto.start()
        got = [r["id"] for r in rig.settle(a)]
        assert got == [json.loads(e)["id"] for e in old] + [f"gw1:{a.dev:08x}:1"]
        rig.validated()
    finally:
        rig.close()


def test_a_second_start_on_a_migrated_spool_changes_nothing(tmp_path):
    path = tmp_path / "spool.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_OUTBOX)
        db.execute("INSERT INTO outbox (lane, dev, topic, payload, msg_id, t) VALUES (3, 1, NULL, '{}', 'r1', 1.0)")
    Spool(path).close()
    s = Spool(path)
    try:
        assert s.depth()["reading"] == (1, 1.0)
        idx = {r[1] for r in s.db.execute("PRAGMA index_list(outbox)")}
        assert "outbox_lanes" in idx and "outbox_lane" not in idx
        plan = s.db.execute("EXPLAIN QUERY PLAN SELECT coalesce(sum(count), 0) FROM outbox WHERE lane = 3").fetchall()
        assert "COVERING INDEX outbox_lanes" in plan[0][3]     # depth() never reads the rows (or their payloads)
    finally:
        s.close()


# --- the publisher: rows merged into batch messages ---------------------------------------------------------

def _groups(sizes: list[int], sizes_bytes: list[int], count: int, nbytes: int, head: int = 200) -> list[list[int]]:
    """The batching rule of issue 17, written out: consecutive rows while the readings stay <= count and the
    message <= nbytes; a row past either goes alone. Returns the row indexes of each message."""
    out, cur, n, b = [], [], 0, head
    for i, (c, sz) in enumerate(zip(sizes, sizes_bytes)):
        if cur and (n + c > count or b + sz + 1 > nbytes):
            out.append(cur)
            cur, n, b = [], 0, head
        cur.append(i)
        n += c
        b += sz + 1
    return out + [cur] if cur else out


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_rows_of_many_readings_merge_into_batches_by_readings_and_bytes(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, extra="[batch]\ndelay = 0.05\n", sub=False)
    rig.sub = RawSubscriber(mosquitto.port, client_id=f"raw-{id(rig)}", clean=False)
    dev = 0x00B00002
    try:
        rig.start()
        d = rig.daemon
        # by readings (batch.count 200): the broker is down while they are spooled, so they drain together
        mosquitto.stop()
        wait_until(lambda: not d.publisher.connected, 10, "the gateway sees the broker gone")
        sizes = [150, 60, 200, 250, 30, 30, 30, 1, 1]
        items, parts = _rows(dev, sizes)
        rig.runner.call(d.outbox.commit, items)
        assert rig.runner.call(d.spool.depth)["reading"][0] == sum(sizes)        # readings, not rows
        rig.runner.call(d.update_gauges)
        assert rig.metric("gasguard_gateway_spool_depth", lane="reading") == sum(sizes)
        mosquitto.start()
        want = _groups(sizes, [len(",".join(p)) for p in parts], 200, d.cfg.batch_bytes)
        assert want == [[0], [1], [2], [3], [4, 5, 6, 7, 8]]
        rig.sub.wait(lambda ms: len(rig.sub.raw) >= len(want), 20)
        # phase 2, connected, by bytes: rows of 10 readings (~600 B: a serial port's rx as its text) under batch.bytes 2,500
        d.cfg.batch_bytes = 2_500
        sizes2 = [10] * 7 + [60] + [10] * 2
        items2, parts2 = _rows(dev, sizes2, first=sum(sizes) + 1)
        rig.runner.call(d.outbox.commit, items2)
        want2 = _groups(sizes2, [len(",".join(p)) for p in parts2], 200, 2_500)
        assert want2 == [[0, 1, 2], [3, 4, 5], [6], [7], [8, 9]]
        rig.sub.wait(lambda ms: len(rig.sub.raw) >= len(want) + len(want2), 20)
        wait_until(lambda: rig.metric("gasguard_gateway_published_total", lane="reading") == len(want) + len(want2),
                   10, "every PUBACK counted")
        raw = list(rig.sub.raw)
        assert len(raw) == len(want) + len(want2)
        expect = [[e for i in g for e in parts[i]] for g in want] + [[e for i in g for e in parts2[i]] for g in want2]
        for body, entries in zip(raw, expect):
            # the same bytes as one entry per row made: each reading's JSON unchanged, joined by commas
            assert body.endswith(('"readings":[' + ",".join(entries) + "]}").encode())
            assert orjson.loads(body)["schema"] == "gasguard.readings/3"
        for body in raw[len(want):]:
            doc = orjson.loads(body)
            assert len(body) <= 2_500 or len(doc["readings"]) == 60       # only the oversize row goes over
        # PUBACK deleted every row; the latency is one observation per message; the size is what is left
        wait_until(lambda: rig.runner.call(d.spool.depth)["reading"][0] == 0, 10, "rows deleted on PUBACK")
        assert rig.metric("gasguard_gateway_publish_latency_seconds_count", lane="reading") == len(raw)
        assert rig.runner.call(d.spool._measure) == d.spool.size
        rig.validated()
    finally:
        rig.close()


def test_a_page_of_the_spool_is_bounded_by_readings_and_bytes(tmp_path):
    """A backlog of full rows (200 readings, ~50 kB each) is loaded a bounded page at a time, not PAGE rows
    (1000 rows of 200 would be 200,000 readings at once)."""
    spool = Spool(tmp_path / "spool.db")
    cfg = gwconfig.load(write_config(tmp_path / "gateway.toml", registry=tmp_path / "registry.db",
                                     spool=tmp_path / "spool.db", mqtt_port=1, udp="127.0.0.1:1700"))
    try:
        dev = 0x00B00003
        sizes = [200] * 60 + [1] * 1500
        items, parts = _rows(dev, sizes)
        spool.commit(items)
        pub = Publisher(cfg, spool, Metrics(), time.time, "test")   # never started: no broker involved
        seen, pages, biggest = [], 0, 0
        while pub._peek(READING) is not None:
            page = list(pub.buf[READING])
            pages += 1
            readings = sum(r.count for r in page)
            assert len(page) <= PAGE
            # a page stops at the row that reaches either bound
            assert sum(r.count for r in page[:-1]) < PAGE_READINGS
            assert sum(len(r.payload) for r in page[:-1]) < PAGE_BYTES
            biggest = max(biggest, readings)
            assert pub.loaded_upto() == page[-1].seq          # (thinning leaves what is loaded alone)
            seen.extend(r.payload for r in page)
            pub.buf[READING].clear()
        assert seen == [",".join(p) for p in parts]
        assert biggest < PAGE_READINGS + 200 and pages >= 60 * 200 // PAGE_READINGS + 1500 // PAGE
        # the bytes bound alone: the page ends with the row that passes it
        page = spool.fetch(READING, 0, PAGE, nbytes=100_000)
        assert sum(len(r.payload) for r in page[:-1]) < 100_000 <= sum(len(r.payload) for r in page)
    finally:
        spool.close()


def test_the_audit_keeps_every_reading_of_a_many_reading_row(tmp_path):
    s = Spool(tmp_path / "spool.db", audit=True)
    try:
        items, parts = _rows(0x00B00004, [3, 1])
        s.commit(items + [Item(ALARM, 4, "{}", "alarm-1", 2.0, topic="x/alarm")])
        ids = {m for (m,) in s.db.execute("SELECT msg_id FROM audit")}
        assert ids == {_fields(e)["id"] for p in parts for e in p} | {"alarm-1"}
    finally:
        s.close()


# --- thinning ---------------------------------------------------------------------------------------------

def test_thinning_keeps_every_other_reading_inside_rows_and_counts_them_per_device(tmp_path):
    s = Spool(tmp_path / "spool.db", max_bytes=1 << 30)
    try:
        a, b = 0x00B00005, 0x00B00006
        protected, _ = _rows(a, [7])                                     # in flight: never touched
        mixed = _entries(a, 8, 3) + _entries(b, 1, 2)                    # two devices in one row
        rows = [protected[0], _row(mixed, a), _rows(b, [4], first=3)[0][0], _rows(a, [1], first=11)[0][0],
                _row(_entries(b, 7, 4, state=0x08), b, routine=False),   # not routine: kept whole
                Item(ALARM, b, "{}", "al", 3.0, topic="x/alarm")]
        s.commit(rows)
        before = {seq: (n, p) for seq, n, p in s.db.execute("SELECT seq, count, payload FROM outbox")}
        # every other routine reading after the protected row, across rows: mixed keeps a8 a10 b2 and drops a9
        # b1; b's row of 4 drops b3 b5 and keeps b4 b6; the single a11 is dropped. Under 90 % of the bound
        # after that one pass, the thinning stops: the bound is set to less than that pass frees
        routine_bytes = sum(len(r.payload) for r in rows[1:4])
        s.max_bytes = int((s.size - routine_bytes // 3) / 0.9)
        dropped = s.thin(protect_below=1)
        assert dropped == {a: 2, b: 3}
        left = {seq: (n, p, mid, t) for seq, n, p, mid, t in
                s.db.execute("SELECT seq, count, payload, msg_id, t FROM outbox WHERE lane = 3")}
        assert left[1][:2] == before[1]                                   # the protected row, as it was
        ids = {seq: [payloads.reading_fields("gw1", r)["id"] for r in json.loads("[" + p + "]")]
               for seq, (n, p, _, _) in left.items()}
        assert all(len(ids[seq]) == n for seq, (n, _, _, _) in left.items())
        assert ids[2] == ["gw1:00b00005:8", "gw1:00b00005:10", "gw1:00b00006:2"]
        assert ids[3] == ["gw1:00b00006:4", "gw1:00b00006:6"]
        assert 4 not in left                                              # a11: a row of one, deleted
        assert left[5][:2] == before[5]                                   # non-routine: untouched
        # the kept entries are the same text; count, msg_id and t follow the first kept reading
        assert left[2][1] == ",".join([mixed[0], mixed[2], mixed[4]])
        assert left[2][2:] == (rows[1].msg_id, rows[1].t)                 # its first reading was kept
        assert left[3][2] == "gw1:00b00006:4" and left[3][3] == _fields(_entries(b, 4, 1)[0])["t"]
        assert s.db.execute("SELECT count(*) FROM outbox WHERE lane = 0").fetchone() == (1,)
        assert s.size == s._measure()
        assert s.depth()["reading"][0] == 7 + 3 + 2 + 4
    finally:
        s.close()


def test_thinning_passes_again_until_under_the_bound_and_stops_at_one_reading(tmp_path):
    s = Spool(tmp_path / "spool.db", max_bytes=1 << 30)
    try:
        items, _ = _rows(0x00B00007, [200, 200, 1, 99])
        s.commit(items)
        s.max_bytes = 1                                                   # no bound can be met: thin to the end
        assert s.thin(protect_below=0) == {0x00B00007: 499}
        (n, p), = s.db.execute("SELECT count, payload FROM outbox").fetchall()
        assert n == 1 and _fields(p)["id"] == "gw1:00b00007:1"         # the oldest reading is the one kept
        assert s.size == s._measure()
    finally:
        s.close()


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_thinned_rows_of_many_readings_publish_what_is_left_once_and_report_it(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, extra="[spool]\nmax_mb = 0.1\n[batch]\ndelay = 0.05\n")
    try:
        rig.start()
        d = rig.daemon
        mosquitto.stop()
        wait_until(lambda: not d.publisher.connected, 10, "the gateway sees the broker gone")
        a, b = 0x00B00008, 0x00B00009
        items, _ = _rows(a, [100] * 20)                                   # ~120 KB of rows (~60 B a reading)
        keep = _entries(b, 1, 50, state=0x08)                             # not routine: never thinned
        items.insert(2, _row(keep, b, routine=False))
        rig.runner.call(d.outbox.commit, items)
        assert d.spool.over()
        rig.runner.call(d.outbox.make_room, time.time())
        thinned = int(rig.metric("gasguard_gateway_thinned_readings_total"))
        assert thinned > 0 and d.spool.size <= 0.9 * d.cfg.spool_max_bytes
        left = 2050 - thinned
        assert rig.runner.call(d.spool.depth)["reading"][0] == left
        mosquitto.start()                                                 # (the report was spooled at once)
        rig.sub.wait(lambda ms: len(rig.sub.reading_ids()) >= left and rig.sub.on("gw1/event"), 20)
        ids = [r["id"] for r in rig.settle()]                             # all there is, before this reading
        assert len(ids) == len(set(ids)) == left
        assert {_fields(e)["id"] for e in keep} <= set(ids)
        (report,) = rig.sub.on("gw1/event")
        assert report["event"] == "thinned" and report["detail"]["readings"] == thinned
        assert report["detail"]["devices"] == {f"{a:08x}": thinned}
        rig.validated()
    finally:
        rig.close()


def test_deleting_published_rows_does_not_write_their_pages_again(tmp_path):
    """Debian's SQLite overwrites deleted content with zeros (SECURE_DELETE): every PUBACKed reading row (~9 KB, on
    overflow pages) cost its pages written to the log once more. The spool turns it off, so deleting 20 such rows
    writes the tree's few pages, not the rows': here under a quarter of their bytes (with it on: ~190 KB of 174)."""
    import os
    spool = Spool(tmp_path / "s.db")
    try:
        rows = [Item(READING, 1, "x" * 8700, f"gw:00000001:{i}", 1.0, count=87) for i in range(20)]
        last = spool.commit(rows)
        spool.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")          # the log empty: what follows is the delete's
        wal = f"{tmp_path / 's.db'}-wal"
        assert os.path.getsize(wal) == 0
        spool.delete_ranges([(READING, last - 19, last)], 20 * 8700)
        assert spool.depth()["reading"][0] == 0                        # (deleted)
        assert os.path.getsize(wal) < 20 * 8700 // 4, os.path.getsize(wal)
    finally:
        spool.close()
