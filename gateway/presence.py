"""Presence: which devices are online, where each was last heard, and the retained `<dev>/state` they get.

A device's online state (first sight, a new state byte, back online, the refresh) is not spooled: it is derived
from what presence keeps, so the device is marked due (`due`, once however often it falls due meanwhile) and the
publisher builds its message from the device's presence as it is when there is room - after the readings ready to
go, or ahead of them once the oldest has waited publisher.STATE_WAIT (issue 17). Each state costs one message
however many times it fell due while waiting (a backlog after an outage held one spooled row per device per
refresh, most of them superseded), and nothing of it is built in ingest's hot path. A kill loses the states still
due; the next start has no presence either, and each device's state is published again when it is next heard.
The offline state (gone_quiet) is the exception: nothing re-derives it after a restart, so it is spooled, and
a state due for the device before it is dropped (superseded).

Kept apart from the replay state (verify.ReplayState: counters and duplicate memory, the security side):
presence is what the gateway tells the district about a device, never what decides whether a frame is
accepted. One slotted object per heard device (a district has ~330,000: memory matters).
"""

from __future__ import annotations

import json
from collections import deque

from gasguard.firmware import bounds
from gasguard.protocol import topics

from . import payloads
from .spool import STATE, Item
from .transports import Route, Transport


SWEEP_SLICE = 20_000     # devices gone_quiet checks a call (~1 ms)
NEVER = -1e18            # Presence.pub of a device never published: never heard (heard() publishes at once)


def offline_timeout(cfg, device) -> float:
    """Seconds of silence before a device is published offline: `limits.offline_after`, or
    `limits.offline_missed_reports` of the device's own report periods if that is longer. A household meter
    on battery reports every 900 s; one fixed timeout either calls it offline between two reports or
    notices a dead regulator station far too late."""
    if device is None:
        return cfg.offline_after
    report_s = (device.config or {}).get("report_s") or bounds.DEFAULTS[device.profile]["report_s"]
    return max(cfg.offline_after, cfg.offline_missed * float(report_s))


class Presence:
    """One heard device, as the district sees it."""

    __slots__ = ("online", "last_seen", "sbyte", "pub", "via", "rx",
                 "r_fcnt", "r_gas", "r_pressure", "r_battery", "r_state", "r_inlet", "r_t", "silence")

    def __init__(self):
        self.online = False                # retained <dev>/state: as last published
        self.last_seen = 0.0
        self.sbyte: int | None = None      # the last state byte heard
        self.pub = NEVER                   # when <dev>/state was last published
        self.via: Transport | None = None  # the transport the device was last heard on (downlinks go there)
        self.rx: dict | None = None        # ... and how (forwarder EUI, frequency): the transport's route
        # the last reading, for the retained state (slots, not a 7-tuple: 48 bytes less per device);
        # r_t is None until the device sent one
        self.r_fcnt = self.r_gas = self.r_pressure = self.r_battery = self.r_state = self.r_inlet = None
        self.r_t: float | None = None
        self.silence = 0.0                 # seconds of silence before offline (offline_timeout), 0 = not yet set


