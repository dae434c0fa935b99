"""The durable store-and-forward spool (SQLite, WAL).

One transaction holds, together, the messages an accepted frame produces AND the device's new uplink
counter (and downlink counter, when the frame is acked), so after a kill -9 or a power loss either both
exist or neither does: a replay can never slip through, and an acked frame is never lost.

Rows leave the spool only when the broker's PUBACK for the message carrying them arrives.

Lanes, highest priority first: alarm, event, state, reading (the publisher lets a ready batch of readings past
a long run of states: publisher.STATE_RUN). The state lane holds the devices' offline states and the plugins'
retained messages; a device's online state is not spooled (derived from presence: gateway/presence.py).
Routine readings (no gas level, no fault, no trip) may be thinned when the spool passes its size bound; nothing
else ever is.

The counters are a table plus a log (issue 17): a commit appends its group's counters as ONE packed row of
`counter_log` (one B-tree insert, not an upsert per device), and the log is folded into `counters` now and
then. The durable counters are `counters` with the log replayed over it in seq order (`counters()`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
from collections import deque
import sys
import uuid
from array import array
from contextlib import contextmanager
from operator import itemgetter

from dataclasses import dataclass
from pathlib import Path

import orjson

from gasguard.authority.secretfile import private_file
# (absolute: `gasguard bench spool-commit --against REV` loads a revision's spool.py as a module of its own)
from gasguard.gateway.payloads import gateway_of, reading_fields, row_of_entry

log = logging.getLogger("gasguard.gateway.spool")

ALARM, EVENT, STATE, READING = 0, 1, 2, 3
LANE_NAMES = ("alarm", "event", "state", "reading")
LANE_OF = {"alarm": ALARM, "event": EVENT, "state": STATE, "reading": READING}
ROW_OVERHEAD = 64     # bytes a row costs beyond its payload (ids, index), for the size bound
THIN_PAGE = 2000      # routine readings (and rows) thinning reads at a time ...
THIN_PAGE_BYTES = 1 << 20   # ... and payload characters: bounded memory with many-reading rows
# The counter log's bounds (issue 17). A commit that would take the log past LOG_COUNTERS distinct counters,
# LOG_ENTRIES counters or LOG_ROWS rows folds it into `counters` instead, in the commit's own transaction
# (durable with the group, one fsync for both; a fold as a transaction of its own after the commit cost ~0.4 µs
# more a reading). A commit an ack or a command waits for folds only past twice the bounds (commit).
# - LOG_COUNTERS, 8,192: a fold upserts each distinct (dev, dir) of the log once, by device, ~2-3 µs each. Since
#   folds go in slices (FOLD_SLICE, below) a larger log no longer holds ingest longer; what it costs is the sort
#   of its keys when a fold begins (~2 ms at 8,192) and ~1 MB. What it saves: a gateway that hears no more devices
#   than the log holds writes each counter once per LOG_ENTRIES readings instead of once per reading
#   (`gasguard bench spool-commit --against`, 2,048 -> 8,192, CPU a reading: 5,000 devices 2.67 -> 1.77 µs;
#   22,222 devices 2.77 -> 2.72, commit p99 3.4-3.7 -> 3.6-4.1 ms; 60,000 devices 3.44 -> 3.24; the real gateway,
#   `gasguard bench peers`, 5,000 devices: 13.9 -> 12.5 µs, warm 9.9 -> 8.3 µs; BENCHMARKS.md, thirteenth pass).
#   Alarm p99 at 50,000 readings/s over 22,222 devices stayed under 20 ms in every run (`gasguard bench buses`,
#   one bus 2.5-4.1 -> 4.3-12.5 ms, two buses 2.8-3.4 -> 3.1-7.7 ms). (2,048 before: a fold all at once was
#   ~40-60 ms at 8,192 keys, when folds were not sliced.)
# - LOG_ENTRIES, 32,768 (288 KB of log; read at start in ~15 ms, twice): a fleet of fewer devices than those
#   repeats within the log, and its fold writes each device once for many readings (2,000 devices: 4.4 ->
#   3.2 µs a reading; 5,000: no gain, 5.9 -> 6.2, too many to repeat, a table small enough for upserts).
# - LOG_ROWS, 1,024: rows of a few counters each (small groups; a downlink counter alone: Outbox.counters).
# - FOLD_SLICE, 256: past its bound a log of more keys than this is folded in slices, by the commits of readings that
#   follow: each upserts the next FOLD_SLICE keys (at least twice as many as it logs) of a snapshot of the log's keys,
#   and the one that ends the snapshot deletes the rows the snapshot covered. Twice: the keys logged meanwhile, alarms'
#   commits' included, stay well under the bound, so the log does not reach twice it and a fold all at once. (With as
#   many as it logs, commits of ~500 new devices - a serial backlog read on while there is room - reached it every ~0.5
#   s at 50,000 readings/s over 22,222 devices: folds of 10,000-16,300 keys, 23-60 ms, that the next alarm waited for;
#   `gasguard bench buses`.) A fold of 2,048 counters at once held ingest 8-18 ms (25,000 devices), and an alarm waiting
#   behind it; a slice adds ~0.8 ms to a commit (`gasguard bench spool-commit`, 60,000 devices: commit p50 0.5 -> 1.3
#   ms, p99 13.7-14.0 -> 7.7-9.6 ms, max 48-55 -> 10-25 ms; CPU a reading 6.33 -> 6.81 µs). The log overrides the table
#   (counters()), so a key upserted early is harmless, and a kill between slices leaves the log whole. Past twice the
#   bounds the log is folded at once, as before.
LOG_COUNTERS = 8192
LOG_ENTRIES = 32768
LOG_ROWS = 1024
FOLD_SLICE = 256
_LOG_ENTRY = 9              # bytes per counter in a log row: dev u32, dir u8, value u32 (the layout: _pack)
# (array's unsigned int of 4 bytes: "I" on every platform CPython runs on; "L" is 8 bytes on 64-bit Linux)
_U32 = next(c for c in "IL" if array(c).itemsize == 4)
_SWAP = sys.byteorder == "big"   # the log is little-endian on disk, whatever host wrote it
_DEV = itemgetter(0)   # a (dev, dir) key's device: a fold's order (ints sort in ~0.08 µs a key, tuples ~0.2)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (dev INTEGER NOT NULL, dir INTEGER NOT NULL, last INTEGER NOT NULL,
                                     PRIMARY KEY (dev, dir)) WITHOUT ROWID;
-- issue 17: each commit's counters as one row (layout: _pack); `counters` with these replayed over it in seq
-- order is the durable state (Spool.counters). Created here for a spool of an older gateway as for a new one.
CREATE TABLE IF NOT EXISTS counter_log (seq INTEGER PRIMARY KEY, entries BLOB NOT NULL);
-- SPEC 3.4: the identity (counter of the first copy) of the last alarm/event taken per (dev, kind). It
-- replaces `seqs`, which held the 8-bit aseq and collided after a node's power cut (issue 12).
DROP TABLE IF EXISTS seqs;
CREATE TABLE IF NOT EXISTS idents (dev INTEGER NOT NULL, kind INTEGER NOT NULL, ident INTEGER NOT NULL,
                                   PRIMARY KEY (dev, kind)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    lane INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    topic TEXT,              -- NULL: readings that travel in a batch message
    count INTEGER NOT NULL DEFAULT 1,   -- readings in the row (topic NULL); 1 for every other message
    payload TEXT NOT NULL,   -- JSON; with topic NULL the `count` entries joined by commas, no brackets
    msg_id TEXT NOT NULL,
    t REAL NOT NULL,
    routine INTEGER NOT NULL DEFAULT 0,
    retain INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS audit (msg_id TEXT PRIMARY KEY, t REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
-- issue 12: the observations of accepted alarms and events, written with the alarm itself and removed in the
-- transaction that stores what the plugins made of them, with the plugins' state: what a kill between the
-- ack and the incident left here is observed again at the next start
CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, obs TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plugin_state (name TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID;
"""


