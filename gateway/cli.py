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
    from gasguard import logs

    from .daemon import Daemon
    from .registry import RegistryError
    logs.setup(cfg.log_level, cfg.log_json, gateway=cfg.gateway_id)
    try:
        daemon = Daemon(cfg)
    except ConfigError as e:        # [authority]: the roster's key or the audit folder (named in the message)
        click.echo(f"{path}: {e}", err=True)
        sys.exit(2)
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


@gateway.command("import-registry")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(dir_okay=False))
@click.option("--trust", required=True, type=click.Path(dir_okay=False),
              help="the provisioning authority's public key (.pub.pem or 64 hex digits)")
@click.option("--config", "-c", "path", type=click.Path(dir_okay=False), help="gateway.toml (its registry)")
@click.option("--registry", type=click.Path(dir_okay=False), help="registry file (instead of --config)")
@click.option("--allow-older", is_flag=True, help="accept a bundle not newer than the last one loaded")
@click.option("--json", "as_json", is_flag=True, help="machine-readable summary")
def import_registry(bundle_path, trust, path, registry, allow_older, as_json):
    """Verify a registry bundle (gasguard device export) against the authority's key and load it.

    A tampered bundle, one signed by another authority, or one older than the last loaded is refused
    (exit 2) and nothing changes. A running gateway picks the devices up within its registry refresh.

    \b
    Examples:
      gasguard gateway import-registry district.bundle --config /etc/gasguard/gateway.toml --trust authority.pub.pem
      gasguard gateway import-registry district.bundle --registry /var/lib/gasguard/registry.db --trust KEYHEX.txt
    """
    from gasguard.authority.errors import AuthorityError
    from gasguard.provisioning import bundle, keys
    from gasguard.provisioning.errors import ProvisioningError

    from .registry import Registry
    if bool(path) == bool(registry):
        click.echo("give either --config gateway.toml or --registry FILE", err=True)
        sys.exit(2)
    target = _load_or_exit(path).registry if path else registry
    try:
        with Registry(target) as reg:
            rep = bundle.load(bundle_path, keys.load_public(trust), reg, allow_older=allow_older)
    except (ProvisioningError, AuthorityError) as e:
        click.echo(json.dumps({"ok": False, "error": str(e)}) if as_json else f"refused: {e}", err=not as_json)
        sys.exit(e.exit_code)
    rep = dict(rep, ok=True, registry=str(target))
    click.echo(json.dumps(rep) if as_json else
               f"{rep['devices']} devices loaded into {target} ({rep['decommissioned']} decommissioned)")
