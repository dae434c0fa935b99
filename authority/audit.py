"""The audit log: append-only, hash-chained, fsynced, rotated without breaking the chain.

One JSON object per line in `DIR/audit-000001.jsonl`, `audit-000002.jsonl`, ... Each record carries the
fields of IEC 62443-4-2 CR 2.8 and the chain:

    {"seq": 42, "time": "2026-12-02T06:58:01.123456Z", "t": 1764658681.123456, "clock": "system-utc",
     "recorder": "gw-1", "source": {"operator": "wang.li", "role": "engineer", "client_id": "...", "address": "..."},
     "category": "command", "type": "reset", "event_id": "<nonce or uuid>", "outcome": "allowed",
     "reason": "", "detail": {...}, "prev": "<hash of record 41>", "hash": "<sha256 of this record without hash>"}

- Append-only: records are added at the end under an exclusive lock (several processes may record: the
  daemon and `gasguard gateway import-registry`), each write is fsynced before `record` returns.
- Rotation: past `segment_bytes` a new segment starts whose first record (type `rotated`) chains to the last
  record of the one before, so `verify` walks every segment as one chain.
- A torn last line (power lost mid-write) is cut off by the next writer, and that is itself recorded (with
  the hash of the cut bytes), so verify sees an intact chain that says what happened.
- Capacity (CR 2.9): `capacity_bytes` for all segments together; past `warn_fraction` a warning is logged,
  recorded and reported through `on_warning` (the gateway counts it and says it in its stats); a record that
  would pass the capacity raises AuditFull, and the caller refuses the act (never acts unrecorded).
- Timestamps (CR 2.11) come from the injected clock, the system's UTC clock by default ("clock" names it).

`verify(dir)` reports every edited, removed, inserted or reordered record; it cannot see records cut off the
end of the newest segment unless the head (seq, hash) is compared with a copy kept elsewhere: the gateway
publishes its head in its stats, and `gasguard audit verify --head SEQ:HASH` checks against it.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import AuditFull, AuthorityError, BadInput

log = logging.getLogger("gasguard.audit")

GENESIS = "0" * 64
SEGMENT_RE = re.compile(r"^audit-(\d{6})\.jsonl$")
OUTCOMES = ("allowed", "refused", "done", "failed", "warning", "info")
CATEGORIES = ("command", "incident", "authority", "config", "registry", "audit", "access")


def record_hash(rec: dict) -> str:
    body = {k: v for k, v in rec.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def segments(directory: str | Path) -> list[tuple[int, Path]]:
    d = Path(directory)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = SEGMENT_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def _segment_name(n: int) -> str:
    return f"audit-{n:06d}.jsonl"


def _last_line(f) -> tuple[bytes, int]:
    """(last complete-or-torn line, offset where it starts) of an open binary file."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return b"", 0
    pos, chunk, buf = end, 4096, b""
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        f.seek(pos)
        buf = f.read(step) + buf
        body = buf[:-1] if buf.endswith(b"\n") else buf
        i = body.rfind(b"\n")
        if i >= 0:
            return buf[i + 1:], pos + i + 1
    return buf, 0


