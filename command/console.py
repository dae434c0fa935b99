"""The district command's console: an MQTT client for incident publications, and their rendering.

- `IncidentBoard`: pure state, the latest revision of every incident (older or repeated revisions ignored);
- `CommandClient`: paho-mqtt client: subscribes to the district's incident topic, asks the gateway for a
  sync on connect, publishes acknowledgements and operator input (QoS 1); every wait has a timeout;
- `render_board` / `render_report`: rich renderables (colour by warning, level, households, deadlines);
- the live field view, `gasguard command watch`, is the textual app in `watch.py`.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gasguard.grading import engine as G
from gasguard.protocol.topics import ROOT, CommandTopics, Topics

WARNING_STYLE = {"red": "bold white on red", "orange": "bold black on dark_orange", "yellow": "black on yellow",
                 "blue": "bold white on blue", None: "dim"}
_SEVERITY = {"red": 0, "orange": 1, "yellow": 2, "blue": 3, None: 4}


class ConsoleError(Exception):
    """Broker unreachable, incident unknown, no confirmation in time: the message says what to do."""


class IncidentBoard:
    """The latest revision of each incident, by id. Thread-safe; `version` grows with every change."""

    def __init__(self, keep_resolved_s: float = 600.0):
        self.incidents: dict[str, dict] = {}
        self.keep_resolved_s = keep_resolved_s
        self.version = 0
        self._lock = threading.Lock()

    def apply(self, msg: dict) -> bool:
        iid, rev = msg.get("incident_id"), msg.get("revision")
        if not isinstance(iid, str) or not isinstance(rev, int):
            return False
        with self._lock:
            cur = self.incidents.get(iid)
            if cur is not None and cur["revision"] >= rev:
                return False              # a repeat (QoS 1, sync) or an older revision arriving late
            self.incidents[iid] = msg
            self.version += 1
            return True

    def get(self, iid: str) -> dict | None:
        with self._lock:
            return self.incidents.get(iid)

    def rows(self, now: float) -> list[dict]:
        """Open incidents first (most severe, then oldest), then recently resolved ones."""
        with self._lock:
            items = [m for m in self.incidents.values()
                     if m["status"] == "open" or now - (m.get("resolved_at") or now) < self.keep_resolved_s]
        return sorted(items, key=lambda m: (m["status"] != "open", _SEVERITY[m["warning"]], m["level"] or 9,
                                            m["detected_at"]))


def _left(deadline: float, now: float) -> str:
    s = int(deadline - now)
    return f"{s // 60:d}:{s % 60:02d}" if s >= 0 else f"-{-s // 60:d}:{-s % 60:02d} OVERDUE"


def render_board(board: IncidentBoard, now: float, *, district: str = "", selected: str | None = None,
                 status: str = "") -> Group:
    rows = board.rows(now)
    table = Table(title=f"GasGuard district command {district} — open incidents", expand=True,
                  title_style="bold", caption=status or None)
    for col, kw in (("", {"width": 1}), ("incident", {"no_wrap": True}), ("warning", {}), ("level", {}),
                    ("category", {}), ("site", {}), ("households", {"justify": "right"}),
                    ("phone 20'", {"no_wrap": True}), ("written 45'", {"no_wrap": True}), ("ack", {}),
                    ("rev", {"justify": "right"})):
        table.add_column(col, **kw)
    for m in rows:
        open_ = m["status"] == "open"
        lv = G.LEVEL_NAMES.get(m["level"], "-") + (" (projected)" if m["projected"] else "")
        ack = m["acked"]["by"] if m.get("acked") else ("ESCALATED x%d" % m["escalation"]["count"]
                                                        if m.get("escalation") else "not acked")
        late = open_ and not m.get("acked")
        phone = _left(m["deadlines"]["phone"], now) if open_ else "resolved"
        written = _left(m["deadlines"]["written"], now) if open_ else ""
        table.add_row(
            ">" if m["incident_id"] == selected else "",
            Text(m["incident_id"], style="bold" if open_ else "dim"),
            Text(f" {(m['warning'] or 'none').upper()} ", style=WARNING_STYLE[m["warning"]]),
            lv, G.CATEGORY_NAMES_ZH.get(m["category"], m["category"]),
            (m["report"]["place"]["site_name"] or "")[:24],
            f"{m['households']:,}" if m["households"] else "-",
            Text(phone, style="bold red" if late and "OVERDUE" in phone else ""),
            Text(written, style="bold red" if late and "OVERDUE" in written else ""),
            Text(ack, style="bold red" if m.get("escalation") else ("green" if m.get("acked") else "yellow")),
            str(m["revision"]),
            style=None if open_ else "dim")
    if not rows:
        table.add_row("", "no open incidents", *[""] * 9)
    keys = Text("keys: j/k select   a acknowledge   i operator input   r draft report   q quit", style="dim")
    return Group(table, keys)


def render_report(msg: dict) -> Panel:
    style = WARNING_STYLE[msg["warning"]].split(" on ")[-1]
    todo = msg["report"]["to_be_completed"]
    body = Text(msg["text_zh"])
    if todo:
        body.append("\n\nto be completed: " + ", ".join(todo), style="yellow")
    return Panel(body, title=f"{msg['incident_id']} rev {msg['revision']}", border_style=style)


class CommandClient:
    """MQTT side of the console for one district. Use as a context manager."""

    def __init__(self, host: str, port: int, district: str, *, board: IncidentBoard | None = None,
                 client_id: str | None = None, city: bool = False, city_topic: str = "city",
                 topic_root: str = ROOT):
        self.host, self.port, self.district = host, port, district
        self.board = board or IncidentBoard()
        self.tree = Topics(topic_root)
        self.command_topics = self.tree.command(district)
        self.topic = self.tree.city_incidents(city_topic) if city else self.command_topics.incidents
        self.updates: queue.Queue = queue.Queue(maxsize=10_000)
        self.overflow = 0
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"gg-console-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 30)

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()

    def connect(self, timeout: float = 10.0) -> "CommandClient":
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as e:
            raise ConsoleError(f"cannot reach the MQTT broker at {self.host}:{self.port} ({e}): "
                               "check --host/--port and that the broker runs") from None
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.close()
            raise ConsoleError(f"no MQTT session with {self.host}:{self.port} within {timeout:.0f} s")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            return
        client.subscribe(self.topic, qos=1)
        self.connected.set()
        self.request_sync()

    def _on_message(self, client, userdata, m):
        try:
            msg = json.loads(m.payload)
        except ValueError:
            return
        if isinstance(msg, dict) and self.board.apply(msg):
            try:
                self.updates.put_nowait(msg)
            except queue.Full:
                self.overflow += 1        # the board still has it; only the change feed is bounded

    def request_sync(self) -> None:
        """Ask the gateway to re-publish every incident it holds (a console that just started knows none)."""
        self.client.publish(self.command_topics.sync, json.dumps({"t": time.time()}), qos=1)

    def wait_for(self, iid: str, timeout: float, pred=lambda m: True) -> dict:
        """The incident `iid` once `pred` holds for its latest revision; ConsoleError after `timeout` s."""
        try:
            return self.wait_match(lambda m: m["incident_id"] == iid and pred(m), timeout)
        except ConsoleError:
            raise ConsoleError(f"incident {iid} not seen within {timeout:.0f} s: check the id "
                               "(gasguard command list) and that the gateway is running") from None

    def wait_match(self, pred, timeout: float) -> dict:
        """The first incident on the board (latest revisions) for which `pred` holds."""
        deadline = time.monotonic() + timeout
        while True:
            with self.board._lock:
                hit = next((m for m in self.board.incidents.values() if pred(m)), None)
            if hit is not None:
                return hit
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConsoleError(f"no matching incident within {timeout:.0f} s")
            try:
                self.updates.get(timeout=min(left, 0.2))
            except queue.Empty:
                pass

    def _publish(self, topic: str, payload: dict | bytes, timeout: float) -> None:
        """QoS 1, waiting for the broker's PUBACK; bytes (a signed request) are sent as they are."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False)
        info = self.client.publish(topic, data, qos=1)
        try:
            info.wait_for_publish(timeout)
        except RuntimeError as e:
            raise ConsoleError(f"could not send to the broker ({e}): check the connection") from None
        if not info.is_published():
            raise ConsoleError(f"the broker did not confirm {topic} within {timeout:.0f} s")

    def _command_of(self, iid: str) -> CommandTopics:
        # a city console answers to the district that owns the incident
        m = self.board.get(iid)
        return self.tree.command(m["district"]) if m and m.get("district") else self.command_topics

    def ack(self, iid: str, by: str, revision: int | None = None, timeout: float = 10.0) -> None:
        self._publish(self._command_of(iid).ack(iid), {"by": by, "revision": revision, "t": time.time()}, timeout)

    def send_input(self, iid: str, fields: dict, timeout: float = 10.0) -> None:
        self._publish(self._command_of(iid).input(iid), fields, timeout)


def parse_input(text: str) -> dict:
    """`deaths=1 evacuated=300 note="..."` -> typed dict (numbers and true/false parsed)."""
    import shlex
    return parse_fields(shlex.split(text))


def parse_fields(tokens) -> dict:
    """["deaths=1", "note=消防已到场"] -> {"deaths": 1, "note": "消防已到场"}."""
    out: dict = {}
    for tok in tokens:
        if "=" not in tok:
            raise ValueError(f"{tok!r}: write field=value, e.g. deaths=1 or note='fire brigade on site'")
        k, v = tok.split("=", 1)
        if v.lower() in ("true", "yes"):
            out[k] = True
        elif v.lower() in ("false", "no"):
            out[k] = False
        else:
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
    return out
