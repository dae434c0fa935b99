"""The gateway's registry cache sees a technician's change within about a second, without a restart."""

from gasguard.testing.node import Node, make_registry
from gasguard.registry import Registry
from gasguard.gateway.verify import RegistryCache


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_decommission_and_key_rotation_reach_the_cache_within_the_check_interval(tmp_path):
    path = tmp_path / "registry.db"
    a, b = Node(0x00A00001), Node(0x00A00002)
    make_registry(path, [a, b])
    clock = Clock()
    cache = RegistryCache(path, refresh=3600, clock=clock, check=1.0)
    assert cache.get(a.dev).active
    with Registry(path) as r:
        r.decommission(a.dev)
        r.rotate_key(b.dev, bytes(range(16, 32)))
    clock.t += 0.5
    assert cache.get(a.dev).active              # not yet looked: at most one stat per second
    clock.t += 0.6
    assert not cache.get(a.dev).active          # the registry changed on disk: re-read
    assert cache.get(b.dev).key == bytes(range(16, 32))


def test_an_unchanged_registry_is_not_reread(tmp_path, monkeypatch):
    path = tmp_path / "registry.db"
    make_registry(path, [Node(0x00A00001)])
    clock = Clock()
    cache = RegistryCache(path, refresh=3600, clock=clock, check=1.0)
    reads = []
    monkeypatch.setattr(cache, "reload", lambda: reads.append(1))
    for _ in range(10):
        clock.t += 1.5
        cache.get(0x00A00001)
    assert reads == []


def test_the_cache_is_bounded_and_a_new_device_is_read_at_once(tmp_path):
    path = tmp_path / "registry.db"
    a, b, c = Node(0x00A00001), Node(0x00A00002), Node(0x00A00003)
    make_registry(path, [a, b])
    clock = Clock()
    cache = RegistryCache(path, refresh=3600, clock=clock, check=1.0, size=1)
    assert cache.get(a.dev).key == a.key
    assert cache.get(b.dev).key == b.key
    assert list(cache.cached) == [b.dev]          # bounded: a was evicted, and is read again from the file
    assert cache.get(a.dev).key == a.key
    assert cache.get(c.dev) is None
    make_registry(path, [c])
    assert cache.get(c.dev).key == c.key          # a miss reads the file: no wait for the stat


def test_replay_protection_survives_a_restart_through_the_spool_counters(tmp_path):
    from gasguard.gateway.verify import Rejected, Verifier
    import pytest
    path = tmp_path / "registry.db"
    a = Node(0x00A00001)
    make_registry(path, [a])
    old = [a.reading() for _ in range(3)]
    v = Verifier(RegistryCache(path), {a.dev: 3})
    for raw in old:
        with pytest.raises(Rejected) as e:
            v.check(raw, 0.0)
        assert e.value.reason == "replay"
    fresh = v.check(a.reading(), 0.0)
    assert v.accept(fresh, 0.0) == 3 and v.states[a.dev].up == 4