class AuditLog:
    def __init__(self, directory: str | Path, *, recorder: str = "", segment_bytes: int = 8 * 1024 * 1024,
                 capacity_bytes: int = 256 * 1024 * 1024, warn_fraction: float = 0.8, min_free_bytes: int = 16 * 1024 * 1024,
                 clock: Callable[[], float] = time.time, on_warning: Callable[[str, dict], None] | None = None):
        if not 0 < warn_fraction < 1:
            raise BadInput("audit warn_fraction must be between 0 and 1 (e.g. 0.8)")
        if segment_bytes <= 0 or capacity_bytes < 2 * segment_bytes:
            raise BadInput("audit capacity must be at least two segments (capacity_bytes >= 2 * segment_bytes)")
        self.dir = Path(directory)
        self.recorder = recorder
        self.segment_bytes, self.capacity_bytes = segment_bytes, capacity_bytes
        self.warn_fraction, self.min_free_bytes = warn_fraction, min_free_bytes
        self.clock = clock
        self.on_warning = on_warning
        self.warned_at: float | None = None     # fraction of capacity at the last warning; None: none yet
        self.head: tuple[int, str] | None = None   # (seq, hash) of the last record this process wrote
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.dir.chmod(0o700)
        except PermissionError:
            pass
        lock = self.dir / ".lock"
        self._lock_fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)

    # -- writing ----------------------------------------------------------------------------------------
    def record(self, *, category: str, type: str, outcome: str, source: dict | None = None,
               event_id: str | None = None, reason: str = "", detail: dict | None = None) -> dict:
        """Append one record (fsynced before return) and return it. Raises AuditFull at capacity."""
        if category not in CATEGORIES:
            raise ValueError(f"audit category {category!r}: one of {CATEGORIES}")
        if outcome not in OUTCOMES:
            raise ValueError(f"audit outcome {outcome!r}: one of {OUTCOMES}")
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            warn = self._capacity_check()
            rec = self._append_locked(category, type, outcome, source, event_id, reason, detail)
            if warn:
                self._append_locked("audit", "capacity_warning", "warning", {"recorder": self.recorder}, None,
                                    warn["message"], warn)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        if warn:
            log.warning("AUDIT STORAGE: %s", warn["message"])
            if self.on_warning:
                self.on_warning(warn["message"], warn)
        return rec

    def _append_locked(self, category, type_, outcome, source, event_id, reason, detail) -> dict:
        segs = segments(self.dir)
        n, path = segs[-1] if segs else (1, self.dir / _segment_name(1))
        prev, seq, pending = GENESIS, 0, []
        if path.exists():
            prev, seq, torn = self._tail(path)
            if torn is not None:
                pending.append(("audit", "torn_tail_removed", "info", {"recorder": self.recorder}, None,
                                "a partial record (power lost mid-write) was cut off",
                                {"bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()}))
            if path.stat().st_size >= self.segment_bytes:
                old = path.name
                n, path = n + 1, self.dir / _segment_name(n + 1)
                pending.insert(0, ("audit", "rotated", "info", {"recorder": self.recorder}, None, "",
                                   {"previous_segment": old, "previous_seq": seq, "previous_hash": prev}))
        elif segs:
            raise AuthorityError(f"audit segment {path} vanished while in use")
        pending.append((category, type_, outcome, source, event_id, reason, detail))
        lines, rec = [], None
        now = self.clock()
        for cat, typ, out, src, eid, why, det in pending:
            seq += 1
            rec = {"seq": seq, "time": iso(now), "t": round(now, 6), "clock": "system-utc", "recorder": self.recorder,
                   "source": dict(src or {}), "category": cat, "type": typ, "event_id": eid or uuid.uuid4().hex,
                   "outcome": out, "reason": str(why or "")[:500], "detail": det or {}, "prev": prev}
            rec["hash"] = prev = record_hash(rec)
            lines.append(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
        data = "".join(lines).encode()
        if self._used() + len(data) > self.capacity_bytes:
            raise AuditFull(f"audit storage {self.dir} is full ({self._used()} of {self.capacity_bytes} bytes): "
                            "archive old segments (copy them off, then remove them) or raise [audit] capacity_mb")
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.head = (rec["seq"], rec["hash"])
        if len(segments(self.dir)) == 1 and seq == len(lines):   # a new directory: its entry must survive too
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return rec

    def _tail(self, path: Path) -> tuple[str, int, bytes | None]:
        """(hash, seq) of the last record of `path`; a torn last line is cut off and returned."""
        with open(path, "r+b") as f:
            line, start = _last_line(f)
            if not line:
                return self._tail_before(path)
            torn = None
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("no newline")
                rec = json.loads(line)
                return rec["hash"], int(rec["seq"]), None
            except (ValueError, KeyError, TypeError):
                torn = line
                f.truncate(start)
                os.fsync(f.fileno())
        h, s, _ = self._tail(path) if start > 0 else self._tail_before(path)
        return h, s, torn

    def _tail_before(self, path: Path) -> tuple[str, int, None]:
        """An empty segment continues the chain of the one before it."""
        m = SEGMENT_RE.match(path.name)
        prev = self.dir / _segment_name(int(m.group(1)) - 1) if m else None
        if prev is not None and prev.exists():
            return self._tail(prev)
        return GENESIS, 0, None

    def _used(self) -> int:
        return sum(p.stat().st_size for _, p in segments(self.dir))

    def usage(self) -> dict:
        used = self._used()
        free = shutil.disk_usage(self.dir).free
        return {"used_bytes": used, "capacity_bytes": self.capacity_bytes, "fraction": round(used / self.capacity_bytes, 4),
                "disk_free_bytes": free, "segments": len(segments(self.dir))}

    def _capacity_check(self) -> dict | None:
        """A warning on crossing `warn_fraction` (or the disk's `min_free_bytes`), then again at every further
        5 % of capacity: not on every record."""
        u = self.usage()
        frac = u["fraction"]
        low_disk = u["disk_free_bytes"] < self.min_free_bytes
        if frac < self.warn_fraction and not low_disk:
            self.warned_at = None
            return None
        if self.warned_at is not None and frac < self.warned_at + 0.05:
            return None
        self.warned_at = frac
        why = (f"{u['used_bytes']} of {u['capacity_bytes']} bytes used ({frac:.0%})" +
               (f", only {u['disk_free_bytes']} bytes free on the disk" if low_disk else ""))
        return dict(u, message=f"audit storage {self.dir} nearly full: {why}; archive old segments (copy them "
                    "off, then remove them) before acts have to be refused")

    def close(self) -> None:
        try:
            os.close(self._lock_fd)
        except OSError:
            pass


# -- reading ----------------------------------------------------------------------------------------
def read(directory: str | Path) -> Iterator[tuple[str, int, dict | None, str]]:
    """(segment name, line number, record or None when unparseable, raw line) for every line."""
    for _, path in segments(directory):
        with open(path, "rb") as f:
            for i, raw in enumerate(f, 1):
                text = raw.decode("utf-8", "replace")
                try:
                    rec = json.loads(text)
                    if not isinstance(rec, dict):
                        rec = None
                except ValueError:
                    rec = None
                yield path.name, i, rec, text


def verify(directory: str | Path, *, allow_archived: bool = False, head: str | None = None) -> dict:
    """Walk every segment as one chain. Problems found:
    - edited: a record's hash does not match its content;
    - chain: a record's `prev` is not the hash of the record before it (one before it was edited and
      re-hashed, removed, inserted or moved);
    - removed / reordered: a gap or a step back in `seq`;
    - unparseable lines, missing segments, and (with `head` = "SEQ:HASH") a head that is not in the chain."""
    problems: list[dict] = []
    segs = segments(directory)
    if not Path(directory).is_dir():
        raise BadInput(f"{directory}: no audit directory here (the gateway's [audit] dir)")
    nums = [n for n, _ in segs]
    for a, b in zip(nums, nums[1:]):
        if b != a + 1:
            problems.append({"segment": _segment_name(a + 1), "line": 0, "seq": None, "problem": "segment_missing",
                             "detail": f"segments {_segment_name(a + 1)}..{_segment_name(b - 1)} are missing"})
    prev_hash, prev_seq, count, first = None, None, 0, True
    seen_head = False
    for seg, line, rec, raw in read(directory):
        where = {"segment": seg, "line": line}
        if rec is None or not {"seq", "hash", "prev"} <= rec.keys():
            problems.append(dict(where, seq=None, problem="unparseable", detail=raw[:120].rstrip()))
            continue
        count += 1
        seq = rec["seq"]
        if record_hash(rec) != rec["hash"]:
            problems.append(dict(where, seq=seq, problem="edited",
                                 detail="the record's content does not match its hash: it was changed after writing"))
        if first:
            first = False
            if seq != 1 or rec["prev"] != GENESIS:
                if not (allow_archived and rec.get("type") == "rotated"):
                    problems.append(dict(where, seq=seq, problem="removed",
                                         detail=f"the chain starts at seq {seq}, not 1: earlier records are missing"
                                         + ("" if rec.get("type") != "rotated" else
                                            " (a rotated segment: pass --allow-archived if they were archived)")))
        else:
            if seq == prev_seq + 1 and rec["prev"] != prev_hash:
                problems.append(dict(where, seq=seq, problem="chain",
                                     detail=f"prev is not the hash of record {prev_seq}: that record was edited "
                                     "(and re-hashed) or replaced"))
            elif seq > prev_seq + 1:
                problems.append(dict(where, seq=seq, problem="removed",
                                     detail=f"records {prev_seq + 1}..{seq - 1} are missing"))
            elif seq <= prev_seq:
                problems.append(dict(where, seq=seq, problem="reordered",
                                     detail=f"seq {seq} after seq {prev_seq}: moved or duplicated"))
        if head and f"{seq}:{rec['hash']}" == head:
            seen_head = True
        prev_hash, prev_seq = rec["hash"], seq
    if head and not seen_head:
        hs = head.split(":", 1)[0]
        problems.append({"segment": "", "line": 0, "seq": None, "problem": "head_missing",
                         "detail": f"the head {head[:24]}... is not in the chain (records at or after seq {hs} were "
                         "cut off or changed)"})
    return {"ok": not problems, "records": count, "segments": [p.name for _, p in segs],
            "head": {"seq": prev_seq, "hash": prev_hash}, "problems": problems}


def _to_t(v) -> float | None:
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except ValueError:
        pass
    try:
        d = _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"time {v!r}: epoch seconds or ISO 8601, e.g. 2026-12-02T06:00:00Z") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return d.timestamp()


def show(directory: str | Path, *, since=None, until=None, operator: str | None = None, category: str | None = None,
         type: str | None = None, outcome: str | None = None, limit: int | None = None) -> list[dict]:
    """Records matching every filter given, oldest first (the last `limit` if set)."""
    t0, t1 = _to_t(since), _to_t(until)
    out: list[dict] = []
    for _, _, rec, _ in read(directory):
        if rec is None:
            continue
        src = rec.get("source") or {}
        if t0 is not None and rec.get("t", 0) < t0 or t1 is not None and rec.get("t", 0) > t1:
            continue
        if operator and operator not in (src.get("operator"), src.get("console"), src.get("claimed_operator")):
            continue
        if category and rec.get("category") != category or type and rec.get("type") != type:
            continue
        if outcome and rec.get("outcome") != outcome:
            continue
        out.append(rec)
    return out[-limit:] if limit else out


def summary_line(rec: dict) -> str:
    src = rec.get("source") or {}
    who = src.get("operator") or src.get("claimed_operator") or src.get("recorder") or "-"
    if src.get("console"):
        who += f" via {src['console']}"
    why = f" ({rec['reason']})" if rec.get("reason") else ""
    return (f"{rec['seq']:>6} {rec['time'][:23]} {rec['category']:<9} {rec['type']:<18} {rec['outcome']:<8} "
            f"{who}{why}")

