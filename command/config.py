"""The command service's configuration (`gasguard command serve --config command.toml`), validated before
anything is opened. A bad value exits 2 with one message naming the file, the key and the fix.

    [command]
    district = "lixia"                                   # topic segment: gasguard/v1/<district>/...
    store = "sqlite:////var/lib/gasguard/command.db"     # or "postgresql://gasguard@db.lixia/command"
    registry = "/var/lib/gasguard/registry.db"           # the district registry (households, topology)
    instance = "cmd-a"                                   # this copy's name in the leader lease
    lease_ttl = 5.0                                      # a dead leader is replaced after this (s)
    tick_interval = 1.0                                  # deadlines and silences checked this often (s)
    gateway_silent_s = 180.0                             # a gateway not heard this long is shown SILENT
    metrics_bind = "127.0.0.1:9108"                      # Prometheus ("" = off)
    frames_keep_s = 604800.0                             # graded frame identities kept this long
    readings_keep_s = 86400.0                            # station readings and valve events kept this long
    readings_max_per_device = 20000                      # ... and at most this many per device (oldest dropped)
    readings_prune_s = 60.0                              # how often the retention runs
    readings_prune_rows = 5000                           # rows one retention pass removes at most (the rest: next tick)
    shelve_max_s = 28800.0                               # the longest shelf an operator may set (a shift)

    [command.mqtt]
    host = "127.0.0.1"
    port = 1883
    # brokers = ["mq1:1883", "mq2:1883", "mq3:1883"]   # a cluster's nodes instead of host/port (failover,
    #                                                 # gasguard.brokers; docs/SCALE_OUT.md)
    client_id = "gasguard-command-lixia"   # ONE persistent session shared by the copies: whoever leads owns it
    username = ""
    password = ""
    tls_ca = ""

    [grading]   # the plan's tables (grading/README.md); district and city topic come from here
    [notify]    # who is told what (command/notify.py)
    [authority] # operators' acts verified and audited (command/acts.py); without it acts are unsigned
"""

from __future__ import annotations

import difflib
import os
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from gasguard.brokers import Endpoint, EndpointError, endpoints_from
from gasguard.grading import engine as G

from . import notify
from .shelving import MAX_S


class ConfigError(ValueError):
    """Exit 2: the message names the file, the key and what to write instead."""


@dataclass
class Config:
    district: str = "lixia"
    store: str = "sqlite:///command.db"
    registry: str = ""
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    lease_ttl: float = 5.0
    tick_interval: float = 1.0
    gateway_silent_s: float = 180.0
    metrics_bind: str = ""
    frames_keep_s: float = 7 * 86400.0
    readings_keep_s: float = 86400.0    # station readings and valve events kept this long (the station page: 24 h)
    readings_max_per_device: int = 20_000   # and no more rows per device (a reading every 4.3 s for 24 h)
    readings_prune_s: float = 60.0      # the retention runs this often
    readings_prune_rows: int = 5_000    # rows one retention pass removes at most: a pass runs in the grading loop,
                                        # so this bounds how long an alarm waits behind it (tens of ms,
                                        # BENCHMARKS.md); a larger backlog goes over the next ticks
    shelve_max_s: float = MAX_S         # the longest an operator may shelve an incident (command/shelving.py)
    batch_max: int = 50                 # broker messages graded in one transaction at most (a reading batch
                                        # holds up to 200 readings: transactions stay well inside the lease)
    mqtt_host: str = "127.0.0.1"        # the single-broker form; mqtt_brokers wins when set
    mqtt_port: int = 1883
    mqtt_brokers: list = field(default_factory=list)   # [command.mqtt] brokers: a cluster's nodes, in order
    mqtt_client_id: str = ""
    # a frozen node (a paused VM, a link dropping every packet) keeps the connection open and sends nothing:
    # paho notices after at most twice the keepalive (30 s before: up to a minute of alarms not seen)
    mqtt_keepalive: int = 10
    mqtt_connect_timeout: float = 5.0   # s for a node's TCP connect, and again for its CONNACK (FailoverClient)
    mqtt_username: str = ""
    mqtt_password: str = ""
    mqtt_tls_ca: str = ""
    grading: dict = field(default_factory=dict)      # validated by grading.load_config
    notify: dict = field(default_factory=dict)       # validated by notify.load_config
    authority: dict = field(default_factory=dict)    # [authority]: roster, trust, replay, audit (command/acts.py)
    source: str = ""

    def __post_init__(self):
        self.mqtt_client_id = self.mqtt_client_id or f"gasguard-command-{self.district}"

    @property
    def brokers(self) -> list[Endpoint]:
        """The endpoints the service's MQTT client goes through (gasguard.brokers.FailoverClient)."""
        return self.mqtt_brokers or [Endpoint(self.mqtt_host, self.mqtt_port)]


