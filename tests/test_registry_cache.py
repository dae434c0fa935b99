"""The gateway's registry cache sees a technician's change within about a second, without a restart."""

from gasguard.gateway import testkit
from gasguard.gateway.registry import Registry
from gasguard.gateway.verify import RegistryCache


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_decommission_and_key_rotation_reach_the_cache_within_the_check_interval(tmp_path):
    path = tmp_path / "registry.db"
    a, b = testkit.Node(0x00A00001), testkit.Node(0x00A00002)
    testkit.make_registry(path, [a, b])
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
    testkit.make_registry(path, [testkit.Node(0x00A00001)])
    clock = Clock()
    cache = RegistryCache(path, refresh=3600, clock=clock, check=1.0)
    reads = []
    monkeypatch.setattr(cache, "reload", lambda: reads.append(1))
    for _ in range(10):
        clock.t += 1.5
        cache.get(0x00A00001)
    assert reads == []
