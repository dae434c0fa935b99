"""The outbox: what the gateway has promised to publish. The SQLite spool (durable, in lanes) and the MQTT
publisher (drains it in lane order, deletes rows on PUBACK) behind one interface, so ingest, observers and
the command dispatcher only ever `commit` messages and never touch either half.

Nothing committed here is lost: a commit is on disk before it returns (or raises SpoolError, and the
caller decides: ingest refuses the frames, so devices retransmit; outputs are held in memory and retried).
"""

from __future__ import annotations

import logging

from . import payloads
from .spool import LANE_OF, Item, Spool, SpoolError

log = logging.getLogger("gasguard.gateway")

THIN_REPORT_S = 10.0   # at most one published "thinned" event this often (counts accumulate between)

Output = tuple   # (topic, payload dict, lane name, retain): what observers and the dispatcher hand in


class Outbox:
    def __init__(self, cfg, spool: Spool, publisher, metrics, burst, snapshot=lambda: {}):
        self.cfg, self.spool, self.publisher, self.metrics, self.burst = cfg, spool, publisher, metrics, burst
        self.gateway_id = cfg.gateway_id
        self.held: list[Item] = []      # outputs waiting for disk space (retried on every put)
        self.snapshot = snapshot        # () -> {plugin name: JSON state}: the observers' (Observers.snapshot)
        self.journaled = 0              # observations in the spool's journal no plugin commit has settled yet
        self.dirty = False              # observers' outputs not yet committed with their state
        self.thinned_acc: dict[int, int] = {}      # dev -> readings thinned since the last published report
        self.thinned_reported = -1e18

    def commit(self, items: list[Item], counters: dict | None = None, idents: dict | None = None, *,
               journal: list[str] | None = None, wake: bool = True, durable: bool = True) -> None:
        """Spool `items` (and the replay and downlink counters, alarm identities and the journalled
        observations that go with them) in one transaction, then wake the publisher (ingest wakes it itself,
        after its acks: `wake=False`). Raises SpoolError (full, read-only, damaged, I/O): nothing of it was
        written. `durable=False`: on disk once sync() returned (the caller syncs before it acts on it)."""
        self._spool(items, counters or {}, idents or {}, journal=journal, durable=durable)
        self.journaled += len(journal or ())
        if wake:
            self.wake({it.lane for it in items})

    def _spool(self, items: list[Item], *args, **kw) -> None:
        """Spool.commit, PUBACKed rows deleted first (their space is free for this commit); then the rows are
        handed to the publisher in memory where it is caught up with the spool (Publisher.take, issue 17),
        and left for it to read back (fetch) where it is not. Raises SpoolError."""
        self.publisher.flush_acked()
        before = self.spool.lane_last[:]
        last = self.spool.commit(items, *args, **kw)
        self.publisher.take(items, last, before)

    def sync(self) -> None:
        """Make every commit so far durable (spool.Spool.sync; ingest calls it on its sync thread after a
        commit with durable=False). Raises SpoolError."""
        self.spool.sync()

    def sync_mark(self) -> int:
        """Where a sync() starting now reaches (hand it to synced() when that sync returned)."""
        return self.spool.written_upto

    def synced(self, mark: int) -> None:
        """The rows up to `mark` are on disk: the publisher may take them."""
        self.spool.synced(mark)

    def wake(self, lanes) -> None:
        """New rows in these lanes (in the state lane, or devices' online states due: presence.py): the publisher
        drains them now (when connected) or on reconnect."""
        if lanes:
            self.publisher.notify(lanes)
            self.publisher.kick()

    def counters(self, counters: dict) -> None:
        """Persist counters alone (a downlink counter before its command goes out). Raises SpoolError."""
        self.spool.commit([], counters)

    def put(self, outs: list[Output], now: float, *, observed: bool = False) -> None:
        """Observer and dispatcher outputs (alarm lane included): spooled, or held in memory and retried on
        the next put when the disk is full. Never dropped. With observers' outputs (`observed`) or journalled
        observations to settle, the plugins' state goes into the same transaction and the journal is emptied
        there: a kill leaves either the observation to redo or its outputs with the state that made them."""
        items = self.held
        for topic, payload, lane, retain in outs:
            mid = payload.get("id") or f"{self.gateway_id}:plugin:{now:.6f}:{len(items)}"
            items.append(Item(LANE_OF[lane], 0, payloads.dumps(payload), str(mid), now, topic=topic, retain=retain))
        settle = self.journaled > 0
        if not items and not settle:
            return
        # the state is written only with what the observers made of it (as often as the old state file was):
        # an observation that changed nothing published is settled without it
        self.dirty = self.dirty or bool(observed and outs)
        states = self.snapshot() if self.dirty else None
        try:
            self._spool(items, states=states, settle=settle)
            self.wake({it.lane for it in items})
            self.journaled = 0
            self.dirty = False
            self.held = []
        except SpoolError as e:         # full, read-only, damaged, I/O: held, retried, never dropped
            self.held = items
            self.metrics.spool_errors.inc()
            self.metrics.storage_errors.labels("spool", e.kind).inc()
            self.burst.event("held", "SPOOL WRITE FAILED for %d plugin/command messages, holding them in memory: %s",
                             len(items), e, level=logging.CRITICAL)

    def publish_now(self, topic: str, payload: dict) -> None:
        """A message with no durability promise (periodic stats): straight to the broker, QoS 0."""
        self.publisher.publish_direct(topic, payload)

    # -- bounded: past spool.max_mb, routine readings go (counted and reported), nothing else ------------
    def make_room(self, now: float) -> None:
        """When the spool is past its size, drop routine readings not yet loaded by the publisher."""
        if not self.spool.over():
            return
        dropped = self.spool.thin(self.publisher.loaded_upto())
        n = sum(dropped.values())
        if n:
            self.metrics.thinned.inc(n)
            for d, c in dropped.items():
                self.thinned_acc[d] = self.thinned_acc.get(d, 0) + c
            self.burst.event("thinned", "spool past %d bytes: thinned %d routine readings of %d devices "
                             "(alarms and events kept)", self.cfg.spool_max_bytes, n, len(dropped))
        self.report_thinned(now)

    def report_thinned(self, now: float) -> None:
        """One published `thinned` event per THIN_REPORT_S with the counts since the last one: an event per
        thinning pass would itself fill the spool it is trying to keep bounded (events are never dropped)."""
        if not self.thinned_acc or now - self.thinned_reported < THIN_REPORT_S:
            return
        acc, self.thinned_acc, self.thinned_reported = self.thinned_acc, {}, now
        body = payloads.gateway_event(self.gateway_id, now, "thinned",
                                      {"readings": sum(acc.values()), "devices": {f"{d:08x}": c for d, c in acc.items()},
                                       "spool_max_bytes": self.cfg.spool_max_bytes})
        self.put([(self.cfg.topics.event, body, "event", False)], now)

    def depth(self) -> dict:
        return self.spool.depth()

