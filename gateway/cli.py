"""`gasguard gateway ...`: run and check the substation daemon. Exit 0 ok, 1 operational error, 2 bad config."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import click

from . import startup


@click.group()
def gateway():
    """The substation gateway daemon: ingest, verify, spool, publish."""


def _refuse(r: startup.Refused):
    click.echo(str(r), err=True)
    sys.exit(r.exit_code)


def _load_or_exit(path):
    try:
        return startup.config(path)
    except startup.Refused as r:
        _refuse(r)


@gateway.command("check-config")
@click.option("--config", "-c", "path", required=True, type=click.Path(dir_okay=False), help="gateway.toml")
@click.option("--json", "as_json", is_flag=True, help="machine-readable summary")
def check_config(path, as_json):
    """Validate gateway.toml (every table, plugin options included) and open the registry and the spool as
    `run` does, without opening any port or starting a plugin. Exit 2 on anything `run` would refuse."""
    cfg = _load_or_exit(path)
    try:
        summary = startup.check(cfg)
    except Exception as e:
        r = startup.refusal(e, path)
        if r is None:
            raise
        _refuse(r)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        for k, v in summary.items():
            click.echo(f"{k:9} {v}")
        click.echo("configuration OK")


def _audit_of(cfg, registry):
    """The gateway's audit log ([authority] audit_dir; next to the registry without a config)."""
    from gasguard.authority import AuditLog
    if cfg is not None:
        return AuditLog(cfg.audit_dir or Path(cfg.spool).parent / "audit", recorder=cfg.gateway_id,
                        capacity_bytes=cfg.audit_capacity_bytes, segment_bytes=cfg.audit_segment_bytes)
    return AuditLog(Path(registry).parent / "audit", recorder="import-registry")


def registry_changes(before: dict, after: dict) -> list[dict]:
    """What a bundle changed, device by device: added, key_rotated, decommissioned (never a key)."""
    out = []
    for dev_id, d in sorted(after.items()):
        old = before.get(dev_id)
        if old is None:
            out.append({"change": "device_added", "dev": f"{dev_id:08x}", "state": d.state})
            continue
        if d.key_version != old.key_version:
            out.append({"change": "key_rotated", "dev": f"{dev_id:08x}", "key_version": d.key_version,
                        "previous": old.key_version})
        if d.state != old.state and d.state == "decommissioned":
            out.append({"change": "decommissioned", "dev": f"{dev_id:08x}"})
        elif d.state != old.state:
            out.append({"change": "state_changed", "dev": f"{dev_id:08x}", "state": d.state, "previous": old.state})
    return out


@gateway.command("run")
@click.option("--config", "-c", "path", required=True, type=click.Path(dir_okay=False), help="gateway.toml")
@click.option("--clock", "clock_spec", default="real", show_default=True, metavar="real|speed=N|virtual",
              help="real time, or a drill/training clock: speed=60 runs an hour a minute; virtual moves only "
                   "with 'gasguard gateway advance-clock'. Drill clocks mark every published message.")
@click.option("--t0", type=float, default=None, metavar="EPOCH",
              help="with a drill clock: the wall time (Unix s) it starts from, to share one clock with others")
def run(path, clock_spec, t0):
    """Run the daemon until SIGTERM/SIGINT (graceful: stop ingest, flush, leave the rest in the spool).

    \b
    Examples:
      gasguard gateway run -c /etc/gasguard/gateway.toml
      gasguard gateway run -c drill.toml --clock speed=60          # the 20-min deadline in 20 s
      gasguard gateway run -c training.toml --clock virtual        # then: gasguard gateway advance-clock 20m -c training.toml
    """
    from .clock import ClockError, parse
    try:
        clock = parse(clock_spec, t0)
    except ClockError as e:
        click.echo(f"configuration error: {e}", err=True)
        sys.exit(2)
    cfg = _load_or_exit(path)
    from gasguard import logs

    from .daemon import Daemon
    from .gcpause import Collector
    logs.setup(cfg.log_level, cfg.log_json, gateway=cfg.gateway_id)

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await daemon.run(stop)

    # a refusal at start (plugin options, registry, spool, a port in use) exits 2, which the systemd unit
    # does not restart; the daemon itself never exits on a fault once it runs
    try:
        # this process is the spool's one writer, and the one gateway of its id, until it ends (exit 2 if not)
        startup.hold(cfg)
        daemon = Daemon(cfg, clock=clock, collector=Collector())     # this process is the gateway: it may freeze
        if clock.mode != "real":
            logging.getLogger("gasguard.gateway").warning(
                "DRILL CLOCK %s: every message this gateway publishes is marked \"drill\"; not for production",
                clock.mode)
        asyncio.run(main())
    except Exception as e:
        r = startup.refusal(e, path)
        if r is None:
            raise
        _refuse(r)


