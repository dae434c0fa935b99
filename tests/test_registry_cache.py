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


def test_a_groups_devices_are_read_ahead_in_one_query_and_are_the_devices_a_lookup_gives(tmp_path):
    """Issue 17: a district's 15-minute cycle misses the LRU for nearly every reading; ingest reads a group's
    missing devices ahead with one query per 500 (RegistryCache.prefetch) instead of one each."""
    path = tmp_path / "registry.db"
    nodes = [Node(0x00B00000 + i) for i in range(1200)]
    make_registry(path, nodes)
    with Registry(path) as r:
        r.decommission(nodes[7].dev)
    clock = Clock()
    cache = RegistryCache(path, refresh=3600, clock=clock, check=1.0)
    statements = []
    cache.db.db.set_trace_callback(statements.append)
    cache.db._plain = cache.db.db.cursor()          # (the traced connection's cursor, positional rows)
    cache.db._plain.row_factory = None
    wanted = [n.dev for n in nodes] + [0x00DEAD00]  # and one the registry does not know
    cache.prefetch(wanted)
    assert len([s for s in statements if "IN (" in s]) == 3          # 1,201 ids: 500 + 500 + 201
    statements.clear()
    with Registry(path, readonly=True) as fresh:
        for n in nodes:
            assert cache.get(n.dev) == fresh.lookup(n.dev)            # the same Device, fields and key
    assert not cache.get(nodes[7].dev).active
    assert cache.get(0x00DEAD00) is None
    assert len([s for s in statements if "WHERE dev_id =" in s]) == 1  # only the unknown one was read again
    # a technician's change is seen by the read-ahead as by get(): after the check interval
    with Registry(path) as r:
        r.rotate_key(nodes[0].dev, bytes(range(16)))
    clock.t += 1.1
    assert cache.readable()                          # (ingest checks once a group, then reads ahead)
    cache.prefetch([nodes[0].dev, nodes[1].dev])
    assert cache.get(nodes[0].dev).key == bytes(range(16))
    cache.close()
