"""The district command's store: one small data-access layer over SQLite (embedded default) or PostgreSQL.

Everything the command keeps goes through `Store`: incidents (current state), every published revision,
acknowledgements, operator input, escalations, notifications (an outbox with a delivery record), the journal
(the timeline of every state change with time and who), the gateways seen, the frame identities already
graded (idempotency), and the leader lease. Nothing else in the command writes SQL.

    store = open_store("sqlite:///var/lib/gasguard/command.db")     # or "postgresql://user@host/db"
    store.migrate()                                                   # versioned, idempotent, at start
    with store.write(fence) as tx:                                    # one transaction, fenced by the lease
        if tx.first_frame(key, gateway, t): ...
    store.list_incidents(); store.get_incident(iid); store.changes(after_seq)

Writes happen in `write()` transactions only. A transaction given a `Fence` first extends the leader lease
*if and only if* this holder still owns it at that epoch; otherwise it raises `LeaseLost` and nothing is
written, so a leader that was paused past its lease cannot write over its successor (fencing token).

SQL is written once with `?` placeholders and a few dialect tokens; the two dialects differ only in
`_DIALECT` below. JSON documents are stored as text on both (the store never queries inside them).

On PostgreSQL a transaction is one psycopg pipeline: a statement is sent without waiting for its answer, and
the client waits only where it needs one, so a grading pass costs a few round trips, not one a statement
(`_Writer` says which methods wait). SQLite runs in-process: nothing to wait for.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

LEADER = "leader"
ACT_KINDS = ("ack", "input", "shelve")      # what a console may submit (the topic leaf it is signed for)

# --- schema migrations: (version, name, SQL). Append only; never edit a released one. ----------------
# Tokens: {pk} an auto-increment integer primary key, {real} a float, {big} a 64-bit integer.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "incidents, revisions, journal, acks, input, escalations, notifications, gateways, frames, lease", """
CREATE TABLE incidents (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,                 -- supply | pressure | leak
    status        TEXT NOT NULL,                 -- open | resolved
    level         INTEGER,                       -- plan 1.6.2: 1 (I) .. 4 (IV), NULL ungraded
    warning       TEXT,                          -- plan 3.3: blue | yellow | orange | red
    revision      INTEGER NOT NULL,              -- latest published revision
    detected_at   {real} NOT NULL,               -- deadlines run from here (plan 4.1.2)
    updated_at    {real} NOT NULL,
    acked_by      TEXT,
    acked_at      {real},
    timeline_n    INTEGER NOT NULL DEFAULT 0,    -- engine timeline entries already journaled
    state         TEXT NOT NULL,                 -- the engine's incident (JSON), restored by a new leader
    latest        TEXT NOT NULL                  -- the latest publication (JSON): what consoles show
);
CREATE INDEX incidents_status ON incidents(status, detected_at);
CREATE TABLE revisions (
    seq           {pk},
    incident_id   TEXT NOT NULL,
    revision      INTEGER NOT NULL,
    kind          TEXT NOT NULL,                 -- new | update | escalation | final
    t             {real} NOT NULL,
    payload       TEXT NOT NULL,
    published     INTEGER NOT NULL DEFAULT 0,    -- 1 once the broker PUBACKed it (outbox)
    UNIQUE (incident_id, revision)               -- a revision is stored once, whatever happens
);
CREATE INDEX revisions_unpublished ON revisions(published, seq);
CREATE TABLE journal (
    seq           {pk},
    t             {real} NOT NULL,
    incident_id   TEXT,
    revision      INTEGER,
    category      TEXT NOT NULL,                 -- revision | site | ack | input | escalation | notification | gateway
    who           TEXT,
    text          TEXT NOT NULL,
    data          TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX journal_incident ON journal(incident_id, seq);
CREATE TABLE acks (
    seq           {pk},
    incident_id   TEXT NOT NULL,
    revision      INTEGER,
    who           TEXT NOT NULL,
    t             {real} NOT NULL,
    outcome       TEXT NOT NULL,                 -- accepted | refused: why
    request       TEXT NOT NULL DEFAULT '{}',
    nonce         TEXT                           -- the signed request's nonce (exactly once across a crash)
);
CREATE INDEX acks_nonce ON acks(nonce);
CREATE TABLE operator_input (
    seq           {pk},
    incident_id   TEXT NOT NULL,
    who           TEXT NOT NULL,
    t             {real} NOT NULL,
    outcome       TEXT NOT NULL,
    fields        TEXT NOT NULL,
    nonce         TEXT
);
CREATE INDEX operator_input_nonce ON operator_input(nonce);
CREATE TABLE escalations (
    seq           {pk},
    incident_id   TEXT NOT NULL,
    revision      INTEGER NOT NULL,
    stage         TEXT NOT NULL,                 -- phone (20 min) | written (45 min)
    n             INTEGER NOT NULL,
    t             {real} NOT NULL,
    overdue_s     {real} NOT NULL,
    UNIQUE (incident_id, revision)
);
CREATE TABLE notifications (
    seq           {pk},
    incident_id   TEXT NOT NULL,
    revision      INTEGER NOT NULL,
    reason        TEXT NOT NULL,                 -- new | level | phone | written
    channel       TEXT NOT NULL,                 -- email | webhook | ...
    recipient     TEXT NOT NULL,
    status        TEXT NOT NULL,                 -- pending | sent | failed
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       {real} NOT NULL,
    created_at    {real} NOT NULL,
    delivered_at  {real},
    last_error    TEXT,
    payload       TEXT NOT NULL,
    UNIQUE (incident_id, revision, channel, recipient)
);
CREATE INDEX notifications_due ON notifications(status, next_at);
CREATE TABLE deliveries (                        -- every attempt at a notification, kept
    seq           {pk},
    notification  {big} NOT NULL,
    attempt       INTEGER NOT NULL,
    t             {real} NOT NULL,
    ok            INTEGER NOT NULL,
    error         TEXT
);
CREATE INDEX deliveries_notification ON deliveries(notification, attempt);
CREATE TABLE gateways (
    gateway_id    TEXT PRIMARY KEY,
    district      TEXT NOT NULL,
    online        INTEGER NOT NULL,              -- its own birth / Last Will
    silent        INTEGER NOT NULL DEFAULT 0,    -- nothing heard for longer than gateway_silent_s
    last_seen     {real} NOT NULL,
    status_t      {real},
    version       TEXT
);
CREATE TABLE frames (
    dev           {big} NOT NULL,
    dir           INTEGER NOT NULL,
    fcnt          {big} NOT NULL,
    gateway       TEXT NOT NULL,
    t             {real} NOT NULL,
    PRIMARY KEY (dev, dir, fcnt)
);
CREATE INDEX frames_t ON frames(t);
CREATE TABLE requests (                          -- acts submitted by consoles (web, CLI) for the leader
    seq           {pk},
    t             {real} NOT NULL,
    kind          TEXT NOT NULL,                 -- ack | input
    incident_id   TEXT NOT NULL,
    payload       TEXT NOT NULL,                 -- the signed request as the operator's console made it
    source        TEXT NOT NULL DEFAULT '',      -- which console (address, client)
    done          INTEGER NOT NULL DEFAULT 0,
    outcome       TEXT,                          -- accepted | refused: why
    done_at       {real}
);
CREATE INDEX requests_pending ON requests(done, seq);
CREATE TABLE engine (
    k             TEXT PRIMARY KEY,              -- station inlet samples, alarm retransmission keys
    v             TEXT NOT NULL
);
CREATE TABLE lease (
    name          TEXT PRIMARY KEY,
    holder        TEXT,
    epoch         {big} NOT NULL,
    expires_at    {real} NOT NULL
);
INSERT INTO lease VALUES ('leader', NULL, 0, 0);
"""),
    (2, "shelves (ISA-18.2 shelving, a signed act held by the service) and their log", """
CREATE TABLE shelves (                           -- incidents shelved now: one row each (command/shelving.py)
    incident_id   TEXT PRIMARY KEY,
    who           TEXT NOT NULL,                 -- the operator who shelved it
    reason        TEXT NOT NULL,
    at            {real} NOT NULL,
    until         {real} NOT NULL,               -- the expiry: it ends then, whatever happens
    revision      INTEGER,                       -- the revision shelved
    grade         TEXT NOT NULL,                 -- [warning rank, level] shelved (JSON): a higher one ends it
    log_seq       {big} NOT NULL                 -- the shelf_log row of the act that made it
);
CREATE TABLE shelf_log (                         -- every shelving act (allowed or refused) and every end, kept
    seq           {pk},
    incident_id   TEXT NOT NULL,
    action        TEXT NOT NULL,                 -- shelve | unshelve | expired | upgraded
    who           TEXT NOT NULL,                 -- the operator, or "command" for an expiry or an upgrade
    t             {real} NOT NULL,
    outcome       TEXT NOT NULL,                 -- accepted | refused: why | ended
    reason        TEXT NOT NULL DEFAULT '',
    until         {real},
    request       TEXT NOT NULL DEFAULT '{}',
    nonce         TEXT                           -- the signed request's nonce (exactly once across a crash)
);
CREATE INDEX shelf_log_incident ON shelf_log(incident_id, seq);
CREATE INDEX shelf_log_nonce ON shelf_log(nonce);
"""),
    (3, "station readings and valve events, kept for a bounded time (the web console's station page)", """
CREATE TABLE readings (                          -- stations' pressure readings (command/readings.py)
    dev           {big} NOT NULL,
    t             {real} NOT NULL,               -- the gateway's receive time
    pressure_pa   {real},                        -- outlet
    inlet_pa      {real},
    gateway       TEXT
);
CREATE INDEX readings_dev_t ON readings(dev, t);
CREATE INDEX readings_t ON readings(t);
CREATE TABLE valve_events (                      -- every device's valve moves (EV_VALVE)
    dev           {big} NOT NULL,
    t             {real} NOT NULL,
    valve         TEXT NOT NULL,                 -- open | closed
    cause         TEXT,                          -- gas | opso | upso | fault | reset | selftest | manual
    gateway       TEXT
);
CREATE INDEX valve_events_dev_t ON valve_events(dev, t);
CREATE INDEX valve_events_t ON valve_events(t);
"""),
]

_DIALECT = {
    "sqlite": {"pk": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL", "big": "INTEGER"},
    "postgresql": {"pk": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "real": "DOUBLE PRECISION",
                   "big": "BIGINT"},
}

SUMMARY = ("id", "kind", "status", "level", "warning", "revision", "detected_at", "updated_at", "acked_by",
           "acked_at")


def _dialect_sql(sql: str, dialect: str) -> str:
    for token, text in _DIALECT[dialect].items():
        sql = sql.replace("{" + token + "}", text)
    return sql


class StoreError(Exception):
    """The store cannot be opened or used; the message says what to do."""


class LeaseLost(Exception):
    """This instance no longer holds the leader lease: it must stop writing (another instance took over)."""


@dataclass(frozen=True)
class Fence:
    """Who writes: the lease holder, the epoch it acquired, how long each write extends the lease."""
    holder: str
    epoch: int
    ttl: float


def open_store(url: str | os.PathLike, **kw) -> "Store":
    """`sqlite:///path`, a plain path (SQLite), or `postgresql://...` (psycopg 3)."""
    s = str(url)
    if s.startswith(("postgresql://", "postgres://")):
        return Store(_Postgres(s), **kw)
    if s.startswith("sqlite:///"):
        s = s[len("sqlite:///") - 1:] if s.startswith("sqlite:////") else s[len("sqlite:///"):]
    return Store(_Sqlite(s, **kw))


class _Sqlite:
    name = "sqlite"
    IntegrityError = sqlite3.IntegrityError

    def __init__(self, path: str, synchronous: str = "FULL"):
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed revision survives power loss too, not only a killed process
            self.conn.execute(f"PRAGMA synchronous={synchronous}")
            self.conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the command store {path}: {e}; check the path and its folder's "
                             "permissions") from None
        self.url = f"sqlite:///{path}"

    def sql(self, q: str) -> str:
        return q

    @contextmanager
    def transaction(self, immediate: bool):
        # IMMEDIATE: take the write lock now, so a second writer waits instead of failing at commit
        self.conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def execute(self, q, args=()):
        return self.conn.execute(q, args)

    def executemany(self, q, rows):
        return self.conn.executemany(q, rows)

    def wait(self) -> None:
        pass        # in-process: every statement has run when execute() returns

    def close(self):
        self.conn.close()

    def has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                 (name,)).fetchone() is not None

    def migration_lock(self):
        pass        # BEGIN IMMEDIATE already serialises migrations


class _Postgres:
    name = "postgresql"

    def __init__(self, url: str):
        try:
            import psycopg
        except ImportError:
            raise StoreError("PostgreSQL needs psycopg 3: pip install 'psycopg[binary]' (make setup installs it)") \
                from None
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise StoreError(f"cannot connect to PostgreSQL at {_redact(url)}: {e}; check the URL, that the "
                             "server runs and that the role may log in") from None
        if not psycopg.Pipeline.is_supported():
            self.conn.close()
            raise StoreError(f"psycopg {psycopg.__version__} runs on a libpq without pipeline mode (libpq "
                             f"{psycopg.pq.version()}, 14 or newer needed): pip install 'psycopg[binary]' "
                             "(make setup installs it)")
        self.url = url
        self.psycopg = psycopg
        self.IntegrityError = psycopg.IntegrityError
        self.pipe = None            # the open transaction's pipeline (None: no transaction open)

    def sql(self, q: str) -> str:
        return q.replace("?", "%s")

    @contextmanager
    def transaction(self, immediate: bool):
        # One pipeline per transaction (psycopg 3, libpq pipeline mode): statements go to the server without
        # waiting for each answer; the client waits only where it needs one (a fetch, `wait()` before a row
        # count) and at the end, where COMMIT and the pipeline's Sync make one round trip. A statement that
        # fails aborts the rest of the pipeline on the server (COMMIT included: nothing is written), and
        # psycopg raises its error at the next wait, fetch or the pipeline's end.
        try:
            with self.conn.pipeline() as self.pipe:
                self.conn.execute("BEGIN")
                yield
                self.conn.execute("COMMIT")
        except BaseException:
            self.pipe = None
            if self.conn.info.transaction_status != self.psycopg.pq.TransactionStatus.IDLE:
                self.conn.execute("ROLLBACK")
            raise
        finally:
            self.pipe = None

    def execute(self, q, args=()):
        return self.conn.execute(q, args)

    def executemany(self, q, rows):
        with self.conn.cursor() as cur:
            cur.executemany(q, rows)
            return cur

    def wait(self) -> None:
        """Every statement sent so far has answered (its row count is known; its error raised here)."""
        if self.pipe is not None:
            self.pipe.sync()

    def close(self):
        self.conn.close()

    def has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None

    def migration_lock(self):
        # two instances starting at once: one migrates, the other waits and then finds nothing to do
        self.conn.execute("SELECT pg_advisory_xact_lock(7411501)")


def _redact(url: str) -> str:
    if "@" in url and ":" in url.split("@")[0].split("//")[-1]:
        head, tail = url.split("@", 1)
        return head.rsplit(":", 1)[0] + ":***@" + tail
    return url


def _j(v) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=_jdefault)


def _jdefault(o):
    if isinstance(o, (bytes, bytearray)):
        return o.hex()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON: {type(o).__name__}")


class Store:
    def __init__(self, db):
        self.db = db
        self.dialect = db.name
        self.lock = threading.RLock()       # one connection per Store; threads take turns

    @property
    def url(self) -> str:
        return self.db.url

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- low level -------------------------------------------------------------------------------
    def _x(self, q: str, args=()):
        return self.db.execute(self.db.sql(q), args)

    def _rows(self, q: str, args=()) -> list[dict]:
        with self.lock:
            cur = self._x(q, args)
            rows = cur.fetchall()            # first: inside a pipelined transaction, the fetch brings the columns
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in rows]

    @contextmanager
    def _tx(self, immediate: bool = True):
        with self.lock, self.db.transaction(immediate):
            yield

    # --- migrations ------------------------------------------------------------------------------
    def schema_version(self) -> int:
        with self.lock:
            if not self.db.has_table("schema_migrations"):
                return 0
            return self._x("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]

    def migrate(self) -> list[int]:
        """Apply every migration not yet applied, each in its own transaction; returns those applied."""
        applied = []
        with self._tx():
            self.db.migration_lock()
            self._x("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                    "applied_at " + _DIALECT[self.dialect]["real"] + " NOT NULL)")
        latest = MIGRATIONS[-1][0]
        for version, name, sql in MIGRATIONS:
            with self._tx():
                self.db.migration_lock()
                have = self._x("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone()
                if have:
                    continue
                for stmt in _dialect_sql(sql, self.dialect).split(";"):
                    if stmt.strip():
                        self._x(stmt)
                self._x("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))
                applied.append(version)
        newer = self.schema_version()
        if newer > latest:
            raise StoreError(f"the command store {self.url} has schema {newer}, newer than this program knows "
                             f"({latest}): upgrade gasguard before running it against this store")
        return applied

    # --- leader lease ----------------------------------------------------------------------------
    def acquire_lease(self, holder: str, ttl: float, now: float | None = None) -> Fence | None:
        """Take the leader lease if it is free, expired or already ours; a new epoch on every take-over."""
        now = time.time() if now is None else now
        with self._tx():
            row = self._x("SELECT holder, epoch, expires_at FROM lease WHERE name = ?", (LEADER,)).fetchone()
            cur_holder, epoch, expires = row
            if cur_holder == holder and expires >= now:
                self._x("UPDATE lease SET expires_at = ? WHERE name = ?", (now + ttl, LEADER))
                return Fence(holder, epoch, ttl)
            if cur_holder is not None and expires >= now:
                return None
            self._x("UPDATE lease SET holder = ?, epoch = ?, expires_at = ? WHERE name = ? AND epoch = ?",
                    (holder, epoch + 1, now + ttl, LEADER, epoch))
            return Fence(holder, epoch + 1, ttl)

    def release_lease(self, fence: Fence) -> None:
        with self._tx():
            self._x("UPDATE lease SET holder = NULL, expires_at = 0 WHERE name = ? AND holder = ? AND epoch = ?",
                    (LEADER, fence.holder, fence.epoch))

    def lease(self) -> dict:
        return self._rows("SELECT holder, epoch, expires_at FROM lease WHERE name = ?", (LEADER,))[0]

    # --- writes ----------------------------------------------------------------------------------
    @contextmanager
    def write(self, fence: Fence | None, now: float | None = None):
        """One transaction. With a fence: at its end, before the commit, the lease is extended if this holder
        still has it at this epoch; otherwise LeaseLost and nothing of the transaction is written. (At the end,
        not the start: a long transaction then cannot outlive the lease it started under.)"""
        try:
            with self._tx():
                w = _Writer(self)
                yield w
                w.send_held()
                if fence is not None:
                    wall = time.time() if now is None else now
                    # Not this holder at this epoch: the epoch would become NULL, which the table refuses (NOT
                    # NULL), so the statement fails and the transaction with it. The check needs no answer of its
                    # own: on PostgreSQL it rides the COMMIT's round trip (a failed statement skips the COMMIT).
                    self._x("UPDATE lease SET expires_at = ?, epoch = CASE WHEN holder = ? AND epoch = ? THEN epoch "
                            "END WHERE name = ?", (wall + fence.ttl, fence.holder, fence.epoch, LEADER))
        except self.db.IntegrityError:
            lease = self.lease()
            if fence is not None and (lease["holder"], lease["epoch"]) != (fence.holder, fence.epoch):
                raise LeaseLost(f"{fence.holder} lost the leader lease (epoch {fence.epoch}; {lease['holder']} "
                                f"holds epoch {lease['epoch']})") from None
            raise

    # --- reads (any process: consoles, CLI, web) --------------------------------------------------
    def list_incidents(self, status: str | None = None, limit: int = 500) -> list[dict]:
        """Latest publication of each incident (what a console shows), open first, most recent first."""
        q = "SELECT latest FROM incidents"
        args: tuple = ()
        if status:
            q += " WHERE status = ?"
            args = (status,)
        q += " ORDER BY CASE WHEN status = 'open' THEN 0 ELSE 1 END, detected_at DESC LIMIT ?"
        return [json.loads(r["latest"]) for r in self._rows(q, args + (int(limit),))]

    def get_incident(self, incident_id: str) -> dict | None:
        """The latest publication plus its whole history: revisions, journal, acks, input, escalations,
        notifications (each list oldest first)."""
        rows = self._rows("SELECT latest FROM incidents WHERE id = ?", (incident_id,))
        if not rows:
            return None
        out = {"incident": json.loads(rows[0]["latest"])}
        out["revisions"] = [dict(r, payload=json.loads(r["payload"])) for r in self._rows(
            "SELECT seq, revision, kind, t, payload, published FROM revisions WHERE incident_id = ? ORDER BY revision",
            (incident_id,))]
        out["journal"] = self.journal(incident_id=incident_id)
        out["acks"] = [dict(r, request=json.loads(r["request"])) for r in self._rows(
            "SELECT seq, revision, who, t, outcome, request FROM acks WHERE incident_id = ? ORDER BY seq",
            (incident_id,))]
        out["inputs"] = [dict(r, fields=json.loads(r["fields"])) for r in self._rows(
            "SELECT seq, who, t, outcome, fields FROM operator_input WHERE incident_id = ? ORDER BY seq",
            (incident_id,))]
        out["escalations"] = self._rows("SELECT seq, revision, stage, n, t, overdue_s FROM escalations "
                                        "WHERE incident_id = ? ORDER BY seq", (incident_id,))
        out["notifications"] = self.notifications(incident_id=incident_id)
        return out

    def revision(self, incident_id: str, revision: int) -> dict | None:
        rows = self._rows("SELECT payload FROM revisions WHERE incident_id = ? AND revision = ?",
                          (incident_id, revision))
        return json.loads(rows[0]["payload"]) if rows else None

    def journal(self, after: int = 0, incident_id: str | None = None, limit: int = 1000) -> list[dict]:
        q, args = "SELECT seq, t, incident_id, revision, category, who, text, data FROM journal WHERE seq > ?", [after]
        if incident_id is not None:
            q += " AND incident_id = ?"
            args.append(incident_id)
        q += " ORDER BY seq LIMIT ?"
        args.append(int(limit))
        return [dict(r, data=json.loads(r["data"])) for r in self._rows(q, tuple(args))]

    def changes(self, after: int = 0, limit: int = 1000) -> list[dict]:
        """Revisions stored after sequence number `after`, oldest first: {seq, incident_id, revision, kind,
        t, payload}. Poll with the last seq seen (or use `wait_changes`) to follow the district live."""
        return [dict(r, payload=json.loads(r["payload"])) for r in self._rows(
            "SELECT seq, incident_id, revision, kind, t, payload FROM revisions WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, int(limit)))]

    def wait_changes(self, after: int, timeout: float, poll: float = 0.1) -> list[dict]:
        """`changes(after)`, waiting up to `timeout` s for at least one (polling; works across processes)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.changes(after)
            if got or time.monotonic() >= deadline:
                return got
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def last_seq(self) -> int:
        return self._rows("SELECT COALESCE(MAX(seq), 0) AS n FROM revisions")[0]["n"]

    def unpublished(self, limit: int = 500, after: int = 0) -> list[dict]:
        """Revisions not yet PUBACKed by the broker (the outbox), after sequence number `after`."""
        return [dict(r, payload=json.loads(r["payload"])) for r in self._rows(
            "SELECT seq, incident_id, revision, payload FROM revisions WHERE published = 0 AND seq > ? "
            "ORDER BY seq LIMIT ?", (after, int(limit)))]

    def mark_published(self, seqs: list[int]) -> None:
        if seqs:
            with self._tx():
                self.db.executemany(self.db.sql("UPDATE revisions SET published = 1 WHERE seq = ?"),
                                    [(s,) for s in seqs])

    def notifications(self, incident_id: str | None = None, status: str | None = None,
                      limit: int = 1000) -> list[dict]:
        q = ("SELECT seq, incident_id, revision, reason, channel, recipient, status, attempts, next_at, created_at, "
             "delivered_at, last_error FROM notifications WHERE 1 = 1")
        args: list = []
        if incident_id is not None:
            q += " AND incident_id = ?"
            args.append(incident_id)
        if status is not None:
            q += " AND status = ?"
            args.append(status)
        return self._rows(q + " ORDER BY seq LIMIT ?", tuple(args) + (int(limit),))

    def deliveries(self, notification: int) -> list[dict]:
        """Every attempt at one notification, oldest first: {attempt, t, ok, error}."""
        return [dict(r, ok=bool(r["ok"])) for r in self._rows(
            "SELECT attempt, t, ok, error FROM deliveries WHERE notification = ? ORDER BY attempt", (notification,))]

    def due_notifications(self, now: float, limit: int = 50) -> list[dict]:
        return [dict(r, payload=json.loads(r["payload"])) for r in self._rows(
            "SELECT seq, incident_id, revision, reason, channel, recipient, attempts, payload FROM notifications "
            "WHERE status = 'pending' AND next_at <= ? ORDER BY next_at, seq LIMIT ?", (now, int(limit)))]

    # --- acts from consoles in other processes (the web console) ------------------------------------
    def submit(self, kind: str, incident_id: str, payload: dict, source: str = "") -> int:
        """Queue an acknowledgement (`kind` "ack"), operator input ("input") or a shelving ("shelve", also to
        unshelve) for the leader, which verifies,
        applies, audits and answers it in one transaction; returns the request's number for `request()`.
        Any process may submit; no lease is needed (nothing changes until the leader has checked it)."""
        if kind not in ACT_KINDS:
            raise ValueError(f"kind {kind!r}: one of {', '.join(ACT_KINDS)}")
        with self._tx():
            cur = self._x("INSERT INTO requests (t, kind, incident_id, payload, source) VALUES (?, ?, ?, ?, ?) "
                          "RETURNING seq", (time.time(), kind, incident_id, _j(payload), source))
            return cur.fetchone()[0]

    def request(self, seq: int) -> dict | None:
        """{seq, kind, incident_id, done, outcome, done_at}: outcome "accepted" or "refused: why" once done."""
        rows = self._rows("SELECT seq, kind, incident_id, done, outcome, done_at FROM requests WHERE seq = ?", (seq,))
        return dict(rows[0], done=bool(rows[0]["done"])) if rows else None

    def wait_request(self, seq: int, timeout: float, poll: float = 0.05) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            r = self.request(seq)
            if r is None or r["done"] or time.monotonic() >= deadline:
                return r
            time.sleep(poll)

    def pending_requests(self, limit: int = 100) -> list[dict]:
        return [dict(r, payload=json.loads(r["payload"])) for r in self._rows(
            "SELECT seq, kind, incident_id, payload, source FROM requests WHERE done = 0 ORDER BY seq LIMIT ?",
            (int(limit),))]

    def shelves(self) -> dict[str, dict]:
        """Incidents shelved now: {incident_id: {by, reason, at, until, revision, grade}} (a shelf past its
        expiry stays here until the leader's next tick records its end: readers check `until` themselves)."""
        return {r["incident_id"]: {"by": r["who"], "reason": r["reason"], "at": r["at"], "until": r["until"],
                                   "revision": r["revision"], "grade": json.loads(r["grade"])}
                for r in self._rows("SELECT incident_id, who, reason, at, until, revision, grade FROM shelves")}

    def shelf_log(self, incident_id: str | None = None, after: int = 0, limit: int = 1000) -> list[dict]:
        """Every shelving act and end, oldest first: {seq, incident_id, action, who, t, outcome, reason,
        until}."""
        q, args = ("SELECT seq, incident_id, action, who, t, outcome, reason, until FROM shelf_log WHERE seq > ?",
                   [after])
        if incident_id is not None:
            q += " AND incident_id = ?"
            args.append(incident_id)
        return self._rows(q + " ORDER BY seq LIMIT ?", (*args, int(limit)))

    def shelf_seq(self) -> int:
        """Grows with every shelving change: a console polls it to know when to read `shelves()` again."""
        return self._rows("SELECT COALESCE(MAX(seq), 0) AS n FROM shelf_log")[0]["n"]

    def readings(self, dev: int, since: float, until: float | None = None) -> list[dict]:
        """A device's stored readings from `since`, oldest first: {t, pressure_pa, inlet_pa, gateway}."""
        return self._rows("SELECT t, pressure_pa, inlet_pa, gateway FROM readings WHERE dev = ? AND t >= ? AND t <= ? "
                          "ORDER BY t", (int(dev), since, float("inf") if until is None else until))

    def valve_events(self, dev: int, since: float) -> list[dict]:
        """A device's valve moves from `since`, oldest first: {t, valve, cause, gateway}."""
        return self._rows("SELECT t, valve, cause, gateway FROM valve_events WHERE dev = ? AND t >= ? ORDER BY t",
                          (int(dev), since))

    def gateways(self) -> list[dict]:
        return [dict(r, online=bool(r["online"]), silent=bool(r["silent"])) for r in self._rows(
            "SELECT gateway_id, district, online, silent, last_seen, status_t, version FROM gateways "
            "ORDER BY gateway_id")]

    def engine_state(self) -> tuple[list[dict], dict]:
        """For a new leader: the engine's incidents still held (open, or resolved recently) and its other
        state (`engine` table)."""
        incs = [json.loads(r["state"]) for r in self._rows(
            "SELECT state FROM incidents WHERE status = 'open' OR updated_at >= "
            "(SELECT COALESCE(MAX(updated_at), 0) FROM incidents) - 86400")]
        extra = {r["k"]: json.loads(r["v"]) for r in self._rows("SELECT k, v FROM engine")}
        return incs, extra

    def act_nonce_seen(self, nonce: str) -> bool:
        """Has an act with this signed nonce been recorded (applied or refused) by the command?"""
        if not nonce:
            return False
        return bool(self._rows("SELECT 1 AS x FROM acks WHERE nonce = ? UNION ALL "
                               "SELECT 1 AS x FROM operator_input WHERE nonce = ? UNION ALL "
                               "SELECT 1 AS x FROM shelf_log WHERE nonce = ?", (nonce, nonce, nonce)))

    def timeline_counts(self) -> dict[str, int]:
        return {r["id"]: r["timeline_n"] for r in self._rows("SELECT id, timeline_n FROM incidents")}

    def counts(self) -> dict:
        """Open incidents by level (for metrics and health)."""
        rows = self._rows("SELECT level, COUNT(*) AS n FROM incidents WHERE status = 'open' GROUP BY level")
        return {r["level"]: r["n"] for r in rows}


RETAINED = ("readings", "valve_events")     # the tables the readings' retention keeps bounded, in its order
_UNBOUNDED = 1 << 62        # LIMIT of an unbounded retention pass (both dialects take a number, not NULL)
_ROWID = {"sqlite": "rowid", "postgresql": "ctid"}   # a row's address, read and used within one statement
# Devices over the bound trimmed together, and cuts one retention pass looks up at most. Together: a device's
# rows lie on the table's pages among every other device's of the same minutes, so trimming devices one after
# another writes each page once a device (bench retention: 5 times the writes). At most: a look-up walks
# max_per_device entries of the (dev, t) index (20,000 by default).
_BATCH = 16


@dataclass
class Retention:
    """Where a round of the readings' retention stands, worked off in bounded passes (`_Writer.retention_pass`).
    Held in memory by the leader: a crash forgets it, and the next leader starts a new round (every pass only
    removes rows that should go, so nothing that should stay is lost)."""
    before: float                 # rows older than this go: fixed for the round, so its counts are one pass's
    max_per_device: int
    table: int = 0                # RETAINED[table] is being worked on; len(RETAINED): the round is done
    over: list | None = None      # None: its expired rows are still going; then its devices found over the bound
                                  # and not trimmed yet, in key order
    cuts: dict = field(default_factory=dict)     # device -> the time of its oldest row that stays (None: within
                                                 # the bound), looked up once a round
    removed: dict = field(default_factory=lambda: {"expired": 0, "over_bound": 0})   # by the round so far

    @property
    def done(self) -> bool:
        return self.table >= len(RETAINED)


_RUN_MAX = 256       # rows in one multi-row statement (at most 7 parameters a row: far below either limit)


def _runs(rows: list):
    """`rows` cut into runs of power-of-two lengths (at most _RUN_MAX), longest first: one multi-row statement
    a run, of one of a few texts (psycopg prepares a text it sees often; one text per batch size would not be)."""
    i = 0
    while i < len(rows):
        n = min(_RUN_MAX, 1 << ((len(rows) - i).bit_length() - 1))
        yield rows[i:i + n]
        i += n


def _insert(into: str, width: int, n: int) -> str:
    """INSERT of n rows of `width` values: one statement, where n would cost the server n executions."""
    return f"INSERT INTO {into} VALUES " + ", ".join(["(" + ", ".join(["?"] * width) + ")"] * n)


def _frames_lookup(n: int) -> str:
    """Which of n frame identities are stored. A join from the keys (VALUES names its columns column1.. on
    both dialects), so each is one search of the primary key: SQLite scans the whole table for the row-value
    form `(dev, dir, fcnt) IN (VALUES ...)`, and the table holds a week of frames (frames_keep_s)."""
    return ("SELECT f.dev, f.dir, f.fcnt FROM (VALUES " + ", ".join(["(?, ?, ?)"] * n) + ") AS k "
            "JOIN frames AS f ON f.dev = k.column1 AND f.dir = k.column2 AND f.fcnt = k.column3")


class _Writer:
    """What a write transaction can do. Every method is idempotent on its natural key.

    On PostgreSQL the transaction is a pipeline (`_Postgres.transaction`): a method whose caller needs no
    answer only sends its statement; one that returns an answer waits for the server (one round trip, which
    also brings the answers of everything sent before it). So the methods that answer take many rows at once
    (`known_frames`, `add_revisions`, `notifications`): a grading pass then waits a fixed number of times, not
    once a row. Frames and journal rows are held and sent many rows to a statement (`send_held`), which spares
    the server an execution a row on both dialects."""

    def __init__(self, store: Store):
        self.s = store
        self.x = store._x
        self.frames: dict[tuple[int, int, int], bool] = {}   # frame identity -> stored (this transaction's view)
        # Rows not sent yet, per INSERT target (frames, journal), in order: sent as multi-row INSERTs (one
        # statement for many rows) before this writer next waits or looks up frames, and before the transaction
        # ends. Nothing reads the journal inside a transaction; frames are read only through `known_frames`.
        self.held: dict[tuple[str, int], list[tuple]] = {}

    def _hold(self, into: str, row: tuple) -> None:
        self.held.setdefault((into, len(row)), []).append(row)

    def send_held(self) -> None:
        for (into, width), rows in self.held.items():
            for run in _runs(rows):
                self.x(_insert(into, width, len(run)), [v for row in run for v in row])
        self.held = {}

    def wait(self) -> None:
        """Every statement sent so far has answered (PostgreSQL: one round trip; SQLite: nothing to wait for)."""
        self.send_held()
        self.s.db.wait()

    def _answered(self, cur):
        self.wait()
        return cur

    def known_frames(self, keys) -> None:
        """Look up these frame identities in one query (one round trip for a batch), so that `first_frame`
        answers them without asking the database again."""
        todo = sorted({k for k in keys if k not in self.frames})
        if not todo:
            return
        self.send_held()
        curs = [self.x(_frames_lookup(len(run)), [v for k in run for v in k]) for run in _runs(todo)]
        self.frames.update((k, False) for k in todo)
        for cur in curs:                 # the first fetch waits for all of them
            self.frames.update((tuple(r), True) for r in cur.fetchall())

    def first_frame(self, key: tuple[int, int, int], gateway: str, t: float) -> bool:
        """True the first time this frame identity (device, direction, counter) is graded (SPEC 4: a device
        never reuses a counter, so the identity is the same on every gateway that heard it)."""
        if key not in self.frames:
            self.known_frames([key])
        if self.frames[key]:
            return False
        self.frames[key] = True
        # Held, then sent with the others as a plain INSERT, not "ON CONFLICT DO NOTHING": the identity was
        # absent when looked up in this transaction, and only the lease holder grades (SQLite: BEGIN IMMEDIATE,
        # no other writer at all). If another writer stored it since (two services leading one store under the
        # same --instance name), the INSERT fails and so does the whole transaction: nothing written, the broker
        # redelivers; never graded twice.
        self._hold("frames", (*key, gateway, t))
        return True

    def prune_frames(self, before: float) -> int:
        return self._answered(self.x("DELETE FROM frames WHERE t < ?", (before,))).rowcount

    def readings(self, rows: list[tuple]) -> None:
        """Readings to keep: (dev, t, pressure_pa, inlet_pa, gateway) each."""
        for run in _runs(rows):
            self.x(_insert("readings (dev, t, pressure_pa, inlet_pa, gateway)", 5, len(run)),
                   [v for row in run for v in row])

    def valve_event(self, dev: int, t: float, valve: str, cause: str | None, gateway: str | None) -> None:
        self.x("INSERT INTO valve_events (dev, t, valve, cause, gateway) VALUES (?, ?, ?, ?, ?)",
               (dev, t, valve, cause, gateway))

    def prune_readings(self, before: float, max_per_device: int) -> dict[str, int]:
        """Retention in one go (a whole round, however long it takes): rows older than `before` go ("expired");
        then a device holding more than `max_per_device` rows in a table loses its oldest ("over_bound": a
        chattering device cannot fill the store). Counts. The service works a round off in bounded passes
        (`retention_pass`); this is the reference they are measured and tested against."""
        return self.retention_pass(Retention(before, max_per_device), None)

    def retention_pass(self, r: "Retention", limit: int | None) -> dict[str, int]:
        """One bounded pass of the retention round `r`: a table's scan for devices over the bound, or at most
        `limit` rows deleted and at most `_BATCH` devices' cuts looked up (None: no bound, the whole round); `r` records where it stopped (`r.done` once the
        round is worked off). Counts what it removed, by reason. The rows go oldest first, in the round's order:
        expired, then over the bound, table by table; so between two passes (or after a crash) a device keeps a
        run of its newest rows, and a round's end state and counts are those of `prune_readings` at its start."""
        out = {"expired": 0, "over_bound": 0}
        left = _UNBOUNDED if limit is None else limit
        probes = _UNBOUNDED if limit is None else _BATCH            # cuts this pass may still look up
        while not r.done and left > 0:
            table = RETAINED[r.table]
            if r.over is None:
                n = self._delete_oldest(table, "t < ?", (r.before,), left)
                out["expired"] += n
                if n < left:
                    # this table's expired rows are gone: find its devices over the bound (one scan of the
                    # (dev, t) index a round, as the unbounded pass did); each one's cut is looked up in its turn
                    r.over = [dev for (dev,) in self.x(f"SELECT dev FROM {table} GROUP BY dev HAVING COUNT(*) > ? "
                                                       "ORDER BY dev", (r.max_per_device,)).fetchall()]
                    if limit is not None and r.over:
                        break               # the scan is this pass's work: the trimming starts at the next
                left -= n
            elif not r.over:
                r.table, r.over, r.cuts = r.table + 1, None, {}
            else:
                front = r.over[:_BATCH]
                ask = [dev for dev in front if dev not in r.cuts][:probes]
                probes -= len(ask)
                # the newest max_per_device rows not expired stay; ties at the cut stay too (never a row newer than
                # one kept). Looked up once a round: rows that come later only raise the cut, so the one looked up
                # never removes a row that should stay. All asked at once (PostgreSQL: one wait).
                curs = [self.x(f"SELECT t FROM {table} WHERE dev = ? AND t >= ? ORDER BY t DESC LIMIT 1 OFFSET ?",
                               (dev, r.before, r.max_per_device - 1)) for dev in ask]
                for dev, cur in zip(ask, curs):
                    cut = cur.fetchone()
                    r.cuts[dev] = None if cut is None else cut[0]
                looked = [dev for dev in front if dev in r.cuts]
                if not looked:
                    break                   # no look-ups left in this pass
                trim = [(dev, r.cuts[dev]) for dev in looked if r.cuts[dev] is not None]
                n = self._trim(table, trim, r.before, left) if trim else 0
                out["over_bound"] += n
                done = set(looked)
                if n == left:               # the pass ran out: some of them may still have rows to lose
                    done -= set(self._still_over(table, trim, r.before))
                r.over = [dev for dev in r.over if dev not in done]
                left -= n
        for reason, n in out.items():
            r.removed[reason] += n
        return out

    def _trim(self, table: str, cuts: list[tuple], before: float, limit: int) -> int:
        """Delete the oldest `limit` rows across these devices that are older than their cut, `cuts` [(dev, cut)]:
        the oldest `limit` of each device's (one search of the (dev, t) index each), then the oldest of those."""
        rid = _ROWID[self.s.dialect]
        each = " UNION ALL ".join(f"SELECT * FROM (SELECT {rid} AS rid, t FROM {table} WHERE dev = ? AND t >= ? AND "
                                  f"t < ? ORDER BY t LIMIT ?) AS d{i}" for i in range(len(cuts)))
        return self._answered(self.x(f"DELETE FROM {table} WHERE {rid} IN (SELECT rid FROM ({each}) AS o ORDER BY t "
                                     "LIMIT ?)", (*(v for dev, cut in cuts for v in (dev, before, cut, limit)),
                                                  limit))).rowcount

    def _still_over(self, table: str, cuts: list[tuple], before: float) -> list[int]:
        """Which of these devices still have a row older than their cut (all asked at once: one wait)."""
        curs = [(dev, self.x(f"SELECT 1 FROM {table} WHERE dev = ? AND t >= ? AND t < ? LIMIT 1", (dev, before, cut)))
                for dev, cut in cuts]
        return [dev for dev, cur in curs if cur.fetchone() is not None]

    def _delete_oldest(self, table: str, where: str, args: tuple, limit: int) -> int:
        """Delete the oldest `limit` rows of `table` matching `where`, by row address (SQLite's rowid,
        PostgreSQL's ctid: these tables have no key, and a cut by time could not stop inside a run of ties)."""
        rid = _ROWID[self.s.dialect]
        return self._answered(self.x(f"DELETE FROM {table} WHERE {rid} IN (SELECT {rid} FROM {table} WHERE {where} "
                                     "ORDER BY t LIMIT ?)", (*args, limit))).rowcount

    def save_incident(self, state: dict, latest: dict, timeline_n: int) -> None:
        acked = latest.get("acked") or {}
        row = (state["id"], state["kind"], state["status"], state.get("level"), state.get("warning"),
               latest["revision"], state["detected_at"], latest.get("published_at") or time.time(),
               acked.get("by"), acked.get("t"), timeline_n, _j(state), _j(latest))
        self.x("INSERT INTO incidents (id, kind, status, level, warning, revision, detected_at, updated_at, acked_by, "
               "acked_at, timeline_n, state, latest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
               "ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, status = excluded.status, level = excluded.level, "
               "warning = excluded.warning, revision = excluded.revision, updated_at = excluded.updated_at, "
               "acked_by = excluded.acked_by, acked_at = excluded.acked_at, timeline_n = excluded.timeline_n, "
               "state = excluded.state, latest = excluded.latest", row)

    def add_revision(self, incident_id: str, revision: int, kind: str, t: float, payload: dict) -> bool:
        """False if this revision is already stored (nothing is duplicated)."""
        return self.add_revisions([(incident_id, revision, kind, t, payload)])[0]

    def add_revisions(self, rows: list[tuple]) -> list[bool]:
        """`add_revision` for each (incident_id, revision, kind, t, payload), stored in this order; one wait."""
        return self._inserted("INSERT INTO revisions (incident_id, revision, kind, t, payload) VALUES (?, ?, ?, ?, ?) "
                              "ON CONFLICT DO NOTHING", [(*r[:4], _j(r[4])) for r in rows])

    def _inserted(self, q: str, rows: list[tuple]) -> list[bool]:
        """Each row sent, then one wait: did each one insert a row (not there already)?"""
        if not rows:
            return []
        curs = [self.x(q, row) for row in rows]
        self.wait()
        return [cur.rowcount == 1 for cur in curs]

    def journal(self, t: float, category: str, text: str, *, incident_id: str | None = None,
                revision: int | None = None, who: str | None = None, data: dict | None = None) -> None:
        self._hold("journal (t, incident_id, revision, category, who, text, data)",
                   (t, incident_id, revision, category, who, text, _j(data or {})))

    def ack(self, incident_id: str, revision, who: str, t: float, outcome: str, request: dict,
            nonce: str | None = None) -> None:
        self.x("INSERT INTO acks (incident_id, revision, who, t, outcome, request, nonce) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (incident_id, revision, who, t, outcome, _j(request), nonce))

    def operator_input(self, incident_id: str, who: str, t: float, outcome: str, fields: dict,
                       nonce: str | None = None) -> None:
        self.x("INSERT INTO operator_input (incident_id, who, t, outcome, fields, nonce) VALUES (?, ?, ?, ?, ?, ?)",
               (incident_id, who, t, outcome, _j(fields), nonce))

    def escalation(self, incident_id: str, revision: int, stage: str, n: int, t: float, overdue_s: float) -> None:
        self.x("INSERT INTO escalations (incident_id, revision, stage, n, t, overdue_s) VALUES (?, ?, ?, ?, ?, ?) "
               "ON CONFLICT DO NOTHING", (incident_id, revision, stage, n, t, overdue_s))

    def notification(self, incident_id: str, revision: int, reason: str, channel: str, recipient: str, t: float,
                     payload: dict) -> bool:
        """False if this revision already has a notification on this channel to this recipient."""
        return self.notifications([(incident_id, revision, reason, channel, recipient, t, payload)])[0]

    def notifications(self, rows: list[tuple]) -> list[bool]:
        """`notification` for each (incident_id, revision, reason, channel, recipient, t, payload); one wait."""
        return self._inserted("INSERT INTO notifications (incident_id, revision, reason, channel, recipient, status, "
                              "attempts, next_at, created_at, payload) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?) "
                              "ON CONFLICT DO NOTHING", [(*r[:5], r[5], r[5], _j(r[6])) for r in rows])

    def delivery(self, seq: int, *, ok: bool, t: float, error: str | None, next_at: float | None) -> None:
        """One delivery attempt: sent, failed for good (next_at None), or pending again at next_at."""
        status = "sent" if ok else ("pending" if next_at is not None else "failed")
        self.x("UPDATE notifications SET status = ?, attempts = attempts + 1, delivered_at = ?, "
               "last_error = COALESCE(?, last_error), next_at = ? WHERE seq = ?",
               (status, t if ok else None, error, next_at if next_at is not None else t, seq))
        self.x("INSERT INTO deliveries (notification, attempt, t, ok, error) "
               "SELECT seq, attempts, ?, ?, ? FROM notifications WHERE seq = ?", (t, int(ok), error, seq))

    def gateway(self, gateway_id: str, district: str, t: float, *, online: bool | None = None,
                silent: bool | None = None, status_t: float | None = None, version: str | None = None) -> None:
        self.x("INSERT INTO gateways (gateway_id, district, online, silent, last_seen, status_t, version) "
               "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway_id) DO UPDATE SET "
               "online = COALESCE(?, gateways.online), silent = COALESCE(?, gateways.silent), "
               "last_seen = CASE WHEN ? = 1 THEN gateways.last_seen ELSE excluded.last_seen END, "
               "status_t = COALESCE(excluded.status_t, gateways.status_t), "
               "version = COALESCE(excluded.version, gateways.version)",
               (gateway_id, district, int(bool(online)), int(bool(silent)), t, status_t, version,
                None if online is None else int(online), None if silent is None else int(silent),
                # a silence verdict does not move last_seen; anything heard from the gateway does
                int(silent is True)))

    def shelf_log(self, incident_id: str, action: str, who: str, t: float, outcome: str, *, reason: str = "",
                  until: float | None = None, request: dict | None = None, nonce: str | None = None) -> int:
        return self.x("INSERT INTO shelf_log (incident_id, action, who, t, outcome, reason, until, request, nonce) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
                      (incident_id, action, who, t, outcome, reason, until, _j(request or {}), nonce)).fetchone()[0]

    def shelve(self, incident_id: str, shelf: dict, log_seq: int) -> None:
        self.x("INSERT INTO shelves (incident_id, who, reason, at, until, revision, grade, log_seq) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (incident_id) DO UPDATE SET who = excluded.who, "
               "reason = excluded.reason, at = excluded.at, until = excluded.until, revision = excluded.revision, "
               "grade = excluded.grade, log_seq = excluded.log_seq",
               (incident_id, shelf["by"], shelf["reason"], shelf["at"], shelf["until"], shelf.get("revision"),
                _j(shelf["grade"]), log_seq))

    def unshelve(self, incident_id: str) -> bool:
        return self._answered(self.x("DELETE FROM shelves WHERE incident_id = ?", (incident_id,))).rowcount == 1

    def request_done(self, seq: int, outcome: str, t: float) -> None:
        self.x("UPDATE requests SET done = 1, outcome = ?, done_at = ? WHERE seq = ?", (outcome, t, seq))

    def engine(self, k: str, v) -> None:
        self.x("INSERT INTO engine VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", (k, _j(v)))
