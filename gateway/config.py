"""Gateway configuration: TOML in, a validated `Config` out, or a `ConfigError` naming the key and the fix.

Validation happens before any port, socket or file is opened (STYLE 7), so `gasguard gateway check-config`
and `gasguard gateway run` give the same answer.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gasguard.brokers import Endpoint, EndpointError, endpoints_from
from gasguard.protocol.topics import ROOT, GatewayTopics, Topics


class ConfigError(Exception):
    """Bad configuration: `key` is the dotted TOML key, the message says the fix."""

    def __init__(self, key: str, msg: str):
        super().__init__(f"{key}: {msg}")
        self.key = key


_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class SerialPort:
    port: str               # a path (prefer /dev/serial/by-id/...) or a pyserial URL
    baud: int = 115200
    kind: str = "serial"    # "serial" (wired) or "lora_uart" (LoRa modem in transparent mode, same framing)
    name: str = ""


@dataclass
class Config:
    gateway_id: str
    district: str
    registry: Path
    spool: Path
    serial: list[SerialPort] = field(default_factory=list)
    udp_bind: str | None = None       # "host:port" of the Semtech packet-forwarder listener
    udp_forwarders: dict = field(default_factory=dict)   # EUI (16 hex) -> the IP it may speak from; {}: pin
    udp_rcvbuf: int = 4 << 20          # SO_RCVBUF asked for the listener (udp.rcvbuf_kb; capped by rmem_max)
    topic_root: str = ROOT             # every topic is built from it (protocol/topics.py)
    mqtt_host: str = "127.0.0.1"       # the single-broker form; `brokers` wins when set
    mqtt_port: int = 1883
    mqtt_brokers: list[Endpoint] = field(default_factory=list)   # [mqtt] brokers: a cluster's nodes, in order
    connect_timeout: float = 5.0       # s for a node's CONNACK before the next node is tried
    puback_timeout: float = 10.0       # s without a PUBACK for what is in flight: the node hung, the next is tried
    mqtt_client_id: str = ""
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive: int = 30
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    inflight: int = 200
    alarm_connection: bool = True      # [mqtt] alarm_connection: alarms and events on a second connection
    network_thread: bool = False       # [mqtt] network_thread: each connection's I/O on paho's thread, not the loop
    batch_count: int = 200             # readings per batch message
    batch_bytes: int = 64_000          # bytes per batch message
    batch_delay: float = 1.0           # oldest reading waits at most this long for company
    verify_worker: bool = False        # [ingest] verify_worker: decode + MIC in a worker process (off by default)
    commit_thread: bool = False        # [ingest] commit_thread: a burst's groups of readings fsynced on a thread
    spool_max_bytes: int = 256 * 1024 * 1024
    spool_audit: bool = False          # keep a log of every accepted id (forensics, fault tests)
    spool_sync: str = "FULL"           # SQLite synchronous: FULL survives power loss
    rate_per_min: float = 60.0         # per-device readings per minute (token bucket)
    rate_burst: int = 30
    duplicate_window: float = 30.0     # an exact copy of an accepted frame within this many s is a duplicate
    offline_after: float = 900.0       # seconds without a frame before a device is published offline (floor)
    offline_missed: float = 3.0        # ... or this many of the device's own report periods, if longer
    stats_interval: float = 60.0
    command_timeout: float = 120.0
    command_retry: float = 10.0
    mic_failures: int = 5              # MIC failures for one device within mic_window s: a security event
    mic_window: float = 60.0
    log_window: float = 10.0           # a repeating log line (rejection, traceback, node text) per this window ...
    node_log_lines: int = 20           # ... and this many node log lines per port; the rest counted, summarised
    tick_interval: float = 1.0
    stall_after: float = 20.0          # seconds a daemon loop may make no progress before the watchdog starves
    metrics_bind: str | None = None    # "host:port" for Prometheus, or None
    plugins: dict = field(default_factory=dict)
    # [authority] (issue 14): who may command nodes and act on incidents, and the audit record
    roster: Path | None = None          # the district's signed operator roster; None: every request refused
    trust: Path | None = None           # the district authority's public key (.pub.pem or 64 hex digits)
    replay: Path | None = None          # nonces already used (SQLite); default <spool>.replay.db
    audit_dir: Path | None = None       # the audit log's folder; default <spool folder>/audit
    max_age_s: float = 120.0            # a signed request older than this is stale
    max_skew_s: float = 30.0            # ... or this far in the future (a signer's clock ahead)
    audit_capacity_bytes: int = 256 * 1024 * 1024
    audit_segment_bytes: int = 8 * 1024 * 1024
    audit_warn_fraction: float = 0.8   # IEC 62443-4-2 CR 2.9: warn before the audit storage fills
    log_level: str = "INFO"
    log_json: bool = False
    source: Path | None = None

    @property
    def brokers(self) -> list[Endpoint]:
        """The endpoints the publisher goes through (gasguard.brokers.FailoverClient)."""
        return self.mqtt_brokers or [Endpoint(self.mqtt_host, self.mqtt_port)]

    @property
    def topics(self) -> GatewayTopics:
        """This gateway's subtree of the topic tree."""
        return Topics(self.topic_root).gateway(self.district, self.gateway_id)

    @property
    def root(self) -> str:
        return self.topics.root


