"""Ingest: transports deliver raw frames; each group of them is verified, committed, acked, observed.

Order of effects for one accepted frame (the invariants the fault tests check):
  1. verify (MIC, counter, registry, policy): verify.Verifier;
  2. one SQLite transaction (outbox.commit): the messages + the device's uplink counter + the downlink
     counter of its ack + the alarm/event identity;
  3. the ack downlink (alarms, events), by the dispatcher - only after 2, so an acked alarm is never lost;
  4. the publisher is woken (outbox), observers see it (their outputs go to the outbox in turn); the
     observation of an alarm or event was journalled in 2 and is settled with the observers' outputs and
     state, so a kill between 3 and 4 is made good at the next start (issue 12).
Frames are processed in arrival order, in groups that share one transaction (group commit), so a fsync
is paid per group, not per frame; an alarm moves ahead of its group and of the queue (alarms_first). A group
is verified in chunks of ~4 ms (GROUP_BUDGET) with the transports' turn between them (Ingest._chunks): with a
backlog, one commit serves up to GROUP_MAX frames, and an alarm read meanwhile waits for one chunk, then is
committed with the chunks verified before it. Step 1
for the common frame - a reading of a known device at its next counter that changes no retained state - is the reading
lane (gateway/fastlane.py: one call, the same outcome; not with plugins, which observe each frame's fields). With `[ingest] commit_thread`
(issue 17, off by default), a group of readings (nothing to ack) arriving while more frames wait is written at
once and its fsync runs on a thread while the next group is verified and written; it is counted, published
and observed once that fsync returned.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from operator import itemgetter

from gasguard import logs
from gasguard.protocol import counter, frame, topics
from gasguard.protocol.const import ALARM as T_ALARM, EVENT as T_EVENT, READING as T_READING, R_OK, UP

from . import payloads
from .burstlog import BurstLog
from .dispatch import Dispatcher
from .fastlane import ReadingLane, _lane, add_to_run
from .observe import Observers
from .outbox import Outbox
from .presence import PresenceTable
from .micwatch import MicWatch
from .preverify import PreVerifier
from .spool import ALARM, EVENT, READING, STATE, Item, SpoolError
from .transports import Route
from .verify import Rejected, Verifier

_RX = itemgetter(1)          # a queued frame's rx: (raw, rx, route)

log = logging.getLogger("gasguard.gateway")
# a group's headers read in one C call where the lane is compiled (gateway/_lane.c: has_type, devices), else the
# Python loops below (has_alarm, group_devices)
_has_type = _lane.has_type if _lane is not None else None
_frame_devices = _lane.devices if _lane is not None else None

QUEUE_MAX = 10_000     # frames waiting for verification; a UDP burst past this is counted, not buffered
GROUP_MAX = 512        # frames per transaction
# A chunk is sized for GROUP_BUDGET s of verification, by the recent cost of a frame (Ingest.per_frame), between
# GROUP_MIN and GROUP_MAX frames: an alarm arriving while a chunk is verified waits for it (it goes ahead of the
# queue, not into the chunk in progress). A frame takes 18.6-24.6 µs to verify in the steady state (5,000-25,000
# devices; ~160-215 frames to the budget), ~100 µs at first sight (~40): 512 of them take 10-13 ms, or ~50.
# Chunks verified while more frames wait share one commit, up to GROUP_MAX frames: throughput, as each commit
# pays an fsync (Ingest._chunks; BENCHMARKS.md, issue 17). With the sync thread or the verification worker a
# group is its own commit, and far behind (the queue over half full) it is GROUP_MAX frames (Ingest._take)
GROUP_BUDGET = 0.004
GROUP_MIN = 32
# A stream transport waits while this many frames wait (datagrams: up to QUEUE_MAX). It reads its line while there
# is room (serial.py), so a backlog is verified and committed GROUP_MAX at a time; the rest stays on the line, where
# the next read's alarms still go ahead of what is queued.
STREAM_MAX = GROUP_MAX
AHEAD_MAX = 256        # alarms waiting ahead of the queue (FrameQueue.put_ahead)
PIPELINE = 2           # groups in the verification worker at once: one being verified, one ready
WRITTEN_MAX = 4        # groups of readings written and waiting for a sync (then ingest waits for the disk)
EVENT_KIND = 0x100     # idents table: (dev, alarm code | cleared<<7) for alarms, (dev, EVENT_KIND) for events


def has_alarm(group: list) -> bool:
    """One header byte a frame: the common group or read holds no alarm (hot path; compiled: _lane.has_type)."""
    if _has_type is not None and type(group) is list:
        r = _has_type(group, T_ALARM)
        if r is not None:
            return r
    for raw, _, _ in group:
        if raw and (raw[0] >> 3) & 7 == T_ALARM:
            return True
    return False


def group_devices(group: list) -> list[int]:
    """The device id of each frame that has one, in order, from its header (unchecked): the registry
    read-ahead's, the queue's waiting devices and the verification worker's busy ones (hot path; compiled:
    _lane.devices)."""
    if _frame_devices is not None and type(group) is list:
        devs = _frame_devices(group)
        if devs is not None:
            return devs
    return [int.from_bytes(raw[1:5], "big") for raw, _rx, _route in group if raw is not None and len(raw) >= 5]


def alarms_first(group: list, busy=(), room: float = float("inf")) -> tuple[list, list]:
    """Alarm priority at ingest (a header peek, no verification): an alarm whose device has no earlier
    frame in this group (nor in `busy`: devices with frames still in the verification worker, or waiting in the
    queue) moves to a group of its own, committed and published before the rest; at most `room` of them. Nothing
    else moves, so readings keep their arrival order and each device its frame order (counters verify as they
    would). ([], group) when no alarm can move."""
    if not has_alarm(group):
        return [], group
    first, rest, seen = [], [], set()
    for g in group:
        h = frame.peek(g[0]) if g[0] is not None else None
        if h is not None:
            if h[0] == T_ALARM and h[1] not in seen and h[1] not in busy and len(first) < room:
                first.append(g)
                seen.add(h[1])
                continue
            seen.add(h[1])
        rest.append(g)
    return first, rest


def _devices(item) -> list[int]:
    """The devices of a queue entry (one frame, or a read's list of them), by their headers."""
    return group_devices(item if type(item) is list else [item])


class FrameQueue(asyncio.Queue):
    """The verification queue, bounded in frames: an entry is one frame (raw, rx, route) or a transport's whole
    read of them (a list: one queue operation per read, not per frame, on the hot path). full() counts frames
    against QUEUE_MAX (datagrams); a stream transport waits while STREAM_MAX frames wait (put_stream; it may pass
    the bound by one read).

    Alarms ahead (issue 17): an alarm whose device has no frame waiting (`ahead`) does not queue behind the
    readings of other devices. It waits in `ahead`, which the next get() returns before anything queued, so at
    saturation (QUEUE_MAX frames waiting, ~20 groups) it waits for the group being processed, not for the whole
    queue, and a datagram flood that fills the queue refuses readings, not alarms. A device's frames keep their
    order: its alarm stays in line behind its own waiting frames. `ahead` holds at most AHEAD_MAX frames (past
    that, alarms queue in line as before): a sender forging alarm headers gets no more than that."""

    def _init(self, maxsize):
        super()._init(maxsize)
        self.frames = 0
        self.stream_max = min(STREAM_MAX, maxsize) if maxsize > 0 else STREAM_MAX
        self.room = asyncio.Event()     # set by a get that leaves fewer than stream_max frames in line (put_stream)
        self.stream_waits = 0           # stream transports waiting for room now (put_stream)
        self.ahead: deque = deque()
        # the devices with a frame in the queue, while known: built by the first alarm after a get (a scan of
        # the queue, ~0.3 µs a frame), kept up by puts, dropped at the next get (the take of a group) - so a
        # scan costs at most once per group, however many alarms arrive
        self.queued: set | None = None

    def _put(self, item):
        self.frames += len(item) if type(item) is list else 1
        if self.queued is not None:
            self.queued.update(_devices(item))
        super()._put(item)

    def _get(self):
        self.queued = None
        if self.ahead:
            out = list(self.ahead)
            self.ahead.clear()
            self.frames -= len(out)
            return out
        item = super()._get()
        self.frames -= len(item) if type(item) is list else 1
        if self.in_line() < self.stream_max:
            self.room.set()
        return item

    def in_line(self) -> int:
        """Frames waiting in the queue proper (not the alarms ahead): what the bounds count."""
        return self.frames - len(self.ahead)

    async def put_stream(self, item) -> None:
        """A stream transport's put: waits while stream_max frames wait in line (at most QUEUE_MAX: put_nowait
        cannot be refused)."""
        while self.in_line() >= self.stream_max:
            self.room.clear()
            self.stream_waits += 1
            try:
                await self.room.wait()
            finally:
                self.stream_waits -= 1
        self.put_nowait(item)

    def empty(self) -> bool:
        return not self._queue and not self.ahead

    def qsize(self) -> int:
        return self.frames

    def full(self) -> bool:
        return self.in_line() >= self._maxsize > 0

    def put_ahead(self, frames: list) -> list:
        """The alarms of `frames` (one read, in order) that may go ahead are put there (alarms_first, the queued
        frames' devices as busy); the rest is returned, in order, for the queue."""
        if not has_alarm(frames):
            return frames
        if self.queued is None:
            self.queued = {d for item in self._queue for d in _devices(item)}
        first, rest = alarms_first(frames, self.queued, AHEAD_MAX - len(self.ahead))
        if first:
            self.ahead.extend(first)
            self.frames += len(first)
            self._wakeup_next(self._getters)
        return rest

    def take_all(self) -> list:
        """Every queued frame, in order (at stop, and for the fuzzer)."""
        out: list = []
        while not self.empty():
            item = self.get_nowait()
            out.extend(item) if type(item) is list else out.append(item)
        return out


def readings_only(group: list) -> bool:
    """Every frame of the group is a reading (or line noise), by its header alone: such a group acks nothing
    and reserves no downlink counter, so its fsync may be left to the sync thread ([ingest] commit_thread)."""
    for raw, _rx, _route in group:
        if raw is not None and (not raw or (raw[0] >> 3) & 7 != T_READING):
            return False
    return True


class _Prepared:
    """One verified group, between its verification and its commit."""
    __slots__ = ("now", "items", "counters", "idents", "undo", "acks", "accepted", "routes", "results",
                 "down", "observations", "journal", "by_type", "states")

    def __init__(self, now: float):
        self.now = now
        self.items: list[Item] = []
        self.counters: dict = {}
        self.idents: dict = {}
        self.undo: list = []          # (dev, previous counter) per accepted frame, for a rollback
        self.acks: list = []          # (dev, ack fields, key) to seal after commit
        self.accepted: list = []      # (mid, f, device, rx, route, retransmission), but the reading lane's
        self.routes: list = []        # (dev, route, rx) per accepted frame: where downlinks go once committed
        self.results: list = []
        self.down: dict = {}          # downlink counters reserved by this group's acks
        self.observations: list = []
        self.journal: list = []
        self.by_type: dict = {}       # accepted frames per type (metrics, counted once per group)
        self.states: list = []        # devices whose retained state fell due (presence.fell_due once committed)

    def lanes(self) -> set[int]:
        """The lanes its commit wakes the publisher for: its items', and the state lane when devices' states fell
        due (not spooled: presence.due, which the publisher drains after the spooled states)."""
        lanes = {it.lane for it in self.items}
        if self.states:
            lanes.add(STATE)
        return lanes

    def urgent(self) -> bool:
        """Something in it is waited for (an ack, a command's answer, an alarm's or event's identity): it is
        committed at once, not held for the chunks that follow."""
        return bool(self.acks or self.results or self.idents or self.journal)

    def merge(self, g: _Prepared) -> None:
        """Take a later chunk's verified frames into this commit (Ingest._chunks), in order. `down` is shared:
        the chunk reserved its downlink counters in this one's dict."""
        self.items += g.items
        self.counters.update(g.counters)          # a later chunk's counter for a device is the later one
        self.idents.update(g.idents)
        self.undo += g.undo
        self.acks += g.acks
        self.accepted += g.accepted
        self.routes += g.routes
        self.results += g.results
        self.observations += g.observations
        self.journal += g.journal
        self.states += g.states
        for t, n in g.by_type.items():
            self.by_type[t] = self.by_type.get(t, 0) + n


class Ingest:
    def __init__(self, cfg, verifier: Verifier, outbox: Outbox, dispatcher: Dispatcher, presence: PresenceTable,
                 observers: Observers, idents: dict, metrics, burst: BurstLog, clock, beat=lambda: None,
                 mic: MicWatch | None = None, pre: PreVerifier | None = None):
        self.cfg, self.verifier, self.outbox, self.dispatcher = cfg, verifier, outbox, dispatcher
        self.presence, self.observers, self.metrics, self.burst, self.clock = presence, observers, metrics, burst, clock
        self.beat = beat                  # progress, for the systemd watchdog
        self.topics = cfg.topics
        self.idents = idents              # (dev, kind) -> identity of the last alarm/event taken (durable)
        self.queue: FrameQueue | None = None      # made on the running loop (start)
        self.accepted_count = 0
        self.per_frame = 25e-6            # s to verify a frame, recent average: sizes the groups (GROUP_BUDGET)
        self.mic = mic or MicWatch(cfg.mic_failures, cfg.mic_window)   # SPEC 5: failed MICs are alarmed
        self.pre = pre                    # the verification worker (the second core), or None
        self.pending: deque = deque()     # (group, now, devices, future of the worker's answers), oldest first
        self.busy: dict[int, int] = {}    # device -> its frames in pending groups (their order must hold)
        # the sync thread (issue 17, [ingest] commit_thread, off by default): a group of readings that arrives
        # while more frames wait is written on the event loop without waiting for the
        # disk (spool deferred_sync); one fsync at a time runs on this thread, covering every group written
        # before it started, while the next groups are verified and written; a group is acted on (counted,
        # published, observed) once a sync after it returned. At most WRITTEN_MAX groups wait for a sync.
        self.commit_thread = cfg.commit_thread
        self.writer: concurrent.futures.ThreadPoolExecutor | None = None
        self.syncing: tuple | None = None       # (future of the fsync, [_Prepared] it makes durable)
        self.written: list[_Prepared] = []      # written since that fsync began
        self.stopped = False
        self.acc: _Prepared | None = None       # chunks verified and not yet committed (_chunks)
        # the common frame's path in one call (gateway/fastlane.py); not with plugins, which observe each
        # frame's fields (the lane builds none)
        self.lane = None if observers.plugins else ReadingLane(verifier, presence)

    def start(self) -> None:
        self.queue = FrameQueue(QUEUE_MAX)

    # -- what transports call ------------------------------------------------------------------------
    async def deliver(self, raw: bytes | None, rx: dict, route: Route) -> None:
        """A stream transport's frame (back-pressure: waits while STREAM_MAX frames wait; an alarm that may go
        ahead does not wait)."""
        f = (raw, rx, route)
        if self.queue.put_ahead([f]):
            await self.queue.put_stream(f)

    async def deliver_many(self, frames: list) -> None:
        """A stream transport's frames of one read, in order: [(raw or None, rx, route or noise reason)]
        (back-pressure: waits while STREAM_MAX frames wait; the alarms that may go ahead do not wait)."""
        if frames:
            frames = self.queue.put_ahead(frames)
            if frames:
                await self.queue.put_stream(frames)

    def deliver_nowait(self, raw: bytes | None, rx: dict, route: Route) -> None:
        """A datagram transport's frame (no back-pressure possible: counted and refused when full; an alarm
        that may go ahead is not refused for the readings waiting)."""
        f = (raw, rx, route)
        if not self.queue.put_ahead([f]):
            return
        try:
            self.queue.put_nowait(f)
        except asyncio.QueueFull:
            self.reject("ingest_overflow", None, rx, "verification queue full")

    def reject(self, reason: str, dev, rx, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        self.burst.event("reject:" + reason, "rejected %s frame from %s via %s: %s", reason,
                         "?" if dev is None else f"{dev:08x}", rx.get("transport") if rx else "?", detail)

    def chunk(self) -> int:
        """Frames to GROUP_BUDGET s of verification at the recent cost of a frame, within GROUP_MIN..GROUP_MAX."""
        return min(GROUP_MAX, max(GROUP_MIN, int(GROUP_BUDGET / self.per_frame)))

    def _take(self, first, limit: int | None = None) -> list:
        """`first` and what follows it in the queue, up to `limit` frames (a read is not split, so the limit may
        be passed by one read). Without a limit, as a group of its own commit: the budget's chunk, or GROUP_MAX
        when far behind (the sync thread, the verification worker; Ingest._chunks commits chunks together)."""
        group = list(first) if type(first) is list else [first]
        q = self.queue
        if limit is None:
            # far behind (the queue over half full), GROUP_MAX: small groups pay a commit and an fsync each, and
            # a gateway that cannot keep up would fall further behind and refuse datagrams. (Growing with any
            # backlog - a quarter of it - undid the budget at a steady 10,000/s: every short stall left a backlog)
            limit = GROUP_MAX if q.qsize() > QUEUE_MAX // 2 else self.chunk()
        while len(group) < limit and not q.empty():
            item = q.get_nowait()
            group.extend(item) if type(item) is list else group.append(item)
        return group

    async def run(self) -> None:
        if self.pre is not None:
            await self._run_pipelined()
        if self.commit_thread and self.writer is None:
            self.writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spool-sync")
        while not self.stopped:
            if self.syncing is None and self.written:
                self._sync_start()
            if self.syncing is None:
                item = await self.queue.get()
            elif len(self.written) >= WRITTEN_MAX:
                await self._landed()                   # the disk is behind: verify no further ahead of it
                continue
            elif self.queue.empty():
                item = await self._next_or_landed()    # new frames are verified while the disk syncs
                if item is None:
                    continue
            else:
                item = self.queue.get_nowait()
            if self.writer is None:
                await self._chunks(self._take(item, self.chunk()))
            else:
                first, rest = alarms_first(self._take(item))
                if first:
                    # its own, small transaction, synced at once (which makes every group written before it
                    # durable too) and acked: it never waits for the sync thread
                    self.process(first)
                if rest:
                    # the fsync is deferred only while more frames already wait (throughput-bound: a burst, a
                    # drain); at a steady pace each group syncs at once, so a new alarm never finds the disk
                    # busy with another fsync (its p99 doubled when every group's sync ran on the thread)
                    self.process(rest, durable=not (not self.queue.empty() and readings_only(rest)))
            self.beat()
            # the transports' turn between groups: get() does not yield while frames wait, so at saturation
            # this loop would work through the whole queue (~20 groups, ~300 ms) before a read could put an
            # alarm ahead of it
            await asyncio.sleep(0)
        # drain() took over at stop: nothing more to do here until the daemon cancels this task (returning
        # would read as a crash to the supervisor and restart it)
        await asyncio.get_running_loop().create_future()

    async def _chunks(self, group: list) -> None:
        """Verify in chunks, commit in groups. A chunk is GROUP_BUDGET s of verification; between chunks the
        transports get their turn, and the chunks verified so far are held for one commit (self.acc) while
        more frames wait, up to GROUP_MAX frames: with a backlog a commit and its fsync serve many chunks
        (throughput), while an alarm read meanwhile waits for one chunk, not for a whole group's verification.
        That alarm comes out of the queue next (FrameQueue.ahead) and is committed with the chunks verified
        before it, in the same transaction: one fsync. Commits follow verification order, so a device's
        counter on disk never goes back. What is waited for (acks, a command's answer) is committed at once."""
        q, n = self.queue, 0
        while True:
            first, rest = alarms_first(group)
            if first:
                self._add(first)
                self._flush()             # the alarm, with what was verified before it
            if rest:
                self._add(rest)
                n += len(rest)
                if self.acc is not None and self.acc.urgent():
                    self._flush()
            if self.acc is None or n >= GROUP_MAX or q.empty():
                break
            self.beat()
            await asyncio.sleep(0)        # the transports' turn: an alarm read now goes ahead of the queue
            if q.empty():                 # (so too after drain(), which committed what was gathered)
                break
            group = self._take(q.get_nowait(), min(self.chunk(), GROUP_MAX - n))
        self._flush()

    def _add(self, group: list) -> None:
        """Verify a chunk into the commit being gathered (a defect refuses the chunk, counted; what was verified
        before it stays)."""
        g = self._verify(group, down=None if self.acc is None else self.acc.down)
        if g is None:
            return
        if self.acc is None:
            self.acc = g
        else:
            self.acc.merge(g)

    def _flush(self) -> None:
        """Commit what _chunks gathered."""
        g, self.acc = self.acc, None
        if g is None:
            return
        try:
            self._commit(g)
        except Exception as e:  # noqa: BLE001 - as in process()
            self._defect(g.routes, e)

    def _sync_start(self) -> None:
        groups, self.written = self.written, []
        self.syncing = (self.writer.submit(self.outbox.sync), groups, self.outbox.sync_mark())

    async def _next_or_landed(self):
        """The next queued frame, or None once the sync in flight landed (its groups then acted on)."""
        c = self.syncing
        landed = asyncio.wrap_future(c[0])
        landed.add_done_callback(lambda f: f.cancelled() or f.exception())   # read in _settle, not here
        getter = asyncio.ensure_future(self.queue.get())
        try:
            await asyncio.wait((landed, getter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()           # nothing taken: the frame stays queued
        if getter.done() and not getter.cancelled():
            return getter.result()
        self._settle(c)
        return None

    async def _landed(self) -> None:
        """Wait for the sync in flight, then act on its groups."""
        c = self.syncing
        if c is None:
            return
        try:
            await asyncio.wrap_future(c[0])
        except Exception:  # noqa: BLE001 - the outcome is read and handled in _settle
            pass
        self._settle(c)

    def _settle(self, c: tuple) -> None:
        if self.syncing is not c:
            return                        # settled already (drain at stop)
        self.syncing = None
        fut, groups, upto = c
        try:
            fut.result()                  # blocks only in drain(), at stop
        except SpoolError as e:
            self._sync_failed(e)
        self._synced(groups, upto)

    def _sync_failed(self, e: SpoolError) -> None:
        # the rows are written, their fsync failed: the disk reports I/O errors. They stay (and go out): there
        # is no taking back a commit; loud, counted
        self.metrics.spool_errors.inc()
        self.storage_fault("spool", e.kind, 0, e)

    def _synced(self, groups: list, upto: int) -> None:
        self.outbox.synced(upto)          # the publisher may take them now
        for g in groups:
            self._committed(g)

    async def _run_pipelined(self) -> None:
        """Two cores (gateway/preverify.py): group k+1 is decoded and MIC-checked in the worker while group k
        is committed here. Groups are processed in the order they were taken, so per-device order holds;
        an alarm whose device has nothing in the worker skips it (processed at once, as without it)."""
        while True:
            while len(self.pending) < PIPELINE and (not self.pending or not self.queue.empty()):
                group = self._take(await self.queue.get() if not self.pending else self.queue.get_nowait())
                first, rest = alarms_first(group, self.busy)
                if first:
                    self.process(first)
                if rest and not self.pre.ready and not self.pending:
                    self.process(rest)        # the worker is still starting: verified here meanwhile
                    self.beat()
                elif rest:
                    now = self.clock()
                    try:
                        fut = self.pre.submit(now, rest)
                    except Exception as e:  # noqa: BLE001 - a broken worker pool: in-process from now on
                        self.pre.ready = False
                        log.error("verification worker is gone (%s); verifying in-process from now on", e)
                        self.process(rest)
                        self.beat()
                        continue
                    devs = group_devices(rest)
                    for d in devs:
                        self.busy[d] = self.busy.get(d, 0) + 1
                    self.pending.append((rest, now, devs, fut))
            head = self.pending[0]
            try:
                answers = await head[3]
            except Exception as e:  # noqa: BLE001 - a dead worker: this group is verified here, loudly
                self.burst.event("preverify", "verification worker failed (%s); verifying in-process", e)
                answers = None
            if not self.pending or self.pending[0] is not head:
                continue                  # drain() took it meanwhile (stopping)
            self._pop()
            self.process(head[0], answers, head[1])
            self.beat()

    def _pop(self) -> tuple:
        group, now, devs, fut = self.pending.popleft()
        for d in devs:
            n = self.busy.pop(d) - 1
            if n:
                self.busy[d] = n
        return group, now, devs, fut

    def drain(self) -> None:
        """At stop: the groups written and not yet synced (synced here), the groups in the worker
        (taken first, so first, in order, verified here), then what the transports delivered and is still
        queued are processed, not dropped."""
        self.stopped = True               # the run task, if it wakes before it is cancelled, does nothing more
        self._flush()                     # chunks verified and not yet committed (_chunks), first
        if self.syncing is not None:
            self._settle(self.syncing)
        if self.written:                  # written, not synced yet: synced here
            groups, upto, self.written = self.written, self.outbox.sync_mark(), []
            try:
                self.outbox.sync()
            except SpoolError as e:
                self._sync_failed(e)
            self._synced(groups, upto)
        if self.writer is not None:
            self.writer.shutdown(wait=True)
            self.writer = None
        while self.pending:
            group, _now, _devs, fut = self._pop()
            fut.cancel()
            self.process(group)
        rest = self.queue.take_all() if self.queue is not None else []
        if rest:
            self.process(rest)

    # -- faults: refused and counted, never a crash loop (issue 12 item 4) ----------------------------------
    def storage_fault(self, store: str, kind: str, n: int, e) -> None:
        """A spool or registry fault mid-run: n frames refused (counted by the caller), a metric, and one log
        line per burst; ingest keeps running and the next group tries the file again."""
        self.metrics.storage_errors.labels(store, kind).inc()
        what = "SPOOL WRITE FAILED" if store == "spool" else "REGISTRY UNREADABLE"
        self.burst.event(f"storage:{store}:{kind}", "%s (%s): %d frames NOT accepted (devices retransmit alarms "
                         "until acked): %s", what, kind, n, e, level=logging.CRITICAL)

    def mic_failed(self, dev: int, rx: dict, now: float) -> None:
        """limits.mic_failures failed MICs for one device within limits.mic_window: a published security
        event and a metric, once per window (SPEC 5: failed tries are counted and alarmed)."""
        n = self.mic.failed(dev, now)
        if n is None:
            return
        self.metrics.security_events.labels("mic_failures").inc()
        where = {k: v for k, v in (rx or {}).items() if k in ("transport", "port", "gw") and v is not None}
        self.burst.event("security:mic", "SECURITY: %d failed MICs within %.0f s via %s (forged frames, or a node "
                         "with a stale key: check it with gasguard device show)", n, self.cfg.mic_window,
                         ", ".join(f"{k}={v}" for k, v in where.items()) or "?", level=logging.CRITICAL, allow=20,
                         extra=logs.fields(device=dev))
        body = payloads.gateway_event(self.cfg.gateway_id, now, "mic_failures",
                                      {"dev": f"{dev:08x}", "failures": n, "window_s": self.cfg.mic_window,
                                       "rx": where})
        self.outbox.put([(self.topics.event, body, "event", False)], now)

    # -- one group ---------------------------------------------------------------------------------------
    def process(self, group: list, pre: list | None = None, now: float | None = None, *,
                durable: bool = True) -> None:
        """Verify a group of frames and commit what is accepted in one transaction. Every frame ends accepted
        or counted under a rejection reason, whatever fails: a defect refuses its group as `internal_error`
        (one traceback per window), it does not kill the task and lose the frames uncounted. `pre`: the
        verification worker's answer for each frame (gateway/preverify.py), or None; `now`: when the group
        was taken. `durable=False` (the sync thread, readings only): written without waiting for the disk and
        acted on after the next sync; writes stay in order on the event loop, so verification always sees
        every counter written before - only durability, and what waits for it, is deferred."""
        g = self._verify(group, pre, now)
        if g is None:
            return
        try:
            self._commit(g, durable)
        except Exception as e:  # noqa: BLE001 - a defect must not turn into a restart loop that loses frames
            self._defect(group, e)

    def _verify(self, group: list, pre: list | None = None, now: float | None = None,
                down: dict | None = None) -> _Prepared | None:
        """_prepare, timed for the recent cost of a frame (per_frame); a defect refuses the group, counted: None."""
        try:
            t = time.perf_counter()
            g = self._prepare(group, pre, now, down)
            # (half of GROUP_MIN frames still measures the cost of a frame - below it, a group's fixed costs
            # would - and a chunk at the GROUP_MIN floor must update it, or a cost measured at first sight would
            # keep chunks at the floor: seen, 31 frames and 128 µs)
            if len(group) >= GROUP_MIN // 2:
                self.per_frame += 0.25 * ((time.perf_counter() - t) / len(group) - self.per_frame)
            return g
        except Exception as e:  # noqa: BLE001 - a defect must not turn into a restart loop that loses frames
            self._defect(group, e)
            return None

    def _defect(self, group: list, e: BaseException) -> None:
        self.metrics.rejected.labels("internal_error").inc(len(group))
        self.burst.exception("internal_error", "ingest failed on a group of %d frames (refused, counted as "
                             "internal_error): %r", len(group), e)

    def _commit(self, g: _Prepared, durable: bool = True) -> None:
        try:
            self.outbox.commit(g.items, g.counters, g.idents, journal=g.journal, wake=False, durable=durable)
        except SpoolError as e:        # full, read-only, damaged, I/O: refused and counted, never a crash
            self._refused(g, e)
            return
        if not durable:
            self.written.append(g)
            return
        lanes = self._durable_now()
        self._committed(g)
        self.outbox.wake(lanes)       # the readings' batches after this group's alarm, not before it

    def _durable_now(self) -> set:
        """A commit synced at once made every group written before it durable: those are acted on first, so
        observers see frames in arrival order (a reading sent before an alarm is observed before it); the sync
        thread's answer for them is then not waited for. The publisher is not woken for them here: the lanes
        to wake are returned."""
        groups = []
        c = self.syncing
        if c is not None:
            self.syncing = None
            groups += c[1]
        if self.written:
            groups += self.written
            self.written = []
        lanes: set = set()
        for g in groups:
            self._committed(g, wake=False)
            lanes |= g.lanes()
        return lanes

    def _rollback(self, g: _Prepared) -> None:
        for dev, prev in reversed(g.undo):
            self.verifier.rollback(dev, prev)

    def _refused(self, g: _Prepared, e: SpoolError) -> None:
        self._rollback(g)
        self.metrics.spool_errors.inc()
        self.metrics.rejected.labels(f"spool_{e.kind}").inc(len(g.routes))
        self.storage_fault("spool", e.kind, len(g.routes), e)

    def _prepare(self, group: list, pre: list | None = None, now: float | None = None,
                 down: dict | None = None) -> _Prepared | None:
        """Verify a group: what it will commit, or None when nothing in it was accepted. Changes the verifier's
        working counters (undone by _rollback when the commit fails) and presence; nothing on disk. `down`:
        the downlink counters already reserved by the commit this group will join (_chunks)."""
        now = self.clock() if now is None else now
        gid, dist = self.cfg.gateway_id, self.cfg.district
        g = _Prepared(now)
        if down is not None:
            g.down = down
        items, counters, idents, undo, acks, accepted = g.items, g.counters, g.idents, g.undo, g.acks, g.accepted
        results, down, by_type = g.results, g.down, g.by_type
        # counted per group, not per frame (hot path); a group read from one transport shares its rx: counted
        # without a Python step per frame
        if group and len(set(map(id, map(_RX, group)))) == 1:
            per_transport = {group[0][1].get("transport", "?"): len(group)}
        else:
            per_transport: dict = {}
            for _raw, rx, _route in group:
                t = rx.get("transport", "?")
                per_transport[t] = per_transport.get(t, 0) + 1
        for t, n in per_transport.items():
            self.metrics.frames_in.labels(t).inc(n)
        verifier, presence = self.verifier, self.presence
        check, accept, heard = verifier.check, verifier.accept, presence.heard
        # the registry checked for changes once a group: the read-ahead and the lane read its LRU as it is then
        readable = verifier.registry.readable()
        if readable and len(group) > 1:   # the group's devices not in the registry LRU, in a few queries
            verifier.registry.prefetch(group_devices(group))
        reading_json, msg_id = payloads.reading_json, payloads.msg_id
        # readings share spool rows (spool.Item): one row per run of routine or non-routine readings (thinning
        # drops only routine ones), at most one batch message's worth each. The run being gathered is `rs`
        # ([texts, bytes, routine, head dev, head msg id]), kept by this loop and by the lane's `run`, which
        # takes the lane's frames in one call
        rs: list = [[], 0, False, None, None]

        def flush() -> None:
            texts = rs[0]
            items.append(Item(READING, rs[3], ",".join(texts), rs[4], now, routine=rs[2], count=len(texts)))
            rs[0] = []
        # (half a batch each: the publisher merges whole rows, so rows of half a batch fill every message)
        most, room = max(1, self.cfg.batch_count // 2), (self.cfg.batch_bytes - payloads.BATCH_HEAD) // 2
        lane = self.lane if pre is None and readable else None   # unreadable: the general path names it
        lane_rx, shared, routes = None, None, g.routes
        lane_run = lane.run if lane else None
        published = lambda dev, sbyte: presence.published(dev, now, sbyte)   # noqa: E731 - the lane's state, due
        states = g.states
        declined = -1     # the frame the lane's run stopped at, of the same rx: take() declined it already
        at, end = 0, len(group)
        while at < end:   # (not a for loop: the lane's run takes many frames at once, and they are not stepped over)
            i = at
            at += 1
            raw, rx, route = group[i]
            if raw is None:
                self.reject(route if isinstance(route, str) else "noise", None, rx, "line noise")
                continue
            if lane is not None:
                if rx is not lane_rx:
                    lane_rx, declined = rx, -1
                    try:
                        shared = lane.group(gid, now, rx)
                    except TypeError:      # an integer past 64 bits in a forwarder's rx: the general path
                        shared = None
                if shared is not None and i != declined:
                    taken = lane_run(group, i, now, shared, rx, undo, counters, routes, rs, states, most, room, flush,
                                     published, UP)
                    if taken > i:
                        declined = at = taken   # (noise there is counted above; another rx resets this)
                        continue
            p = pre[i] if pre is not None else None
            try:
                v = check(raw, now, p)
            except Rejected as r:
                self.reject(r.reason, r.dev, rx, str(r))
                if r.reason == "registry_unreadable":
                    self.storage_fault("registry", "unreadable", 1, r)
                elif r.reason == "mic" and r.dev is not None:
                    self.mic_failed(r.dev, rx, now)
                continue
            except Exception as e:  # noqa: BLE001 - a verifier defect refuses this frame, counted, not the group
                self.metrics.rejected.labels("internal_error").inc()
                self.burst.exception("internal_error:verify", "verifying a frame failed (refused, counted as "
                                     "internal_error): %r", e)
                continue
            f, dev = v.f, v.f["dev"]
            fcnt = f["fcnt"]
            undo.append((dev, accept(v, now)))
            counters[(dev, UP)] = fcnt
            mid = msg_id(gid, dev, fcnt)
            typ = f["type"]
            by_type[typ] = by_type.get(typ, 0) + 1
            repeat = False
            if typ == "reading":
                # the worker's entry JSON when its fields are the ones accepted (same counter, same `now`)
                js = p[2] if p is not None and p[0] is f else reading_json(f, now, rx)
                add_to_run(rs, js, (f["state"] & 0xF8) == 0, dev, mid, most, room, flush)
            elif typ in ("alarm", "event"):
                kind = (f["code"] | (0x80 if f["cleared"] else 0)) if typ == "alarm" else EVENT_KIND
                sq = f["aseq"] if typ == "alarm" else f["eseq"]
                key = (dev, kind)
                # SPEC 3.4: a retransmission has a new counter and the same identity (the counter of its first
                # copy, never reused by the node, across power cuts included): ack it, publish once
                f["aid"] = ident = counter.identity(fcnt, sq)
                repeat = idents.get(key, self.idents.get(key)) == ident
                if not repeat:
                    idents[key] = ident
                    if typ == "alarm":
                        body = payloads.alarm(gid, dist, mid, f, now, rx, v.device)
                        items.append(Item(ALARM, dev, payloads.dumps(body), mid, now,
                                          topic=self.topics.device(dev, topics.ALARM)))
                    else:
                        body = payloads.event(gid, dist, mid, f, now, rx)
                        items.append(Item(EVENT, dev, payloads.dumps(body), mid, now,
                                          topic=self.topics.device(dev, topics.EVENT)))
                dfc = self.dispatcher.reserve(dev, down)
                acks.append((dev, {"type": "ack", "dev": dev, "fcnt": dfc, "ref_type": T_ALARM if typ == "alarm"
                                   else T_EVENT, "ref": sq, "result": R_OK}, v.device.key))
            elif typ == "ack":
                item, res = self.dispatcher.answered(dev, f, now, mid)
                if item is not None:
                    items.append(item)
                    results.append(res)
            if heard(dev, f, now, mid, v.device):
                states.append(dev)
            accepted.append((mid, f, v.device, rx, route, repeat))
            routes.append((dev, route, rx))
        if rs[0]:
            flush()
        if not routes:
            return None
        if len(routes) > len(accepted):      # the lane's readings (it keeps no `accepted` entry)
            by_type["reading"] = by_type.get("reading", 0) + len(routes) - len(accepted)
        counters.update(self.dispatcher.counters_of(down))
        g.observations = self.observers.observations(
            [(mid, f, device, rx, repeat) for mid, f, device, rx, _route, repeat in accepted], now)
        g.journal = self.observers.journal(g.observations)
        return g

    def _committed(self, g: _Prepared, wake: bool = True) -> None:
        """The group is on disk: acks, routes, the publisher, the observers."""
        now = g.now
        self.idents.update(g.idents)
        self.dispatcher.committed(g.down)
        for r in g.results:
            self.metrics.commands.labels(r).inc()
        # routes first: a device's first frame may be the alarm we are about to ack
        self.presence.routes(g.routes)
        if g.states:                   # their retained states, for the publisher (presence.py)
            self.presence.fell_due(g.states, now)
        for typ, n in g.by_type.items():
            self.metrics.accepted.labels(typ).inc(n)
        # acks only now: the alarm is on disk
        for dev, fields, key in g.acks:
            self.dispatcher.send(dev, fields, "ack", key)
        self.accepted_count += len(g.routes)
        if wake:
            self.outbox.wake(g.lanes())
        # observers last: what they say is about frames that are on disk and on their way to the broker
        self.outbox.put(self.observers.observe(g.observations), now, observed=True)
        self.outbox.make_room(now)
