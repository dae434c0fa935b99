"""The district command's console: an MQTT client for incident publications, and their rendering.

- `IncidentBoard`: pure state, the latest revision of every incident (older or repeated revisions ignored),
  and the shelves the district command service holds (its `command/shelves` snapshot);
- `CommandClient`: paho-mqtt client: subscribes to the district's incident topic, asks the gateway for a
  sync on connect, publishes acknowledgements, operator input and shelving (QoS 1) signed as the operator (issue 14:
  `Signer`), and reads the gateway's answer to each; logs in and uses TLS as mosquitto_sub does
  (`BrokerLogin`); every wait has a timeout;
- `render_board` / `render_report`: rich renderables (colour by warning, level, households, deadlines);
- the live field view, `gasguard command watch`, is the textual app in `watch.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import ssl
import threading
import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gasguard.authority.envelope import sign_request
from gasguard.command.web import alarms as A
from gasguard.grading import engine as G
from gasguard.protocol.topics import CMD, CMD_RESULT, ROOT, CommandTopics, Topics

WARNING_STYLE = {"red": "bold white on red", "orange": "bold black on dark_orange", "yellow": "black on yellow",
                 "blue": "bold white on blue", None: "dim"}
_SEVERITY = {"red": 0, "orange": 1, "yellow": 2, "blue": 3, None: 4}
log = logging.getLogger("gasguard.command")


class ConsoleError(Exception):
    """Broker unreachable, incident unknown, no confirmation in time: the message says what to do."""


class IncidentBoard:
    """The latest revision of each incident, by id. Thread-safe; `version` grows with every change."""

    def __init__(self, keep_resolved_s: float = 600.0):
        self.incidents: dict[str, dict] = {}
        self.gateways: dict[str, dict] = {}      # gateway id -> the command service's view (online, silent)
        # incident id -> {by, reason, at, until, revision, grade}: the command service's shelves as last
        # published (command/shelving.py says when one holds); None: no command service heard (a substation
        # alone holds no shelves, so none can be shown or set)
        self.shelves: dict[str, dict] | None = None
        self.shelves_seq = -1                    # the snapshot's shelf_log sequence (older ones are ignored)
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

    def apply_gateway(self, msg: dict) -> bool:
        """A gateway's state as the command service sees it (birth, Last Will, silence)."""
        gid = msg.get("gateway")
        if not isinstance(gid, str):
            return False
        with self._lock:
            cur = self.gateways.get(gid)
            if cur is not None and cur.get("t", 0) > msg.get("t", 0):
                return False
            self.gateways[gid] = msg
            self.version += 1
            return True

    def apply_shelves(self, msg: dict) -> bool:
        """The command service's shelves (`command/shelves`, one snapshot of all), unless older than held."""
        shelves, seq = msg.get("shelves"), msg.get("seq")
        if not isinstance(shelves, dict) or not isinstance(seq, int):
            return False
        with self._lock:
            if seq < self.shelves_seq:
                return False              # a deposed leader's late snapshot
            self.shelves, self.shelves_seq = dict(shelves), seq
            self.version += 1
            return True

    def shelf(self, iid: str) -> dict | None:
        """The shelf the command service holds for `iid` (it may have ended since: `alarms.alarm_state`)."""
        with self._lock:
            return (self.shelves or {}).get(iid)

    def holding(self, msg: dict, now: float) -> dict | None:
        """The shelf that holds for incident `msg` at `now`, or None: the web board's rule (`alarms.alarm_state`:
        an open incident, the shelf not past its expiry, the incident not upgraded beyond what was shelved), so
        a shelf that ended shows as ended before the service has recorded it."""
        shelf = self.shelf(msg["incident_id"])
        return shelf if shelf is not None and A.alarm_state(msg, shelf, now) == A.SHELVED else None

    def gateway_states(self) -> list[dict]:
        """The command service's last message on each gateway (`gasguard.command-gateway/1`), copied."""
        with self._lock:
            return list(self.gateways.values())

    def gateway_line(self) -> str:
        """"gateways: 19 heard, SILENT gw07 (last heard 10:31:02)" -- what the operator must see."""
        status = gateway_status(self.gateway_states(), _local_hms)
        return ", ".join([status["summary"], *(w["text"] for w in status["warnings"])]) if status else ""

    def rows(self, now: float) -> list[dict]:
        """Open incidents first (most severe, then oldest), then recently resolved ones."""
        with self._lock:
            items = [m for m in self.incidents.values()
                     if m["status"] == "open" or now - (m.get("resolved_at") or now) < self.keep_resolved_s]
        return sorted(items, key=lambda m: (m["status"] != "open", _SEVERITY[m["warning"]], m["level"] or 9,
                                            m["detected_at"]))


