"""Secrets at rest: files 0600 from their first byte, Ed25519 private keys in passphrase-protected PKCS#8
(the `cryptography` package's BestAvailableEncryption), and sealed blobs (registry bundles) under a
passphrase with Fernet and a scrypt-derived key (the recipe of cryptography's Fernet documentation).
Nothing here logs or prints a key or a passphrase.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import AuthorityError, BadInput

PASSPHRASE_ENV = "GASGUARD_PASSPHRASE"
SEALED_FORMAT = "gasguard-sealed/1"
# scrypt cost: n=2**15, r=8, p=1 is the interactive-login figure of RFC 7914 section 2 (about 32 MiB, ~0.1 s)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 15, 8, 1


def write_secret(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` readable by the owner only; the file never exists with wider rights."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)   # an older tmp file may have had other rights
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)
    return p


def private_file(path: str | os.PathLike) -> Path:
    """Make `path` exist readable by the owner only (0600), before a library (SQLite) opens it: SQLite gives
    its -wal and -shm files the mode of the database file. An existing file is narrowed to 0600."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(p, 0o600)
    return p


def check_private(p: Path) -> None:
    """Refuse a secret file that others can read: it may already have leaked."""
    mode = p.stat().st_mode
    if mode & 0o077:
        raise AuthorityError(f"{p} is readable by others (mode {oct(mode & 0o777)}): run 'chmod 600 {p}' "
                             "and consider the key leaked if others used this machine")


def passphrase(value: str | bytes | None = None, *, file: str | os.PathLike | None = None,
               env: str = PASSPHRASE_ENV) -> bytes | None:
    """The passphrase from (in order) an explicit value, a file's first line, or the environment; None if
    none is given (the caller prompts, or writes an unencrypted key only when told to)."""
    if value is not None:
        return value.encode() if isinstance(value, str) else value
    if file is not None:
        try:
            text = Path(file).read_text().splitlines()
        except OSError as e:
            raise BadInput(f"passphrase file {file}: {e.strerror}") from None
        if not text or not text[0]:
            raise BadInput(f"passphrase file {file} is empty: its first line is the passphrase")
        return text[0].encode()
    v = os.environ.get(env)
    return v.encode() if v else None


def public_hex(pub: Ed25519PublicKey) -> str:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def public_from_hex(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError:
        raise BadInput(f"{text[:16]!r}... is not an Ed25519 public key (64 hex digits)") from None


def load_public(path: str | os.PathLike) -> Ed25519PublicKey:
    """The authority's public key, as `authority-init` wrote it (.pub.pem) or as 64 hex digits."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"no public key at {p}: copy the authority's .pub.pem here") from None
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(data.decode().strip()))
    except ValueError as e:
        raise BadInput(f"{p} is not an Ed25519 public key (PEM or 64 hex digits): {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadInput(f"{p} is not an Ed25519 public key")
    return key


def save_private_key(path: str | os.PathLike, key: Ed25519PrivateKey, secret: bytes | None) -> Path:
    """PKCS#8 PEM, encrypted under `secret` (BestAvailableEncryption) unless it is None."""
    enc = serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
    return write_secret(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))


def load_private_key(path: str | os.PathLike, secret: bytes | None, *, what: str = "key",
                     create_hint: str = "") -> Ed25519PrivateKey:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"no {what} at {p}" + (f": {create_hint}" if create_hint else "")) from None
    check_private(p)
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and not secret:
        raise BadInput(f"{p} is encrypted: give its passphrase ({PASSPHRASE_ENV}, --passphrase-file, or at the "
                       "prompt)")
    try:
        key = serialization.load_pem_private_key(data, password=secret if encrypted else None)
    except ValueError as e:
        if encrypted:
            raise BadInput(f"{p}: wrong passphrase (or a damaged file)") from None
        raise BadInput(f"{p} is not a PEM private key ({e})") from None
    except TypeError as e:
        raise BadInput(f"{p}: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput(f"{p} is not an Ed25519 key")
    return key


def is_encrypted_key(path: str | os.PathLike) -> bool:
    return b"ENCRYPTED" in Path(path).read_bytes().split(b"\n", 1)[0]


def _fernet(secret: bytes, salt: bytes, n: int, r: int, p: int) -> Fernet:
    kdf = Scrypt(salt=salt, length=32, n=n, r=r, p=p)
    return Fernet(base64.urlsafe_b64encode(kdf.derive(secret)))


def seal(data: bytes, secret: bytes) -> bytes:
    """`data` encrypted and authenticated under a passphrase: a small JSON document."""
    salt = os.urandom(16)
    token = _fernet(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P).encrypt(data)
    doc = {"format": SEALED_FORMAT, "kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
           "salt": base64.b64encode(salt).decode(), "fernet": token.decode()}
    return (json.dumps(doc, indent=1) + "\n").encode()


def is_sealed(data: bytes) -> bool:
    return data.lstrip().startswith(b"{") and f'"{SEALED_FORMAT}"'.encode() in data[:200]


def unseal(data: bytes, secret: bytes | None, *, name: str = "file") -> bytes:
    if not secret:
        raise BadInput(f"{name} is encrypted: give its passphrase ({PASSPHRASE_ENV} or --passphrase-file)")
    try:
        doc = json.loads(data)
        if doc.get("format") != SEALED_FORMAT or doc.get("kdf") != "scrypt":
            raise ValueError(f"format {doc.get('format')!r}")
        n, r, p = int(doc["n"]), int(doc["r"]), int(doc["p"])
        if not (2 ** 10 <= n <= 2 ** 20 and 1 <= r <= 32 and 1 <= p <= 16):
            raise ValueError("scrypt parameters out of range")
        f = _fernet(secret, base64.b64decode(doc["salt"]), n, r, p)
        return f.decrypt(doc["fernet"].encode())
    except InvalidToken:
        raise BadInput(f"{name}: wrong passphrase, or the file was changed") from None
    except (ValueError, KeyError, TypeError) as e:
        raise BadInput(f"{name}: not a sealed GasGuard file ({e})") from None


def new_key(path: str | os.PathLike, secret: bytes | None, *, force: bool = False) -> str:
    """A new Ed25519 key at `path` (encrypted under `secret`), its public half next to it as `<stem>.pub`
    (64 hex digits, what the authority adds to the roster). Returns the public key in hex."""
    p = Path(path)
    if p.exists() and not force:
        raise BadInput(f"{p} already holds a key: pass --force only if you mean to replace it (the roster must "
                       "then be given the new public key)")
    key = Ed25519PrivateKey.generate()
    save_private_key(p, key, secret)
    pub = public_hex(key.public_key())
    p.with_name(p.stem + ".pub").write_text(pub + "\n")
    return pub
