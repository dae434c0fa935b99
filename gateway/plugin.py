"""The hook by which policy (e.g. alarm grading) rides on the gateway without touching ingest.

A plugin sees every accepted uplink, in order, after it is durably spooled, and returns messages to
publish. The daemon spools those too (QoS 1, never dropped) and publishes them in their lane.

An output is a tuple `(topic, payload, lane)` or `(topic, payload, lane, retain)`:
  - topic: absolute MQTT topic (str);
  - payload: a JSON-serialisable dict;
  - lane: "alarm" (published first, alone), "event", or "reading" (after alarms and events);
  - retain: optional bool (default False); a payload key "_retain": true does the same and is removed.

Plugins are enabled in TOML (`[plugins] name = true` or `[plugins.name] option = ...`) and looked up by
name in PLUGINS; a factory is called as `factory(options: dict, context: PluginContext)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from gasguard.protocol.topics import ROOT

LANES = ("alarm", "event", "reading")

Output = tuple  # (topic, payload, lane[, retain])


@dataclass
class PluginContext:
    gateway_id: str
    district: str
    root: str                       # "gasguard/v1/<district>/<gateway>"
    registry_path: str
    clock: Callable[[], float]      # the daemon's clock (epoch seconds); virtual in tests
    topic_root: str = ROOT          # the topic tree's root (protocol/topics.py): district topics hang from it
    mqtt: dict | None = None        # the gateway's broker settings, for a plugin that needs a session of its own


class Plugin:
    """Base class: override what you need. Every method runs on the daemon's event loop: keep it quick."""

    name = "plugin"
    subscriptions: list[str] = []

    def observe(self, obs: dict) -> list[Output]:
        """Every accepted uplink. obs = {"id", "t", "dev", "type", "frame", "state", "device", "rx"}."""
        return []

    def tick(self, now: float) -> list[Output]:
        """Called every `metrics.tick_interval` seconds of the daemon clock."""
        return []

    def on_message(self, topic: str, payload: dict, now: float) -> list[Output]:
        """A JSON message on one of `subscriptions` (MQTT wildcards allowed)."""
        return []

    def requests(self) -> list[tuple[str, bytes]]:
        """Node-command requests the plugin received by a path of its own (e.g. a Sparkplug DCMD), as
        (`<root>/<dev>/cmd` topic, raw payload as it would arrive over MQTT). The daemon hands each to its
        command dispatcher on the next tick, where authority is checked and audited exactly as for MQTT."""
        return []

    def snapshot(self) -> dict | None:
        """The plugin's state as JSON-able data, or None if it keeps none. The daemon stores it in the spool in
        the same transaction as the plugin's outputs (and as the observations they came from), so after a kill
        the state and what was published from it agree (issue 12)."""
        return None

    def restore(self, state: dict) -> None:
        """Take back a snapshot() at start, before any observation."""

    def action_of(self, topic: str):
        """The authority action (issue 14) a message on `topic` is: a name ("ack"), a function of the request
        body giving one, or None for a message that changes nothing (a sync request). An action reaches
        `on_message` only signed by someone whose role permits it, as the verified body with "by" set to the
        operator's id (and "via" to the console that signed for them); anything else is refused, answered,
        counted and audited by the daemon."""
        return None

    def gauges(self, now: float) -> dict[str, dict[str, float]]:
        """Values for the gateway's labelled gauges, e.g. {"incidents_open": {"leak": 1}, "incidents_overdue":
        {"phone": 1}} (gateway/metrics.py names them); called every few seconds."""
        return {}

    def close(self) -> None:
        pass


# name -> factory(options, context) -> Plugin. The grading helper registers "grading" here.
PLUGINS: dict[str, Callable[[dict, PluginContext], Plugin]] = {}


def normalise(out) -> tuple[str, dict, str, bool]:
    """Check one plugin output; returns (topic, payload, lane, retain) or raises ValueError."""
    if not isinstance(out, (tuple, list)) or len(out) not in (3, 4):
        raise ValueError(f"plugin output must be (topic, payload, lane[, retain]), got {out!r}")
    topic, payload, lane = out[0], out[1], out[2]
    retain = bool(out[3]) if len(out) == 4 else False
    if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic:
        raise ValueError(f"plugin topic must be a concrete topic, got {topic!r}")
    if not isinstance(payload, dict):
        raise ValueError(f"plugin payload must be a dict, got {type(payload).__name__}")
    if lane not in LANES:
        raise ValueError(f"plugin lane must be one of {LANES}, got {lane!r}")
    if "_retain" in payload:
        payload = dict(payload)
        retain = bool(payload.pop("_retain")) or retain
    return topic, payload, lane, retain


def _grading(options: dict, context: PluginContext) -> Plugin:
    from .grading_plugin import make_plugin    # lazy: keeps the daemon's import light
    return make_plugin(options, context)


def _sparkplug(options: dict, context: PluginContext) -> Plugin:
    from .sparkplug.plugin import make_plugin    # lazy: protobuf is only imported when Sparkplug is on
    return make_plugin(options, context)


def _grading_check(options: dict) -> None:
    from gasguard.grading.engine import load_config   # pure: validates the [grading] options, starts nothing
    load_config(options)


# name -> check(options): raises ValueError naming the key and the fix. Called by config.load, so
# `check-config` and `run` refuse the same options with the same line (issue 12 item 8).
CHECKS: dict[str, Callable[[dict], None]] = {"grading": _grading_check}

PLUGINS["grading"] = _grading
PLUGINS["sparkplug"] = _sparkplug