class SpoolError(Exception):
    """The spool cannot be used: `kind` is one of FIXES' keys; the message names the file and the fix.

    At start it is a refusal (exit 2); mid-run every frame of the failed write is refused with reason
    `spool_<kind>` and the daemon keeps running (the next group tries again)."""

    def __init__(self, kind: str, path, detail: str):
        self.kind, self.path = kind, Path(path)
        super().__init__(f"spool {path}: {detail}; "
                         f"{FIXES[kind].format(path=path, folder=Path(path).parent, name=Path(path).name)}")


class SpoolFull(SpoolError):
    """The disk (or the spool's page limit) is full: the write did not happen, nothing was accepted."""

    def __init__(self, path, detail: str):
        super().__init__("full", path, detail)


FIXES = {
    "full": "free disk space, nothing was accepted",
    "readonly": "the gateway user must be able to write it and its folder "
                "(chown gasguard {path} {folder}; chmod u+rw {path}; check the file system is not mounted read-only)",
    "corrupt": "stop the gateway, move the damaged file aside (mv {path} {path}.corrupt) with its -wal/-shm files, "
               "and start again (the counters it held are lost: see the operations docs on replay protection)",
    "io": "the disk reports I/O errors: check it (dmesg, smartctl) and free or replace it",
    "open": "the folder {folder} must exist and be writable by the gateway user (install -d -o gasguard {folder})",
    "busy": "another process holds it: is a second gateway running on this spool? (systemctl status 'gasguard-gateway@*')",
    "held": "each gateway instance needs a spool of its own: stop the other gateway, or give this configuration "
            "its own [gateway] spool path",
    "lost": "it holds the replay counters: restore it from the backup (gateway/README.md, 'Backup': with the "
            "gateway stopped, sqlite3 {path} \".restore BACKUP\"); only if it is truly gone, start a new spool on "
            "purpose by deleting {folder}/.{name}.id and re-synchronise the devices' counters (the nodes refuse "
            "acks until the gateway's downlink counter passes theirs)",
}


def spool_error(path, e: BaseException) -> SpoolError:
    """An sqlite3 or OS error -> SpoolError of the kind that says what to do (SQLite's result codes, not
    message text, where there is one)."""
    name = getattr(e, "sqlite_errorname", "") or ""
    text = str(e)
    if name.startswith("SQLITE_FULL") or "full" in text:
        return SpoolFull(path, text)
    if name.startswith("SQLITE_READONLY") or "readonly" in text or isinstance(e, PermissionError):
        return SpoolError("readonly", path, f"read-only ({text})")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
        return SpoolError("corrupt", path, f"damaged ({text})")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return SpoolError("busy", path, f"locked ({text})")
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return SpoolError("open", path, f"cannot be opened ({text})")
    return SpoolError("io", path, f"I/O error ({text})")


