"""Command-side dedup by frame identity (issue 8 scale-out).

Two gateways hearing one node both accept its frame and both publish it, each under its own gateway's
message id. The frame's identity is (device, direction, counter): the same on both copies, and never
reused by the device (SPEC 4). A consumer keeps the first copy and drops the rest:

    dd = FrameDedup("/var/lib/gasguard/command-dedup.db")   # shared by every consumer on this host
    if dd.first(payload):                                     # an alarm, event or reading entry
        handle(payload)

The store is an SQLite table with the identity as its primary key: `INSERT OR IGNORE` tells the first
writer from the others atomically, so consumers of one MQTT shared subscription ($share/<group>/...)
that receive the two copies of one frame on different processes still let exactly one through. Across
hosts, use any store with an atomic insert-if-absent (a database unique key, Redis SET NX with a TTL).
Bounded: identities older than `keep_s` are pruned (far longer than any retransmission or drain delay).
"""

from __future__ import annotations

import sqlite3
import time

from gasguard.protocol.const import UP

_SCHEMA = ("CREATE TABLE IF NOT EXISTS seen (dev INTEGER NOT NULL, dir INTEGER NOT NULL, fcnt INTEGER NOT NULL, "
           "t REAL NOT NULL, PRIMARY KEY (dev, dir, fcnt)) WITHOUT ROWID")


def frame_key(payload: dict, direction: int = UP) -> tuple[int, int, int] | None:
    """(device, direction, counter) of a published alarm, event or reading entry; None if it has none."""
    try:
        return int(payload["dev"], 16), direction, int(payload["fcnt"])
    except (KeyError, TypeError, ValueError):
        return None


class FrameDedup:
    def __init__(self, path: str = ":memory:", keep_s: float = 7 * 86400, clock=time.time, prune_every: int = 10_000):
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        if path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(_SCHEMA)
        self.keep_s, self.clock, self.prune_every = keep_s, clock, prune_every
        self.inserts = 0
        self.duplicates = 0

    def first_key(self, key: tuple[int, int, int]) -> bool:
        """True for the first sighting of this frame identity (by any consumer sharing the store)."""
        now = self.clock()
        cur = self.db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?)", (*key, now))
        if cur.rowcount != 1:
            self.duplicates += 1
            return False
        self.inserts += 1
        if self.inserts % self.prune_every == 0:
            self.db.execute("DELETE FROM seen WHERE t < ?", (now - self.keep_s,))
        return True

    def first(self, payload: dict) -> bool:
        """True if this message is the first copy of its frame (messages without an identity pass)."""
        key = frame_key(payload)
        return True if key is None else self.first_key(key)

    def close(self) -> None:
        self.db.close()
