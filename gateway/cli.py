"""`gasguard gateway ...`: run and check the substation daemon. Exit 0 ok, 1 operational error, 2 bad config."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import click

from .config import ConfigError, load


@click.group()
def gateway():
    """The substation gateway daemon: ingest, verify, spool, publish."""


def _load_or_exit(path):
    try:
        return load(path)
    except ConfigError as e:
        click.echo(f"configuration error: {e}", err=True)
        sys.exit(2)


@gateway.command("check-config")
@click.option("--config", "-c", "path", required=True, type=click.Path(dir_okay=False), help="gateway.toml")
@click.option("--json", "as_json", is_flag=True, help="machine-readable summary")
def check_config(path, as_json):
    """Validate gateway.toml without opening any port; also checks the registry can be read."""
    cfg = _load_or_exit(path)
    from .registry import Registry, RegistryError
    try:
        with Registry(cfg.registry, readonly=True) as r:
            n = r.count()
    except RegistryError as e:      # its message already says what to do
        click.echo(f"gateway.registry: {e}", err=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - any other failure to read is reported the same way
        click.echo(f"gateway.registry: cannot read {cfg.registry} ({e}); check the path and its permissions",
                   err=True)
        sys.exit(1)
    summary = {"gateway": cfg.gateway_id, "district": cfg.district, "root": cfg.root, "devices": n,
               "serial": [s.port for s in cfg.serial], "udp": cfg.udp_bind, "spool": str(cfg.spool),
               "mqtt": f"{cfg.mqtt_host}:{cfg.mqtt_port}", "tls": bool(cfg.tls_ca), "plugins": sorted(cfg.plugins)}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        for k, v in summary.items():
            click.echo(f"{k:9} {v}")
        click.echo("configuration OK")


@gateway.command("run")
@click.option("--config", "-c", "path", required=True, type=click.Path(dir_okay=False), help="gateway.toml")
def run(path):
    """Run the daemon until SIGTERM/SIGINT (graceful: stop ingest, flush, leave the rest in the spool)."""
    cfg = _load_or_exit(path)
    from . import logs
    from .daemon import Daemon
    from .registry import RegistryError
    logs.setup(cfg.log_level, cfg.log_json)
    try:
        daemon = Daemon(cfg)
    except RegistryError as e:
        click.echo(f"gateway.registry: {e}", err=True)
        sys.exit(1)
    except OSError as e:
        click.echo(f"cannot start: {e}", err=True)
        sys.exit(1)

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await daemon.run(stop)

    asyncio.run(main())
