"""What the web console needs from the district command: the interface, and the adapters behind it.

The console reads incidents, listens for their changes, sends signed acknowledgements and operator input,
and reads a station's recent readings and valve history. `IncidentSource` is that interface; the web layer
knows nothing else of where incidents live.

- `StoreSource`: the district command service's store (issue 15, `gasguard.command.store`): incidents as the
  leader stored them, followed by sequence number; acts submitted as requests the leader verifies and answers
  ("accepted" / "refused: why"). The production source.
- `MqttSource`: the incident topics of one district over MQTT (a substation's grading plugin working alone).
- `ReadingFeed`: for a console working alone (no command service): readings and valve events of the
  district's gateways, kept in memory for `keep_s` (24 h) with a per-device bound (oldest dropped, counted);
  after a restart its plots refill. In a district the command service keeps them (its store's `readings` and
  `valve_events`, bounded: command/README.md) and `StoreSource` reads them from there.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import deque
from typing import Callable, Protocol

import paho.mqtt.client as mqtt

from gasguard.command.console import BrokerLogin, CommandClient, ConsoleError
from gasguard.command.readings import readings_of, valve_of
from gasguard.command.shelving import MAX_S, ShelfBook, ShelfError
from gasguard.protocol.topics import EVENT, READING, ROOT, Topics

Listener = Callable[[dict | None], None]


class SourceError(Exception):
    """The command could not be reached or did not confirm in time; the message says what to do."""


class Refused(SourceError):
    """The command refused the act (signature, role, revocation, freshness, replay...): the reason says why."""


class IncidentSource(Protocol):
    def snapshot(self) -> list[dict]: ...                       # latest revision of every incident held
    def get(self, incident_id: str) -> dict | None: ...
    # fn(msg) on every new revision, fn(None) when shelves or gateways changed; returns unlisten
    def listen(self, fn: Listener) -> Callable[[], None]: ...
    def act_topic(self, kind: str, incident_id: str) -> str: ...   # where an "ack"/"input" goes (signed over)
    # the signed payload; returns once the command took it ("accepted") or None when only the incident's next
    # revision can tell; raises Refused with the command's reason, SourceError when it could not be sent
    def acknowledge(self, incident_id: str, request: bytes, timeout: float) -> str | None: ...
    def send_input(self, incident_id: str, request: bytes, timeout: float) -> str | None: ...
    # shelve ({"by", "reason", "duration_s"}) or unshelve ({"by", "unshelve": true}): "accepted" or Refused
    def shelve(self, incident_id: str, request: bytes, body: dict, timeout: float) -> str: ...
    def shelves(self) -> dict[str, dict]: ...                   # incident id -> {"by", "reason", "at", "until", ...}
    def readings(self, dev: str, since: float) -> list[dict]: ...   # {"t", "pressure_pa", "inlet_pa", ...}
    def valve_history(self, dev: str, since: float) -> list[dict]: ...  # {"t", "valve", "cause", "gateway"}
    # the command service's view of each gateway: {"gateway", "online", "silent", "last_seen", "shared_by"?};
    # [] when none is known (no command service); console.gateway_status says what of it is wrong
    def gateways(self) -> list[dict]: ...
    # optional: refused_topics() -> {topic: reason}, what the broker will not let this console read
    # optional: journal(incident_id) -> [{"t", "category", "who", "text"}], the service's record of who did what


class LocalShelves:
    """Shelves held by the console itself, for a substation working alone (no command service to hold them):
    the same rules (command/shelving.py), kept in memory: a restart of the console unshelves everything."""

    def __init__(self, max_s: float = MAX_S, clock=time.time):
        self.book, self.clock = ShelfBook(max_s), clock
        self._lock = threading.Lock()

    def apply(self, msg: dict | None, incident_id: str, body: dict) -> str:
        with self._lock:
            if msg is None:
                raise Refused("unknown incident")
            if body.get("unshelve"):
                if self.book.unshelve(incident_id) is None:
                    raise Refused("not shelved")
                return "accepted"
            if msg.get("status") != "open":
                raise Refused("the incident is resolved: nothing to shelve")
            try:
                self.book.shelve(incident_id, body.get("by"), body.get("reason"), body.get("duration_s"),
                                 self.clock(), msg)
            except ShelfError as e:
                raise Refused(str(e)) from None
            return "accepted"

    def current(self) -> dict[str, dict]:
        with self._lock:
            return self.book.items()


class ReadingFeed:
    """Readings and valve events of every gateway of a district, a bounded window in memory."""

    def __init__(self, host: str, port: int, district: str, *, topic_root: str = ROOT, keep_s: float = 86_400.0,
                 max_per_device: int = 20_000, clock=time.time, login: BrokerLogin | None = None):
        self.keep_s, self.max_per_device, self.clock = keep_s, max_per_device, clock
        self.host, self.port = host, port
        self.login = login or BrokerLogin()    # the same broker login and TLS as the incidents' client
        tree = Topics(topic_root)
        self.subscriptions = [(f"{tree.root}/{district}/+/{READING}", 1), (tree.district_gateways(district, EVENT), 1)]
        self._lock = threading.Lock()
        self._readings: dict[str, deque] = {}
        self._valves: dict[str, deque] = {}
        self.dropped = 0                       # rows dropped by the per-device bound
        self.malformed = 0                     # messages that were not readings or events as expected
        self.client: mqtt.Client | None = None

    def start(self) -> "ReadingFeed":
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"gg-web-readings-{uuid.uuid4().hex[:8]}")
        try:
            self.login.apply(c)
        except ConsoleError as e:
            raise SourceError(str(e)) from None
        c.on_connect = lambda cl, u, f, rc, p: None if rc.is_failure else cl.subscribe(self.subscriptions)
        c.on_message = lambda cl, u, m: self.take(m.topic, m.payload)
        c.reconnect_delay_set(1, 30)
        try:
            c.connect(self.host, self.port, keepalive=30)
        except OSError as e:
            raise SourceError(f"cannot reach the MQTT broker at {self.host}:{self.port} ({e}): check [mqtt]") from None
        c.loop_start()
        self.client = c
        return self

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def take(self, topic: str, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        try:
            if topic.endswith("/" + READING):
                rows = readings_of(doc)
                with self._lock:
                    for r in rows:
                        self._keep(self._readings, r["dev"], {k: r.get(k) for k in (
                            "t", "pressure_pa", "inlet_pa", "gas_pct_lel")})
            elif topic.endswith("/" + EVENT):
                v = valve_of(doc)
                if v is not None:
                    with self._lock:
                        self._keep(self._valves, v.pop("dev"), v)
        except (KeyError, TypeError, ValueError):
            self.malformed += 1                # a payload this console cannot read: counted, not fatal

    def _keep(self, table: dict, dev: str, row: dict) -> None:
        q = table.get(dev)
        if q is None:
            q = table[dev] = deque(maxlen=self.max_per_device)
        if len(q) == q.maxlen:
            self.dropped += 1
        q.append(row)
        while q and q[0]["t"] < self.clock() - self.keep_s:
            q.popleft()

    def readings(self, dev: str, since: float) -> list[dict]:
        with self._lock:
            return [r for r in self._readings.get(dev, ()) if r["t"] >= since]

    def valve_history(self, dev: str, since: float) -> list[dict]:
        with self._lock:
            return [r for r in self._valves.get(dev, ()) if r["t"] >= since]


class MqttSource:
    """Incidents from `<root>/<district>/command/incident/+` (a gateway's grading plugin, standalone)."""

    def __init__(self, host: str, port: int, district: str, *, topic_root: str = ROOT, feed: ReadingFeed | None = None,
                 shelve_max_s: float = MAX_S, **client_kw):
        try:
            self.client = CommandClient(host, port, district, topic_root=topic_root, **client_kw)
        except ConsoleError as e:              # the login's TLS files
            raise SourceError(str(e)) from None
        self.feed = feed or ReadingFeed(host, port, district, topic_root=topic_root, login=client_kw.get("login"))
        self.local_shelves = LocalShelves(shelve_max_s)      # no command service here to hold them
        self._listeners: list[Listener] = []
        on_incident = self.client.client.on_message
        gateway_topics = self.client.command_topics.gateways

        def on_message(client, userdata, m):
            before = self.client.board.version
            on_incident(client, userdata, m)
            if self.client.board.version != before:
                # a gateway's state (fn(None): the board is drawn again) or an incident's new revision
                msg = None if mqtt.topic_matches_sub(gateway_topics, m.topic) else \
                    self.client.board.get(m.topic.rsplit("/", 1)[1])
                for fn in list(self._listeners):
                    fn(msg)
        self.client.client.on_message = on_message

    def start(self, timeout: float = 10.0) -> "MqttSource":
        try:
            self.client.connect(timeout)
        except ConsoleError as e:
            hint = (" (the web console: [mqtt] username, and password_file or $GASGUARD_MQTT_PASSWORD, in its "
                    "config)") if self.client.refused else ""
            raise SourceError(f"{e}{hint}") from None
        self.feed.start()
        return self

    @classmethod
    def from_config(cls, sc) -> "MqttSource":
        """A substation's console working alone, as `gasguard command web serve` builds it from its config
        (`config.ServeConfig`): incidents and readings over two connections with the one [mqtt] login and TLS.
        Not started."""
        m = sc.mqtt
        feed = ReadingFeed(m["host"], m["port"], sc.web.district, topic_root=m["topic_root"],
                           keep_s=sc.web.readings_window_s, login=sc.login)
        return cls(m["host"], m["port"], sc.web.district, topic_root=m["topic_root"], feed=feed,
                   shelve_max_s=sc.web.shelve_max_s, login=sc.login)

    def close(self) -> None:
        self.feed.close()
        self.client.close()

    def refused_topics(self) -> dict[str, str]:
        """The topics the broker refused this console's account on the current connection (topic -> reason)."""
        with self.client.results_cond:      # (paho's thread fills it under this lock)
            return dict(self.client.refused_topics)

    def snapshot(self) -> list[dict]:
        with self.client.board._lock:
            return list(self.client.board.incidents.values())

    def get(self, incident_id: str) -> dict | None:
        return self.client.board.get(incident_id)

    def listen(self, fn: Listener):
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn)

    def act_topic(self, kind: str, incident_id: str) -> str:
        return getattr(self.client._command_of(incident_id), kind)(incident_id)

    def _send(self, kind: str, incident_id: str, request: bytes, timeout: float) -> str | None:
        """Publish the signed act; then wait for whichever comes first: the gateway's answer to this request
        (issue 14: `command/result/<gw>`, keyed by the request's SHA-256; a refusal raises Refused) or a new
        revision of the incident (a gateway that applied it without an answer): None, the caller checks it."""
        cur = self.client.board.get(incident_id)
        rev0 = cur["revision"] if cur else -1
        try:
            self.client._publish(self.act_topic(kind, incident_id), request, timeout)
        except ConsoleError as e:
            raise SourceError(str(e)) from None
        results = getattr(self.client, "results", None)
        if results is None:
            return None
        sha = hashlib.sha256(request).hexdigest()
        deadline = time.monotonic() + timeout
        with self.client.results_cond:
            while sha not in results:
                m = self.client.board.get(incident_id)
                left = deadline - time.monotonic()
                if (m is not None and m["revision"] > rev0) or left <= 0:
                    return None
                self.client.results_cond.wait(min(left, 0.05))
            res = results[sha]
        if res.get("outcome") != "allowed":
            raise Refused(f"{res.get('reason')}: {res.get('detail')}")
        return "accepted"

    def acknowledge(self, incident_id: str, request: bytes, timeout: float) -> str | None:
        return self._send("ack", incident_id, request, timeout)

    def send_input(self, incident_id: str, request: bytes, timeout: float) -> str | None:
        return self._send("input", incident_id, request, timeout)

    def shelve(self, incident_id: str, request: bytes, body: dict, timeout: float) -> str:
        out = self.local_shelves.apply(self.get(incident_id), incident_id, body)
        for fn in list(self._listeners):
            fn(None)
        return out

    def shelves(self) -> dict[str, dict]:
        return self.local_shelves.current()

    def readings(self, dev: str, since: float) -> list[dict]:
        return self.feed.readings(dev, since)

    def valve_history(self, dev: str, since: float) -> list[dict]:
        return self.feed.valve_history(dev, since)

    def gateways(self) -> list[dict]:
        """The command service's gateway messages as CommandClient's board keeps them, shared_by included;
        none from a substation's grading plugin working alone (no command service watches gateways there)."""
        return self.client.board.gateway_states()


