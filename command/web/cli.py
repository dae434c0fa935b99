"""`gasguard command web ...`: serve the web console, set an operator's console password, check a config.

Thin: parse, call the library, print. Exit 0 ok, 1 operational error (broker, roster), 2 bad configuration.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click


def _fail(msg: str, code: int) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


@click.group()
def web():
    """The district command's web console (board, map, incident and station pages)."""


def _load(config):
    from .config import ConfigError, load
    try:
        return load(config)
    except ConfigError as e:
        _fail(str(e), 2)


@web.command("check-config")
@click.option("-c", "--config", required=True, type=click.Path(dir_okay=False), help="web console TOML")
def check_config(config):
    """Validate the configuration without opening anything."""
    sc = _load(config)
    click.echo(f"ok: {sc.bind}:{sc.port}, district {sc.web.district}, broker {sc.mqtt['host']}:{sc.mqtt['port']}")


class RegistryStations:
    """The registry's stations as public dicts, re-read at most every `ttl` seconds (a new station shows up
    on the map without a restart; the registry is only read)."""

    def __init__(self, path: Path, ttl: float = 30.0):
        self.path, self.ttl = path, ttl
        self._at, self._rows = 0.0, []

    def __call__(self) -> list[dict]:
        if time.monotonic() - self._at >= self.ttl:
            from gasguard.registry.model import Registry
            with Registry(self.path, readonly=True) as r:
                self._rows = [d.public() for d in r.stations()]
            self._at = time.monotonic()
        return self._rows


@web.command()
@click.option("-c", "--config", required=True, type=click.Path(dir_okay=False), help="web console TOML")
@click.option("--clock", "clock_spec", default="real", show_default=True, metavar="real|speed=N",
              help="real time, or the drill clock the command service runs on (the demo: deadlines count down "
                   "on the service's clock)")
@click.option("--t0", type=float, default=None, metavar="EPOCH", help="with a drill clock: the wall time it starts "
              "from (the command service's --t0)")
def serve(config, clock_spec, t0):
    """Serve the console (uvicorn) until stopped."""
    import uvicorn

    from gasguard.gateway.clock import ClockError, parse

    from gasguard.authority import AuditLog, BadInput, secretfile

    from .acting import AuthorityActing
    from .app import create_app
    from .login import PasswordBook, PasswordFileError
    from .source import MqttSource, SourceError, StoreSource
    sc = _load(config)
    try:
        clock = parse(clock_spec, t0)
    except ClockError as e:
        _fail(str(e), 2)
    a = sc.authority
    missing = [k for k in ("roster", "trust", "console_id", "console_key", "audit") if k not in a]
    if missing:
        _fail(f"{config}: [authority] needs {', '.join(missing)}: every act is signed and audited", 2)
    try:
        book = PasswordBook(sc.passwords)
        passphrase = os.environ.get(a.get("passphrase_env", "GASGUARD_CONSOLE_PASSPHRASE"), "").encode() or None
        key = secretfile.load_private_key(a["console_key"], passphrase, what="console key")
        acting = AuthorityActing(a["roster"], secretfile.load_public(a["trust"]), a["console_id"], key,
                                 AuditLog(a["audit"], recorder=a["console_id"]))
    except (PasswordFileError, BadInput) as e:
        _fail(str(e), 2)
    m = sc.mqtt
    try:
        if sc.store:                 # the district command service (issue 15): its store is the one source
            from gasguard.command.store import open_store
            store = open_store(sc.store)
            if store.schema_version() == 0:
                _fail(f"the command store {sc.store} is empty: start the command service first "
                      "(gasguard command serve creates and migrates it)", 1)
            # readings and valve events too: the service keeps them (command/readings.py, bounded)
            source = StoreSource(store, sc.web.district, topic_root=m["topic_root"],
                                 source_name=a["console_id"]).start()
        else:                        # a substation working alone: its grading plugin's topics
            source = MqttSource.from_config(sc).start(10)      # with the [mqtt] login and TLS
    except SourceError as e:
        _fail(str(e), 1)
    stations = RegistryStations(sc.registry) if sc.registry else (lambda: [])
    app = create_app(sc.web, source, acting, book, stations, clock=clock)
    click.echo(f"GasGuard web console for {sc.web.district} on http://{sc.bind}:{sc.port}/", err=True)
    try:
        uvicorn.run(app, host=sc.bind, port=sc.port, log_level="info", proxy_headers=True)
    finally:
        source.close()


@web.command()
@click.argument("operator_id")
@click.option("--file", "path", required=True, type=click.Path(dir_okay=False),
              help="the console's password file (created 0600 if missing)")
@click.option("--remove", is_flag=True, help="remove the operator's console password")
def passwd(operator_id, path, remove):
    """Set (prompted twice, never echoed) or remove an operator's console password."""
    from .login import PasswordBook, PasswordFileError, new_password_file
    if remove:
        try:
            gone = PasswordBook(path).remove(operator_id)
        except PasswordFileError as e:
            _fail(str(e), 2)
        click.echo(f"{operator_id}: console password {'removed' if gone else 'was not set'}")
        return
    pw = click.prompt(f"new console password for {operator_id}", hide_input=True, confirmation_prompt=True)
    if len(pw) < 12:
        _fail("at least 12 characters (NIST SP 800-63B: length over composition rules); nothing changed", 2)
    try:
        new_password_file(path, operator_id, pw)
    except PasswordFileError as e:
        _fail(str(e), 2)
    click.echo(f"{operator_id}: console password set in {path} (argon2id)")
