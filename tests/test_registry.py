import os
import stat

import pytest

from gasguard.registry import Device, Registry, RegistryError


def test_registry_file_is_owner_only_and_keys_stay_out_of_repr(tmp_path):
    p = tmp_path / "reg.db"
    key = os.urandom(16)
    with Registry(p) as r:
        r.add(Device(dev_id=0x100, key=key, profile="household", households=1))
        dev = r.get(0x100)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert dev.key == key
    assert key.hex() not in repr(dev) and "key" not in dev.public()


def test_downstream_stations_are_followed_transitively(tmp_path):
    with Registry(tmp_path / "r.db") as r:
        r.add(Device(dev_id=1, key=bytes(16), profile="station", households=5000))
        r.add(Device(dev_id=2, key=bytes(16), profile="station", households=4000, upstream=1))
        r.add(Device(dev_id=3, key=bytes(16), profile="station", households=3000, upstream=2))
        r.add(Device(dev_id=4, key=bytes(16), profile="station", households=10))
        assert sorted(d.dev_id for d in r.downstream(1)) == [2, 3]
        assert r.downstream(4) == []


def test_bad_values_are_refused_with_the_choices(tmp_path):
    with Registry(tmp_path / "r.db") as r:
        with pytest.raises(RegistryError, match="choose one of"):
            r.add(Device(dev_id=1, key=bytes(16), profile="boiler"))
        r.add(Device(dev_id=1, key=bytes(16), profile="household"))
        with pytest.raises(RegistryError, match="cannot be added"):
            r.add(Device(dev_id=1, key=bytes(16), profile="household"))
        r.rotate_key(1, b"\x01" * 16)
        r.decommission(1)
        d = r.get(1)
        assert d.key_version == 2 and d.key == b"\x01" * 16 and not d.active