def _get(d: dict, key: str, typ, default=..., path: str = ""):
    full = f"{path}.{key}" if path else key
    if key not in d:
        if default is ...:
            raise ConfigError(full, "is required")
        return default
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        want = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                list: "a list", dict: "a table"}.get(typ, str(typ))
        raise ConfigError(full, f"must be {want}, got {v!r}")
    return v


def _positive(v, key, minimum=0):
    if v <= minimum:
        raise ConfigError(key, f"must be greater than {minimum}, got {v}")
    return v


def _hostport(v: str, key: str) -> str:
    host, _, port = v.rpartition(":")
    if not host or not port.isdigit() or not (0 < int(port) < 65536):
        raise ConfigError(key, f"{v!r} is not host:port, e.g. \"0.0.0.0:1700\"")
    return v


_KNOWN = {
    "gateway": {"id", "district", "registry", "spool", "log_level", "log_json"},
    "serial": {"port", "baud", "kind", "name"},
    "udp": {"bind", "forwarders", "rcvbuf_kb"},
    "mqtt": {"host", "port", "brokers", "connect_timeout", "puback_timeout", "topic_root", "client_id", "username",
             "password", "tls_ca", "tls_cert", "tls_key",
             "keepalive", "reconnect_min", "reconnect_max", "inflight", "alarm_connection",
             "network_thread"},
    "batch": {"count", "bytes", "delay"},
    "ingest": {"verify_worker", "commit_thread"},
    "spool": {"max_mb", "audit", "synchronous"},
    "limits": {"rate_per_min", "burst", "duplicate_window", "offline_after", "offline_missed_reports", "command_timeout",
               "command_retry", "mic_failures", "mic_window", "log_window", "node_log_lines"},
    "authority": {"roster", "trust", "replay", "audit_dir", "max_age_s", "max_skew_s", "audit_capacity_mb",
                  "audit_segment_mb", "audit_warn_fraction"},
    "metrics": {"bind", "stats_interval", "tick_interval", "stall_after"},
}


def _unknown(table: dict, name: str):
    for k in table:
        if k not in _KNOWN[name]:
            # typos (prot, delai) and near names (tls_cafile) both get a suggestion
            close = difflib.get_close_matches(k, sorted(_KNOWN[name]), n=1, cutoff=0.6) or \
                [c for c in sorted(_KNOWN[name]) if c[:3] == k[:3]]
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(_KNOWN[name]))}"
            raise ConfigError(f"{name}.{k}", f"unknown key{hint}")