def _local_hms(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def gateway_status(gateways: list[dict], fmt_time=_local_hms) -> dict | None:
    """What the consoles show of the district's gateways, from the command service's view of each ({gateway,
    online, silent, last_seen, shared_by?}: its gateway messages, or its store's rows): the one rule for what is
    wrong, for the field console's line and the web board's banner. None when no gateway was heard at all (no
    command service: nothing to say). `summary` counts the gateways with nothing wrong; `warnings`, by gateway,
    one per fault: "silent" (nothing heard for the service's gateway_silent_s; wins over offline, it is what
    the operator last learnt) or "offline" (its Last Will or a clean stop) with when it was last heard, and
    "shared" (two gateway processes publish as this id, gateway/identity.py) with each one's host.
    `fmt_time`: how a time is written (the web console: the district's timezone)."""
    if not gateways:
        return None
    warnings = []
    for g in sorted(gateways, key=lambda g: g["gateway"]):
        gid = g["gateway"]
        down = "silent" if g.get("silent") else "offline" if g.get("online") is False else None
        if down:
            when = fmt_time(g["last_seen"]) if g.get("last_seen") else "?"
            warnings.append({"gateway": gid, "kind": down, "last_seen": g.get("last_seen"),
                             "text": f"{down.upper()} {gid} (last heard {when})"})
        if g.get("shared_by"):
            hosts = list(g["shared_by"])
            warnings.append({"gateway": gid, "kind": "shared", "shared_by": hosts,
                             "text": f"{gid} SHARED BY {len(hosts)} GATEWAYS ({', '.join(hosts)})"})
    heard = len(gateways) - len({w["gateway"] for w in warnings})
    return {"summary": f"gateways: {heard} heard", "heard": heard, "total": len(gateways), "warnings": warnings}


def _left(deadline: float, now: float) -> str:
    s = int(deadline - now)
    return f"{s // 60:d}:{s % 60:02d}" if s >= 0 else f"-{-s // 60:d}:{-s % 60:02d} OVERDUE"


def render_board(board: IncidentBoard, now: float, *, district: str = "", selected: str | None = None,
                 status: str = "") -> Group:
    rows = board.rows(now)
    caption = "   ".join(x for x in (board.gateway_line(), status) if x)
    table = Table(title=f"GasGuard district command {district} — open incidents", expand=True,
                  title_style="bold", caption=caption or None)
    for col, kw in (("", {"width": 1}), ("incident", {"no_wrap": True}), ("warning", {}), ("level", {}),
                    ("category", {}), ("site", {}), ("households", {"justify": "right"}),
                    ("phone 20'", {"no_wrap": True}), ("written 45'", {"no_wrap": True}), ("ack", {}),
                    ("rev", {"justify": "right"})):
        table.add_column(col, **kw)
    shelved = []
    for m in rows:
        open_ = m["status"] == "open"
        lv = G.LEVEL_NAMES.get(m["level"], "-") + (" (projected)" if m["projected"] else "")
        ack = m["acked"]["by"] if m.get("acked") else ("ESCALATED x%d" % m["escalation"]["count"]
                                                        if m.get("escalation") else "not acked")
        shelf = board.holding(m, now)
        if shelf is not None:           # hidden on purpose (ISA-18.2): said on its row, who and why below
            ack = f"SHELVED ({ack})"
            shelved.append((m, shelf))
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
            Text(ack, style="italic" if shelf is not None else "bold red" if m.get("escalation") else
                 ("green" if m.get("acked") else "yellow")),
            str(m["revision"]),
            style=None if open_ else "dim")
    if not rows:
        table.add_row("", "no open incidents", *[""] * 9)
    keys = Text("keys: j/k select   a acknowledge   i operator input   r draft report   q quit", style="dim")
    return Group(table, *(_shelf_line(m, shelf, now) for m, shelf in shelved), keys)