class SpoolLost(SpoolError):
    """At start: the spool this gateway had is missing, empty or another one. It held the replay counters
    (issue 12: with it gone, captured frames were accepted again and acks reused counters the nodes refuse),
    so the gateway refuses to start (exit 2) rather than begin again silently."""

    def __init__(self, path, detail: str):
        super().__init__("lost", path, detail)


def exclusive(lock: Path) -> tuple[int | None, str | None]:
    """An exclusive lock on the file `lock` for this process, kept until it ends: the kernel drops it then,
    SIGKILL included, so there is no stale lock to clear. (descriptor, None): taken (keep it open; it is not
    inherited by programs this one starts); (None, pid): another process holds it; (None, None): the file
    cannot be made (the caller's own checks of that folder say what to do)."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)      # as the spool's own open does (private_file)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        return None, holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, None


def hold(path: Path) -> int | None:
    """Take the spool for this process (`exclusive` on `.<name>.lock` beside it): its descriptor, or None where
    the lock file cannot be made (the spool's own checks then refuse the folder with their fix). Raises
    SpoolError "held" while another process holds it.

    Why: the spool has one writer. Its publisher is handed each commit's rows by their seqs, which are
    consecutive only while one connection writes (Spool.commit), and its in-memory counters are the replay
    protection. A second gateway started on the same file (a copied configuration: one gateway per bus) ran
    beside the first without a word and could delete rows the other had not published."""
    lock = path.parent / f".{path.name}.lock"
    fd, holder = exclusive(lock)
    if holder is not None:
        raise SpoolError("held", path, f"another gateway holds it (pid {holder}, lock {lock})")
    return fd


def marker_path(path: Path) -> Path:
    """Where the spool's identity is noted, outside the database: `.<name>.id` beside it. A dot file, so a
    `rm spool.db*` or `rm *` that removes the spool does not remove the evidence that there was one."""
    return path.parent / f".{path.name}.id"




@dataclass
class Item:
    """A message to spool. Readings (lane READING, topic None) may share one row (issue 17: a row per reading
    cost an INSERT, a Row, a fetch and a join each, ~20 % of the gateway's CPU): `payload` is then the
    `count` readings' JSON entries joined by commas (`{...},{...}`, no brackets), `msg_id` the first one's id,
    `t` the oldest one's receive time, `routine` true only if every one of them is routine, `dev` the first
    one's device. Any other message is one row with count 1."""
    lane: int
    dev: int
    payload: str
    msg_id: str
    t: float
    topic: str | None = None
    routine: bool = False
    retain: bool = False
    count: int = 1


@dataclass
class Row:
    seq: int
    lane: int
    dev: int
    topic: str | None
    payload: str
    msg_id: str
    t: float
    retain: bool
    count: int = 1     # readings in it (see Item)


_DECODER = json.JSONDecoder()


def entries(fragment: str) -> list[tuple[str, list]]:
    """A reading row's payload (entries joined by commas, Item) split into (each entry's exact text, its
    value). Raises ValueError on a payload that is not that."""
    out, pos, end = [], 0, len(fragment)
    while pos < end:
        value, stop = _DECODER.raw_decode(fragment, pos)
        if stop < end and fragment[stop] != ",":
            raise ValueError(f"a reading row's payload has {fragment[stop]!r} at {stop} where a comma belongs")
        out.append((fragment[pos:stop], value))
        pos = stop + 1
    return out


def _audited(items: list[Item]):
    """(msg_id, t) for the audit table: each alarm and each reading (those of a many-reading row one by one)."""
    for it in items:
        if it.lane == ALARM or (it.lane == READING and (it.count == 1 or it.topic is not None)):
            yield it.msg_id, it.t
        elif it.lane == READING:
            gw = gateway_of(it.msg_id)
            for _, e in entries(it.payload):
                f = reading_fields(gw, e)
                yield f["id"], f["t"]


def _pack(counters: dict) -> bytes:
    """One counter log row: n counters packed fixed-width, little-endian, column by column (9n bytes):
    n devs (u32), then n dirs (u8), then n values (u32), the i-th of each being one counter. Columns rather
    than n (dev, dir, value) records because each column is one C call to pack and to unpack (array), not a
    Python step per counter. Raises ValueError for a dev or value outside u32 or a dir outside u8 (not a
    counter the protocol has: SPEC 4 counters are u32) - before anything is written."""
    try:
        devs, dirs = zip(*counters)
        d, v = array(_U32, devs), array(_U32, counters.values())
        if _SWAP:
            d.byteswap()
            v.byteswap()
        return d.tobytes() + bytes(dirs) + v.tobytes()
    except (OverflowError, ValueError, TypeError) as e:
        raise ValueError(f"a counter that is not (u32 dev, u8 dir) -> u32 cannot be spooled ({e}): "
                         f"{next(iter(counters.items()))!r}...") from None


def _unpack(path, blob: bytes):
    """A counter log row (_pack) as ((dev, dir), value) pairs, in the row's order. A row whose length is not a
    whole number of counters is a damaged spool: SpoolError("corrupt")."""
    n, rest = divmod(len(blob), _LOG_ENTRY)
    if rest:
        raise SpoolError("corrupt", path, f"damaged (a counter_log row of {len(blob)} bytes, not 9 per counter)")
    d, v = array(_U32), array(_U32)
    d.frombytes(blob[:4 * n])
    v.frombytes(blob[5 * n:])
    if _SWAP:
        d.byteswap()
        v.byteswap()
    return zip(zip(d, blob[4 * n:5 * n]), v)


def _marker_id(marker: Path) -> str | None:
    try:
        return str(json.loads(marker.read_text(encoding="utf-8"))["id"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable"


def _refuse_if_marked(path: Path) -> None:
    """A spool that is not there, where the marker says there was one: SpoolLost."""
    marker = marker_path(path)
    if marker.exists():
        raise SpoolLost(path, f"missing, but {marker} says this gateway had one (id {_marker_id(marker)})")


class Spool:
    def __init__(self, path: str | Path, *, synchronous: str = "FULL", max_bytes: int = 256 << 20,
                 audit: bool = False, max_pages: int | None = None, deferred_sync: bool = False):
        """`deferred_sync` (with synchronous FULL; issue 17): SQLite runs synchronous=NORMAL and the spool itself
        fsyncs the write-ahead log after each commit (`sync`) - at once, or, for a commit made with
        durable=False, when the caller calls sync(), which may be on another thread (it touches only the -wal
        file, never the connection): ingest verifies and writes the next group of readings while the disk
        syncs the last one. WAL with synchronous=NORMAL plus an fsync of the log after a commit is what
        synchronous=FULL does; a commit is durable once a sync after it returned."""
        self.path = Path(path)
        self.synchronous = synchronous
        self.deferred_sync = deferred_sync and synchronous == "FULL"
        self.pragma_sync = "NORMAL" if self.deferred_sync else synchronous   # what the connection runs
        self.max_bytes = max_bytes
        self.audit = audit
        self.db = None
        # PUBACKed ranges whose DELETE failed (a full disk): retried with every delete and by retry_deletes()
        # until they go, so a disk that fills and frees does not leave rows to be re-sent at the next start.
        # Bounded by the rows in the spool (a range holds at least one row).
        self.undeleted: list[tuple[int, int, int]] = []
        self.undeleted_bytes = 0
        self.unthinnable: set[int] = set()   # reading rows whose payload thinning could not split (said once)
        try:
            self._check_present()      # before private_file, which creates an empty file
            try:
                private_file(self.path)    # 0600 (its -wal/-shm too): readings, alarms, command results of the district
            except PermissionError:
                pass                       # not writable: the open and write probe below refuse it, with the fix
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={self.pragma_sync}")
            # Debian builds SQLite with SECURE_DELETE: every PUBACKed row (a reading row is ~9 KB, on overflow pages)
            # was overwritten with zeros as it was deleted, pages written to the log and the file once more - a
            # third of the bytes written (BENCHMARKS.md, twentieth pass). What is deleted here is what the file
            # holds live anyway (readings, alarms, results; no key), and the file is 0600: off, as SQLite's default
            self.db.execute("PRAGMA secure_delete=OFF")
            self.db.executescript(_SCHEMA)
            self._migrate()
            if max_pages:   # tests: a tiny "disk" that fills up like a real one
                self.db.execute(f"PRAGMA max_page_count={int(max_pages)}")
            # a write probe: a read-only file or folder fails here, at start, not at the first alarm
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('write_probe', '1')")
            finally:
                self.db.execute("ROLLBACK")
            self.size = self._measure()     # reads every outbox row: a truncated file fails here too
            # the counter log as it is (a kill leaves up to the bounds; an older gateway none): its rows, its
            # counters, and `log_latest`, its last value per (dev, dir) - what a fold writes, so a fold does not
            # read the log back (at most 2 x LOG_COUNTERS keys: the bounds). Kept with each commit and fold.
            self._folded()
            for seq, blob in self.db.execute("SELECT seq, entries FROM counter_log ORDER BY seq"):
                pairs = list(_unpack(self.path, blob))
                self.log_entries += len(pairs)
                self.log_latest.update(pairs)
                self.log_sizes.append((seq, len(pairs)))
            # deferred_sync: rows above `durable_upto` are written but not yet fsynced, and are not handed to
            # the publisher (fetch): nothing is published before it is on disk. At start, all that is there is.
            self.written_upto = self._last_seq()
            self.durable_upto = self.written_upto if self.deferred_sync else 1 << 62
            # the last seq committed in each lane (issue 17): a publisher whose cursor is there has every row
            # of the lane loaded, and is handed the next commit's rows (Publisher.take) instead of reading them
            # back. From the (lane, seq, count) index; kept by commit (thinning may delete a lane's last rows,
            # which leaves this higher than what is there: the publisher then reads once more, no harm)
            self.lane_last = [self.db.execute("SELECT coalesce(max(seq), 0) FROM outbox WHERE lane = ?",
                                              (lane,)).fetchone()[0] for lane in range(len(LANE_NAMES))]
            self.id = self._identity()
        except (sqlite3.Error, OSError) as e:
            if self.db is not None:
                self.db.close()
            raise spool_error(self.path, e) from None
        except SpoolError:
            if self.db is not None:
                self.db.close()
            raise

    @staticmethod
    def check(path: str | Path) -> None:
        """`gateway check-config`: open an existing spool exactly as `run` does (raises SpoolError); for a
        spool not created yet, check its folder can hold one, without creating it."""
        path = Path(path)
        if path.exists():
            Spool(path).close()
            return
        _refuse_if_marked(path)
        folder = path.parent
        while not folder.exists():
            folder = folder.parent
        try:
            probe = folder / f".{path.name}.probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise SpoolError("open", path, f"cannot be created ({e.strerror})") from None

    def _check_present(self) -> None:
        p = self.path
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            _refuse_if_marked(p)
            return                                   # a new gateway: the spool is made here
        if size == 0 and marker_path(p).exists():
            # (empty and unmarked: a first start cut short before its tables were written; made here)
            raise SpoolLost(p, f"empty (0 bytes), but {marker_path(p)} says it held this gateway's state: "
                               "it was truncated")

    def _identity(self) -> str:
        """The spool's id (meta `spool_id`), noted in the marker file beside it at its first start."""
        row = self.db.execute("SELECT v FROM meta WHERE k = 'spool_id'").fetchone()
        sid = row[0] if row else uuid.uuid4().hex
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('spool_id', ?)", (sid,))
        marker = marker_path(self.path)
        noted = _marker_id(marker)
        if noted is not None and noted != sid:
            self.db.close()
            raise SpoolLost(self.path, f"not the one this gateway had: its id is {sid}, {marker} says {noted} "
                                       "(another gateway's spool, or a new one made while the old was away)")
        if noted is None:
            tmp = marker.with_name(marker.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"spool": self.path.name, "id": sid}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, marker)
        return sid

    def _migrate(self) -> None:
        """Bring a spool written by an older gateway up to this schema, in one transaction, rows kept: issue 17
        added `count` (an old row is one reading) and the index that sums it without reading the rows."""
        db = self.db
        cols = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
        with self._transaction():
            if "count" not in cols:
                db.execute("ALTER TABLE outbox ADD COLUMN count INTEGER NOT NULL DEFAULT 1")
            # (lane, seq, count): fetch and the range deletes use it as (lane, seq) did; depth() sums count
            # from it alone (a row's count sits after its payload in a migrated table: reading the rows
            # would walk every payload's overflow pages)
            db.execute("DROP INDEX IF EXISTS outbox_lane")
            db.execute("CREATE INDEX IF NOT EXISTS outbox_lanes ON outbox(lane, seq, count)")
            if db.execute("SELECT 1 FROM meta WHERE k = 'reading_rows'").fetchone() is None:
                self._rows_of_v1()
                db.execute("INSERT INTO meta VALUES ('reading_rows', '2')")

    def _rows_of_v1(self) -> None:
        """Inside _migrate's transaction: the reading rows an older gateway wrote (gasguard.readings/1 objects)
        rewritten as rows (payloads.row_of_entry), so that every batch the publisher merges is of one format (a /2
        row a gateway of issue 17 wrote is a /3 row as it is).
        Once per spool (meta `reading_rows`); a row that does not parse is left as it was, said once."""
        db, after, done = self.db, 0, 0
        q = ("SELECT seq, payload FROM outbox WHERE lane = ? AND topic IS NULL AND seq > ? ORDER BY seq LIMIT ?")
        while True:
            rows = db.execute(q, (READING, after, 100)).fetchall()   # (a row is at most half a batch: ~3 MB a page)
            if not rows:
                break
            updates = []
            for seq, payload in rows:
                if not payload.startswith("{"):
                    continue
                try:
                    text = ",".join(orjson.dumps(row_of_entry(e)).decode() for _, e in entries(payload))
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    log.error("spool row %d is not %s reading objects (%r): left as it was", seq, "gasguard.readings/1",
                              e)
                    continue
                updates.append((text, seq))
            db.executemany("UPDATE outbox SET payload = ? WHERE seq = ?", updates)
            done += len(updates)
            after = rows[-1][0]
        if done:
            log.info("spool: %d reading rows written by an older gateway rewritten as gasguard.readings/3 rows", done)

    def _measure(self) -> int:
        n, b = self.db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
        return b + n * ROW_OVERHEAD

    def close(self) -> None:
        """Fold the counter log (a clean stop leaves it empty: an older gateway started on this spool after a
        clean stop sees every counter), then close. A fold that fails here is said and left: the next start
        reads the log."""
        if self.log_rows:
            try:
                with self._transaction():
                    self._fold()
                self._folded()
            except (sqlite3.Error, SpoolError) as e:
                log.warning("spool %s: the counter log (%d rows) was not folded at close (%s); nothing is lost, "
                            "the next start reads it", self.path, self.log_rows, e)
        self.db.close()

    # -- counters ----------------------------------------------------------------------------------
    def counters(self) -> dict[tuple[int, int], int]:
        """(dev, dir) -> the last counter written: the `counters` table with the counter log replayed over it
        in seq order, a later row's value replacing an earlier one's - the plain upsert every commit used to
        make. (The log is monotone per key anyway: ingest only writes a counter forward, and a commit that
        fails is rolled back by SQLite before anything of it is on disk, so the counter ingest then rolls back
        in memory was never in the log. Replay does not rely on it: it is last-wins, like the upsert.)"""
        try:
            with self._reading():
                out = {(d, r): last for d, r, last in self.db.execute("SELECT dev, dir, last FROM counters")}
                for (blob,) in self.db.execute("SELECT entries FROM counter_log ORDER BY seq"):
                    out.update(_unpack(self.path, blob))
        except sqlite3.Error as e:
            raise spool_error(self.path, e) from None
        return out

    def fold_counters(self) -> None:
        """Fold the counter log into `counters`, in one transaction of its own (crash-safe at any instant: a
        kill leaves the log and the table as they were, or the log folded and emptied). Raises SpoolError."""
        try:
            with self._transaction():
                self._fold()
        except sqlite3.Error as e:
            raise spool_error(self.path, e) from None
        self._folded()

    @property
    def log_rows(self) -> int:
        return len(self.log_sizes)

    def _folded(self) -> None:
        """The log is empty (or, at start, about to be read): no rows, no keys, no fold in slices under way."""
        self.log_entries = 0
        self.log_latest = {}
        self.log_sizes: deque = deque()     # (seq, counters) of each log row, oldest first
        # a fold in slices under way: the snapshot of the log's keys (by device), how far it got, the last row
        # it covers, and the keys logged since the snapshot (their newest value is in a later row)
        self.slicing: list | None = None
        self.slice_at = self.slice_upto = 0
        self.since: set = set()

    def _fold(self, extra: dict | None = None) -> None:
        """Inside a transaction: the log's latest value per (dev, dir) (`log_latest`) - and then `extra`'s,
        newer than the log - upserted into `counters`, the log emptied. (`log_latest` holds every value this
        process logged since its last fold, so it is right even when another process - check-config's close -
        folded the log meanwhile: these values are still the newest.)"""
        db = self.db
        latest = {**self.log_latest, **extra} if extra else self.log_latest
        # in device order: the upserts walk the table's B-tree once, leaf after leaf (with 330,000 devices
        # random order cost ~5.5 µs per counter against ~3.3 µs sorted, the table outgrowing the cache)
        self._upsert(sorted(latest, key=_DEV), latest)
        db.execute("DELETE FROM counter_log")

    def _upsert(self, keys, latest: dict) -> None:
        """Inside a transaction: `counters` set to `latest`'s value for each (dev, dir) of `keys`."""
        self.db.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?, ?)",
                            [(d, r, latest[(d, r)]) for d, r in keys])

    def idents(self) -> dict[tuple[int, int], int]:
        return {(d, k): i for d, k, i in self._read("SELECT dev, kind, ident FROM idents")}

    def _read(self, q: str, args=()) -> list:
        try:
            return self.db.execute(q, args).fetchall()
        except sqlite3.Error as e:
            raise spool_error(self.path, e) from None

    # -- the one write path ------------------------------------------------------------------------
    @contextmanager
    def _transaction(self):
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            # SQLITE_FULL (and some I/O errors) already rolled the transaction back: a second ROLLBACK
            # would raise "no transaction is active" and hide the real error
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @contextmanager
    def _reading(self):
        """A read transaction: the statements in it see one snapshot of the file."""
        db = self.db
        db.execute("BEGIN")
        try:
            yield
        finally:
            if db.in_transaction:
                db.execute("COMMIT")

    def journal(self) -> list[str]:
        """Observations (JSON) written with their frames and not yet settled by a plugin commit."""
        return [r[0] for r in self.db.execute("SELECT obs FROM journal ORDER BY seq")]

    def plugin_states(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT name, state FROM plugin_state"))

    def commit(self, items: list[Item], counters: dict | None = None, idents: dict | None = None, *,
               journal: list[str] | None = None, states: dict[str, str] | None = None,
               settle: bool = False, durable: bool = True) -> int:
        """Write items + counter/identity updates atomically (the counters as one counter_log row); with them the
        observations to `journal`, the plugins' `states`, and with `settle` the journal emptied (what it held
        is reflected in these items and states). Raises SpoolFull. `durable=False` (deferred_sync only): on
        disk only once the caller's sync() returned. Returns the seq of the last item's row (items[i] is row
        `last - len(items) + 1 + i`: one writer, one executemany, AUTOINCREMENT), 0 without items."""
        db = self.db
        # the group's counters as one counter_log row; past the log's bound the log is folded instead, in this
        # transaction, with these counters in it (durable with the group, one fsync for both). Not in a commit
        # an ack or a command waits for (alarms, events; a downlink counter alone) while the log is under
        # twice its bound: the next group of readings folds it, and the alarm does not wait for the fold.
        row = _pack(counters) if counters else None
        urgent = not items or any(it.lane <= EVENT for it in items)
        # the log's distinct counters with this commit's: the keys already in the log are subtracted only when the
        # sum could pass the lowest bound (an intersection walks the smaller side; done on every commit it was ~20 %
        # of a commit's Python time)
        distinct = len(self.log_latest) + len(counters) if row is not None else 0
        if distinct > LOG_COUNTERS:
            distinct -= len(counters.keys() & self.log_latest.keys())

        def past(over: int) -> bool:        # would this commit take the log past its bounds times `over`?
            if row is not None:
                return (distinct > over * LOG_COUNTERS
                        or self.log_entries + len(counters) > over * LOG_ENTRIES or self.log_rows >= over * LOG_ROWS)
            # a commit with no counters: an alarm's commit may have left the log past its bound (up to twice it)
            return (len(self.log_latest) > over * LOG_COUNTERS or self.log_entries > over * LOG_ENTRIES
                    or self.log_rows > over * LOG_ROWS)
        fold = past(2) if urgent else past(1)   # the whole log at once
        part = None                         # or the next slice of it (FOLD_SLICE)
        if not urgent and (self.slicing is not None or (fold and len(self.log_latest) > FOLD_SLICE)) \
                and not past(2):
            fold = False
            keys, at = self.slicing, self.slice_at
            if keys is None:
                keys, at = sorted(self.log_latest, key=_DEV), 0
            part = keys[at:at + max(FOLD_SLICE, 2 * len(counters) if counters else 0)]
            done = at + len(part) >= len(keys)
            upto = self.log_sizes[-1][0] if self.slicing is None else self.slice_upto
        try:
            with self._transaction():
                if journal:
                    db.executemany("INSERT INTO journal (obs) VALUES (?)", [(o,) for o in journal])
                if states:
                    db.executemany("INSERT OR REPLACE INTO plugin_state VALUES (?, ?)", list(states.items()))
                if settle:
                    db.execute("DELETE FROM journal")
                if fold:
                    self._fold(counters)
                else:
                    if part is not None:
                        self._upsert(part, self.log_latest)
                        if done:
                            db.execute("DELETE FROM counter_log WHERE seq <= ?", (upto,))
                    if row is not None:
                        seq = db.execute("INSERT INTO counter_log (entries) VALUES (?)", (row,)).lastrowid
                if idents:
                    db.executemany("INSERT OR REPLACE INTO idents VALUES (?, ?, ?)",
                                   [(d, k, v) for (d, k), v in idents.items()])
                ins = ("INSERT INTO outbox (lane, dev, topic, count, payload, msg_id, t, routine, retain) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
                db.executemany(ins, [(it.lane, it.dev, it.topic, it.count, it.payload, it.msg_id, it.t,
                                      1 if it.routine else 0, 1 if it.retain else 0) for it in items])
                # the seqs of these rows, for a publisher handed them in memory (Publisher.take): this
                # connection is the spool's one writer, so one executemany's AUTOINCREMENT seqs are
                # consecutive, ending at the last rowid it inserted (tests/test_spool_rows.py checks them
                # against what fetch reads)
                last = db.execute("SELECT last_insert_rowid()").fetchone()[0] if items else 0
                if self.audit and items:
                    db.executemany("INSERT OR IGNORE INTO audit VALUES (?, ?)", _audited(items))
        except sqlite3.Error as e:      # full, read-only, damaged, I/O: each a SpoolError the caller counts
            raise spool_error(self.path, e) from None
        if items:
            lane_last = self.lane_last
            for at_seq, it in enumerate(items, last - len(items) + 1):   # (not `seq`: the log row's, below)
                lane_last[it.lane] = at_seq
        # (a fold does not end the commit here: its rows count in the size and, with deferred_sync, its sync
        # and durable_upto are still due - an early return here left both undone)
        if fold:
            self._folded()
        else:
            if part is not None:
                if done:                        # the rows up to `upto` are gone; what was logged since stays
                    sizes = self.log_sizes
                    while sizes and sizes[0][0] <= upto:
                        self.log_entries -= sizes.popleft()[1]
                    self.log_latest = {k: self.log_latest[k] for k in self.since}
                    self.slicing, self.since = None, set()
                else:
                    if self.slicing is None:
                        self.slicing, self.slice_upto = keys, upto
                    self.slice_at = at + len(part)
            if row is not None:
                self.log_entries += len(counters)
                self.log_latest.update(counters)
                self.log_sizes.append((seq, len(counters)))
                if self.slicing is not None:
                    self.since.update(counters)
        self.size += sum(len(it.payload) + ROW_OVERHEAD for it in items)
        if self.deferred_sync:
            if items:
                self.written_upto = last
            if durable:
                self.sync()
                self.durable_upto = self.written_upto
        return last

    def _last_seq(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return row[0] if row else 0

    def synced(self, upto: int) -> None:
        """A sync() that began when `written_upto` was `upto` returned: those rows may be published."""
        self.durable_upto = max(self.durable_upto, upto)

    def sync(self) -> None:
        """fsync the write-ahead log: every commit before this call is on disk (deferred_sync; a no-op
        otherwise: SQLite did it). Raises SpoolError("io"). Thread-safe: a file descriptor of its own."""
        if not self.deferred_sync:
            return
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise SpoolError("io", self.path, f"fsync of its write-ahead log failed ({e.strerror})") from None

    # -- reading out ---------------------------------------------------------------------------
    def fetch(self, lane: int, after: int, limit: int, *, readings: int | None = None,
              nbytes: int | None = None) -> list[Row]:
        """The rows of `lane` after seq `after`, in order: at most `limit` rows, and none past the one that
        brings the page to `readings` readings or `nbytes` payload characters (the first row always comes,
        however big), so a backlog of many-reading rows is not loaded whole."""
        q = ("SELECT seq, lane, dev, topic, payload, msg_id, t, retain, count FROM outbox "
             "WHERE lane = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?")
        try:
            return [Row(*r[:7], bool(r[7]), r[8])
                    for r in self._bounded(q, (lane, after, self.durable_upto, limit), 8, 4, readings, nbytes)]
        except sqlite3.Error as e:
            raise spool_error(self.path, e) from None

    def _bounded(self, q: str, args: tuple, count_col: int, payload_col: int, readings: int | None,
                 nbytes: int | None) -> list[tuple]:
        """The rows of query `q` up to and including the one that reaches `readings` (the sum of column
        `count_col`) or `nbytes` (the length of column `payload_col`): the cursor steps lazily and stops
        there, so no more is read from disk or held in memory."""
        if readings is None and nbytes is None:
            return self.db.execute(q, args).fetchall()
        readings = readings or 1 << 62
        nbytes = nbytes or 1 << 62
        out, n, b = [], 0, 0
        cur = self.db.execute(q, args)
        try:
            for r in cur:
                out.append(r)
                n += r[count_col]
                b += len(r[payload_col])
                if n >= readings or b >= nbytes:
                    break
        finally:
            cur.close()     # the statement is reset: no read snapshot is left open
        return out

    def delete_ranges(self, ranges: list[tuple[int, int, int]], nbytes: int) -> None:
        """Called with PUBACKed (lane, first seq, last seq) ranges: every row of that lane between the two.
        A range whose delete fails (a full disk) is kept and tried again with the next delete or retry_deletes()
        (issue 12: it used to stay until a restart re-sent it)."""
        if self.undeleted:
            ranges, nbytes = self.undeleted + ranges, self.undeleted_bytes + nbytes
        if not ranges:
            return
        # one transaction, without its own fsync: a delete lost to a power cut only re-sends (ids dedupe);
        # the next accepting commit (synchronous=FULL, or its sync) makes it durable anyway
        db = self.db
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._transaction():
                    db.executemany("DELETE FROM outbox WHERE lane = ? AND seq BETWEEN ? AND ?", ranges)
            finally:
                db.execute(f"PRAGMA synchronous={self.pragma_sync}")
        except sqlite3.Error as e:
            if not self.undeleted:
                log.error("spool delete of published rows failed (%s): retried every tick until the disk has room "
                          "(meanwhile a restart would send them again; their ids make that harmless)", e)
            self.undeleted, self.undeleted_bytes = ranges, nbytes
            return
        if self.undeleted:
            log.warning("spool: published rows of %d ranges whose delete had failed are deleted now",
                        len(self.undeleted))
            self.undeleted, self.undeleted_bytes = [], 0
        self.size -= nbytes

    def retry_deletes(self) -> None:
        """Delete what a failed delete left (called by the daemon's tick: space may be back with no new PUBACK)."""
        if self.undeleted:
            self.delete_ranges([], 0)

    def depth(self) -> dict[str, tuple[int, float | None]]:
        """lane name -> (messages, oldest receive time); the reading lane's messages are its readings (a row
        may hold many: Item)."""
        # from the (lane, seq, count) index alone, the first row in line as the oldest: a GROUP BY with min(t)
        # read the whole table and held the event loop for a second with a million rows spooled
        out = {}
        for lane, name in enumerate(LANE_NAMES):
            n = self._read("SELECT coalesce(sum(count), 0) FROM outbox WHERE lane = ?", (lane,))[0][0]
            first = self._read("SELECT t FROM outbox WHERE lane = ? ORDER BY seq LIMIT 1", (lane,))
            out[name] = (n, first[0][0] if first else None)
        return out

    # -- the size bound ------------------------------------------------------------------------
    def over(self) -> bool:
        return self.size > self.max_bytes

    def thin(self, protect_below: int) -> dict[int, int]:
        """Past the bound, drop every other routine reading, oldest first, until under 90 % of it.

        Rows with seq <= protect_below may already be in flight and are left alone. Returns {dev: dropped}.
        Alarms, events, state and non-routine readings are never touched. A row of many readings keeps every
        other one of them (rewritten in place, the kept entries' text unchanged); a row of one is kept or
        deleted whole. "Every other" runs across rows: the readings of a pass alternate kept, dropped.
        """
        dropped: dict[int, int] = {}
        target = int(self.max_bytes * 0.9)
        after = protect_below
        keep = True          # the next routine reading in line is kept (False: dropped)
        progress = False     # this pass dropped something (a pass that drops nothing ends the thinning)
        q = ("SELECT seq, dev, count, payload, t, msg_id FROM outbox WHERE lane = ? AND routine = 1 AND topic IS NULL "
             "AND seq > ? ORDER BY seq LIMIT ?")
        while self.size > target:
            try:
                rows = self._bounded(q, (READING, after, THIN_PAGE), 2, 3, THIN_PAGE, THIN_PAGE_BYTES)
            except sqlite3.Error as e:
                log.error("spool thinning failed: %s", e)
                break
            if not rows:
                if not progress:
                    break
                after, keep, progress = protect_below, True, False   # another pass over what is left
                continue
            deletes, updates, freed, gone = [], [], 0, {}
            for seq, dev, n, payload, t, row_mid in rows:
                if n == 1:
                    if not keep:
                        deletes.append((seq,))
                        gone[dev] = gone.get(dev, 0) + 1
                        freed += len(payload) + ROW_OVERHEAD
                    keep = not keep
                    continue
                first = 0 if keep else 1
                if seq in self.unthinnable:
                    continue
                try:
                    parts = entries(payload)
                    kept = parts[first::2]
                    gw = gateway_of(row_mid)
                    devs = [int(reading_fields(gw, e)["dev"], 16) for _, e in parts[1 - first::2]]
                    head = reading_fields(gw, kept[0][1])
                    mid, oldest = head["id"], (t if first == 0 else float(head["t"]))
                except (ValueError, KeyError, TypeError, IndexError) as e:
                    # (not what ingest writes: left whole and said once, rather than a thinning that fails)
                    log.error("spool thinning skips reading row %d: its payload is not %d reading entries (%r)",
                              seq, n, e)
                    self.unthinnable.add(seq)
                    continue
                for d in devs:
                    gone[d] = gone.get(d, 0) + 1
                keep = keep != (len(parts) % 2 == 1)
                text = ",".join(x for x, _ in kept)
                updates.append((text, len(kept), mid, oldest, seq))
                freed += len(payload) - len(text)
            try:
                with self._transaction():      # one commit per page (a kill between pages only thins less)
                    self.db.executemany("DELETE FROM outbox WHERE seq = ?", deletes)
                    self.db.executemany("UPDATE outbox SET payload = ?, count = ?, msg_id = ?, t = ? WHERE seq = ?",
                                        updates)
            except sqlite3.Error as e:
                log.error("spool thinning failed: %s", e)
                break
            for d, c in gone.items():
                dropped[d] = dropped.get(d, 0) + c
            progress = progress or bool(gone)
            self.size -= freed
            after = rows[-1][0]
        return dropped

    def wait_checkpoint(self) -> None:
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:
            pass