_SCALARS = {f.name: f.type for f in fields(Config) if not f.name.startswith("mqtt_")
            and f.name not in ("grading", "notify", "authority", "source")}


def load(path: str | os.PathLike | None = None, **overrides) -> Config:
    """The TOML file's [command], [command.mqtt], [grading], [notify]; `overrides` win (tests, CLI)."""
    data: dict = {}
    where = str(path) if path else "(defaults)"
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{where}: cannot read it ({e.strerror}): give an existing file with --config") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{where}: not valid TOML ({e})") from None
    cmd = dict(data.get("command", {}))
    mqtt = dict(cmd.pop("mqtt", {}))
    kw: dict = {}
    if any(k in mqtt for k in ("host", "port", "brokers")):
        try:                            # one parser for every GasGuard client's broker list (gasguard.brokers)
            eps = endpoints_from(mqtt, "command.mqtt")
        except EndpointError as e:
            raise ConfigError(f"{where}: {e}") from None
        for k in ("host", "port", "brokers"):
            mqtt.pop(k, None)
        kw.update(mqtt_host=eps[0].host, mqtt_port=eps[0].port, mqtt_brokers=eps)
    for k, v in cmd.items():
        if k not in _SCALARS:
            hint = difflib.get_close_matches(k, _SCALARS, n=1)
            raise ConfigError(f"{where}: unknown [command] key {k!r}" + (f": did you mean {hint[0]!r}?" if hint else ""))
        want = float if _SCALARS[k] == "float" else int if _SCALARS[k] == "int" else str
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, want) or isinstance(v, bool):
            raise ConfigError(f"{where}: [command] {k} = {v!r}: expected {want.__name__}")
        kw[k] = v
    for k, v in mqtt.items():
        name = f"mqtt_{k}"
        if name not in {f.name for f in fields(Config)}:
            raise ConfigError(f"{where}: unknown [command.mqtt] key {k!r}: host, port, brokers, client_id, "
                              "keepalive, connect_timeout, username, password, tls_ca")
        kw[name] = v
    keepalive = kw.get("mqtt_keepalive", 10)
    if isinstance(keepalive, bool) or not isinstance(keepalive, int) or not 4 <= keepalive <= 65535:
        raise ConfigError(f"{where}: [command.mqtt] keepalive = {keepalive!r}: whole seconds, 4 to 65535 (e.g. 10: "
                          "a frozen broker node is left within twice it)")
    timeout = kw.get("mqtt_connect_timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{where}: [command.mqtt] connect_timeout = {timeout!r}: seconds, more than 0 (e.g. 5)")
    kw["mqtt_connect_timeout"] = float(timeout)
    kw.setdefault("grading", dict(data.get("grading", {})))
    kw.setdefault("notify", dict(data.get("notify", {})))
    kw.setdefault("authority", dict(data.get("authority", {})))
    kw.update(overrides)
    cfg = Config(**kw, source=where)
    cfg.grading = dict(cfg.grading)
    cfg.grading.setdefault("district", cfg.district)
    cfg.grading.setdefault("gateway_id", f"command-{cfg.district}")     # reporter in the draft report
    try:
        cfg.grading = G.load_config(cfg.grading)
    except G.GradingConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    try:
        cfg.notify = notify.load_config(cfg.notify)
    except notify.NotifyConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if cfg.readings_keep_s <= 0 or cfg.readings_max_per_device < 1 or cfg.readings_prune_s <= 0:
        raise ConfigError(f"{where}: [command] readings_keep_s > 0, readings_max_per_device >= 1 and "
                          "readings_prune_s > 0 (e.g. 86400.0, 20000 and 60.0)")
    if cfg.readings_prune_rows < 1:
        raise ConfigError(f"{where}: [command] readings_prune_rows = {cfg.readings_prune_rows}: at least 1 (rows "
                          "one retention pass removes; e.g. 5000)")
    if cfg.lease_ttl < 1 or cfg.tick_interval <= 0:
        raise ConfigError(f"{where}: [command] lease_ttl >= 1 s and tick_interval > 0 s (e.g. 5.0 and 1.0)")
    if cfg.authority:
        need = {"roster", "trust", "replay", "audit"}
        if set(cfg.authority) != need:
            raise ConfigError(f"{where}: [authority] needs exactly {sorted(need)} (the roster file, the authority's "
                              f"public key, a replay store path, an audit folder); got {sorted(cfg.authority)}")
        for k in ("roster", "trust"):
            if not Path(cfg.authority[k]).exists():
                raise ConfigError(f"{where}: [authority] {k} = {cfg.authority[k]!r} does not exist "
                                  "(gasguard authority init writes them)")
    if cfg.registry and not Path(cfg.registry).exists():
        raise ConfigError(f"{where}: [command] registry = {cfg.registry!r} does not exist: give the district "
                          "registry file (gasguard device ... writes it)")
    return cfg
