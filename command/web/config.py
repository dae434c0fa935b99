"""The web console's configuration file (TOML), validated before anything opens: a bad file is one message
naming the key and the fix (exit 2), as for the gateway's `check-config`.

    [web]
    bind = "127.0.0.1"            # behind a TLS reverse proxy in production; then https_only = true
    port = 8080
    district = "lixia"
    registry = "registry.db"      # stations, coordinates, supply links (read only)
    passwords = "console-passwords.json"   # argon2 hashes, 0600 (gasguard command web passwd)
    session_secret = "console-session.key" # made 0600 on first start; replacing it logs everyone out
    [web.lockout]  max_failures = 5, window_s = 900, lockout_s = 900
    [web.flood]    window_s = 600, start_above = 10, end_below = 5

    [mqtt]         host, port, topic_root   (a console alone, no store: incidents, readings, valve events)
                   username, password_file (0600; else $GASGUARD_MQTT_PASSWORD), cafile (TLS on), cert, key

    [command]      store = "sqlite:///var/lib/gasguard/command.db"  (the command service's store, issue 15)

    [authority]    roster, trust, console_id, console_key, passphrase_env, audit

    [grading]      timezone, pressure bounds (the plan's defaults otherwise)

Relative paths are relative to the file.
"""

from __future__ import annotations

import difflib
import os
import secrets
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gasguard.authority import AuthorityError, BadInput, secretfile
from gasguard.command.console import BrokerLogin

from .alarms import FloodConfig
from .app import WebConfig
from .login import LockoutConfig

SECTIONS = {
    "web": {"bind": str, "port": int, "district": str, "registry": str, "passwords": str, "session_secret": str,
            "https_only": bool, "session_idle_s": (int, float), "confirm_timeout_s": (int, float),
            "shelve_max_s": (int, float), "readings_window_s": (int, float), "keep_normal_s": (int, float),
            "lockout": dict, "flood": dict},
    "mqtt": {"host": str, "port": int, "topic_root": str, "username": str, "password_file": str, "cafile": str,
             "cert": str, "key": str},
    "command": {"store": str},
    "authority": {"roster": str, "trust": str, "console_id": str, "console_key": str,
                  "passphrase_env": str, "audit": str},
    "grading": dict,
}
SUB = {"lockout": LockoutConfig, "flood": FloodConfig}
MQTT_PASSWORD_ENV = "GASGUARD_MQTT_PASSWORD"    # as the terminal console (gasguard command console -P)


class ConfigError(Exception):
    def __init__(self, path, key: str, fix: str):
        super().__init__(f"{path}: {key}: {fix}")


@dataclass
class ServeConfig:
    web: WebConfig
    bind: str = "127.0.0.1"
    port: int = 8080
    registry: Path | None = None
    passwords: Path = Path("console-passwords.json")
    mqtt: dict = field(default_factory=lambda: {"host": "127.0.0.1", "port": 1883, "topic_root": "gasguard/v1"})
    authority: dict = field(default_factory=dict)
    store: str | None = None          # the command service's store URL; None: incidents from MQTT (standalone)
    login: BrokerLogin = field(default_factory=BrokerLogin)   # [mqtt] login and TLS (substation mode)


