"""A Sparkplug B 3.0 edge node's session logic, with no network in it: events in (connected, host STATE,
an accepted uplink, a device gone offline, NCMD, DCMD), MQTT messages out. The MQTT client that carries them
is in `client.py`; this module can be tested alone and is the one place the Sparkplug rules live.

Rules kept here (Sparkplug 3.0, chapters 5–6; see /work/shared/domain/SPARKPLUG.md for the summary):
- every CONNECT has a new `bdSeq` (persisted first, wrapping 255 -> 0); the Will is the NDEATH carrying it;
- NBIRTH has `seq` 0 and the same `bdSeq`; every later message of the session has `seq` one more, wrapping;
- a device is born (DBIRTH, every metric it will ever send) before its first DDATA; DDEATH when it goes
  offline; a rebirth request (NCMD `Node Control/Rebirth`) republishes NBIRTH and every DBIRTH;
- with a primary host, nothing is published until its STATE says online (and the STATE is not older than the
  last one seen); when it goes offline the node sends NDEATH and disconnects; it comes back with a new bdSeq;
- data that arrives while no host listens is held (EdgeStore) and sent after the births as DDATA whose every
  metric has `is_historical = true`, in arrival order.
A birth is only ever built for the session that asked for it: `session` numbers connections, and the client
drops messages built for an older one (the "late NBIRTH resurrects a dead node" trap).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from gasguard.protocol.const import PARAM_NAMES

from . import metrics as M
from .schema import Payload
from .store import EdgeStore

log = logging.getLogger("gasguard.gateway.sparkplug")

NS = "spBv1.0"
MAX_COMMANDS = 256           # DCMD-born requests waiting for the gateway's next tick (then refused, counted)
REPLAY_BATCH = 200            # historical rows per replay step (the client calls replay until none are left)
_PARAM_IDS = {name: pid for pid, name in PARAM_NAMES.items()}


@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass
class Device:
    dev: int
    profile: str
    static: dict                                   # registry facts, births only
    values: dict = field(default_factory=dict)     # last value of every metric seen (births carry them)
    born: bool = False                             # DBIRTH sent in this session
    online: bool = True


class EdgeNode:
    def __init__(self, group: str, node: str, store: EdgeStore, *, primary_host: str | None = None,
                 version: str = "", district: str = "", clock_mode: str = "real", clock=None):
        self.group, self.node, self.store = group, node, store
        self.primary_host = primary_host
        self.version, self.district, self.clock_mode = version, district, clock_mode
        self.clock = clock                        # epoch seconds; the daemon's (virtual in drills and tests)
        self.devices: dict[int, Device] = {}
        self.session = 0                          # numbers CONNECTs; a message built for an older one is dropped
        self.bdseq: int | None = None             # of the current/next connection
        self.connected = False
        self.host_online = primary_host is None   # no primary host configured: publish as soon as connected
        self.host_ts = -1                         # timestamp of the last STATE seen (older ones are ignored)
        self.live = False                         # births sent in this session: data may flow
        self.seq = 0
        self.replaying = False
        self.commands: list[tuple[int, bytes]] = []   # (dev, raw request) from DCMDs, drained by the gateway tick
        self.refused = 0                          # DCMD/NCMD writes refused (unknown metric, bad value, queue full)
        self.counts = {"nbirth": 0, "dbirth": 0, "ddata": 0, "ddeath": 0, "ndeath": 0, "historical": 0}

    # -- topics ---------------------------------------------------------------------------------
    def topic(self, kind: str, dev: int | None = None) -> str:
        t = f"{NS}/{self.group}/{kind}/{self.node}"
        return t if dev is None else f"{t}/{dev:08x}"

    @property
    def state_topic(self) -> str | None:
        return f"{NS}/STATE/{self.primary_host}" if self.primary_host else None

    def subscriptions(self) -> list[str]:
        subs = [self.topic("NCMD"), self.topic("DCMD") + "/+"]
        if self.state_topic:
            subs.append(self.state_topic)
        return subs

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) % 256
        return self.seq

    # -- connection -----------------------------------------------------------------------------
    def will(self) -> Msg:
        """Called before every CONNECT: a new bdSeq, persisted, and the NDEATH that carries it (the Will)."""
        self.session += 1
        self.bdseq = self.store.next_bdseq()
        self.connected = self.live = False
        return Msg(self.topic("NDEATH"), self._ndeath_payload(), qos=1, retain=False)

    def _ndeath_payload(self) -> bytes:
        p = Payload(timestamp=self._now_ms())
        M.add_metric(p, M.NODE_METRICS[0], self.bdseq, alias_=M.node_alias("bdSeq"), ts_ms=p.timestamp, birth=True)
        return p.SerializeToString()

    def on_connected(self) -> list[Msg]:
        self.connected = True
        return self._go_live()

    def on_disconnected(self) -> None:
        self.connected = self.live = False
        for d in self.devices.values():
            d.born = False

    def on_state(self, payload: bytes) -> tuple[list[Msg], bool]:
        """The primary host's STATE (3.0: JSON {"online": bool, "timestamp": ms}). Returns (messages,
        disconnect): when the host goes offline, an NDEATH to send and True (the client then disconnects
        and reconnects with a new bdSeq)."""
        try:
            st = json.loads(payload)
            online, ts = bool(st["online"]), int(st["timestamp"])
        except (ValueError, KeyError, TypeError):
            log.warning("sparkplug: STATE from %s is not {online, timestamp}: ignored", self.primary_host)
            return [], False
        if ts < self.host_ts:
            return [], False          # a stale STATE (e.g. a retained one older than what we saw) changes nothing
        self.host_ts = ts
        was = self.host_online
        self.host_online = online
        if online and not was:
            return self._go_live(), False
        if not online and was and self.connected:
            out = [Msg(self.topic("NDEATH"), self._ndeath_payload(), qos=1)] if self.live else []
            self.counts["ndeath"] += len(out)
            self.on_disconnected()
            return out, True
        return [], False

    def _go_live(self) -> list[Msg]:
        if not (self.connected and self.host_online) or self.live:
            return []
        self.live = True
        return self._births()

    def _births(self) -> list[Msg]:
        self.seq = 0
        now = self._now_ms()
        p = M.new_payload(now, 0)
        node_vals = {"bdSeq": self.bdseq, "Node Control/Rebirth": False,
                     "Properties/Gateway Version": self.version, "Properties/District": self.district,
                     "Properties/Clock": self.clock_mode}
        for d in M.NODE_METRICS:
            M.add_metric(p, d, node_vals[d.name], alias_=M.node_alias(d.name), ts_ms=now, birth=True)
        out = [Msg(self.topic("NBIRTH"), p.SerializeToString())]
        self.counts["nbirth"] += 1
        for dev in self.devices.values():
            dev.born = False
            if dev.online:
                out.append(self._dbirth(dev, now))
        self.replaying = self.store.count() > 0
        return out

    def _dbirth(self, dev: Device, now: int) -> Msg:
        p = M.new_payload(now, self._next_seq())
        vals = {**dev.static, **dev.values}
        for d in M.device_metrics(dev.profile):
            M.add_metric(p, d, vals.get(d.name), alias_=M.alias(dev.dev, d.name), ts_ms=now, birth=True)
        dev.born = True
        self.counts["dbirth"] += 1
        return Msg(self.topic("DBIRTH", dev.dev), p.SerializeToString())

    def rebirth(self) -> list[Msg]:
        return self._births() if self.live else []

    # -- data -----------------------------------------------------------------------------------
    def observe(self, obs: dict) -> list[Msg]:
        """One accepted uplink. Live: DDATA with what changed (DBIRTH first if the device is new to this
        session). Not live: held for historical replay."""
        dev_id = obs["dev"]
        info = obs.get("device") or {}
        dev = self.devices.get(dev_id)
        if dev is None:
            dev = self.devices[dev_id] = Device(dev_id, info.get("profile") or "household", M.static_values(info))
        vals = M.values_of(obs)
        changed = {k: v for k, v in vals.items() if dev.values.get(k, object()) != v}
        dev.values.update(vals)
        came_back = not dev.online
        dev.online = True
        ts = int(obs["t"] * 1000)
        if not self.live:
            if changed:
                self.store.hold(dev_id, ts, changed)
            return []
        if not dev.born or came_back:
            return [self._dbirth(dev, self._now_ms())]     # the birth carries the new values
        if not changed:
            return []
        return [self._ddata(dev, changed, ts, historical=False)]

    def _ddata(self, dev: Device, vals: dict, ts: int, historical: bool) -> Msg:
        p = M.new_payload(self._now_ms(), self._next_seq())
        defs = {d.name: d for d in M.device_metrics(dev.profile)}
        for name, v in vals.items():
            if name in defs:
                M.add_metric(p, defs[name], v, alias_=M.alias(dev.dev, name), ts_ms=ts, birth=False,
                             historical=historical)
        self.counts["historical" if historical else "ddata"] += 1
        return Msg(self.topic("DDATA", dev.dev), p.SerializeToString())

    def replay(self) -> list[Msg]:
        """The next batch of held data as historical DDATA (after the births). Rows are released as they are
        handed out: DDATA is QoS 0 in Sparkplug, so nothing waits for an acknowledgement."""
        if not self.live:
            return []
        rows = self.store.held(REPLAY_BATCH)
        if not rows:
            self.replaying = False
            return []
        out = []
        for _rid, dev_id, ts, vals in rows:
            dev = self.devices.get(dev_id)
            if dev is None or not dev.born:
                continue            # born in this session before replay, or gone: its current state is in the birth
            out.append(self._ddata(dev, vals, ts, historical=True))
        self.store.release(rows[-1][0])
        return out

    def device_offline(self, dev_id: int) -> list[Msg]:
        dev = self.devices.get(dev_id)
        if dev is None or not dev.online:
            return []
        dev.online = False
        if not (self.live and dev.born):
            return []
        dev.born = False
        p = M.new_payload(self._now_ms(), self._next_seq())
        self.counts["ddeath"] += 1
        return [Msg(self.topic("DDEATH", dev_id), p.SerializeToString())]

    # -- commands from the host -----------------------------------------------------------------
    def on_ncmd(self, payload: bytes) -> list[Msg]:
        p = _parse(payload)
        if p is None:
            self.refused += 1
            return []
        for m in p.metrics:
            name = m.name or _node_name(m.alias)
            if name == "Node Control/Rebirth" and M.read_value(m):
                return self.rebirth()
            self.refused += 1
            log.warning("sparkplug: NCMD metric %r refused: only 'Node Control/Rebirth' is writable", name)
        return []

    def on_dcmd(self, dev_hex: str, payload: bytes) -> list[tuple[int, bytes]]:
        """A host's write to a device -> node-command requests ((dev, raw request) as it would arrive on the
        gateway's `<root>/<dev>/cmd`) for the gateway's command dispatcher, where the gateway checks the operator's signature, role and freshness and audits
        the outcome: the authority rules are applied in one place, where commands act.

        A DCMD carrying 'Authority/Signed Request' (an operator's request signed with gasguard.authority for
        that cmd topic) forwards exactly that request: what the signed body says is what is done, whatever
        control metrics ride beside it. A DCMD without one is forwarded unsigned, one request per written
        control metric, so that its refusal is made, counted and put on the audit record there."""
        try:
            dev_id = int(dev_hex, 16)
        except ValueError:
            self.refused += 1
            return []
        p = _parse(payload)
        if p is None:
            self.refused += 1
            return []
        signed, reqs = None, []
        for m in p.metrics:
            name = m.name or _device_name(dev_id, m.alias)
            v = M.read_value(m)
            if name == "Authority/Signed Request" and isinstance(v, str) and v:
                signed = v
            elif name in ("Node Control/Reset", "Node Control/Selftest", "Node Control/Status") and v:
                reqs.append({"cmd": name.rsplit("/", 1)[1].lower()})
            elif name and name.startswith("Parameters/") and name[11:] in _PARAM_IDS and isinstance(v, int):
                reqs.append({"cmd": "set_param", "param": _PARAM_IDS[name[11:]], "value": v})
            else:
                self.refused += 1
                log.warning("sparkplug: DCMD metric %r for %s refused: not a writable metric", name, dev_hex)
        if signed is not None:
            try:
                ok = isinstance(json.loads(signed), dict)
            except ValueError:
                ok = False
            if not ok:
                self.refused += 1
                log.warning("sparkplug: DCMD for %s: 'Authority/Signed Request' is not a signed request", dev_hex)
                return []
            raws = [signed.encode()]        # the bytes the operator signed, unchanged
        else:
            raws = []
            for i, r in enumerate(reqs):
                r["request_id"] = f"sparkplug:{self.node}:{dev_hex}:{p.timestamp}:{i}"
                r["source"] = "sparkplug"
                raws.append(json.dumps(r, separators=(",", ":")).encode())
        out = []
        for raw in raws:
            if len(self.commands) + len(out) >= MAX_COMMANDS:
                self.refused += 1
                log.error("sparkplug: %d DCMD requests wait already: one for %s refused", MAX_COMMANDS, dev_hex)
                continue
            out.append((dev_id, raw))
        self.commands.extend(out)
        return out


def _parse(payload: bytes):
    p = Payload()
    try:
        p.ParseFromString(payload)
    except Exception:        # protobuf's DecodeError and friends: a garbled host message is refused, counted
        log.warning("sparkplug: a command payload that is not a Sparkplug B payload was refused")
        return None
    return p


def _node_name(alias: int) -> str | None:
    return M.NODE_METRICS[alias].name if alias < len(M.NODE_METRICS) else None


def _device_name(dev_id: int, alias: int) -> str | None:
    if alias >> 8 != dev_id or (alias & 0xFF) >= len(M.DEVICE_METRICS):
        return None
    return M.DEVICE_METRICS[alias & 0xFF].name
