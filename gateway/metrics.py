"""Prometheus metrics for one gateway (own CollectorRegistry, so several can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.frames_in = Counter("gasguard_gateway_frames_in", "Frames received", ["transport"], registry=r)
        self.accepted = Counter("gasguard_gateway_accepted", "Frames accepted and spooled", ["type"], registry=r)
        self.rejected = Counter("gasguard_gateway_rejected", "Frames rejected", ["reason"], registry=r)
        self.text_lines = Counter("gasguard_gateway_node_log_lines", "Log lines printed by nodes", registry=r)
        self.spool_depth = Gauge("gasguard_gateway_spool_depth", "Messages waiting in the spool", ["lane"],
                                 registry=r)
        self.spool_age = Gauge("gasguard_gateway_spool_oldest_age_seconds", "Age of the oldest spooled message",
                               registry=r)
        self.spool_bytes = Gauge("gasguard_gateway_spool_bytes", "Approximate spool size", registry=r)
        self.spool_errors = Counter("gasguard_gateway_spool_errors", "Spool writes that failed (disk full)",
                                    registry=r)
        self.thinned = Counter("gasguard_gateway_thinned_readings", "Routine readings thinned past the bound",
                               registry=r)
        self.published = Counter("gasguard_gateway_published", "Messages PUBACKed by the broker", ["lane"],
                                 registry=r)
        self.publish_latency = Histogram("gasguard_gateway_publish_latency_seconds",
                                         "Frame received to PUBACK", ["lane"], registry=r,
                                         buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 60, 600))
        self.connected = Gauge("gasguard_gateway_broker_connected", "1 while connected to the broker", registry=r)
        self.task_restarts = Counter("gasguard_gateway_task_restarts", "Supervised task restarts", ["task"],
                                     registry=r)
        self.downlinks = Counter("gasguard_gateway_downlinks", "Downlink frames sent", ["type"], registry=r)
        self.commands = Counter("gasguard_gateway_command_results", "Command outcomes", ["result"], registry=r)
        self.refused = Counter("gasguard_gateway_requests_refused", "Operator requests refused by the authority "
                               "checks (node commands, acknowledgements, operator input)", ["reason"], registry=r)
        self.audit_used = Gauge("gasguard_gateway_audit_used_ratio", "Audit storage used, of its capacity "
                                "(IEC 62443-4-2 CR 2.9)", registry=r)
        self.audit_warnings = Counter("gasguard_gateway_audit_capacity_warnings", "Audit storage nearly full",
                                      registry=r)

    def serve(self, bind: str):
        host, _, port = bind.rpartition(":")
        return start_http_server(int(port), host, registry=self.registry)

    def value(self, name: str, **labels) -> float:
        """A sample's current value (tests, stats message)."""
        v = self.registry.get_sample_value(name, labels or None)
        return v or 0.0
