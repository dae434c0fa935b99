"""Prometheus metrics of the command service (own CollectorRegistry: several copies can run in one test).

What an operator of the command watches (issue 15 item 6): open and overdue incidents by level, escalations,
notification failures, time to acknowledge, consumer lag; plus leadership and the broker link.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from gasguard.metrics import service_registry


class Metrics:
    def __init__(self):
        r = self.registry = service_registry("command")   # process_*, gasguard_build_info, no _created (gasguard/metrics.py)
        self.open = Gauge("gasguard_command_open_incidents", "Open incidents by level (1 = I .. 4 = IV)", ["level"],
                          registry=r)
        self.overdue = Gauge("gasguard_command_overdue_incidents",
                             "Open incidents past the 20-minute phone deadline and not acknowledged", ["level"],
                             registry=r)
        self.escalations = Counter("gasguard_command_escalations", "Escalations published (plan 4.1.2)", registry=r)
        self.notify_failures = Counter("gasguard_command_notification_failures",
                                       "Notification delivery attempts that failed", registry=r)
        self.time_to_ack = Histogram("gasguard_command_time_to_acknowledge_seconds",
                                     "Detection to acknowledgement", registry=r,
                                     buckets=(30, 60, 120, 300, 600, 1200, 1800, 2700, 3600, 7200, 86400))
        self.lag = Gauge("gasguard_command_consumer_lag_seconds",
                         "Grading time minus the gateway's time of the newest frame graded", registry=r)
        self.queue_wait = Histogram("gasguard_command_inbox_wait_seconds", "Broker message received to graded",
                                    registry=r, buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30))
        self.inbox_depth = Gauge("gasguard_command_inbox_depth", "Broker messages waiting to be graded", registry=r)
        self.graded = Counter("gasguard_command_frames_graded", "Frames that reached the grading engine", registry=r)
        self.duplicates = Counter("gasguard_command_frames_duplicate",
                                  "Frame copies dropped by identity (overlapping gateways, redelivery)", registry=r)
        self.refused = Counter("gasguard_command_refused", "Messages refused, by reason", ["reason"], registry=r)
        self.revisions = Counter("gasguard_command_revisions", "Incident revisions stored", ["kind"], registry=r)
        self.published = Counter("gasguard_command_revisions_published", "Revisions PUBACKed by the broker",
                                 registry=r)
        self.gateways = Gauge("gasguard_command_gateways", "Gateways by state", ["state"], registry=r)
        self.leader = Gauge("gasguard_command_leader", "1 while this copy holds the leader lease", registry=r)
        self.readings_kept = Counter("gasguard_command_readings_kept",
                                     "Station readings and valve events stored for the station pages", registry=r)
        self.readings_removed = Counter("gasguard_command_readings_removed",
                                        "Readings and valve events removed: past readings_keep_s (expired) or "
                                        "past readings_max_per_device (over_bound)", ["reason"], registry=r)
        self.prune_pass = Histogram("gasguard_command_readings_prune_seconds",
                                    "One pass of the readings' retention (at most readings_prune_rows rows removed): "
                                    "the grading loop waits this long behind it", registry=r,
                                    buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.takeovers = Counter("gasguard_command_takeovers", "Times this copy became the leader", registry=r)
        self.broker_connected = Gauge("gasguard_command_broker_connected", "1 while connected to the broker",
                                      registry=r)
        self.task_errors = Counter("gasguard_command_task_errors", "Supervised loop failures", ["task"], registry=r)

    def serve(self, bind: str):
        host, _, port = bind.rpartition(":")
        return start_http_server(int(port), host or "127.0.0.1", registry=self.registry)

    def value(self, name: str, **labels) -> float:
        return self.registry.get_sample_value(name, labels or None) or 0.0
