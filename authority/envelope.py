"""Signed requests: what an operator (or a console for an operator) publishes instead of a bare JSON request.

The MQTT payload of a signed request is JSON:

    {"auth": {"v": 1, "signer": "wang.li", "operator": "wang.li", "topic": "<the MQTT topic>",
              "payload_sha256": "<hex of sha256(body)>", "t_ms": 1764650000123, "nonce": "<32 hex>",
              "client": {"id": "<mqtt client id>", "address": "<where the person is>"}, "sig": "<base64>"},
     "body": "<the request JSON, as a string>"}

The body travels as a string so that the bytes hashed are the bytes sent (no canonical re-serialisation).
The Ed25519 signature covers SIGNED_FIELDS joined by newlines (`signed_bytes`), so the topic, the hash of
the body, the time, the nonce, the person and the client are all bound to it: a request cannot be moved to
another topic or device, changed, or replayed later.

`verify_request` checks, in this order: form, signer known, signature, freshness (`max_age_s` back,
`max_skew_s` ahead), replay (the nonce is recorded durably in a ReplayGuard before anything acts), revocation
(signer and operator), district, and role. A console (role `console`) signs `on_behalf_of` an operator: the
signer is the console, `operator` the person; both must be active, the console must relay the person's role,
and the person's role must permit the action.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import roles as R
from .errors import BadInput, Refused
from .roster import Principal, Roster

VERSION = 1
SIGNED_FIELDS = ("v", "topic", "payload_sha256", "signer", "operator", "t_ms", "nonce", "client_id", "address")
DOMAIN = b"gasguard-request/1"     # a signature over a request can never be taken for one over anything else
MAX_BYTES = 64 * 1024               # a request larger than this is refused unread


def signed_bytes(auth: dict) -> bytes:
    client = auth.get("client") or {}
    vals = {**auth, "client_id": client.get("id", ""), "address": client.get("address", "")}
    parts = [DOMAIN] + [str(vals.get(k) if vals.get(k) is not None else "").encode() for k in SIGNED_FIELDS]
    for p in parts:
        if b"\n" in p:
            raise BadInput("request fields may not contain a newline")
    return b"\n".join(parts)


def sign_request(key: Ed25519PrivateKey, signer: str, topic: str, body: dict | bytes | str, *,
                 on_behalf_of: str | None = None, now: float | None = None, client_id: str = "",
                 address: str = "", nonce: str | None = None) -> bytes:
    """The MQTT payload for `body` on `topic`, signed by `signer` (for `on_behalf_of` when a console signs)."""
    if isinstance(body, dict):
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    else:
        text = body.decode() if isinstance(body, bytes) else body
    auth = {"v": VERSION, "signer": signer, "operator": on_behalf_of or signer, "topic": topic,
            "payload_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "t_ms": int(round((time.time() if now is None else now) * 1000)), "nonce": nonce or secrets.token_hex(16)}
    if client_id or address:
        auth["client"] = {"id": client_id, "address": address}
    auth["sig"] = base64.b64encode(key.sign(signed_bytes(auth))).decode()
    return json.dumps({"auth": auth, "body": text}, ensure_ascii=False, separators=(",", ":")).encode()


def is_signed(raw: bytes) -> bool:
    """A cheap look: does this payload carry an `auth` envelope at all (for counting 'unsigned')."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("auth"), dict) and "body" in doc


@dataclass
class Verified:
    """A request that passed every check: who signed it, for whom, what, and its body."""
    signer: Principal
    operator: Principal
    action: str
    body: dict
    topic: str
    nonce: str
    t: float
    payload_sha256: str
    client_id: str = ""
    address: str = ""

    def source(self) -> dict:
        """The audit record's source (IEC 62443-4-2 CR 2.8: who, from which client, from where)."""
        src = {"operator": self.operator.id, "role": self.operator.role, "client_id": self.client_id,
               "address": self.address}
        if self.signer.id != self.operator.id:
            src["console"] = self.signer.id
        return src


def _parse(raw: bytes, topic: str) -> tuple[dict, str]:
    if len(raw) > MAX_BYTES:
        raise Refused("malformed", f"request of {len(raw)} bytes, more than {MAX_BYTES}")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):     # RecursionError: "[[[[..." nested past the parser's depth
        raise Refused("unsigned", "payload is not JSON, so not a signed request") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("auth"), dict):
        raise Refused("unsigned", "no 'auth' envelope: sign requests as an operator "
                      "(gasguard command ... --operator ID --operator-key FILE)")
    auth, body = doc["auth"], doc.get("body")
    if not isinstance(body, str):
        raise Refused("malformed", "'body' must be the request JSON as a string")
    for k, typ in (("v", int), ("signer", str), ("operator", str), ("topic", str), ("payload_sha256", str),
                   ("t_ms", int), ("nonce", str), ("sig", str)):
        if not isinstance(auth.get(k), typ) or isinstance(auth.get(k), bool):
            raise Refused("malformed", f"auth.{k} missing or not a {typ.__name__}")
    if auth["v"] != VERSION:
        raise Refused("malformed", f"auth.v {auth['v']}: this side speaks version {VERSION}")
    if not 16 <= len(auth["nonce"]) <= 64:
        raise Refused("malformed", "auth.nonce: 16-64 characters")
    if auth["topic"] != topic:
        raise Refused("topic_mismatch", f"signed for topic {auth['topic']!r}, arrived on {topic!r}",
                      signer=auth["signer"], operator=auth["operator"])
    if hashlib.sha256(body.encode()).hexdigest() != auth["payload_sha256"]:
        raise Refused("bad_signature", "the body does not match its signed hash: changed in transit",
                      signer=auth["signer"], operator=auth["operator"])
    return auth, body