def _shelf_line(m: dict, shelf: dict, now: float) -> Text:
    """Who shelved an incident, the time left, when it ends (this machine's clock) and why: as the watch shows."""
    left = max(0, int(shelf["until"] - now))
    line = Text("shelved ", style="italic")
    line.append(m["incident_id"], style="bold")
    line.append(f" by {shelf['by']}: {left // 60:d}:{left % 60:02d} left, until "
                f"{time.strftime('%H:%M', time.localtime(shelf['until']))}: ")
    line.append(" ".join(str(shelf["reason"]).split()), style="italic")
    return line


def render_report(msg: dict) -> Panel:
    style = WARNING_STYLE[msg["warning"]].split(" on ")[-1]
    todo = msg["report"]["to_be_completed"]
    body = Text(msg["text_zh"])
    if todo:
        body.append("\n\nto be completed: " + ", ".join(todo), style="yellow")
    return Panel(body, title=f"{msg['incident_id']} rev {msg['revision']}", border_style=style)


@dataclass
class BrokerLogin:
    """How to log in to the broker, as mosquitto_sub takes it (-u, -P, --cafile, --cert, --key)."""
    username: str | None = None
    password: str | None = None
    cafile: str | None = None        # CA of the broker's certificate: TLS on
    cert: str | None = None          # client certificate and key (mutual TLS)
    key: str | None = None

    def problem(self, name=lambda setting: f"--{setting}") -> tuple[str, str] | None:
        """What these settings lack, as (the setting at fault, what to do), or None. `name` spells a setting as
        its user gives it: the consoles' flags (--cafile), or a config file's keys (the web console's [mqtt])."""
        if self.cert and not self.cafile:
            return "cert", f"a client certificate needs TLS: give {name('cafile')} (the broker's CA) too"
        if bool(self.cert) != bool(self.key):
            return "key" if self.cert else "cert", f"a client certificate needs both {name('cert')} and {name('key')}"
        return None

    def apply(self, client: mqtt.Client) -> None:
        if self.username:
            client.username_pw_set(self.username, self.password)
        lack = self.problem()
        if lack:
            raise ConsoleError(lack[1])
        if self.cafile:
            try:
                client.tls_set(ca_certs=self.cafile, certfile=self.cert, keyfile=self.key,
                               cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError) as e:
                raise ConsoleError(f"TLS files: {e}: check --cafile/--cert/--key") from None


@dataclass
class Signer:
    """Who signs the console's acts: an operator with their own key, or a console's key signing for the
    operator it authenticated (`on_behalf_of`, issue 16); see gasguard/authority/__init__.py."""
    id: str
    key: object                      # Ed25519PrivateKey
    on_behalf_of: str | None = None
    address: str = ""

    def sign(self, topic: str, body: dict, client_id: str) -> bytes:
        return sign_request(self.key, self.id, topic, body, on_behalf_of=self.on_behalf_of, client_id=client_id,
                            address=self.address)


