"""The grading plugin for the gateway daemon: observations in, incident publications out.

Enable it in the gateway config with `plugins = ["grading"]` and a `[grading]` table (keys in
grading/README.md). The daemon calls `observe` for every accepted uplink after it is spooled,
`tick` periodically with its (injectable) clock, and `on_message` for the topics in `subscriptions`; every
returned `(topic, payload, lane)` is spooled and published at QoS 1. Incidents go on the "alarm" lane:
they are never dropped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from gasguard.grading import engine as G
from gasguard.grading.incidents import IncidentEngine, command_subscriptions, command_topics
from gasguard.protocol.topics import ACK, SYNC

LANE = "alarm"
log = logging.getLogger("gasguard.grading")


class GradingPlugin:
    name = "grading"

    def __init__(self, config: dict | None = None, registry=None, downstream=None, state_path=None,
                 keep_state: bool = True):
        """`config`: the [grading] table (or the whole gateway config holding one); `registry`: a
        gateway.registry.Registry used only for downstream lookups (or pass `downstream` directly);
        `state_path`: where open incidents are kept across restarts (overrides the `state_path` key);
        `keep_state=False`: no snapshot for the daemon to store (a fuzz run, where it would be the whole cost)."""
        self.keep_state = keep_state
        self.cfg = G.load_config(config or {})
        if downstream is None and registry is not None:
            downstream = lambda dev_id: [d.public() for d in registry.downstream(dev_id) if d.active]  # noqa: E731
        self.engine = IncidentEngine(self.cfg, downstream=downstream)
        self.subscriptions: list[str] = command_subscriptions(self.cfg)
        self.state_path = Path(state_path or self.cfg["state_path"]) if (state_path or self.cfg["state_path"]) else None
        if self.state_path and self.state_path.exists():
            self.load_file(self.state_path)

    def load_file(self, path: Path) -> None:
        try:
            self.engine.restore(json.loads(path.read_text(encoding="utf-8")))
            log.info("grading: %d incidents restored from %s", len(self.engine.incidents), path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            bad = path.with_suffix(".corrupt")
            os.replace(path, bad)
            log.critical("grading state %s unreadable (%s): moved to %s, starting with no open incidents",
                         path, e, bad)

    # under the gateway daemon the state lives in its spool, committed with the incidents it publishes
    def snapshot(self) -> dict | None:
        return self.engine.snapshot() if self.keep_state else None

    def restore(self, state: dict) -> None:
        self.engine.restore(state)

    def _save(self, outs: list) -> list:
        """Write the state after every change, atomically (tmp + fsync + rename), before publishing."""
        if outs and self.state_path:
            tmp = self.state_path.with_suffix(".tmp")
            try:
                # 0600: incident facts (casualties, who acknowledged) are for the district's eyes
                with os.fdopen(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
                    json.dump(self.engine.snapshot(), f, ensure_ascii=False)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.state_path)
            except OSError as e:       # publishing matters more than the file: say so loudly, carry on
                log.critical("grading state not saved to %s: %s", self.state_path, e)
        return outs

    def close(self) -> None:
        pass

    def gauges(self, now: float) -> dict:
        return self.engine.gauges(now)

    def observe(self, obs: dict) -> list[tuple[str, dict, str]]:
        return self._save([(t, p, LANE) for t, p in self.engine.observe(obs)])

    def tick(self, now: float) -> list[tuple[str, dict, str]]:
        return self._save([(t, p, LANE) for t, p in self.engine.tick(now)])

    def action_of(self, topic: str):
        """ack/<id> is an acknowledgement; input/<id> is operator input, or `resolve` when it closes the
        incident (issue 14); sync changes nothing."""
        msg = command_topics(self.cfg).parse(topic)
        if msg is None or msg[0] == SYNC:
            return None
        if msg[0] == ACK:
            return "ack"
        return lambda body: "resolve" if body.get("resolved") else "input"

    def on_message(self, topic: str, payload: dict, now: float) -> list[tuple[str, dict, str]]:
        if not isinstance(payload, dict):
            payload = {}
        return self._save([(t, p, LANE) for t, p in self.engine.on_message(topic, payload, now)])


def registry_downstream(path):
    """downstream(dev_id) reading the registry file at each call: station trips are rare, the file is
    written by the technician CLI meanwhile, and an SQLite connection must not cross threads."""
    from gasguard.registry import Registry

    def downstream(dev_id: int) -> list[dict]:
        with Registry(path, readonly=True) as reg:
            return [d.public() for d in reg.downstream(dev_id) if d.active]
    return downstream


def make_plugin(options: dict, context) -> GradingPlugin:
    """Factory for the daemon's PLUGINS registry: `[plugins.grading]` options + the daemon's context.

    The district and gateway id come from the gateway's own config unless the options set them."""
    opts = dict(options or {})
    opts.setdefault("district", context.district)
    opts.setdefault("gateway_id", context.gateway_id)
    opts.setdefault("topic_root", getattr(context, "topic_root", "gasguard/v1"))
    path = getattr(context, "registry_path", None)
    # the daemon keeps the state in its spool (snapshot/restore, in the transaction of the incidents: issue 12);
    # a state file of an earlier version is read once, until the spool holds a state of its own
    legacy = opts.pop("state_path", None) or (str(Path(path).parent / f"grading-{opts['gateway_id']}.json")
                                              if path else None)
    plugin = GradingPlugin(opts, downstream=registry_downstream(path) if path else None)
    if legacy and Path(legacy).exists():
        plugin.load_file(Path(legacy))
    return plugin
