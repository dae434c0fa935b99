"""The garbage collector's pauses kept off the alarm path (gateway/gcpause.py): what the gateway's state
costs a full collection before and after, which garbage is still reclaimed, and when. The collector is the
process's own, so every test unfreezes at its end."""

import gc
import weakref

import pytest

from gasguard.gateway import gcpause
from gasguard.gateway.gcpause import Collector
from gasguard.gateway.presence import Presence
from gasguard.gateway.verify import ReplayState


class _Leaf:                       # per-device state's shape: attributes, no reference back to itself
    __slots__ = ("up", "recent", "__weakref__")

    def __init__(self):
        self.up, self.recent = 1, b""


class _Cycle:
    def __init__(self):
        self.me = self


@pytest.fixture(autouse=True)
def _unfrozen():
    thresholds = gc.get_threshold()
    gc.collect()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()
    gc.collect()


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _walked(objs) -> int:
    """How many of `objs` a full collection would walk (the frozen ones it does not)."""
    ids = {id(o) for o in objs}
    return sum(1 for o in gc.get_objects() if id(o) in ids)


def test_state_loaded_at_start_is_frozen_and_still_freed_by_reference_counting():
    states = [ReplayState(i) for i in range(2000)] + [Presence() for _ in range(2000)]
    leaf = _Leaf()
    assert _walked(states) == 4000
    gen1, gen2 = gc.get_threshold()[1:]
    Collector().start()
    assert _walked(states) == 0 and gc.get_freeze_count() >= 4000
    assert gc.get_threshold() == (gcpause.YOUNG_EVERY, gen1, gen2)    # young collections less often; the rest kept
    probe = weakref.ref(leaf)
    del leaf                                      # no cycle: dropped at once, frozen or not
    assert probe() is None


def test_a_freeze_every_period_takes_new_state_and_leaves_young_garbage_to_the_collector():
    clock = _Clock()
    c = Collector(clock)
    c.start()
    new = [ReplayState(i) for i in range(500)]     # devices heard since the start
    junk = _Cycle()                                # recent cyclic garbage
    gone = weakref.ref(junk)
    del junk
    clock.t += gcpause.FREEZE_EVERY - 1
    assert c.tick(idle=False) is None and _walked(new) == 500
    clock.t += 1
    assert c.tick(idle=False) == "freeze"
    assert _walked(new) == 0                       # frozen: a full collection no longer walks them
    assert gone() is None                          # the young collection before the freeze reclaimed it


def test_a_cycle_dropped_after_its_freeze_is_reclaimed_by_the_full_collection_only_when_idle():
    clock = _Clock()
    c = Collector(clock)
    old = _Cycle()
    c.start()
    gone = weakref.ref(old)
    del old
    gc.collect()
    assert gone() is not None                      # frozen: no collection walks it (the price of the freeze)
    clock.t += gcpause.FULL_EVERY
    assert c.tick(idle=False) == "freeze"          # busy: no full collection, a freeze instead
    assert gone() is not None
    assert c.tick(idle=True) == "full"
    assert gone() is None and c.fulls == 1
