"""Replay protection that survives restarts: every nonce of a verified request is written to SQLite
(synchronous=FULL, committed) before the request acts. A nonce is kept as long as a request carrying it
could still pass the freshness check (its time + max age + skew); older ones are pruned, since freshness
alone refuses them. The file also keeps the highest roster serial taken up (a roster rollback would
un-revoke someone).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .errors import AuthorityError


class ReplayGuard:
    def __init__(self, path: str | Path, *, keep_s: float = 150.0, prune_every: int = 256):
        """`keep_s`: how long a nonce must be remembered (>= the verifier's max_age_s + max_skew_s)."""
        self.path = Path(path)
        self.keep_s = keep_s
        self.prune_every, self._since_prune = prune_every, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))   # 0600 from its first byte
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("CREATE TABLE IF NOT EXISTS nonces (signer TEXT NOT NULL, nonce TEXT NOT NULL, "
                            "t REAL NOT NULL, PRIMARY KEY (signer, nonce)) WITHOUT ROWID")
            self.db.execute("CREATE INDEX IF NOT EXISTS nonces_t ON nonces (t)")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        except sqlite3.DatabaseError as e:
            raise AuthorityError(f"replay store {self.path} unreadable ({e}): move it aside; requests of the "
                                 f"last {keep_s:.0f} s could then be replayed once") from None
        for suffix in ("-wal", "-shm"):
            q = self.path.with_name(self.path.name + suffix)
            if q.exists():
                q.chmod(0o600)

    def first_use(self, signer: str, nonce: str, t: float, now: float) -> bool:
        """Record (signer, nonce); False if it was seen before. Durable before it returns."""
        try:
            self.db.execute("INSERT INTO nonces (signer, nonce, t) VALUES (?, ?, ?)", (signer, nonce, t))
        except sqlite3.IntegrityError:
            return False
        self._since_prune += 1
        if self._since_prune >= self.prune_every:
            self.prune(now)
        return True

    def prune(self, now: float) -> int:
        self._since_prune = 0
        return self.db.execute("DELETE FROM nonces WHERE t < ?", (now - self.keep_s,)).rowcount

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM nonces").fetchone()[0]

    def meta_get(self, k: str) -> str | None:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return row[0] if row else None

    def meta_set(self, k: str, v: str) -> None:
        self.db.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", (k, v))

    def close(self) -> None:
        self.db.close()