class StoreSource:
    """Incidents from the command service's store (`open_store(url)`), followed by revision sequence number:
    a thread waits on `store.wait_changes` and hands every new revision to the listeners; it reads the
    gateways' state every GATEWAYS_POLL_S."""

    # the store keeps no sequence for gateway rows, so they are read again on a timer: a gateway's verdicts are
    # rare (a Will, minutes of silence) and the board is re-sent every second anyway, so a second's delay costs
    # nothing, while reading them on every poll_s would multiply the store's load by the number of consoles
    GATEWAYS_POLL_S = 1.0

    def __init__(self, store, district: str, *, topic_root: str = ROOT, poll_s: float = 0.1, source_name: str = "web"):
        self.store, self.poll_s, self.source_name = store, poll_s, source_name
        self.topics = Topics(topic_root).command(district)
        self._latest: dict[str, dict] = {}
        self._shelves: dict[str, dict] = {}
        self._shelf_seq = -1                   # the store's shelf_seq() when _shelves was read
        self._gateways: list[dict] = []
        self._gateways_at = 0.0                # time.monotonic() of the last read of the gateways
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0                        # failed polls (the store unreachable), retried

    def start(self, timeout: float = 10.0) -> "StoreSource":
        for m in self.store.list_incidents(limit=5000):
            self._latest[m["incident_id"]] = m
        self._seq = self.store.last_seq()
        self._refresh_shelves()
        self._refresh_gateways()
        self._thread = threading.Thread(target=self._follow, name="web-store-follow", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _refresh_shelves(self) -> bool:
        """Read the shelves again if they changed in the store (any console's act, an expiry); True if so."""
        seq = self.store.shelf_seq()
        if seq == self._shelf_seq:
            return False
        shelves = self.store.shelves()
        with self._lock:
            self._shelves, self._shelf_seq = shelves, seq
        return True

    def _refresh_gateways(self) -> bool:
        """Read the gateways' rows again; True if one went silent, offline or back (last_seen alone moves
        every second for each gateway heard: the board's 1-s re-send shows it without waking every stream).
        The store holds no shared flag: the grader keeps who shares an id in its own memory and tells only the
        MQTT consoles (its gateway messages' shared_by), so this source shows silent and offline gateways; the
        shared id is in the service's journal (its "TWO GATEWAYS" entry)."""
        rows = [{"gateway": r["gateway_id"], "online": r["online"], "silent": r["silent"], "last_seen": r["last_seen"]}
                for r in self.store.gateways()]
        self._gateways_at = time.monotonic()

        def states(gws):
            return [(g["gateway"], g["online"], g["silent"]) for g in gws]
        with self._lock:
            changed = states(rows) != states(self._gateways)
            self._gateways = rows
        return changed

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                rows = self.store.changes(self._seq)
                redraw = self._refresh_shelves()
                if time.monotonic() - self._gateways_at >= self.GATEWAYS_POLL_S:
                    redraw = self._refresh_gateways() or redraw
            except Exception:  # noqa: BLE001 - a store that went away: counted, retried, the board says so
                self.errors += 1
                self._stop.wait(1.0)
                continue
            if redraw:                         # shelves or gateways: no incident revision to hand over
                for fn in list(self._listeners):
                    fn(None)
            if not rows:
                self._stop.wait(self.poll_s)
            for r in rows:
                self._seq = max(self._seq, r["seq"])
                m = r["payload"]
                with self._lock:
                    cur = self._latest.get(m["incident_id"])
                    if cur is not None and cur["revision"] >= m["revision"]:
                        continue
                    self._latest[m["incident_id"]] = m
                for fn in list(self._listeners):
                    fn(m)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self._latest.values())

    def get(self, incident_id: str) -> dict | None:
        with self._lock:
            return self._latest.get(incident_id)

    def listen(self, fn: Listener):
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn)

    def act_topic(self, kind: str, incident_id: str) -> str:
        return getattr(self.topics, kind)(incident_id)

    def _submit(self, kind: str, incident_id: str, request: bytes, timeout: float) -> str:
        try:
            seq = self.store.submit(kind, incident_id, json.loads(request), source=self.source_name)
            done = self.store.wait_request(seq, timeout)
        except Exception as e:  # noqa: BLE001 - the store's driver errors differ (sqlite3, psycopg)
            raise SourceError(f"could not hand the act to the command service ({e}): is the store reachable?") from None
        if done is None or not done["done"]:
            raise SourceError(f"the command service did not take the act within {timeout:g} s: is a leader running "
                              "(gasguard command serve)?")
        if str(done["outcome"]).startswith("refused"):
            raise Refused(str(done["outcome"]).partition(":")[2].strip() or "refused")
        return done["outcome"]

    def acknowledge(self, incident_id: str, request: bytes, timeout: float) -> str:
        return self._submit("ack", incident_id, request, timeout)

    def send_input(self, incident_id: str, request: bytes, timeout: float) -> str:
        return self._submit("input", incident_id, request, timeout)

    def shelve(self, incident_id: str, request: bytes, body: dict, timeout: float) -> str:
        """The signed act to the leader, which checks the `shelve` role, applies it to its store and audits it:
        the shelf then outlives this console and the service (and shows on every console)."""
        out = self._submit("shelve", incident_id, request, timeout)
        try:
            self._refresh_shelves()
        except Exception:  # noqa: BLE001 - applied; the follow thread shows it at its next poll
            self.errors += 1
        for fn in list(self._listeners):
            fn(None)
        return out

    def shelves(self) -> dict[str, dict]:
        with self._lock:
            return dict(self._shelves)

    def gateways(self) -> list[dict]:
        with self._lock:
            return list(self._gateways)

    def journal(self, incident_id: str) -> list[dict]:
        """Every state change of the incident the service journaled, with who: {t, category, who, text}."""
        try:
            return self.store.journal(incident_id=incident_id, limit=500)
        except Exception:  # noqa: BLE001 - the page shows the report without it; the poll counts errors
            self.errors += 1
            return []

    def readings(self, dev: str, since: float) -> list[dict]:
        """The station's readings as the command service stored them (bounded by its retention)."""
        try:
            return self.store.readings(int(dev, 16), since)
        except Exception:  # noqa: BLE001 - the page says "0 readings"; the poll counts errors
            self.errors += 1
            return []

    def valve_history(self, dev: str, since: float) -> list[dict]:
        try:
            return self.store.valve_events(int(dev, 16), since)
        except Exception:  # noqa: BLE001 - as readings()
            self.errors += 1
            return []
