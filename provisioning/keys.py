"""Secrets on the technician's laptop: device keys (16 random bytes) and the provisioning authority's
Ed25519 key. Every secret file is created 0600 from its first byte, and nothing here logs a key."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gasguard.authority.secretfile import load_public, write_secret  # noqa: F401  (shared with the gateway)

from .errors import BadInput, ProvisioningError

KEY_LEN = 16   # SPEC 5: the HMAC-SHA256 key of a device is 128 bits


def new_device_key() -> bytes:
    """A device key from the OS's CSPRNG (secrets uses os.urandom / getrandom)."""
    return secrets.token_bytes(KEY_LEN)


def fingerprint(pub: Ed25519PublicKey) -> str:
    """The public key as 64 hex digits: what a gateway operator compares on the phone."""
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def authority_init(path: str | os.PathLike, force: bool = False) -> Ed25519PublicKey:
    p = Path(path)
    if p.exists() and not force:
        raise BadInput(f"{p} already holds an authority key: every gateway trusts it; "
                       "pass --force only if you mean to replace it (and re-configure every gateway)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_secret(p, pem)
    pub_path = public_path(p)
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return key.public_key()


def public_path(private: Path) -> Path:
    return private.with_name(private.stem + ".pub.pem")


def load_authority(path: str | os.PathLike) -> Ed25519PrivateKey:
    p = Path(path)
    try:
        mode = p.stat().st_mode & 0o077
        data = p.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"no authority key at {p}: create one with 'gasguard device authority-init' "
                       "(or pass --authority FILE)") from None
    if mode:
        raise ProvisioningError(f"{p} is readable by others (mode {oct(p.stat().st_mode & 0o777)}): "
                                f"run 'chmod 600 {p}' and consider the key leaked if others used this machine")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as e:
        raise BadInput(f"{p} is not a PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput(f"{p} is not an Ed25519 key: create one with 'gasguard device authority-init'")
    return key
