"""The device registry: one SQLite schema, written by the technician CLI and read by the gateway.

This module is the only place that knows the schema. Keys are stored here (the file is created 0600)
and never appear in a repr, a log line or an export unless the caller asks for them by name.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

__all__ = ["SCHEMA_VERSION", "PROFILES", "USER_CLASSES", "PRESSURE_CLASSES", "STATES", "RegistryError", "Device",
           "Registry"]

SCHEMA_VERSION = 2   # 2: device_log table (compatible: version 1 readers ignore it)

PROFILES = ("household", "station")
# plan 5.1.2: supply priority order, most protected first
USER_CLASSES = ("residential", "public_welfare", "transport", "commercial", "industrial")
# GB 50028 network pressure classes (MPa ranges in GRADING.md 5)
PRESSURE_CLASSES = ("high_a", "high_b", "subhigh_a", "subhigh_b", "medium_a", "medium_b", "low")
STATES = ("provisioned", "commissioned", "decommissioned")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    dev_id          INTEGER PRIMARY KEY CHECK (dev_id > 0 AND dev_id < 4294967295),
    key             BLOB NOT NULL CHECK (length(key) = 16),
    key_version     INTEGER NOT NULL DEFAULT 1,
    profile         TEXT NOT NULL CHECK (profile IN ('household', 'station')),
    site_name       TEXT NOT NULL DEFAULT '',
    address         TEXT NOT NULL DEFAULT '',
    lat             REAL,
    lon             REAL,
    households      INTEGER NOT NULL DEFAULT 0 CHECK (households >= 0),
    user_class      TEXT NOT NULL DEFAULT 'residential',
    pressure_class  TEXT NOT NULL DEFAULT 'low',
    key_area        INTEGER NOT NULL DEFAULT 0,
    upstream        INTEGER REFERENCES devices(dev_id),   -- the station that feeds this one, if any
    state           TEXT NOT NULL DEFAULT 'provisioned',
    config          TEXT NOT NULL DEFAULT '{}',             -- JSON: thresholds, rates, radio
    calibration     TEXT NOT NULL DEFAULT '{}',             -- JSON: zero/span per sensor
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_upstream ON devices(upstream);
-- what technicians did to each device (gasguard device ...): flash, config, calibrate, rotate-key, ...
-- Never holds a key; added in schema 2 (older readers ignore the table).
CREATE TABLE IF NOT EXISTS device_log (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    dev_id          INTEGER NOT NULL,
    at              REAL NOT NULL,
    action          TEXT NOT NULL,
    detail          TEXT NOT NULL DEFAULT '{}'              -- JSON
);
CREATE INDEX IF NOT EXISTS device_log_dev ON device_log(dev_id);
"""


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says what to do."""


@dataclass(slots=True)     # slots: a gateway caches tens of thousands of these (verify.RegistryCache)
class Device:
    dev_id: int
    key: bytes = field(repr=False)
    profile: str
    key_version: int = 1
    site_name: str = ""
    address: str = ""
    lat: float | None = None
    lon: float | None = None
    households: int = 0
    user_class: str = "residential"
    pressure_class: str = "low"
    key_area: bool = False
    upstream: int | None = None
    state: str = "provisioned"
    config: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0

    def validate(self) -> None:
        if not (0 < self.dev_id < 0xFFFFFFFF):
            raise RegistryError(f"device id {self.dev_id} outside 1..4294967294")
        if len(self.key) != 16:
            raise RegistryError("a device key is 16 bytes")
        for name, allowed in (("profile", PROFILES), ("user_class", USER_CLASSES),
                              ("pressure_class", PRESSURE_CLASSES), ("state", STATES)):
            if getattr(self, name) not in allowed:
                raise RegistryError(f"{name} {getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        if self.households < 0:
            raise RegistryError("households served cannot be negative")

    def public(self) -> dict:
        """Everything but the key (for logs, listings, incident reports)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "key"}
        d["dev"] = f"{self.dev_id:08x}"
        return d

    @property
    def active(self) -> bool:
        return self.state != "decommissioned"


