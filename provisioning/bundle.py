"""Registry bundles: the registry for a gateway, signed with the provisioning authority's Ed25519 key.

A bundle is one JSON file (0600: it carries every device key, so it travels like a key), encrypted under a
passphrase (authority/secretfile.py `seal`: scrypt + Fernet); inside, the signed document:

    {"format": "gasguard-registry-bundle/1", "authority": "<64 hex public key>",
     "payload": "<base64 of the payload JSON>", "signature": "<base64 Ed25519 over the payload bytes>"}

The signature covers the exact payload bytes, so no re-serialisation can change what was signed. A gateway
verifies against the public key it was configured to trust and refuses a bundle older than the last one it
loaded (an old bundle would bring back a rotated key or a decommissioned device).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import fields
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gasguard.registry import Device, Registry, RegistryError

from gasguard.authority.secretfile import is_sealed, seal, unseal

from . import keys
from .errors import BadInput

FORMAT = "gasguard-registry-bundle/1"
PASS_ENV = "GASGUARD_BUNDLE_PASSPHRASE"
META_ISSUED = "bundle_issued_at"


def _device_json(d: Device) -> dict:
    out = d.public()
    out.pop("dev", None)
    out["key"] = d.key.hex()
    return out


def export(reg: Registry, authority: Ed25519PrivateKey, path: str | Path, include_retired: bool = True,
           secret: bytes | None = None) -> dict:
    """Sign the registry with `authority` and write it to `path`, sealed under the passphrase `secret`."""
    if not secret:
        raise BadInput("a bundle carries every device key: it is written encrypted, give a bundle passphrase")
    devices = reg.all(include_decommissioned=include_retired)
    payload = json.dumps({"issued_at": time.time(), "devices": [_device_json(d) for d in devices]},
                         sort_keys=True).encode()
    doc = {"format": FORMAT, "authority": keys.fingerprint(authority.public_key()),
           "payload": base64.b64encode(payload).decode(),
           "signature": base64.b64encode(authority.sign(payload)).decode()}
    keys.write_secret(path, seal((json.dumps(doc, indent=1) + "\n").encode(), secret))
    return {"bundle": str(path), "devices": len(devices), "authority": doc["authority"]}


def verify(path: str | Path, trusted: Ed25519PublicKey, secret: bytes | None = None) -> dict:
    """The payload of a bundle signed by `trusted` (decrypted with `secret`); BadInput says why it is refused.
    A bundle written before bundles were encrypted still loads (it is signed all the same)."""
    try:
        data = Path(path).read_bytes()
        if is_sealed(data):
            data = unseal(data, secret, name=str(path))
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise BadInput(f"{path}: not a registry bundle (format {doc.get('format')!r}, expected {FORMAT})")
        payload = base64.b64decode(doc["payload"], validate=True)
        sig = base64.b64decode(doc["signature"], validate=True)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadInput(f"{path}: damaged bundle ({e}): export it again with 'gasguard device export'") from None
    mine = keys.fingerprint(trusted)
    if doc.get("authority") != mine:
        raise BadInput(f"{path} is from authority {str(doc.get('authority'))[:16]}..., this gateway trusts "
                       f"{mine[:16]}...: refused; get a bundle from your provisioning authority")
    try:
        trusted.verify(sig, payload)
    except InvalidSignature:
        raise BadInput(f"{path}: the signature does not verify: the bundle was changed after signing; refused"
                       ) from None
    return json.loads(payload)


def load(path: str | Path, trusted: Ed25519PublicKey, reg: Registry, allow_older: bool = False,
         secret: bytes | None = None) -> dict:
    body = verify(path, trusted, secret)
    issued = float(body["issued_at"])
    last = float(reg.meta_get(META_ISSUED) or 0)
    if issued <= last and not allow_older:
        raise BadInput(f"{path} was issued {time.ctime(issued)}, not after the bundle already loaded "
                       f"({time.ctime(last)}): refused, it could bring back retired keys (--allow-older to force)")
    known = {f.name for f in fields(Device)}
    devs = []
    try:
        for d in body["devices"]:
            # fields a newer authority added are left out; the signed values of the known ones are kept
            d = {k: v for k, v in d.items() if k in known}
            d["key"] = bytes.fromhex(d["key"])
            devs.append(Device(**d))
    except (KeyError, TypeError, ValueError) as e:
        raise BadInput(f"{path}: a device entry is incomplete ({e}): export the bundle again") from None
    try:
        reg.add_many(devs)
    except RegistryError as e:
        raise BadInput(f"{path}: {e}") from None
    reg.meta_set(META_ISSUED, repr(issued))
    retired = sum(1 for d in devs if not d.active)
    return {"devices": len(devs), "decommissioned": retired, "issued_at": issued}
