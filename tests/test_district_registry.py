import os
import stat
import statistics

import pytest

from gasguard.registry import PRESSURE_CLASSES, Registry
from gasguard.tools.sim import district


@pytest.fixture(scope="module")
def full():
    return district.generate(seed=7, scale=1.0, households=0)


def test_full_scale_matches_the_plan(full):
    st = [d for d in full if d.profile == "station"]
    users = [d for d in full if d.profile == "household"]
    assert len(st) == 1326                                        # plan 1.5
    assert sum(d.households for d in st) == 330_000
    assert sum(1 for d in users if d.user_class in ("commercial", "industrial")) == 1780
    assert {d.user_class for d in users} == {"commercial", "industrial", "public_welfare", "transport"}
    # skewed: many small boxes, a few stations with thousands
    hh = sorted(d.households for d in st if d.households)
    assert statistics.median(hh) < 250 and hh[-1] > 3000 and sum(1 for h in hh if h >= 1000) > 50
    # inlet classes: all valid, mostly medium A/B, some sub-high
    classes = [d.pressure_class for d in st]
    assert set(classes) <= set(PRESSURE_CLASSES)
    assert sum(c.startswith("medium") for c in classes) > 0.85 * len(st)
    assert sum(c.startswith("subhigh") for c in classes) > 10
    # coordinates in Lixia, Jinan
    assert all(36.5 < d.lat < 36.8 and 116.9 < d.lon < 117.2 for d in full)
    # key areas: every public-welfare user and the stations feeding them
    pw = [d for d in users if d.user_class == "public_welfare"]
    assert pw and all(d.key_area for d in pw)
    by_id = {d.dev_id: d for d in full}
    assert all(by_id[d.upstream].key_area for d in pw)


def test_upstream_links_form_a_forest_of_feeders(full):
    by_id = {d.dev_id: d for d in full}
    linked = [d for d in full if d.profile == "station" and d.upstream]
    assert len(linked) > 100
    for d in linked:
        up = by_id[d.upstream]
        assert up.profile == "station" and up.upstream is None and up.households == 0
        assert up.pressure_class.startswith("subhigh") and d.pressure_class == "medium_a"
    # every user node hangs off a station that has households of its own
    assert all(by_id[d.upstream].households > 0 for d in full if d.profile == "household")


def test_same_seed_same_district_and_random_keys_unless_sim_keys():
    a = district.generate(seed=3, scale=0.05, households=200)
    b = district.generate(seed=3, scale=0.05, households=200)
    c = district.generate(seed=4, scale=0.05, households=200)
    shape = lambda ds: [(d.dev_id, d.households, d.pressure_class, d.upstream, d.lat, d.lon, d.user_class) for d in ds]
    assert shape(a) == shape(b) != shape(c)
    assert all(x.key != y.key for x, y in zip(a, b))              # os.urandom per device
    s1 = district.generate(seed=3, scale=0.05, households=200, sim_keys=True)
    s2 = district.generate(seed=3, scale=0.05, households=200, sim_keys=True)
    assert [d.key for d in s1] == [d.key for d in s2]
    assert len({d.key for d in s1}) == len(s1)
    assert s1[0].key == district.sim_key(3, s1[0].dev_id) != district.sim_key(4, s1[0].dev_id)


def test_household_nodes_follow_households_served():
    devs = district.generate(seed=5, scale=0.1, households=33_000)
    per = {}
    for d in devs:
        if d.profile == "household" and d.user_class == "residential":
            per[d.upstream] = per.get(d.upstream, 0) + 1
    st = {d.dev_id: d.households for d in devs if d.profile == "station"}
    assert sum(st.values()) == 33_000
    assert per == {k: v for k, v in st.items() if v}              # every household has its node
    with pytest.raises(ValueError, match="households must be between"):
        district.generate(seed=5, scale=0.1, households=33_001)


def test_write_fills_a_private_registry_and_records_sim_keys(tmp_path):
    p = tmp_path / "d.db"
    s = district.write(p, seed=2, scale=0.05, households=100, sim_keys=True)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    with Registry(p) as reg:
        assert reg.count() == s.stations + sum(s.users.values())
        dev = reg.get(district.HOUSEHOLD_BASE + 1)
        assert dev.key == district.sim_key(2, dev.dev_id) and dev.upstream is not None
        assert reg.db.execute("SELECT v FROM meta WHERE k='sim_keys'").fetchone()[0] == "2"
        feeder = reg.get(district.STATION_BASE + 1)
        assert feeder.config["setpoint"] == district.FEEDER_SETPOINT and reg.downstream(feeder.dev_id)
    assert district.read_meta(p)["households_served"] == 16_500
