"""Observers: the plugins (grading, Sparkplug, ...) see every accepted uplink as one typed `Observation`,
after it is durably spooled, and hand back outputs for the outbox.

Retransmissions are filtered here, once: a copy of an alarm or event the gateway already took (same
identity, SPEC 3.4) is acked to the device but not observed again. A plugin that raises is logged loudly
and skipped; the gateway carries on (STYLE 6).

Issue 12: the observations of alarms and events are journalled in the spool with the frames themselves
(before the ack), and the plugins' state (`snapshot`/`restore`) is kept in the spool too, committed with
their outputs; `settle` at start observes again what a kill between the ack and that commit left.
"""

from __future__ import annotations

import json
import logging
from typing import TypedDict

from paho.mqtt.client import topic_matches_sub

from gasguard.protocol import frame

from . import payloads
from .burstlog import BurstLog, untrusted
from .plugin import Plugin, normalise

log = logging.getLogger("gasguard.gateway")

OBSERVED = ("reading", "alarm", "event")   # frame types plugins see (acks answer commands: the dispatcher's)
JOURNALLED = ("alarm", "event")            # acked: their observation is on disk before the ack (issue 12)


class Observation(TypedDict):
    """One accepted uplink, as every plugin receives it (JSON-able: plugins may keep it as they like)."""
    id: str             # the message id (gateway:dev:fcnt), as in the published payloads
    t: float            # acceptance time, daemon clock (epoch seconds)
    dev: int
    type: str           # "reading" | "alarm" | "event"
    frame: dict         # the decoded fields; bytes as hex strings
    state: dict | None  # the state byte's fields (protocol.frame.state_fields), None for events
    device: dict        # the registry entry's public fields (site, profile, households, ...)
    rx: dict            # how it was heard (transport, port or forwarder, rssi, snr)


def _json_fields(f: dict) -> dict:
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in f.items()}


def observation(mid: str, f: dict, now: float, device, rx: dict) -> Observation:
    return Observation(id=mid, t=now, dev=f["dev"], type=f["type"], frame=_json_fields(f),
                       state=frame.state_fields(f["state"]) if "state" in f else None,
                       device=device.public(), rx=dict(rx))


class Observers:
    def __init__(self, plugins: list[Plugin], burst: BurstLog):
        self.plugins, self.burst = plugins, burst

    @property
    def subscriptions(self) -> list[str]:
        """Every topic filter some plugin listens to (the publisher subscribes to them)."""
        return [s for p in self.plugins for s in p.subscriptions]

    def observations(self, accepted, now: float) -> list[Observation]:
        """`accepted`: (mid, fields, device, rx, retransmission) of one group, in order: what plugins will see
        (nothing without plugins)."""
        if not self.plugins:
            return []
        return [observation(mid, f, now, device, rx) for mid, f, device, rx, repeat in accepted
                if not repeat and f["type"] in OBSERVED]

    @staticmethod
    def journal(observations: list[Observation]) -> list[str]:
        """The observations to commit with their frames: those of acked frames (alarms, events)."""
        return [payloads.dumps(o) for o in observations if o["type"] in JOURNALLED]

    def observe(self, observations: list[Observation]) -> list:
        out = []
        for obs in observations:
            for p in self.plugins:
                out.extend(self._call(p, "observe", obs))
        return out

    def snapshot(self) -> dict[str, str]:
        """name -> JSON state of every plugin that keeps one (Plugin.snapshot), for the outbox's commit."""
        out = {}
        for p in self.plugins:
            if not hasattr(p, "snapshot"):
                continue
            try:
                snap = p.snapshot()
            except Exception:
                log.exception("plugin %s.snapshot failed; its state is not saved with this commit",
                              getattr(p, "name", p))
                continue
            if snap is not None:
                out[p.name] = payloads.dumps(snap)
        return out

    def restore(self, states: dict[str, str]) -> None:
        for p in self.plugins:
            if p.name in states and hasattr(p, "restore"):
                try:
                    p.restore(json.loads(states[p.name]))
                except (ValueError, KeyError, TypeError) as e:
                    log.critical("plugin %s: its state in the spool is unreadable (%s); it starts empty", p.name, e)

    def tick(self, now: float) -> list:
        out = []
        for p in self.plugins:
            out.extend(self._call(p, "tick", now))
        return out

    def requests(self) -> list[tuple[str, bytes]]:
        """Node-command requests the plugins received by paths of their own (Plugin.requests)."""
        out = []
        for p in self.plugins:
            if getattr(type(p), "requests", Plugin.requests) is Plugin.requests:
                continue                    # receives none (most plugins)
            try:
                out.extend(p.requests())
            except Exception as e:  # noqa: BLE001 - a plugin's defect must not stop the gateway
                self.burst.exception(f"plugin:{p.name}.requests:{type(e).__name__}",
                                     "plugin %s.%s failed; the gateway carries on without its output", p.name, "requests")
        return out

    def _listening(self, topic: str) -> list[Plugin]:
        return [p for p in self.plugins if any(topic_matches_sub(s, topic) for s in p.subscriptions)]

    def action_of(self, topic: str):
        """The authority action a message on `topic` is for the plugins that listen to it (Plugin.action_of),
        or None when it changes nothing."""
        for p in self._listening(topic):
            action = getattr(p, "action_of", lambda t: None)(topic)
            if action is not None:
                return action
        return None

    def on_message(self, topic: str, payload: bytes, now: float) -> list:
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError):     # RecursionError: "[[[[..." past the parser's depth
            if self._listening(topic):
                self.burst.event("plugin_json", "non-JSON message on %s ignored", untrusted(topic))
            return []
        return self.deliver(topic, doc, now)

    def deliver(self, topic: str, doc, now: float) -> list:
        """A message already decoded (and, for an act, verified: the daemon's authority check) to the plugins
        that listen to `topic`."""
        out = []
        for p in self._listening(topic):
            out.extend(self._call(p, "on_message", topic, doc, now))
        return out

    def gauges(self, now: float) -> dict:
        """Summed gauges of the plugins that offer some: {(metric name, label): value}."""
        sums: dict = {}
        for p in self.plugins:
            try:
                gauges = getattr(p, "gauges", None)
                for name, values in ((gauges and gauges(now)) or {}).items():
                    for label, v in values.items():
                        sums[(name, label)] = sums.get((name, label), 0) + v
            except Exception as e:  # noqa: BLE001 - a plugin's defect must not stop the gauges
                self.burst.exception(f"plugin:{getattr(p, 'name', p)}.gauges:{type(e).__name__}",
                                     "plugin %s.gauges failed", getattr(p, "name", p))
        return sums

    def close(self) -> None:
        for p in self.plugins:
            self._call(p, "close")

    def _call(self, plugin, method, *args) -> list:
        try:
            res = getattr(plugin, method)(*args) or []
            return [normalise(o) for o in res]
        except Exception as e:  # noqa: BLE001 - a plugin's defect must not stop ingest
            name = getattr(plugin, "name", plugin)
            # one traceback per window and site, with a count of the rest (issue 12 item 7)
            self.burst.exception(f"plugin:{name}.{method}:{type(e).__name__}",
                                 "plugin %s.%s failed; the gateway carries on without its output", name, method)
            return []
