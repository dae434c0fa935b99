"""What `gateway run` and `gateway check-config` both do before the daemon takes a frame: one code path, so
the two never disagree (issue 12 item 8).

Load and validate the configuration (every table, plugin options included), build the plugins, open the
registry and the spool as the daemon does. Every failure is a `Refused`: the CLI prints its one line and
exits 2, which the shipped systemd unit does not restart (RestartPreventExitStatus=2): a bad file waits for
a person, it does not crash-loop.
"""

from __future__ import annotations

import time

from gasguard import __version__

from .config import Config, ConfigError, load
from .plugin import PLUGINS, Plugin, PluginContext
from .spool import Spool, SpoolError, exclusive
from .spool import hold as hold_spool
from .verify import RegistryCache, RegistryUnreadable

EXIT_REFUSED = 2


class Refused(Exception):
    """A refusal at start: one line naming the file and the fix; exit 2."""

    exit_code = EXIT_REFUSED


def refusal(e: BaseException, cfg_path) -> Refused | None:
    """The one-line refusal for an error met while starting, or None if `e` is not one."""
    if isinstance(e, ConfigError):
        return Refused(f"configuration error: {e} (in {cfg_path})")
    if isinstance(e, (SpoolError, RegistryUnreadable)):
        return Refused(f"cannot start: {e} (gateway.{'spool' if isinstance(e, SpoolError) else 'registry'} "
                       f"in {cfg_path})")
    return None


def config(path) -> Config:
    try:
        return load(path)
    except ConfigError as e:
        raise refusal(e, path) from None


def build_plugins(cfg: Config, clock=time.time) -> list[Plugin]:
    """The configured plugins, built from their options. A factory refuses bad options with a ValueError
    whose message names the key (and, where it can, the likely intended one)."""
    ctx = PluginContext(cfg.gateway_id, cfg.district, cfg.root, str(cfg.registry), clock, topic_root=cfg.topic_root, mqtt={
        "host": cfg.mqtt_host, "port": cfg.mqtt_port, "brokers": cfg.brokers, "client_id": cfg.mqtt_client_id,
        "username": cfg.mqtt_username, "password": cfg.mqtt_password, "tls_ca": cfg.tls_ca,
        "tls_cert": cfg.tls_cert, "tls_key": cfg.tls_key, "keepalive": cfg.keepalive,
        "reconnect_min": cfg.reconnect_min, "reconnect_max": cfg.reconnect_max,
        "spool_dir": str(cfg.spool.parent), "version": __version__})
    out = []
    for name, opts in cfg.plugins.items():
        try:
            out.append(PLUGINS[name](opts, ctx))
        except ValueError as e:
            raise ConfigError(f"plugins.{name}", str(e)) from None
        except Exception as e:  # noqa: BLE001 - a plugin that cannot start is a refusal, not a restart loop
            raise ConfigError(f"plugins.{name}", f"the plugin failed to start ({type(e).__name__}: {e}); "
                                                 "check its options") from None
    return out


def hold(cfg: Config) -> None:
    """What only the process that runs the gateway takes, until it ends: its spool (a second gateway on it is
    refused: one writer), and its gateway id among the gateways whose spools share a folder (one per bus on a
    substation's machine, all in /var/lib/gasguard). Two gateways with one id connect with one MQTT client id:
    the broker drops each when the other connects, so both would come and go at the command, every
    reconnect_min, with nothing in either log but lost connections. Raises SpoolError or ConfigError."""
    hold_spool(cfg.spool)
    folder = cfg.spool.parent
    _fd, holder = exclusive(folder / f".gateway-{cfg.gateway_id}.lock")
    if holder is not None:
        raise ConfigError("gateway.id", f"{cfg.gateway_id!r}: another gateway with this id runs beside this one "
                                        f"(pid {holder}, its spool in {folder}); two gateways with one id take "
                                        f"each other's MQTT connection (client id {cfg.mqtt_client_id}) in turn: "
                                        "give each instance its own [gateway] id")


def check(cfg: Config) -> dict:
    """The registry and the spool opened as `run` opens them, and closed again (plugin options were checked
    by `config.load`, as for `run`; plugins are not started: one may connect to a broker). Returns the
    summary `check-config` prints. Raises RegistryUnreadable or SpoolError (a Refused with `refusal`)."""
    reg = RegistryCache(cfg.registry)
    try:
        n = reg.db.count()
    finally:
        reg.close()
    Spool.check(cfg.spool)
    return {"gateway": cfg.gateway_id, "district": cfg.district, "root": cfg.root, "devices": n,
            "serial": [s.port for s in cfg.serial], "udp": cfg.udp_bind, "spool": str(cfg.spool),
            "mqtt": ", ".join(map(str, cfg.brokers)), "tls": bool(cfg.tls_ca), "plugins": sorted(cfg.plugins)}
