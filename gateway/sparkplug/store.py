"""The edge node's durable state: `bdSeq` and the data held while no primary host was listening.

One SQLite file, so a bdSeq increment is atomic (a transaction, fsynced: synchronous=FULL) and history rows
survive a SIGKILL. History is bounded: past `max_rows` the oldest rows are dropped and counted (a reading may
be lost when the host stays away for days; alarms in history are the device's own state changes and are also
carried, current, in every birth, so what a host sees as *current* is never lost).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path


class EdgeStore:
    def __init__(self, path: str | Path, max_rows: int = 100_000):
        self.path = Path(path)
        self.max_rows = max_rows
        self.dropped = 0                 # history rows dropped (oldest first) because the store was full
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if fresh:
            os.chmod(self.path, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                        "dev INTEGER NOT NULL, t_ms INTEGER NOT NULL, vals TEXT NOT NULL)")

    def next_bdseq(self) -> int:
        """The bdSeq of the next MQTT CONNECT: one more than the last (wrapping 255 -> 0), persisted before use
        so that a restart never repeats one (Sparkplug 3.0: bdSeq must survive restarts)."""
        row = self.db.execute("SELECT v FROM meta WHERE k='bdseq'").fetchone()
        nxt = 0 if row is None else (row[0] + 1) % 256
        self.db.execute("INSERT INTO meta(k, v) VALUES('bdseq', ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v", (nxt,))
        return nxt

    def hold(self, dev: int, t_ms: int, values: dict) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT INTO history(dev, t_ms, vals) VALUES(?,?,?)", (dev, t_ms, json.dumps(values)))
            n = self.db.execute("SELECT COUNT(*) FROM history").fetchone()[0]
            if n > self.max_rows:
                over = n - self.max_rows
                self.db.execute("DELETE FROM history WHERE id IN (SELECT id FROM history ORDER BY id LIMIT ?)", (over,))
                self.dropped += over

    def held(self, limit: int = 500) -> list[tuple[int, int, int, dict]]:
        """The oldest held rows: (id, dev, t_ms, values)."""
        return [(i, d, t, json.loads(v)) for i, d, t, v in
                self.db.execute("SELECT id, dev, t_ms, vals FROM history ORDER BY id LIMIT ?", (limit,))]

    def release(self, upto_id: int) -> None:
        self.db.execute("DELETE FROM history WHERE id <= ?", (upto_id,))

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM history").fetchone()[0]

    def close(self) -> None:
        self.db.close()