def parse(doc: dict, base: Path = Path(".")) -> Config:
    """A TOML document (already parsed) -> Config. Relative paths are relative to `base`."""
    for top in doc:
        if top not in _KNOWN and top not in ("plugins", "sparkplug"):
            raise ConfigError(top, f"unknown table; known: {', '.join(sorted(_KNOWN))}, plugins, sparkplug")
    g = _get(doc, "gateway", dict)
    _unknown(g, "gateway")
    gid = _get(g, "id", str, path="gateway")
    district = _get(g, "district", str, path="gateway")
    for k, v in (("gateway.id", gid), ("gateway.district", district)):
        if not _NAME.match(v):
            raise ConfigError(k, f"{v!r} must be 1-64 of A-Z a-z 0-9 _ - (it becomes an MQTT topic level)")

    def p(v):
        q = Path(v).expanduser()
        return q if q.is_absolute() else (base / q)

    cfg = Config(gateway_id=gid, district=district, registry=p(_get(g, "registry", str, path="gateway")),
                 spool=p(_get(g, "spool", str, path="gateway")))
    cfg.log_level = _get(g, "log_level", str, "INFO", "gateway").upper()
    if cfg.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("gateway.log_level", "choose DEBUG, INFO, WARNING or ERROR")
    cfg.log_json = _get(g, "log_json", bool, False, "gateway")

    for i, s in enumerate(_get(doc, "serial", list, [])):
        key = f"serial[{i}]"
        if not isinstance(s, dict):
            raise ConfigError(key, "each [[serial]] entry is a table with port = \"/dev/ttyUSB0\"")
        _unknown(s, "serial")
        sp = SerialPort(port=_get(s, "port", str, path=key), baud=_get(s, "baud", int, 115200, key),
                        kind=_get(s, "kind", str, "serial", key), name=_get(s, "name", str, "", key))
        if sp.kind not in ("serial", "lora_uart"):
            raise ConfigError(f"{key}.kind", f"{sp.kind!r}: choose \"serial\" or \"lora_uart\"")
        if sp.baud not in (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600):
            raise ConfigError(f"{key}.baud", f"{sp.baud} is not a standard rate; use e.g. 115200")
        sp.name = sp.name or Path(sp.port).name
        cfg.serial.append(sp)
    if "udp" in doc:
        u = _get(doc, "udp", dict)
        _unknown(u, "udp")
        cfg.udp_bind = _hostport(_get(u, "bind", str, path="udp"), "udp.bind")
        kb = _get(u, "rcvbuf_kb", int, cfg.udp_rcvbuf // 1024, "udp")
        if not 64 <= kb <= 1 << 20:
            raise ConfigError("udp.rcvbuf_kb", f"{kb} is not between 64 and 1048576 (KiB); e.g. 4096")
        cfg.udp_rcvbuf = kb * 1024
        for eui, ip in _get(u, "forwarders", dict, {}, "udp").items():
            key = f"udp.forwarders.{eui}"
            if not re.fullmatch(r"[0-9A-Fa-f]{16}", eui):
                raise ConfigError(key, "a forwarder EUI is 16 hex digits, e.g. aa555a0000000001 = \"10.0.0.5\"")
            try:
                ipaddress.ip_address(ip if isinstance(ip, str) else "")
            except ValueError:
                raise ConfigError(key, f"{ip!r} is not an IP address; give the forwarder's, e.g. \"10.0.0.5\"") \
                    from None
            cfg.udp_forwarders[eui.lower()] = ip
    if not cfg.serial and not cfg.udp_bind:
        raise ConfigError("serial", "no transport: add a [[serial]] port or [udp] bind = \"0.0.0.0:1700\"")

    m = _get(doc, "mqtt", dict, {})
    _unknown(m, "mqtt")
    try:
        cfg.mqtt_brokers = endpoints_from(m, "mqtt")
    except EndpointError as e:
        raise ConfigError(e.key, e.fix) from None
    cfg.mqtt_host, cfg.mqtt_port = cfg.mqtt_brokers[0].host, cfg.mqtt_brokers[0].port
    cfg.connect_timeout = _positive(_get(m, "connect_timeout", float, 5.0, "mqtt"), "mqtt.connect_timeout")
    cfg.puback_timeout = _get(m, "puback_timeout", float, 10.0, "mqtt")
    if cfg.puback_timeout < 0:
        raise ConfigError("mqtt.puback_timeout", "must be 0 (off) or seconds, e.g. 10")
    cfg.topic_root = _get(m, "topic_root", str, ROOT, "mqtt")
    try:
        Topics(cfg.topic_root)
    except ValueError as e:
        raise ConfigError("mqtt.topic_root", f"{e}; leave it out for the default {ROOT!r}") from None
    cfg.mqtt_client_id = _get(m, "client_id", str, f"gasguard-gw-{gid}", "mqtt")
    cfg.mqtt_username = _get(m, "username", str, None, "mqtt")
    cfg.mqtt_password = _get(m, "password", str, None, "mqtt")
    for k in ("tls_ca", "tls_cert", "tls_key"):
        if k in m:
            path = p(_get(m, k, str, path="mqtt"))
            if not path.is_file():
                raise ConfigError(f"mqtt.{k}", f"{path} does not exist; give the PEM file's path")
            setattr(cfg, k, path)
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConfigError("mqtt.tls_key", "a client certificate needs both tls_cert and tls_key")
    if cfg.tls_cert and not cfg.tls_ca:
        raise ConfigError("mqtt.tls_ca", "client certificates need TLS: set tls_ca to the broker's CA file")
    cfg.keepalive = _positive(_get(m, "keepalive", int, 30, "mqtt"), "mqtt.keepalive", 4)
    cfg.reconnect_min = _positive(_get(m, "reconnect_min", float, 0.5, "mqtt"), "mqtt.reconnect_min")
    cfg.reconnect_max = _get(m, "reconnect_max", float, 30.0, "mqtt")
    if cfg.reconnect_max < cfg.reconnect_min:
        raise ConfigError("mqtt.reconnect_max", "must be at least mqtt.reconnect_min")
    cfg.inflight = _positive(_get(m, "inflight", int, 200, "mqtt"), "mqtt.inflight")
    cfg.alarm_connection = _get(m, "alarm_connection", bool, True, "mqtt")
    cfg.network_thread = _get(m, "network_thread", bool, False, "mqtt")

    b = _get(doc, "batch", dict, {})
    _unknown(b, "batch")
    cfg.batch_count = _positive(_get(b, "count", int, 200, "batch"), "batch.count")
    cfg.batch_bytes = _get(b, "bytes", int, 64_000, "batch")
    if cfg.batch_bytes < 1024:
        raise ConfigError("batch.bytes", "must be at least 1024 so one reading fits")
    cfg.batch_delay = _get(b, "delay", float, 1.0, "batch")
    if not 0 <= cfg.batch_delay <= 60:
        raise ConfigError("batch.delay", "seconds between 0 and 60 (readings wait at most this long)")

    ing = _get(doc, "ingest", dict, {})
    _unknown(ing, "ingest")
    # the second core: off by default - measured on the 2-core bench machine (BENCHMARKS.md, issue 17) the
    # worker's IPC cost more than it saved on the serial path while the other core was busy; turn it on
    # where a core is idle and `gasguard bench peers` says it pays
    cfg.verify_worker = _get(ing, "verify_worker", bool, False, "ingest")
    cfg.commit_thread = _get(ing, "commit_thread", bool, False, "ingest")

    s = _get(doc, "spool", dict, {})
    _unknown(s, "spool")
    cfg.spool_max_bytes = int(_positive(_get(s, "max_mb", float, 256.0, "spool"), "spool.max_mb") * 1024 * 1024)
    cfg.spool_audit = _get(s, "audit", bool, False, "spool")
    cfg.spool_sync = _get(s, "synchronous", str, "FULL", "spool").upper()
    if cfg.spool_sync not in ("FULL", "NORMAL"):
        raise ConfigError("spool.synchronous", "FULL (survives power loss) or NORMAL (survives a crash only)")

    lim = _get(doc, "limits", dict, {})
    _unknown(lim, "limits")
    cfg.rate_per_min = _positive(_get(lim, "rate_per_min", float, 60.0, "limits"), "limits.rate_per_min")
    cfg.rate_burst = _positive(_get(lim, "burst", int, 30, "limits"), "limits.burst")
    cfg.duplicate_window = _positive(_get(lim, "duplicate_window", float, 30.0, "limits"), "limits.duplicate_window")
    cfg.offline_after = _positive(_get(lim, "offline_after", float, 900.0, "limits"), "limits.offline_after")
    cfg.offline_missed = _get(lim, "offline_missed_reports", float, 3.0, "limits")
    if cfg.offline_missed < 0:
        raise ConfigError("limits.offline_missed_reports", "0 (use offline_after alone) or more report periods")
    cfg.command_timeout = _positive(_get(lim, "command_timeout", float, 120.0, "limits"), "limits.command_timeout")
    cfg.command_retry = _positive(_get(lim, "command_retry", float, 10.0, "limits"), "limits.command_retry")
    cfg.mic_failures = _positive(_get(lim, "mic_failures", int, 5, "limits"), "limits.mic_failures")
    cfg.mic_window = _positive(_get(lim, "mic_window", float, 60.0, "limits"), "limits.mic_window")
    cfg.log_window = _positive(_get(lim, "log_window", float, 10.0, "limits"), "limits.log_window")
    cfg.node_log_lines = _get(lim, "node_log_lines", int, 20, "limits")
    if cfg.node_log_lines < 0:
        raise ConfigError("limits.node_log_lines", "0 (count node lines, log none) or more lines per window")

    mt = _get(doc, "metrics", dict, {})
    _unknown(mt, "metrics")
    if "bind" in mt:
        cfg.metrics_bind = _hostport(_get(mt, "bind", str, path="metrics"), "metrics.bind")
    cfg.stats_interval = _positive(_get(mt, "stats_interval", float, 60.0, "metrics"), "metrics.stats_interval")
    cfg.tick_interval = _positive(_get(mt, "tick_interval", float, 1.0, "metrics"), "metrics.tick_interval")
    cfg.stall_after = _get(mt, "stall_after", float, 20.0, "metrics")
    if cfg.stall_after < 2 * cfg.tick_interval:
        raise ConfigError("metrics.stall_after", f"{cfg.stall_after} s is under two ticks ({cfg.tick_interval} s "
                          "each): a healthy ticker would look stuck; use e.g. 20 (below the unit's WatchdogSec=30)")

    _authority(doc, cfg, p)

    if "sparkplug" in doc:      # [sparkplug]: the gateway as a Sparkplug B edge node (a plugin of its own session)
        from .sparkplug.plugin import OptionError, check_options
        try:
            cfg.plugins["sparkplug"] = check_options(_get(doc, "sparkplug", dict))
        except OptionError as e:
            raise ConfigError(e.key, str(e).split(": ", 1)[1]) from None
    pl = _get(doc, "plugins", dict, {})
    from .plugin import CHECKS, PLUGINS
    for name, opts in pl.items():
        if name not in PLUGINS:
            raise ConfigError(f"plugins.{name}", f"unknown plugin; available: {', '.join(sorted(PLUGINS)) or 'none'}")
        if opts is False:
            continue
        if not (opts is True or isinstance(opts, dict)):
            raise ConfigError(f"plugins.{name}", "use true, false or a table of the plugin's options")
        cfg.plugins[name] = {} if opts is True else dict(opts)
        if name in CHECKS:
            try:
                CHECKS[name](cfg.plugins[name])
            except ValueError as e:
                raise ConfigError(f"plugins.{name}", str(e)) from None
    return cfg


def _authority(doc: dict, cfg: Config, p) -> None:
    """[authority]: the roster and the key that signs it, the replay store and the audit log. Without a
    roster the gateway refuses every node command, acknowledgement and operator input (and records it)."""
    a = _get(doc, "authority", dict, {})
    _unknown(a, "authority")
    if ("roster" in a) != ("trust" in a):
        raise ConfigError("authority.trust" if "roster" in a else "authority.roster",
                          "roster and trust go together: the roster file and the authority's public key that signs it")
    if "roster" in a:
        cfg.roster = p(_get(a, "roster", str, path="authority"))
        cfg.trust = p(_get(a, "trust", str, path="authority"))
        if not cfg.trust.is_file():
            raise ConfigError("authority.trust", f"{cfg.trust} does not exist: copy the authority's .pub.pem here "
                              "(gasguard device authority-init writes it)")
    cfg.replay = p(_get(a, "replay", str, path="authority")) if "replay" in a else \
        cfg.spool.with_name(cfg.spool.name + ".replay.db")
    cfg.audit_dir = p(_get(a, "audit_dir", str, path="authority")) if "audit_dir" in a else cfg.spool.parent / "audit"
    cfg.max_age_s = _positive(_get(a, "max_age_s", float, 120.0, "authority"), "authority.max_age_s")
    cfg.max_skew_s = _get(a, "max_skew_s", float, 30.0, "authority")
    if not 0 <= cfg.max_skew_s <= 600:
        raise ConfigError("authority.max_skew_s", "seconds a signer's clock may run ahead, 0..600 (NTP keeps it small)")
    seg = _positive(_get(a, "audit_segment_mb", float, 8.0, "authority"), "authority.audit_segment_mb")
    cap = _get(a, "audit_capacity_mb", float, 256.0, "authority")
    if cap < 2 * seg:
        raise ConfigError("authority.audit_capacity_mb", f"at least two segments ({2 * seg} MB)")
    cfg.audit_segment_bytes, cfg.audit_capacity_bytes = int(seg * 1024 * 1024), int(cap * 1024 * 1024)
    cfg.audit_warn_fraction = _get(a, "audit_warn_fraction", float, 0.8, "authority")
    if not 0 < cfg.audit_warn_fraction < 1:
        raise ConfigError("authority.audit_warn_fraction", "a fraction of the capacity, e.g. 0.8")


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError("file", f"cannot read {path} ({e.strerror}); copy gateway/gateway.example.toml") from None
    try:
        text = data.decode("utf-8")    # TOML is UTF-8 (TOML 1.0 spec), whatever the locale says
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError("file", f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                                  f"save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("file", f"{path} is not valid TOML: {e}") from None
    cfg = parse(doc, path.parent)
    cfg.source = path
    return cfg
