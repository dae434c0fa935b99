"""Secrets on the technician's laptop: device keys (16 random bytes) and the provisioning authority's
Ed25519 key. Every secret file is created 0600 from its first byte, and nothing here logs a key."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gasguard.authority.secretfile import (load_private_key, load_public,  # noqa: F401  (shared with the gateway)
                                           save_private_key, write_secret)

from .errors import BadInput

KEY_LEN = 16   # SPEC 5: the HMAC-SHA256 key of a device is 128 bits


def new_device_key() -> bytes:
    """A device key from the OS's CSPRNG (secrets uses os.urandom / getrandom)."""
    return secrets.token_bytes(KEY_LEN)


def fingerprint(pub: Ed25519PublicKey) -> str:
    """The public key as 64 hex digits: what a gateway operator compares on the phone."""
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def authority_init(path: str | os.PathLike, secret: bytes, force: bool = False) -> Ed25519PublicKey:
    """A new authority key at `path`, encrypted under the passphrase `secret` (PKCS#8, BestAvailableEncryption:
    a stolen laptop or backup does not give away the key every gateway trusts), its public key next to it."""
    p = Path(path)
    if p.exists() and not force:
        raise BadInput(f"{p} already holds an authority key: every gateway trusts it; "
                       "pass --force only if you mean to replace it (and re-configure every gateway)")
    if not secret:
        raise BadInput("the authority key is kept encrypted: give a passphrase")
    key = Ed25519PrivateKey.generate()
    save_private_key(p, key, secret)
    pub_path = public_path(p)
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return key.public_key()


def public_path(private: Path) -> Path:
    return private.with_name(private.stem + ".pub.pem")


def load_authority(path: str | os.PathLike, secret: bytes | None) -> Ed25519PrivateKey:
    """The authority key (an older unencrypted one still loads; re-create it encrypted when convenient)."""
    return load_private_key(path, secret, what="authority key",
                            create_hint="create one with 'gasguard device authority-init' (or pass --authority FILE)")