@gateway.command("advance-clock")
@click.argument("amount", metavar="DURATION")
@click.option("--config", "-c", "path", required=True, type=click.Path(dir_okay=False), help="gateway.toml")
@click.option("--json", "as_json", is_flag=True, help="machine-readable result")
def advance_clock(amount, path, as_json):
    """Move the clock of a gateway running with --clock virtual by DURATION (90s, 20m, 1.5h).

    Published on <root>/drill/clock through the broker in gateway.toml; the gateway runs what fell due
    (offline devices, escalations) at once. A gateway on real time ignores it.
    """
    from .clock import ClockError, duration
    try:
        seconds = duration(amount)
    except ClockError as e:
        click.echo(f"{e}", err=True)
        sys.exit(2)
    cfg = _load_or_exit(path)
    import paho.mqtt.publish as publish
    topic = cfg.topics.drill_clock
    tls = {"ca_certs": str(cfg.tls_ca), "certfile": str(cfg.tls_cert) if cfg.tls_cert else None,
           "keyfile": str(cfg.tls_key) if cfg.tls_key else None} if cfg.tls_ca else None
    auth = {"username": cfg.mqtt_username, "password": cfg.mqtt_password} if cfg.mqtt_username else None
    try:
        publish.single(topic, json.dumps({"advance_s": seconds}), qos=1, hostname=cfg.mqtt_host, port=cfg.mqtt_port,
                       client_id=f"gasguard-drill-{cfg.gateway_id}", auth=auth, tls=tls, keepalive=10)
    except (OSError, ValueError) as e:
        click.echo(f"cannot reach the broker {cfg.mqtt_host}:{cfg.mqtt_port} ({e}); check [mqtt] in {path}", err=True)
        sys.exit(1)
    res = {"ok": True, "topic": topic, "advance_s": seconds}
    click.echo(json.dumps(res) if as_json else f"asked {cfg.gateway_id} to move its virtual clock {seconds:g} s")


@gateway.command("import-registry")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(dir_okay=False))
@click.option("--trust", required=True, type=click.Path(dir_okay=False),
              help="the provisioning authority's public key (.pub.pem or 64 hex digits)")
@click.option("--config", "-c", "path", type=click.Path(dir_okay=False), help="gateway.toml (its registry)")
@click.option("--registry", type=click.Path(dir_okay=False), help="registry file (instead of --config)")
@click.option("--allow-older", is_flag=True, help="accept a bundle not newer than the last one loaded")
@click.option("--bundle-passphrase-file", type=click.Path(dir_okay=False), default=None,
              help="first line: the bundle's passphrase (or env GASGUARD_BUNDLE_PASSPHRASE, or a prompt)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable summary")
def import_registry(bundle_path, trust, path, registry, allow_older, bundle_passphrase_file, as_json):
    """Verify a registry bundle (gasguard device export) against the authority's key and load it.

    A tampered bundle, one signed by another authority, or one older than the last loaded is refused
    (exit 2) and nothing changes. A running gateway picks the devices up within its registry refresh.

    \b
    Examples:
      gasguard gateway import-registry district.bundle --config /etc/gasguard/gateway.toml --trust authority.pub.pem
      gasguard gateway import-registry district.bundle --registry /var/lib/gasguard/registry.db --trust KEYHEX.txt
    """
    from gasguard.authority.errors import AuthorityError
    from gasguard.authority.secretfile import is_sealed
    from gasguard.provisioning import bundle, keys
    from gasguard.provisioning.errors import ProvisioningError

    from gasguard.registry import Registry
    if bool(path) == bool(registry):
        click.echo("give either --config gateway.toml or --registry FILE", err=True)
        sys.exit(2)
    cfg = _load_or_exit(path) if path else None
    target = cfg.registry if cfg else registry
    audit = _audit_of(cfg, target)
    try:
        secret = None
        if is_sealed(Path(bundle_path).read_bytes()[:400]):
            from gasguard.authority.cli import get_passphrase
            secret = get_passphrase(bundle_passphrase_file, bundle.PASS_ENV, f"bundle {bundle_path}")
        with Registry(target) as reg:
            before = {d.dev_id: d for d in reg.all(include_decommissioned=True)}
            rep = bundle.load(bundle_path, keys.load_public(trust), reg, allow_older=allow_older, secret=secret)
            changes = registry_changes(before, {d.dev_id: d for d in reg.all(include_decommissioned=True)})
    except (ProvisioningError, AuthorityError, OSError) as e:
        audit.record(category="registry", type="bundle_refused", outcome="refused", source={"recorder": "import-registry"},
                     reason=str(e)[:300], detail={"bundle": str(bundle_path), "registry": str(target)})
        click.echo(json.dumps({"ok": False, "error": str(e)}) if as_json else f"refused: {e}", err=not as_json)
        sys.exit(getattr(e, "exit_code", 1))
    # one record per key rotation and decommissioning, and one for the import (issue 14, audit at the gateway)
    src = {"recorder": "import-registry"}
    for ch in changes:
        audit.record(category="registry", type=ch.pop("change"), outcome="done", source=src, detail=ch)
    audit.record(category="registry", type="bundle_loaded", outcome="done", source=src,
                 detail={"bundle": str(bundle_path), "registry": str(target), "devices": rep["devices"],
                         "issued_at": rep["issued_at"], "changes": len(changes)})
    rep = dict(rep, ok=True, registry=str(target))
    click.echo(json.dumps(rep) if as_json else
               f"{rep['devices']} devices loaded into {target} ({rep['decommissioned']} decommissioned)")