class CommandClient:
    """MQTT side of the console for one district. Use as a context manager."""

    RESULTS_KEPT = 1000     # answers to our requests kept for matching (oldest dropped first)

    def __init__(self, host: str, port: int, district: str, *, board: IncidentBoard | None = None,
                 client_id: str | None = None, city: bool = False, city_topic: str = "city",
                 topic_root: str = ROOT, login: BrokerLogin | None = None, signer: Signer | None = None):
        self.host, self.port, self.district = host, port, district
        self.signer = signer
        self.results: dict[str, dict] = {}       # request sha256 -> the gateway's answer
        self.results_cond = threading.Condition()
        self.board = board or IncidentBoard()
        self.tree = Topics(topic_root)
        self.command_topics = self.tree.command(district)
        self.topic = self.tree.city_incidents(city_topic) if city else self.command_topics.incidents
        self.updates: queue.Queue = queue.Queue(maxsize=10_000)
        self.overflow = 0
        self.connected = threading.Event()
        self.client_id = client_id or f"gg-console-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        (login or BrokerLogin()).apply(self.client)
        self.result_topic = self.tree.all_results() if city else self.command_topics.results
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        # subscribe_wait's SUBSCRIBEs on the current connection: mid -> None until its SUBACK, then True when
        # granted or the refusal's reason code ("Unspecified error 0x80"); nothing else (the subscriptions made on
        # connect are not waited for), dropped when their waiter returns and emptied on every connect (the last
        # connection's SUBACKs cannot come), so a long-lived client (the web console) holds only what its
        # waiters still wait for
        self.subacks: dict[int, bool | str | None] = {}
        self.extra_subs: set[str] = set()           # subscribed again after a reconnect
        self.client.reconnect_delay_set(1, 30)
        self.started = False                        # connect() called (it may be called once)
        self.answered = threading.Event()           # the broker's first CONNACK came: granted or refused
        self.refused: str | None = None             # the refusing CONNACK's reason (a wrong login)
        self.closed_early: str | None = None        # the broker closed the first connection before any CONNACK
        self.session = 0                            # connections made so far (_on_connect; subscribe_wait)
        # the SUBSCRIBEs _on_connect made on the current connection (mid -> topic) until their SUBACK, and the
        # topics of those the broker refused (topic -> reason code): what this console cannot show, for its
        # status line (refused_line: the web console's board, the watch); both new on every connect, as the broker's ACL may have changed
        self.connect_subs: dict[int, str] = {}
        self.refused_topics: dict[str, str] = {}

    def __enter__(self):
        # `with CommandClient(...).connect() as c` (console_cli) is connected already: connecting again would
        # race paho's running network thread (see connect)
        return self if self.started else self.connect()

    def __exit__(self, *exc):
        self.close()

    def connect(self, timeout: float = 10.0) -> "CommandClient":
        """Connect once and start paho's network thread; ConsoleError if no session within `timeout` s."""
        if self.started:
            # a second paho connect() from this thread while the network thread runs tears down the session
            # under it: the thread sees no socket and reconnects a second later, dropping what was just
            # subscribed or published on the connection it closes (1 in 3 commands lost their subscription)
            raise RuntimeError("CommandClient.connect() called twice: connect once, or use `with`")
        self.started = True
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as e:
            raise ConsoleError(f"cannot reach the MQTT broker at {self.host}:{self.port} ({e}): "
                               "check --host/--port and that the broker runs") from None
        self.client.loop_start()
        # a refusing CONNACK ends the wait too: the broker's answer will not change on paho's retries (it
        # retried every 1-30 s until --timeout ran out: a mistyped password took the whole 10 s to say so)
        if not self.answered.wait(timeout) or self.refused or self.closed_early:
            self.close()
            if self.refused:
                raise ConsoleError(self._login_refused())
            if self.closed_early:
                raise ConsoleError(
                    f"the broker at {self.host}:{self.port} closed the connection before accepting it "
                    f"({self.closed_early}): if that listener requires a client certificate, give the console's "
                    "certificate and key (--cert/--key, with --cafile); otherwise check that the port is the "
                    "broker's MQTT listener (a TLS one needs --cafile)")
            raise ConsoleError(f"no MQTT session with {self.host}:{self.port} within {timeout:.0f} s")
        return self

    def _login_refused(self) -> str:
        user = self.client.username
        at = f"the broker at {self.host}:{self.port}"
        if not user:
            return (f"{at} refused the login ({self.refused}): it takes no anonymous clients: give your broker "
                    "login with --username and --password (GASGUARD_MQTT_PASSWORD)")
        # mosquitto answers a wrong password, a user it does not know and a revoked operator (broker-config
        # writes them no user) alike, "Not authorized"
        return (f"{at} refused the login of {user!r} ({self.refused}): a wrong password, or a user its password "
                f"file does not hold (a revoked operator has none): check --password (GASGUARD_MQTT_PASSWORD) against "
                f"credentials/{user}.password of 'gasguard authority broker-config', and that the broker was "
                "reloaded after the roster changed (docs/OPERATORS.md section 5)")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        if self.session == 0 and not self.answered.is_set():
            # no CONNACK will come: TLS 1.3 refuses a missing client certificate after the handshake, by closing
            # (as a listener that is not MQTT does); paho would retry until connect()'s timeout ran out and then
            # say only "no session". connect() gives up on it, as on a refusing CONNACK
            self.closed_early = str(reason_code)
            client.disconnect()
            self.answered.set()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.refused = str(reason_code)
            if self.session == 0:
                # connect() gives up on this answer: without this paho's thread first slept its 1 s reconnect
                # delay, which close() (loop_stop) then waited out. Later refusals (a long-lived web console
                # whose password was changed under it) are retried as before.
                client.disconnect()
            self.answered.set()
            return
        topics = [self.topic]
        if self.topic == self.command_topics.incidents:
            topics.append(self.command_topics.gateways)     # silent gateways (the command service)
            topics.append(self.command_topics.shelves)      # its shelves (retained)
        topics.append(self.result_topic)
        with self.results_cond:             # subscribe_wait adds to extra_subs from another thread
            self.session += 1
            self.subacks.clear()            # the last connection's: their SUBACKs cannot come on this one
            self.connect_subs, self.refused_topics = {}, {}
            for t in topics + sorted(self.extra_subs):
                # under the lock with their mids recorded: their SUBACKs are checked in _on_subscribe
                _, mid = client.subscribe(t, qos=1)
                if mid is not None:
                    self.connect_subs[mid] = t
        self.connected.set()
        self.answered.set()
        self.request_sync()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        # 0x80 (MQTT 3.1.1) or a reason code >= 0x80 (MQTT 5): the broker refused the subscription
        bad = [rc for rc in reason_codes if rc.is_failure]
        refused = f"{bad[0]} 0x{bad[0].value:02x}" if bad else None
        with self.results_cond:
            topic = self.connect_subs.pop(mid, None)
            if topic is not None and refused and topic not in self.refused_topics:
                self.refused_topics[topic] = refused
            else:
                topic = None
            if mid in self.subacks:         # a waiter's (subscribe_wait), not one made on connect
                self.subacks[mid] = refused or True
                self.results_cond.notify_all()
        if topic is not None:
            # nobody waits for an on-connect SUBSCRIBE: unsaid, the board stays empty with nobody told
            log.error("%s", self._subscription_refused(topic, refused, "nothing published there reaches this "
                                                                       "console"))

    def subscribe_wait(self, topic: str, timeout: float) -> None:
        """Subscribe and wait for the broker's SUBACK, so an answer to what we send next is not missed; a
        subscription lost to a reconnect in between is made again (and after every later reconnect)."""
        with self.results_cond:
            self.extra_subs.add(topic)
        deadline = time.monotonic() + timeout
        session, mids = None, []    # this connection's SUBSCRIBEs of `topic`: any one's SUBACK confirms it

        def answered():
            return self.session == session and any(self.subacks.get(m) is not None for m in mids)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self.connected.wait(left):
                    raise ConsoleError(f"the broker did not confirm the subscription to {topic} within "
                                       f"{timeout:.0f} s: check the connection to the broker (and that it is not "
                                       "overloaded)")
                with self.results_cond:
                    if self.session != session:     # a reconnect (clean session) dropped what was subscribed
                        session, mids = self.session, []
                    _, mid = self.client.subscribe(topic, qos=1)
                    if mid is not None:
                        # under the lock: its SUBACK (on paho's thread, which takes the lock) finds it awaited
                        self.subacks[mid] = None
                        mids.append(mid)
                    # a SUBACK later than the 2 s between tries still counts: a broker that answers in 3 s must
                    # not make every try time out
                    if self.results_cond.wait_for(answered, min(2.0, max(0.1, left))):
                        refused = next((r for m in mids if isinstance(r := self.subacks.get(m), str)), None)
                        if refused:
                            self.extra_subs.discard(topic)      # not asked again on every reconnect
                            raise ConsoleError(self._subscription_refused(topic, refused))
                        return
        finally:
            with self.results_cond:         # nobody waits for these any more (a late SUBACK is not kept)
                for m in mids:
                    self.subacks.pop(m, None)

    def _subscription_refused(self, topic: str, reason: str, missed: str = "no answer could reach this console") -> str:
        """What an operator is told of a refused subscription (subscribe_wait's error, _on_connect's log)."""
        user = self.client.username
        who = f"login {user!r}" if user else "anonymous clients"
        return (f"the broker refused the subscription to {topic} (SUBACK: {reason}): its ACL does not let {who} "
                f"subscribe to it, so {missed}: ask the broker's admin to grant it to "
                "your account (mosquitto's dynamic-security plugin: a subscribe ACL on one of the client's roles; "
                "an acl_file: a 'topic read' line for the user, as 'gasguard authority broker-config' writes, "
                "docs/OPERATORS.md section 5), or log in as an account that has it")

    def _on_message(self, client, userdata, m):
        try:
            msg = json.loads(m.payload)
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("schema") == "gasguard.command-gateway/1":
            self.board.apply_gateway(msg)
            return
        if isinstance(msg, dict) and msg.get("schema") == "gasguard.command-shelves/1":
            with self.results_cond:        # an act's confirmation may wait on it (wait_shelves)
                self.board.apply_shelves(msg)
                self.results_cond.notify_all()
            return
        if isinstance(msg, dict) and msg.get("schema") == "gasguard.request-result/1":
            with self.results_cond:
                self.results[str(msg.get("request_sha256"))] = msg
                while len(self.results) > self.RESULTS_KEPT:
                    self.results.pop(next(iter(self.results)))
                self.results_cond.notify_all()
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

    def _act(self, topic: str, body: dict, timeout: float, confirm: bool) -> str:
        """Publish an act, signed by `signer`; returns the SHA-256 of what was sent (its answer's key). With
        `confirm`, wait for the gateway's answer and raise ConsoleError if it refused."""
        # unsigned only for a bench whose command service runs without [authority] (it records "unsigned");
        # gateways and a configured command service refuse it
        raw = (self.signer.sign(topic, body, self.client_id) if self.signer is not None
               else json.dumps(body, ensure_ascii=False).encode())
        sha = hashlib.sha256(raw).hexdigest()
        self._publish(topic, raw, timeout)
        if confirm:
            self.wait_result(sha, timeout)
        return sha

    def wait_result(self, sha: str, timeout: float) -> dict:
        """The gateway's answer to the request whose payload hashes to `sha`; ConsoleError if refused or none."""
        deadline = time.monotonic() + timeout
        with self.results_cond:
            while sha not in self.results:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConsoleError(f"no answer from a gateway within {timeout:.0f} s: is the gateway running, "
                                       "and does it hold this incident?")
                self.results_cond.wait(left)
            res = self.results[sha]
        if res["outcome"] != "allowed":
            raise ConsoleError(f"refused by gateway {res['gateway']}: {res['reason']}: {res['detail']}")
        return res

    def node_command(self, gateway: str, dev: int, request: dict, timeout: float) -> dict:
        """Send a signed node command (engineers: reset, set_param, selftest, status) through `gateway` and
        wait for its result: the node's ack, a timeout, or the gateway's refusal with its reason."""
        if not gateway or "/" in gateway or "+" in gateway or "#" in gateway:
            raise ConsoleError(f"gateway id {gateway!r}: the [gateway] id of the gateway that reaches the device")
        gw = self.tree.gateway(self.district, gateway)
        got: queue.Queue = queue.Queue()
        rid = request["request_id"]

        def on_result(client, userdata, m):
            try:
                doc = json.loads(m.payload)
            except ValueError:
                return
            if isinstance(doc, dict) and doc.get("request_id") == rid:
                got.put(doc)
        result_topic = gw.device(dev, CMD_RESULT)
        self.client.message_callback_add(result_topic, on_result)
        try:
            self.subscribe_wait(result_topic, timeout)
            self._act(gw.device(dev, CMD), request, timeout, confirm=False)
            try:
                return got.get(timeout=timeout)
            except queue.Empty:
                raise ConsoleError(f"no result for {rid} within {timeout:.0f} s: is gateway {gateway} running "
                                   "and subscribed? (the command may still be delivered)") from None
        finally:
            self.client.message_callback_remove(result_topic)

    def ack(self, iid: str, by: str | None = None, revision: int | None = None, timeout: float = 10.0,
            confirm: bool = False) -> str:
        """Acknowledge `iid`. The gateway records the verified signer as who acknowledged, not `by`."""
        body = {"revision": revision, "t": time.time()}
        if by:
            body["by"] = by
        return self._act(self._command_of(iid).ack(iid), body, timeout, confirm)

    def send_input(self, iid: str, fields: dict, timeout: float = 10.0, confirm: bool = False) -> str:
        return self._act(self._command_of(iid).input(iid), fields, timeout, confirm)

    def shelve(self, iid: str, body: dict, timeout: float = 10.0) -> str:
        """Shelve ({"reason", "duration_s"}) or unshelve ({"unshelve": true}) `iid`: a signed act for the
        command service, which checks the `shelve` role, holds the shelf in its store and audits it."""
        return self._act(self._command_of(iid).shelve(iid), body, timeout, False)

    def wait_shelves(self, sha: str, pred, timeout: float) -> dict:
        """The shelves once the command service allowed the act whose payload hashes to `sha` and `pred`
        holds for its published shelves; ConsoleError with its reason if it refused, or after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self.results_cond:
            while True:
                res = self.results.get(sha)
                if res is not None and res["outcome"] != "allowed":
                    raise ConsoleError(f"REFUSED by the command service: {refusal(res)}")
                shelves = self.board.shelves
                if res is not None and shelves is not None and pred(shelves):
                    return shelves
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConsoleError(f"no confirmation from the command service within {timeout:g} s: is "
                                       "gasguard command serve running? (nothing is shelved until it confirms)")
                self.results_cond.wait(left)


def refused_line(refused: dict[str, str], log: str | None = None) -> str:
    """The consoles' status line for the topics the broker refuses this console's account (CommandClient's
    `refused_topics`: topic -> reason code), or "" when it refuses none: an empty board must not pass for a
    quiet district. One wording for the web board and the field console (watch); `log`: where this console's
    log is, named when the reader cannot be assumed to know (the watch's file; the web console's is the
    service's, its operators' business)."""
    if not refused:
        return ""
    topics = ", ".join(f"{t} ({r})" for t, r in sorted(refused.items()))
    where = f"the console's log, {log}," if log else "the console's log"
    return (f"the broker refuses this console's account {topics}: nothing from there shows here; ask the "
            f"broker's admin to grant them ({where} says how)")


def refusal(res: dict) -> str:
    """An answer's reason once: the detail usually repeats its short reason ("unknown incident")."""
    reason, detail = str(res.get("reason") or ""), str(res.get("detail") or "")
    return detail if detail.startswith(reason) else f"{reason}: {detail}"


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