_COLUMNS = [f.name for f in fields(Device)]


def _row_to_device(row: sqlite3.Row) -> Device:
    return _values_to_device([row[c] for c in _COLUMNS])


_INTERNED = ("profile", "user_class", "pressure_class", "state")
_SELECT_ONE = f"SELECT {', '.join(_COLUMNS)} FROM devices WHERE dev_id = ?"
_SELECT_MANY = f"SELECT {', '.join(_COLUMNS)} FROM devices WHERE dev_id IN"
_AT = {c: i for i, c in enumerate(_COLUMNS)}


def _values_to_device(v) -> Device:
    """A Device from a positional row in _COLUMNS order (the gateway's per-frame lookup uses it directly:
    no sqlite3.Row, no intermediate dict)."""
    v = list(v)
    v[_AT["key"]] = bytes(v[_AT["key"]])
    v[_AT["key_area"]] = bool(v[_AT["key_area"]])
    for k in ("config", "calibration"):
        j = v[_AT[k]]
        v[_AT[k]] = {} if not j or j == "{}" else json.loads(j)
    for k in _INTERNED:
        if v[_AT[k]] is not None:
            v[_AT[k]] = sys.intern(v[_AT[k]])
    return Device(*v)


def _device_to_row(dev: Device) -> dict:
    d = {c: getattr(dev, c) for c in _COLUMNS}
    d["key_area"] = 1 if dev.key_area else 0
    d["config"] = json.dumps(dev.config, sort_keys=True)
    d["calibration"] = json.dumps(dev.calibration, sort_keys=True)
    return d


