"""What the web console needs from the district command: the interface, and the adapters behind it.

The console reads incidents, listens for their changes, sends signed acknowledgements and operator input,
and reads a station's recent readings and valve history. `IncidentSource` is that interface; the web layer
knows nothing else of where incidents live.

- `MqttSource`: the incident topics of one district over MQTT (a gateway's grading plugin, standalone, or
  the command service publishing the same topics). Readings and valve events are kept in memory for
  `keep_s` (24 h) with a per-station bound, the oldest dropped and counted: this adapter is not a store.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Callable, Protocol

import paho.mqtt.client as mqtt

from gasguard.command.console import CommandClient, ConsoleError
from gasguard.protocol.topics import EVENT, READING

Listener = Callable[[dict], None]
VALVE_EVENT = 5          # protocol event code VALVE: data = valve u8 (1 closed, 0 open), cause u8
VALVE_CAUSES = {1: "gas", 2: "opso", 3: "upso", 4: "fault", 5: "reset", 6: "selftest", 7: "manual"}


class SourceError(Exception):
    """The command could not be reached or did not confirm in time; the message says what to do."""


class IncidentSource(Protocol):
    def snapshot(self) -> list[dict]: ...                       # latest revision of every incident held
    def get(self, incident_id: str) -> dict | None: ...
    def listen(self, fn: Listener) -> Callable[[], None]: ...  # fn(msg) on every new revision; returns unlisten
    def act_topic(self, kind: str, incident_id: str) -> str: ...   # where an "ack"/"input" goes (signed over)
    def acknowledge(self, incident_id: str, request: bytes, timeout: float) -> None: ...  # signed payload
    def send_input(self, incident_id: str, request: bytes, timeout: float) -> None: ...
    def readings(self, dev: str, since: float) -> list[dict]: ...   # {"t", "pressure_pa", "inlet_pa", ...}
    def valve_history(self, dev: str, since: float) -> list[dict]: ...  # {"t", "valve", "cause"}


class MqttSource:
    """Incidents from `gasguard/v1/<district>/command/incident/+`; readings and events from the gateways."""

    def __init__(self, host: str, port: int, district: str, *, keep_s: float = 24 * 3600.0,
                 max_per_device: int = 20_000, clock=time.time, **client_kw):
        self.client = CommandClient(host, port, district, **client_kw)
        self.keep_s, self.max_per_device, self.clock = keep_s, max_per_device, clock
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._readings: dict[str, deque] = {}
        self._valves: dict[str, deque] = {}
        self.dropped = 0                       # readings dropped by the per-device bound
        self._on_incident = self.client.client.on_message
        self.client.client.on_message = self._on_message
        tree = self.client.tree
        self._extra = [(f"{tree.root}/{district}/+/{READING}", 1), (tree.district_gateways(district, EVENT), 1)]
        on_connect = self.client.client.on_connect

        def connected(client, userdata, flags, rc, props):
            on_connect(client, userdata, flags, rc, props)
            if not rc.is_failure:
                client.subscribe(self._extra)
        self.client.client.on_connect = connected

    def start(self, timeout: float = 10.0) -> "MqttSource":
        try:
            self.client.connect(timeout)
        except ConsoleError as e:
            raise SourceError(str(e)) from None
        return self

    def close(self) -> None:
        self.client.close()

    # --- the feed ------------------------------------------------------------------------------
    def _on_message(self, client, userdata, m):
        topic = m.topic
        if mqtt.topic_matches_sub(self.client.topic, topic):
            before = self.client.board.version
            self._on_incident(client, userdata, m)
            if self.client.board.version != before:
                msg = self.client.board.get(topic.rsplit("/", 1)[1])
                for fn in list(self._listeners):
                    fn(msg)
            return
        try:
            doc = json.loads(m.payload)
        except ValueError:
            return
        if topic.endswith("/reading"):
            with self._lock:
                for r in doc.get("readings", []):
                    self._keep(self._readings, r["dev"], {k: r.get(k) for k in (
                        "t", "pressure_pa", "inlet_pa", "gas_pct_lel", "state")})
        elif topic.endswith("/event") and doc.get("code") == VALVE_EVENT:
            data = bytes.fromhex(doc.get("data_hex", ""))
            if data:
                with self._lock:
                    self._keep(self._valves, doc["dev"], {
                        "t": doc["t"], "valve": "closed" if data[0] == 1 else "open",
                        "cause": VALVE_CAUSES.get(data[1], str(data[1])) if len(data) > 1 else None,
                        "gateway": doc.get("gateway")})

    def _keep(self, table: dict, dev: str, row: dict) -> None:
        q = table.get(dev)
        if q is None:
            q = table[dev] = deque(maxlen=self.max_per_device)
        if len(q) == q.maxlen:
            self.dropped += 1
        q.append(row)
        while q and q[0]["t"] < self.clock() - self.keep_s:
            q.popleft()

    def snapshot(self) -> list[dict]:
        with self.client.board._lock:
            return list(self.client.board.incidents.values())

    def get(self, incident_id: str) -> dict | None:
        return self.client.board.get(incident_id)

    def listen(self, fn: Listener):
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn)

    # --- acts (the request is already signed by the caller) ---------------------------------------
    def act_topic(self, kind: str, incident_id: str) -> str:
        return getattr(self.client._command_of(incident_id), kind)(incident_id)

    def _send(self, kind: str, incident_id: str, request: bytes, timeout: float) -> None:
        try:
            self.client._publish(self.act_topic(kind, incident_id), request, timeout)
        except ConsoleError as e:
            raise SourceError(str(e)) from None

    def acknowledge(self, incident_id: str, request: bytes, timeout: float) -> None:
        self._send("ack", incident_id, request, timeout)

    def send_input(self, incident_id: str, request: bytes, timeout: float) -> None:
        self._send("input", incident_id, request, timeout)

    def readings(self, dev: str, since: float) -> list[dict]:
        with self._lock:
            return [r for r in self._readings.get(dev, ()) if r["t"] >= since]

    def valve_history(self, dev: str, since: float) -> list[dict]:
        with self._lock:
            return [r for r in self._valves.get(dev, ()) if r["t"] >= since]
