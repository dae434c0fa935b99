"""Who is at the web console: argon2 password hashes, lockout after repeated failures, CSRF tokens.

The operators themselves (id, name, role, revocation) come from the authority's roster (issue 14); this
module only keeps what a browser login needs on top: one argon2id hash per operator id, in a file readable
by the console alone (0600), and the failure counts that lock an account or an address out.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2id with the library's defaults (RFC 9106 low-memory profile: t=3, 64 MiB, p=4)
DEFAULT_HASHER = PasswordHasher()


class PasswordFileError(Exception):
    """The password file is missing, unreadable or too open; the message names the file and the fix."""


class PasswordBook:
    """{operator id: argon2 hash} in a JSON file (0600). Re-read when it changes on disk."""

    def __init__(self, path: str | Path, hasher: PasswordHasher = DEFAULT_HASHER):
        self.path = Path(path)
        self.hasher = hasher
        # verifying an unknown id still costs one argon2 verification, so timing does not tell which ids exist
        self._dummy = hasher.hash(secrets.token_hex(16))
        self._lock = threading.Lock()
        self._mtime = None
        self._hashes: dict[str, str] = {}
        self._load()

    def _load(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise PasswordFileError(f"{self.path}: no console password file; create it with "
                                    f"'gasguard command web passwd OPERATOR_ID --file {self.path}'") from None
        if st.st_mode & 0o077:
            raise PasswordFileError(f"{self.path}: readable by others (mode {st.st_mode & 0o777:o}); "
                                    f"run 'chmod 600 {self.path}'")
        if st.st_mtime_ns == self._mtime:
            return
        try:
            doc = json.loads(self.path.read_text())
            hashes = dict(doc["hashes"])
        except (ValueError, KeyError, TypeError) as e:
            raise PasswordFileError(f"{self.path}: not a console password file ({e}); "
                                    "recreate it with 'gasguard command web passwd'") from None
        self._hashes, self._mtime = hashes, st.st_mtime_ns

    def verify(self, operator_id: str, password: str) -> bool:
        with self._lock:
            self._load()
            h = self._hashes.get(operator_id)
        try:
            ok = self.hasher.verify(h or self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        if ok and h is not None and self.hasher.check_needs_rehash(h):
            self.set(operator_id, password)        # parameters raised since: store the stronger hash
        return ok and h is not None

    def set(self, operator_id: str, password: str) -> None:
        with self._lock:
            self._hashes[operator_id] = self.hasher.hash(password)
            write_hashes(self.path, self._hashes)
            self._mtime = self.path.stat().st_mtime_ns

    def remove(self, operator_id: str) -> bool:
        with self._lock:
            gone = self._hashes.pop(operator_id, None) is not None
            write_hashes(self.path, self._hashes)
            return gone


def write_hashes(path: Path, hashes: dict[str, str]) -> None:
    """Atomically, 0600 from the first byte (the hashes are secrets: an offline guess needs only them)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"format": "gasguard-console-passwords/1", "hashes": hashes}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def new_password_file(path: str | Path, operator_id: str, password: str,
                      hasher: PasswordHasher = DEFAULT_HASHER) -> PasswordBook:
    p = Path(path)
    if not p.exists():
        write_hashes(p, {})
    book = PasswordBook(p, hasher)
    book.set(operator_id, password)
    return book


@dataclass(frozen=True)
class LockoutConfig:
    max_failures: int = 5           # failed logins ...
    window_s: float = 900.0         # ... within this window lock the account (and, separately, the address)
    lockout_s: float = 900.0        # for this long (NIST SP 800-63B 5.2.2: limit failed attempts)


class LoginGuard:
    """Failed logins by operator id and by client address; pure, time passed in. Bounded: at most
    `max_keys` keys are tracked, the stalest forgotten first (an attacker spraying ids cannot grow it)."""

    def __init__(self, cfg: LockoutConfig | None = None, max_keys: int = 10_000):
        self.cfg = cfg or LockoutConfig()
        self.max_keys = max_keys
        self._fails: dict[str, deque] = {}
        self._locked_until: dict[str, float] = {}
        self.forgotten = 0

    def locked(self, keys, now: float) -> float:
        """Seconds left of the longest lockout among `keys` (0: none)."""
        return max([self._locked_until.get(k, 0.0) - now for k in keys] + [0.0])

    def failure(self, keys, now: float) -> bool:
        """Record a failure; True when it locked one of `keys`."""
        locked = False
        for k in keys:
            q = self._fails.setdefault(k, deque(maxlen=self.cfg.max_failures))
            q.append(now)
            while q and q[0] <= now - self.cfg.window_s:
                q.popleft()
            if len(q) >= self.cfg.max_failures:
                self._locked_until[k] = now + self.cfg.lockout_s
                q.clear()
                locked = True
        while len(self._fails) > self.max_keys:
            self._fails.pop(next(iter(self._fails)))
            self.forgotten += 1
        return locked

    def success(self, keys) -> None:
        for k in keys:
            self._fails.pop(k, None)


def csrf_token(session: dict) -> str:
    """The session's synchroniser token (OWASP CSRF cheat sheet), made on first use."""
    tok = session.get("csrf")
    if not tok:
        tok = session["csrf"] = secrets.token_urlsafe(32)
    return tok


def csrf_ok(session: dict, sent: str | None) -> bool:
    tok = session.get("csrf")
    return bool(tok and sent) and hmac.compare_digest(tok, sent)