def _signature_ok(auth: dict, who: Principal) -> bool:
    try:
        who.public_key().verify(base64.b64decode(auth["sig"], validate=True), signed_bytes(auth))
        return True
    except (InvalidSignature, ValueError, BadInput):
        return False


def check_signature(raw: bytes, topic: str, who: Principal) -> dict:
    """Signature only (no freshness, replay or role): for records kept for their signature, e.g. an admin's
    approval inside a roster. Returns the body; raises BadInput."""
    try:
        auth, body = _parse(raw, topic)
    except Refused as e:
        raise BadInput(str(e)) from None
    if auth["signer"] != who.id or not _signature_ok(auth, who):
        raise BadInput(f"the signature of {who.id} does not verify")
    return json.loads(body)


def verify_request(raw: bytes, topic: str, *, roster: Roster | None, action: str | Callable[[dict], str],
                   replay, now: float | None = None, district: str | None = None, max_age_s: float = 120.0,
                   max_skew_s: float = 30.0) -> Verified:
    """Check a signed request; returns `Verified` or raises `Refused` (reason, message). `action` is the
    action name, or a function of the request body giving it (e.g. input with resolved=true -> 'resolve').
    `replay` is a ReplayGuard: the nonce is on disk before this returns, so it is refused after a restart."""
    now = time.time() if now is None else now
    if roster is None:
        raise Refused("no_authority", "no operator roster is configured here: every request is refused "
                      "(configure [authority] with the district's roster)")
    auth, text = _parse(raw, topic)
    ids = {"signer": auth["signer"], "operator": auth["operator"]}
    signer = roster.get(auth["signer"])
    if signer is None:
        raise Refused("unknown_signer", f"{auth['signer']!r} is not in the district's roster (serial {roster.serial})",
                      **ids)
    if not _signature_ok(auth, signer):
        raise Refused("bad_signature", f"the signature does not verify with {signer.id}'s key", **ids)
    t = auth["t_ms"] / 1000.0
    if t < now - max_age_s:
        raise Refused("stale", f"signed {now - t:.0f} s ago, more than the {max_age_s:.0f} s allowed: sign it again",
                      **ids)
    if t > now + max_skew_s:
        raise Refused("future", f"signed {t - now:.0f} s in the future: check the signer's clock (NTP)", **ids)
    if not replay.first_use(signer.id, auth["nonce"], t, now):
        raise Refused("replayed", f"nonce {auth['nonce'][:8]}... of {signer.id} was already used: a replay", **ids)
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise Refused("malformed", "the body is not JSON", **ids) from None
    if not isinstance(body, dict):
        raise Refused("malformed", "the body must be a JSON object", **ids)
    try:
        act = action(body) if callable(action) else action
    except ValueError as e:        # the caller's own check of the request's form (e.g. an unknown cmd)
        raise Refused("malformed", str(e), **ids) from None
    ids["action"] = act
    if not signer.active:
        raise Refused("revoked", f"{signer.id} was revoked ({signer.revoke_reason or 'no reason given'})", **ids)
    if auth["operator"] != signer.id:
        if signer.role != "console":
            raise Refused("not_a_console", f"{signer.id} is a {signer.role}, not a console: it cannot sign for "
                          f"{auth['operator']}", **ids)
        operator = roster.get(auth["operator"])
        if operator is None:
            raise Refused("unknown_signer", f"{auth['operator']!r} (for whom {signer.id} signed) is not in the roster",
                          **ids)
        if not operator.active:
            raise Refused("revoked", f"{operator.id} was revoked ({operator.revoke_reason or 'no reason given'})",
                          **ids)
        if operator.role not in signer.relays:
            raise Refused("wrong_role", f"console {signer.id} may not relay a {operator.role}'s requests", **ids)
    else:
        operator = signer
        if signer.role == "console":
            raise Refused("wrong_role", "a console acts only on behalf of an operator", **ids)
    if district is not None and roster.district != district:
        raise Refused("wrong_district", f"the roster is for district {roster.district}, this is {district}", **ids)
    if not R.permits(operator.role, act):
        raise Refused("wrong_role", f"{operator.id} has the role {operator.role}; {act} needs {R.needed_role(act)}", **ids)
    client = auth.get("client") if isinstance(auth.get("client"), dict) else {}
    return Verified(signer=signer, operator=operator, action=act, body=body, topic=topic, nonce=auth["nonce"], t=t,
                    payload_sha256=auth["payload_sha256"], client_id=str(client.get("id", ""))[:128],
                    address=str(client.get("address", ""))[:128])


def peek_ids(raw: bytes) -> dict:
    """The claimed signer/operator of a payload, for the record of a refusal that happened before
    verification (unverified: the record says 'claimed')."""
    try:
        auth = json.loads(raw).get("auth") or {}
        return {"claimed_signer": str(auth.get("signer", ""))[:64], "claimed_operator": str(auth.get("operator", ""))[:64]}
    except (ValueError, AttributeError, RecursionError):
        return {}
