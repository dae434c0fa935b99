"""The operator roster: who may act for the district, with which role and key, signed by the district
authority (the Ed25519 key that signs registry bundles, provisioning/keys.py).

A roster is one JSON file, public (it holds public keys only), verified like a registry bundle:

    {"format": "gasguard-operators/1", "authority": "<64 hex>", "payload": "<base64 JSON>", "signature": "<b64>"}

payload = {"district", "serial" (grows with every change), "issued_at", "principals": [...], "changes": [...]}.
A principal: {"id", "name", "role", "key" (64 hex Ed25519 public key), "added_at", "added_by",
"revoked_at", "revoked_by", "revoke_reason", "relays" (consoles only)}. Revoked principals stay listed, so a
gateway holding an older roster can be told, and ids are never reused.

Who may change it: the authority key signs every version; once the roster has an active admin, each change
also carries an admin's own signed approval (an envelope over topic `authority/operators`, kept in `changes`
and verified on every load), so the record says which admin did it, not only that the key was used.
A gateway refuses a roster whose serial is below the last one it took up (an old roster would un-revoke).
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import roles as R
from .errors import BadInput
from .secretfile import public_from_hex, public_hex

FORMAT = "gasguard-operators/1"
CHANGE_TOPIC = "authority/operators"
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass
class Principal:
    id: str
    role: str
    key: str                                   # 64 hex digits, Ed25519 public key
    name: str = ""
    added_at: float = 0.0
    added_by: str = "authority"
    revoked_at: float | None = None            # None: active
    revoked_by: str | None = None
    revoke_reason: str = ""
    relays: list[str] = field(default_factory=list)   # console: the roles it may sign for

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public_key(self) -> Ed25519PublicKey:
        return public_from_hex(self.key)

    def may(self, action: str) -> bool:
        return self.active and R.permits(self.role, action)

    def public(self) -> dict:
        d = asdict(self)
        if self.role != "console":
            d.pop("relays")
        return d


@dataclass
class Roster:
    district: str
    serial: int = 0
    issued_at: float = 0.0
    authority: str = ""                        # fingerprint of the signing key
    principals: dict[str, Principal] = field(default_factory=dict)
    changes: list[dict] = field(default_factory=list)   # admin approvals, oldest first
    path: Path | None = None

    def get(self, pid: str) -> Principal | None:
        return self.principals.get(pid)

    def active_admins(self) -> list[Principal]:
        return [p for p in self.principals.values() if p.role == "admin" and p.active]

    def payload(self) -> dict:
        return {"district": self.district, "serial": self.serial, "issued_at": self.issued_at,
                "principals": [p.public() for p in sorted(self.principals.values(), key=lambda p: p.id)],
                "changes": self.changes}


def check_id(pid: str) -> str:
    if not isinstance(pid, str) or not ID_RE.match(pid):
        raise BadInput(f"operator id {pid!r}: 1-64 of a-z 0-9 _ . - (starting with a letter or digit), e.g. wang.li")
    return pid


def check_role(role: str) -> str:
    if role not in R.ROLES:
        raise BadInput(f"role {role!r}: choose one of {', '.join(R.ROLES)}")
    return role


# -- reading ---------------------------------------------------------------------------------------
def _decode(path: Path) -> tuple[dict, bytes, bytes]:
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT:
            raise BadInput(f"{path}: not an operator roster (format {doc.get('format')!r}, expected {FORMAT})")
        return doc, base64.b64decode(doc["payload"], validate=True), base64.b64decode(doc["signature"], validate=True)
    except FileNotFoundError:
        raise BadInput(f"{path}: no operator roster here: create one with 'gasguard authority init'") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadInput(f"{path}: damaged roster ({e}): ask the district authority for a fresh copy") from None


def load(path: str | Path, trusted: Ed25519PublicKey) -> Roster:
    """The roster at `path`, signed by `trusted`, with every admin approval verified; BadInput says why not."""
    p = Path(path)
    doc, payload, sig = _decode(p)
    mine = public_hex(trusted)
    if doc.get("authority") != mine:
        raise BadInput(f"{p} is signed by authority {str(doc.get('authority'))[:16]}..., this side trusts "
                       f"{mine[:16]}...: refused")
    try:
        trusted.verify(sig, payload)
    except InvalidSignature:
        raise BadInput(f"{p}: the signature does not verify: the roster was changed after signing; refused") from None
    try:
        body = json.loads(payload)
        ro = Roster(district=body["district"], serial=int(body["serial"]), issued_at=float(body["issued_at"]),
                    authority=mine, changes=list(body.get("changes", [])), path=p)
        for d in body["principals"]:
            pr = Principal(**d)
            ro.principals[pr.id] = pr
    except (KeyError, TypeError, ValueError) as e:
        raise BadInput(f"{p}: a roster entry is incomplete ({e})") from None
    _check_approvals(ro)
    return ro


def _check_approvals(ro: Roster) -> None:
    from .envelope import check_signature   # envelope imports roster types; keep the cycle lazy
    for ch in ro.changes:
        admin = ro.get(ch.get("by", ""))
        if admin is None or admin.role != "admin":
            raise BadInput(f"{ro.path}: change {ch.get('serial')} approved by {ch.get('by')!r}, not an admin of it")
        body = check_signature(ch["approval"].encode(), CHANGE_TOPIC, admin)
        if body.get("serial") != ch.get("serial") or body.get("op") != ch.get("op") or body.get("id") != ch.get("id"):
            raise BadInput(f"{ro.path}: change {ch.get('serial')} does not match the admin's signed approval")


# -- writing (the district authority's side) -------------------------------------------------------
def save(ro: Roster, authority: Ed25519PrivateKey, path: str | Path) -> Path:
    from .secretfile import write_secret
    ro.authority = public_hex(authority.public_key())
    payload = json.dumps(ro.payload(), sort_keys=True, ensure_ascii=False).encode()
    doc = {"format": FORMAT, "authority": ro.authority, "payload": base64.b64encode(payload).decode(),
           "signature": base64.b64encode(authority.sign(payload)).decode()}
    p = Path(path)
    write_secret(p, (json.dumps(doc, indent=1) + "\n").encode())
    p.chmod(0o644)                 # public keys only: gateways and consoles read it
    ro.path = p
    return p


def init(path: str | Path, authority: Ed25519PrivateKey, district: str, *, force: bool = False) -> Roster:
    p = Path(path)
    if p.exists() and not force:
        raise BadInput(f"{p} already holds a roster: add operators with 'gasguard authority add'")
    if not re.match(r"^[A-Za-z0-9_-]{1,64}$", district):
        raise BadInput(f"district {district!r}: 1-64 of A-Z a-z 0-9 _ - (the MQTT topic segment)")
    ro = Roster(district=district, serial=1, issued_at=time.time())
    save(ro, authority, p)
    return ro


def _approve(ro: Roster, op: str, pid: str, approver) -> str:
    """'authority' while the roster has no admin (bootstrap), else the approving admin's id; the admin's
    signed approval is appended to `changes`."""
    if not ro.active_admins():
        return "authority"
    if approver is None:
        raise BadInput("this roster has admins: a change needs an admin's approval (--as ADMIN --key ADMIN.key)")
    admin_id, admin_key = approver
    admin = ro.get(admin_id)
    if admin is None or not admin.active or not admin.may("manage_operators"):
        raise BadInput(f"{admin_id!r} is not an active admin of this roster: only admins manage operators")
    from .envelope import sign_request
    if public_hex(admin_key.public_key()) != admin.key:
        raise BadInput(f"the key given is not {admin_id}'s key in the roster")
    body = {"op": op, "id": pid, "serial": ro.serial + 1}
    ro.changes.append({"serial": ro.serial + 1, "op": op, "id": pid, "by": admin_id,
                       "approval": sign_request(admin_key, admin_id, CHANGE_TOPIC, body).decode()})
    return admin_id


def add(path: str | Path, authority: Ed25519PrivateKey, pid: str, role: str, public_key: str, *, name: str = "",
        relays: list[str] | None = None, approver: tuple[str, Ed25519PrivateKey] | None = None) -> Principal:
    ro = load(path, authority.public_key())
    check_id(pid)
    check_role(role)
    public_from_hex(public_key)
    if pid in ro.principals:
        raise BadInput(f"{pid} is already in the roster (ids are never reused, even after revocation)")
    if any(p.key == public_key for p in ro.principals.values()):
        raise BadInput("that public key already belongs to someone in the roster: every operator has their own key")
    if role == "console":
        relays = list(relays or R.DEFAULT_RELAYS)
        for r in relays:
            if r not in R.PEOPLE:
                raise BadInput(f"console relays {r!r}: choose among {', '.join(R.PEOPLE)}")
    elif relays:
        raise BadInput("--relays is for consoles only")
    by = _approve(ro, "add", pid, approver)
    pr = Principal(id=pid, role=role, key=public_key, name=name, added_at=time.time(), added_by=by,
                   relays=relays or [])
    ro.principals[pid] = pr
    ro.serial += 1
    ro.issued_at = time.time()
    save(ro, authority, path)
    return pr


def revoke(path: str | Path, authority: Ed25519PrivateKey, pid: str, *, reason: str = "",
           approver: tuple[str, Ed25519PrivateKey] | None = None) -> Principal:
    ro = load(path, authority.public_key())
    pr = ro.get(pid)
    if pr is None:
        raise BadInput(f"{pid} is not in the roster: list it with 'gasguard authority list'")
    if not pr.active:
        raise BadInput(f"{pid} was already revoked at {time.ctime(pr.revoked_at)}")
    by = _approve(ro, "revoke", pid, approver)
    pr.revoked_at, pr.revoked_by, pr.revoke_reason = time.time(), by, reason[:200]
    ro.serial += 1
    ro.issued_at = time.time()
    save(ro, authority, path)
    return pr


def diff(old: Roster | None, new: Roster) -> list[dict]:
    """What changed between two rosters, as audit details: added, revoked, role changes."""
    out = []
    before = old.principals if old else {}
    for pid, p in new.principals.items():
        q = before.get(pid)
        if q is None:
            out.append({"change": "added", "id": pid, "role": p.role, "by": p.added_by, "active": p.active})
        elif q.active and not p.active:
            out.append({"change": "revoked", "id": pid, "role": p.role, "by": p.revoked_by, "reason": p.revoke_reason})
        elif q.role != p.role or q.key != p.key:
            out.append({"change": "changed", "id": pid, "role": p.role})
    return out