def _hint(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"unknown key; did you mean '{close[0]}'?" if close else f"unknown key (known: {', '.join(known)})"


def load(path: str | Path) -> ServeConfig:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "file", "not found: start from command/web/README.md's example") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "syntax", str(e)) from None
    base = path.parent

    def rel(p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else base / q

    for sec, body in doc.items():
        if sec not in SECTIONS:
            raise ConfigError(path, sec, _hint(sec, SECTIONS))
        if SECTIONS[sec] is dict:
            continue
        for k, v in body.items():
            if sec == "mqtt" and k == "password":
                raise ConfigError(path, "mqtt.password", f"not in this file: set ${MQTT_PASSWORD_ENV}, or "
                                  "password_file = a file (chmod 600) whose first line is the password")
            if k not in SECTIONS[sec]:
                raise ConfigError(path, f"{sec}.{k}", _hint(k, SECTIONS[sec]))
            want = SECTIONS[sec][k]
            if not isinstance(v, want) or (isinstance(v, bool) and want is not bool):
                raise ConfigError(path, f"{sec}.{k}", f"{v!r} is not a {getattr(want, '__name__', 'number')}")
    w = doc.get("web", {})
    kw: dict = {}
    for k in ("district", "https_only", "session_idle_s", "confirm_timeout_s", "shelve_max_s",
              "readings_window_s", "keep_normal_s"):
        if k in w:
            kw[k] = w[k]
    for k, cls in SUB.items():
        if k in w:
            known = cls.__dataclass_fields__
            for sk in w[k]:
                if sk not in known:
                    raise ConfigError(path, f"web.{k}.{sk}", _hint(sk, known))
            kw[k] = cls(**w[k])
    for k in ("session_idle_s", "confirm_timeout_s", "shelve_max_s", "readings_window_s"):
        if k in kw and kw[k] <= 0:
            raise ConfigError(path, f"web.{k}", "must be more than 0 seconds")
    if "flood" in kw and not kw["flood"].end_below <= kw["flood"].start_above:
        raise ConfigError(path, "web.flood", "end_below must not exceed start_above (ISA-18.2: 10 and 5)")
    kw["grading"] = doc.get("grading", {})
    kw["session_secret"] = _session_secret(rel(w.get("session_secret", "console-session.key")))
    return ServeConfig(web=WebConfig(**kw), bind=w.get("bind", "127.0.0.1"), port=w.get("port", 8080),
                       registry=rel(w["registry"]) if "registry" in w else None,
                       passwords=rel(w.get("passwords", "console-passwords.json")),
                       mqtt={"host": "127.0.0.1", "port": 1883, "topic_root": "gasguard/v1", **doc.get("mqtt", {})},
                       store=doc.get("command", {}).get("store"), login=_broker_login(path, doc.get("mqtt", {}), rel),
                       authority={k: (str(rel(v)) if k in ("roster", "trust", "console_key", "audit") else v)
                                  for k, v in doc.get("authority", {}).items()})


def _broker_login(path: Path, m: dict, rel) -> BrokerLogin:
    """The broker login and TLS of [mqtt], its files checked now (a bad one is named at start, not found by
    paho's thread later). The password comes from `password_file` (0600, first line) or $GASGUARD_MQTT_PASSWORD,
    never from this file; it is not logged."""
    files = {k: str(rel(m[k])) for k in ("password_file", "cafile", "cert", "key") if k in m}
    password = None
    if "password_file" in files:
        pf = Path(files["password_file"])
        try:
            secretfile.check_private(pf)
            password = secretfile.passphrase(file=pf).decode()
        except FileNotFoundError:
            raise ConfigError(path, "mqtt.password_file", f"no file at {pf}: its first line is the broker "
                              "password (credentials/USER.password of 'gasguard authority broker-config')") from None
        except (AuthorityError, BadInput) as e:
            raise ConfigError(path, "mqtt.password_file", str(e)) from None
    elif m.get("username"):
        password = os.environ.get(MQTT_PASSWORD_ENV) or None
    login = BrokerLogin(m.get("username"), password, files.get("cafile"), files.get("cert"), files.get("key"))
    lack = login.problem(name=str)          # named as this file's [mqtt] keys
    if lack:
        raise ConfigError(path, f"mqtt.{lack[0]}", lack[1])
    try:
        if "cafile" in files:
            what = "mqtt.cafile"
            ssl.create_default_context(cafile=files["cafile"])
        if "cert" in files:
            what = "mqtt.cert"
            ssl.create_default_context().load_cert_chain(files["cert"], files["key"])
    except (OSError, ssl.SSLError) as e:
        named = files["cafile"] if what == "mqtt.cafile" else f"{files['cert']} with {files['key']}"
        raise ConfigError(path, what, f"{named}: {getattr(e, 'strerror', None) or e}: give the PEM file "
                          + ("of the CA that signed the broker's certificate" if what == "mqtt.cafile"
                             else "of this console's certificate and its private key")) from None
    return login


def _session_secret(p: Path) -> bytes:
    """The key that signs session cookies: 32 random bytes made once, 0600 (never logged)."""
    if not p.exists():
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    if p.stat().st_mode & 0o077:
        raise ConfigError(p, "web.session_secret", f"readable by others: run 'chmod 600 {p}'")
    data = p.read_bytes()
    if len(data) < 32:
        raise ConfigError(p, "web.session_secret", "shorter than 32 bytes: delete it to make a new one")
    return data