class PresenceTable:
    """Presence of every heard device; builds the retained state messages (spool items) it implies."""

    def __init__(self, cfg, gateway_topics: topics.GatewayTopics):
        self.cfg, self.topics = cfg, gateway_topics
        self.gateway_json = json.dumps(cfg.gateway_id)      # (state_text: once, not per message)
        self.devices: dict[int, Presence] = {}
        # kept as devices go online and offline (counts() walked every device: ~31 ms at 330,000, every 5 s)
        self.n_online = self.n_heard = 0
        self.sweep: list[int] = []         # gone_quiet's walk: a snapshot of the devices, SWEEP_SLICE a tick
        self.sweep_at = 0
        # devices whose retained state is to be published -> when it first fell due (clock time); a device is in it
        # once (bounded by the devices heard). Their order is `due_order`'s, oldest first: taking the oldest as
        # next(iter(due)) walked past every slot emptied before it (a dict compacts only as it grows), so draining
        # n states cost O(n^2) - 23 ms for 5,000, ~1 s for 50,000, and a district's 330,000 after a restart far more.
        # A device dropped from `due` (gone_quiet) stays in the order until reached, and is skipped there.
        self.due: dict[int, float] = {}
        self.due_order: deque[int] = deque()

    def get(self, dev: int) -> Presence | None:
        return self.devices.get(dev)

    def _of(self, dev: int) -> Presence:
        st = self.devices.get(dev)
        if st is None:
            st = self.devices[dev] = Presence()
        return st

    def route(self, dev: int, via: Route, rx: dict) -> None:
        """The device was heard (its frame is committed) on `via`: downlinks to it go there."""
        self.routes(((dev, via, rx),))

    def routes(self, heard) -> None:
        """route() for each (dev, via, rx) of a committed group, in order, in one call (a call or two less a
        reading: every accepted frame has its route set)."""
        devices = self.devices
        for dev, via, rx in heard:
            st = devices.get(dev)
            if st is None:
                st = devices[dev] = Presence()
            st.via, st.rx = via, rx

    def heard(self, dev: int, f: dict, now: float, mid: str, device=None) -> bool:
        """Does the device's retained <dev>/state fall due with this frame (ingest hands it to fell_due once the
        frame is committed)? On first sight, on a change of the state byte or back online, else at most every
        third of the device's offline timeout (so the retained last reading stays fresh without one message per
        reading)."""
        st = self.devices.get(dev)
        if st is None or not st.silence:
            st = self.first_heard(dev, device)
        sbyte = f.get("state")
        st.last_seen = now
        if f["type"] == "reading":
            # the entry is built only when a state message is (hot path); the fields, not the frame (memory)
            st.r_fcnt, st.r_gas, st.r_pressure, st.r_battery, st.r_state, st.r_inlet, st.r_t = (
                f["fcnt"], f["gas"], f["pressure"], f["battery"], f["state"], f.get("inlet"), now)
        # (a frame without a state byte - an alarm, an ack - changes none: the refresh or back online only)
        if not self.falls_due(st, st.sbyte if sbyte is None else sbyte, now):
            return False
        self.published(dev, now, sbyte)
        return True

    def first_heard(self, dev: int, device=None) -> Presence:
        """A device's presence as its first frame is accepted (heard, and the reading lane for a first reading):
        new, online False and never published, its silence set and counted as heard."""
        st = self._of(dev)
        if not st.silence:
            st.silence = offline_timeout(self.cfg, device)
        if st.pub == NEVER:
            self.n_heard += 1
        return st

    @staticmethod
    def falls_due(st: Presence, sbyte: int | None, now: float) -> bool:
        """Does a frame with state byte `sbyte` now publish the device's retained state (heard, and the reading
        lane's Python form; gateway/_lane.c has the same condition)? For a device heard before (its silence set):
        back online, a new state byte, or the refresh due."""
        return not st.online or sbyte != st.sbyte or now - st.pub >= st.silence / 3

    def published(self, dev: int, now: float, sbyte: int | None) -> int:
        """The device's retained state falls due now (heard; the reading lane for a reading it took whose state
        falls due): online, with its new state byte. Returns `dev` (the lane appends it to the group's states)."""
        st = self.devices[dev]
        if sbyte is not None:
            st.sbyte = sbyte
        if not st.online:
            self.n_online += 1
        st.online, st.pub = True, now
        return dev

    def fell_due(self, devs: list[int], now: float) -> None:
        """The states of `devs` fell due with frames now committed: to be published (a device already due keeps
        its place and its time)."""
        due, order = self.due, self.due_order
        for dev in devs:
            if dev not in due:
                due[dev] = now
                order.append(dev)

    def next_due(self) -> tuple[float, str, str] | None:
        """The oldest due state as (when it first fell due, topic, text), built from the device's presence now (its
        latest reading); None when none is due. (No spool Item: it is not spooled, so it needs no row id.)"""
        due, order = self.due, self.due_order
        while order:
            dev = order.popleft()
            since = due.pop(dev, None)
            if since is None:
                continue              # dropped as its device went offline (gone_quiet): due states are of online ones
            if not due:
                self.due = {}         # a dict keeps its largest table when emptied: a district's 330,000 is ~20 MB
            st = self.devices[dev]
            return since, self.topics.device(dev, topics.STATE), self.state_text(dev, st.pub, st)
        return None

    def oldest_due(self) -> float | None:
        """When the oldest due state fell due; None when none is."""
        due, order = self.due, self.due_order
        while order:
            since = due.get(order[0])
            if since is not None:
                return since
            order.popleft()                        # dropped meanwhile (gone_quiet)
        return None

    def state_text(self, dev: int, now: float, st: Presence) -> str:
        """The retained <dev>/state message's JSON, as of `now`, from the device's presence."""
        return payloads.state_text(self.gateway_json, dev, now, st.online, st.last_seen, st.r_fcnt, st.r_t, st.r_gas,
                                   st.r_pressure, st.r_battery, st.r_state, st.r_inlet)

    def state_item(self, dev: int, now: float, st: Presence) -> Item:
        """state_text as a spool item (the offline state, which is spooled)."""
        return Item(STATE, dev, self.state_text(dev, now, st), f"{self.cfg.gateway_id}:{dev:08x}:state:{now:.3f}",
                    now, topic=self.topics.device(dev, topics.STATE), retain=True)

    def gone_quiet(self, now: float) -> list[tuple[int, float, Item]]:
        """Devices silent past their timeout, now marked offline: (dev, seconds silent, their state item).
        Each call walks at most SWEEP_SLICE devices, on from where the last one stopped (the daemon calls it
        every tick): the walk of a district's 330,000 held the event loop ~17 ms every second, and an alarm
        arriving then waited. A device goes offline at most a sweep (~17 ticks at 330,000) after its timeout,
        which is at least limits.offline_after (15 minutes by default)."""
        if self.sweep_at >= len(self.sweep):
            self.sweep, self.sweep_at = list(self.devices), 0
        end = self.sweep_at + SWEEP_SLICE
        part = self.sweep[self.sweep_at:end]
        self.sweep_at = end
        out = []
        devices = self.devices
        for dev in part:
            st = devices.get(dev)
            if st is not None and st.online and now - st.last_seen > st.silence:   # set with the first online state
                st.online, st.pub = False, now
                self.n_online -= 1
                self.due.pop(dev, None)            # its online state, if still due, is superseded
                out.append((dev, now - st.last_seen, self.state_item(dev, now, st)))
        return out

    def counts(self) -> tuple[int, int]:
        """(online, offline) among the devices heard."""
        return self.n_online, self.n_heard - self.n_online
