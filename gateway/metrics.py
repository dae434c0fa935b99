"""Prometheus metrics for one gateway (own CollectorRegistry, so several can live in one test process).

Conventions (gasguard/metrics.py): process and build-info metrics, no `_created` series, every label value a
counter can take created at zero. Alert rules and the dashboard on these names: monitoring/.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from gasguard.authority.errors import Refused
from gasguard.metrics import service_registry, zeroed
from gasguard.protocol.const import RESULT_NAMES
from gasguard.protocol.errors import REASONS as PROTOCOL_REASONS

from .spool import FIXES as SPOOL_FAULTS, LANE_NAMES

# Why the gateway refuses a frame beyond the decoder's own reasons: verify.py raises the first five and
# registry_unreadable, the daemon counts line noise, a full verification queue, a failed spool write by kind
# (spool.FIXES), a defect (internal_error); the Semtech UDP listener its udp_*
# refusals (tests/test_ops_metrics.py checks that every reason in the code is listed here)
GATEWAY_REASONS = ("direction", "unknown_device", "decommissioned", "duplicate", "rate_limit", "noise",
                   "ingest_overflow", "registry_unreadable", "internal_error") \
    + tuple(f"spool_{k}" for k in SPOOL_FAULTS) \
    + ("udp_junk", "udp_short", "udp_json", "udp_rxpk", "udp_unknown_forwarder", "udp_foreign_forwarder",
       "udp_internal", "base64")
REJECT_REASONS = PROTOCOL_REASONS + GATEWAY_REASONS
TRANSPORTS = ("serial", "lora_uart", "udp")
FRAME_TYPES = ("reading", "alarm", "event", "ack")
COMMAND_RESULTS = RESULT_NAMES + ("rejected", "timeout")
INCIDENT_KINDS = ("supply", "pressure", "leak")
DEADLINES = ("phone", "written")           # plan 4.1.2: phone report within 20 min, written within 45 min


class Metrics:
    def __init__(self):
        r = self.registry = service_registry("gateway")
        self.frames_in = zeroed(Counter("gasguard_gateway_frames_in", "Frames received", ["transport"], registry=r),
                                *TRANSPORTS)
        self.accepted = zeroed(Counter("gasguard_gateway_accepted", "Frames accepted and spooled", ["type"],
                                       registry=r), *FRAME_TYPES)
        self.rejected = zeroed(Counter("gasguard_gateway_rejected", "Frames rejected, by reason", ["reason"],
                                       registry=r), *REJECT_REASONS)
        self.udp_kernel_drops = Counter("gasguard_gateway_udp_kernel_drops", "Datagrams the kernel dropped before "
                                        "the UDP listener read them (its receive buffer was full: the gateway is "
                                        "saturated, or raise udp.rcvbuf_kb and net.core.rmem_max)", registry=r)
        self.text_lines = Counter("gasguard_gateway_node_log_lines", "Log lines printed by nodes", registry=r)
        self.spool_depth = zeroed(Gauge("gasguard_gateway_spool_depth", "Messages waiting in the spool (the reading "
                                        "lane: readings, however many share a row)", ["lane"], registry=r),
                                  *LANE_NAMES)
        self.states_due = Gauge("gasguard_gateway_states_due", "Devices whose retained online state waits to be "
                                "published (not spooled: derived from presence, one message however often it fell due)",
                                registry=r)
        self.spool_age = Gauge("gasguard_gateway_spool_oldest_age_seconds", "Age of the oldest spooled message",
                               registry=r)
        self.spool_bytes = Gauge("gasguard_gateway_spool_bytes", "Approximate spool size", registry=r)
        self.spool_max_bytes = Gauge("gasguard_gateway_spool_max_bytes", "spool.max_mb: past it readings are thinned",
                                     registry=r)
        self.spool_errors = Counter("gasguard_gateway_spool_errors", "Spool writes that failed (disk full)",
                                    registry=r)
        self.storage_errors = Counter("gasguard_gateway_storage_errors",
                                      "Spool or registry operations that failed (the frames are refused, counted "
                                      "under rejected{reason=spool_*|registry_unreadable})", ["store", "kind"],
                                      registry=r)
        self.log_suppressed = Counter("gasguard_gateway_log_lines_suppressed",
                                      "Log lines (node text, tracebacks, rejections) held back by the burst limit",
                                      ["what"], registry=r)
        self.security_events = Counter("gasguard_gateway_security_events",
                                       "Security events raised (mic_failures: limits.mic_failures failed MICs "
                                       "for one device within limits.mic_window)", ["kind"], registry=r)
        self.thinned = Counter("gasguard_gateway_thinned_readings", "Routine readings thinned past the bound",
                               registry=r)
        self.published = zeroed(Counter("gasguard_gateway_published", "Messages PUBACKed by the broker", ["lane"],
                                        registry=r), *LANE_NAMES)
        self.publish_latency = zeroed(Histogram("gasguard_gateway_publish_latency_seconds",
                                                "Frame received to PUBACK", ["lane"], registry=r,
                                                buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 60, 600)),
                                      *LANE_NAMES)
        self.connected = Gauge("gasguard_gateway_broker_connected", "1 while connected to the broker", registry=r)
        self.alarm_connected = Gauge("gasguard_gateway_broker_alarm_connected",
                                     "1 while the alarms' own connection to the broker is up (while it is down alarms"
                                     " and events go on the main one); not exported with [mqtt] alarm_connection ="
                                     " false", registry=r)
        self.failovers = Counter("gasguard_gateway_broker_failovers",
                                 "Connections accepted by a different broker node than the one before", registry=r)
        self.broker_stalls = zeroed(Counter("gasguard_gateway_broker_stalls",
                                            "Connections cut for no PUBACK in mqtt.puback_timeout with messages in "
                                            "flight (a frozen broker node)", ["connection"], registry=r),
                                    "main", "alarms")
        self.id_conflicts = Counter("gasguard_gateway_id_conflicts",
                                    "Status messages showing another process publishing as this gateway id (two "
                                    "gateways share [gateway] id: gateway/identity.py)", registry=r)
        self.task_restarts = zeroed(Counter("gasguard_gateway_task_restarts", "Supervised task restarts", ["task"],
                                            registry=r), "ingest", "publisher", "ticker")
        self.downlinks = zeroed(Counter("gasguard_gateway_downlinks", "Downlink frames sent", ["type"], registry=r),
                                "ack", "command")
        self.commands = zeroed(Counter("gasguard_gateway_command_results", "Command outcomes", ["result"],
                                       registry=r), *COMMAND_RESULTS)
        self.port_up = Gauge("gasguard_gateway_port_up", "1 while the serial port is open", ["port", "kind"],
                             registry=r)
        self.port_opens = Counter("gasguard_gateway_port_opens", "Times the serial port was (re)opened",
                                  ["port", "kind"], registry=r)
        self.devices_online = Gauge("gasguard_gateway_devices_online", "Devices heard within their offline timeout",
                                    registry=r)
        self.devices_offline = Gauge("gasguard_gateway_devices_offline", "Devices heard once, then silent past it",
                                     registry=r)
        self.refused = zeroed(Counter("gasguard_gateway_requests_refused", "Operator requests refused by the "
                                      "authority checks (node commands, acknowledgements, operator input)", ["reason"],
                                      registry=r), *Refused.REASONS)
        self.audit_used = Gauge("gasguard_gateway_audit_used_ratio", "Audit storage used, of its capacity "
                                "(IEC 62443-4-2 CR 2.9)", registry=r)
        self.audit_warnings = Counter("gasguard_gateway_audit_capacity_warnings", "Audit storage nearly full",
                                      registry=r)
        self.incidents_open = zeroed(Gauge("gasguard_gateway_incidents_open", "Open incidents (grading plugin)",
                                           ["kind"], registry=r), *INCIDENT_KINDS)
        self.incidents_overdue = zeroed(Gauge(
            "gasguard_gateway_incidents_overdue", "Open incidents not acknowledged by their report deadline",
            ["deadline"], registry=r), *DEADLINES)
        self.info = Gauge("gasguard_gateway_info", "1, labelled with this gateway's id, district and clock "
                          "(real, or speed=N / virtual for a drill)", ["gateway", "district", "clock"], registry=r)
        self.clock_speed = Gauge("gasguard_gateway_clock_speed", "Daemon seconds per wall second (1 = real time)",
                                 registry=r)

    def port(self, name: str, kind: str) -> None:
        """A configured serial port: its series exist (down) before the first open."""
        self.port_up.labels(name, kind).set(0)
        self.port_opens.labels(name, kind)

    def serve(self, bind: str):
        host, _, port = bind.rpartition(":")
        return start_http_server(int(port), host, registry=self.registry)

    def value(self, name: str, **labels) -> float:
        """A sample's current value (tests, stats message)."""
        v = self.registry.get_sample_value(name, labels or None)
        return v or 0.0