class Registry:
    """Open (creating if needed) a registry file. Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, check_same_thread: bool = True):
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise RegistryError(f"registry {self.path} does not exist: create it with 'gasguard device new'")
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=check_same_thread)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                # the file holds every device key: owner-only from the first byte
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(self.path, 0o600)
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self.db.execute("UPDATE meta SET v = ? WHERE k = 'schema_version' AND CAST(v AS INTEGER) < ?",
                            (str(SCHEMA_VERSION), SCHEMA_VERSION))
            self.db.commit()
        self.db.row_factory = sqlite3.Row
        self._plain = self.db.cursor()     # positional rows for lookup()
        self._plain.row_factory = None

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading -----------------------------------------------------------------------------------
    def get(self, dev_id: int) -> Device | None:
        row = self.db.execute("SELECT * FROM devices WHERE dev_id = ?", (dev_id,)).fetchone()
        return _row_to_device(row) if row else None

    def lookup(self, dev_id: int) -> Device | None:
        """get(), faster (the gateway looks a device up per frame when its cache misses). fetchall, not
        fetchone: the statement is finished, so no read transaction stays open on an old snapshot."""
        rows = self._plain.execute(_SELECT_ONE, (dev_id,)).fetchall()
        return _values_to_device(rows[0]) if rows else None

    def lookup_many(self, dev_ids: list[int]) -> list[Device]:
        """lookup() of many devices in one query (at most ~30,000 ids: SQLite's bound on parameters); the ones
        not in the registry are simply absent. ~4 µs a device against ~13 for one query each."""
        if not dev_ids:
            return []
        q = f"{_SELECT_MANY} ({','.join('?' * len(dev_ids))})"
        return [_values_to_device(r) for r in self._plain.execute(q, list(dev_ids)).fetchall()]

    def ids_and_keys(self, batch: int = 2000):
        """(dev_id, key) of every device, in batches (benchmarks: no Device objects, no whole list)."""
        cur = self.db.execute("SELECT dev_id, key FROM devices ORDER BY dev_id")
        while rows := cur.fetchmany(batch):
            yield [(r[0], bytes(r[1])) for r in rows]

    def all(self, *, include_decommissioned: bool = True) -> list[Device]:
        q = "SELECT * FROM devices" + ("" if include_decommissioned else " WHERE state != 'decommissioned'")
        return [_row_to_device(r) for r in self.db.execute(q + " ORDER BY dev_id")]

    def stations(self) -> list[Device]:
        """Every regulator station in service (the district map: a few thousand rows, not the households)."""
        q = "SELECT * FROM devices WHERE profile = 'station' AND state != 'decommissioned' ORDER BY dev_id"
        return [_row_to_device(r) for r in self.db.execute(q)]

    def downstream(self, dev_id: int) -> list[Device]:
        """Every device fed (directly or through other stations) by `dev_id`."""
        out, todo, seen = [], [dev_id], {dev_id}
        while todo:
            cur = todo.pop()
            for row in self.db.execute("SELECT * FROM devices WHERE upstream = ?", (cur,)):
                d = _row_to_device(row)
                if d.dev_id not in seen:
                    seen.add(d.dev_id)
                    out.append(d)
                    todo.append(d.dev_id)
        return out

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM devices").fetchone()[0]

    # -- writing -----------------------------------------------------------------------------------
    def add(self, dev: Device) -> None:
        dev.validate()
        now = time.time()
        dev.created_at = dev.created_at or now
        dev.updated_at = now
        row = _device_to_row(dev)
        try:
            with self.db:
                self.db.execute(f"INSERT INTO devices ({', '.join(_COLUMNS)}) VALUES "
                                f"({', '.join(':' + c for c in _COLUMNS)})", row)
        except sqlite3.IntegrityError as e:
            raise RegistryError(f"device {dev.dev_id:08x} cannot be added ({e}); "
                                "an existing id is changed with 'gasguard device config', not re-added") from None

    def add_many(self, devs: list[Device]) -> None:
        now = time.time()
        rows = []
        for dev in devs:
            dev.validate()
            dev.created_at = dev.created_at or now
            dev.updated_at = now
            rows.append(_device_to_row(dev))
        with self.db:
            self.db.executemany(f"INSERT OR REPLACE INTO devices ({', '.join(_COLUMNS)}) VALUES "
                                f"({', '.join(':' + c for c in _COLUMNS)})", rows)

    def update(self, dev_id: int, **changes) -> Device:
        dev = self.get(dev_id)
        if dev is None:
            raise RegistryError(f"device {dev_id:08x} is not in the registry: list devices with 'gasguard device list'")
        for k, v in changes.items():
            if k not in _COLUMNS or k in ("dev_id", "created_at"):
                raise RegistryError(f"{k} cannot be changed")
            setattr(dev, k, v)
        dev.validate()
        dev.updated_at = time.time()
        row = _device_to_row(dev)
        with self.db:
            self.db.execute(f"UPDATE devices SET {', '.join(f'{c} = :{c}' for c in _COLUMNS if c != 'dev_id')} "
                            "WHERE dev_id = :dev_id", row)
        return dev

    def rotate_key(self, dev_id: int, new_key: bytes) -> Device:
        dev = self.get(dev_id)
        if dev is None:
            raise RegistryError(f"device {dev_id:08x} is not in the registry")
        return self.update(dev_id, key=new_key, key_version=dev.key_version + 1)

    def decommission(self, dev_id: int) -> Device:
        return self.update(dev_id, state="decommissioned")

    # -- technician log and metadata (schema 2) ----------------------------------------------------------
    def log(self, dev_id: int, action: str, detail: dict | None = None) -> None:
        """Record what a technician did to a device (never pass a key in `detail`)."""
        with self.db:
            self.db.execute("INSERT INTO device_log (dev_id, at, action, detail) VALUES (?, ?, ?, ?)",
                            (dev_id, time.time(), action, json.dumps(detail or {}, sort_keys=True)))

    def history(self, dev_id: int) -> list[dict]:
        try:
            rows = self.db.execute("SELECT at, action, detail FROM device_log WHERE dev_id = ? ORDER BY seq",
                                   (dev_id,)).fetchall()
        except sqlite3.OperationalError:   # a schema-1 file opened read-only has no log yet
            return []
        return [{"at": r[0], "action": r[1], "detail": json.loads(r[2])} for r in rows]

    def meta_get(self, k: str) -> str | None:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return row[0] if row else None

    def meta_set(self, k: str, v: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
