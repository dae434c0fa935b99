"""The grading plugin for the gateway daemon: observations in, incident publications out.

Enable it in the gateway config with `plugins = ["grading"]` and a `[grading]` table (keys in
gateway/GRADING_README.md). The daemon calls `observe` for every accepted uplink after it is spooled,
`tick` periodically with its (injectable) clock, and `on_message` for the topics in `subscriptions`; every
returned `(topic, payload, lane)` is spooled and published at QoS 1. Incidents go on the "alarm" lane:
they are never dropped.
"""

from __future__ import annotations

from gasguard.gateway import grading as G
from gasguard.gateway.incidents import IncidentEngine, command_subscriptions

LANE = "alarm"


class GradingPlugin:
    name = "grading"

    def __init__(self, config: dict | None = None, registry=None, downstream=None):
        """`config`: the [grading] table (or the whole gateway config holding one); `registry`: a
        gateway.registry.Registry used only for downstream lookups (or pass `downstream` directly)."""
        self.cfg = G.load_config(config or {})
        if downstream is None and registry is not None:
            downstream = lambda dev_id: [d.public() for d in registry.downstream(dev_id) if d.active]  # noqa: E731
        self.engine = IncidentEngine(self.cfg, downstream=downstream)
        self.subscriptions: list[str] = command_subscriptions(self.cfg)

    def close(self) -> None:
        pass

    def observe(self, obs: dict) -> list[tuple[str, dict, str]]:
        return [(t, p, LANE) for t, p in self.engine.observe(obs)]

    def tick(self, now: float) -> list[tuple[str, dict, str]]:
        return [(t, p, LANE) for t, p in self.engine.tick(now)]

    def on_message(self, topic: str, payload: dict, now: float) -> list[tuple[str, dict, str]]:
        if not isinstance(payload, dict):
            payload = {}
        return [(t, p, LANE) for t, p in self.engine.on_message(topic, payload, now)]


def registry_downstream(path):
    """downstream(dev_id) reading the registry file at each call: station trips are rare, the file is
    written by the technician CLI meanwhile, and an SQLite connection must not cross threads."""
    from gasguard.gateway.registry import Registry

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
    path = getattr(context, "registry_path", None)
    return GradingPlugin(opts, downstream=registry_downstream(path) if path else None)
