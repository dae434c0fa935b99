"""The board's alarm logic after ISA-18.2 (states, deadlines that stop counting, shelving, floods), pure, on
incidents published by the real incident engine."""

import pytest

from gasguard.command import shelving as S
from gasguard.command.web import alarms as A
from web_helpers import STATIONS, T0, EngineSource, alarm, device, valve_event

LEAK_HOME = device(0x100001, profile="household", site="文化东路12号", lat=36.66, lon=117.07)


def _leak(clock):
    src = EngineSource(lambda: clock["t"])
    src.observe(alarm(LEAK_HOME, clock["t"], 2))
    return src, next(iter(src.latest))


def test_states_unacknowledged_acknowledged_and_returned_to_normal_unacknowledged():
    clock = {"t": T0}
    src, iid = _leak(clock)
    assert A.alarm_state(src.get(iid)) == A.UNACKED
    src.acknowledge(iid, b'{"by": "wang.li", "revision": 1}', 5)
    assert A.alarm_state(src.get(iid)) == A.ACKED
    # a second leak clears before anyone looks: still needs a look
    other = device(0x100099, profile="household", site="山大路7号", lat=36.70, lon=117.20)
    src.observe(alarm(other, T0 + 10, 2, aseq=1))
    iid2 = next(i for i in src.latest if i != iid)
    src.observe(alarm(other, T0 + 20, 2, aseq=2, cleared=True))
    src.observe(valve_event(other, T0 + 30, 0))                       # re-opened after a reset
    assert src.get(iid2)["status"] == "resolved"
    assert A.alarm_state(src.get(iid2)) == A.RTN_UNACKED
    src.acknowledge(iid2, b'{"by": "wang.li"}', 5)
    assert A.alarm_state(src.get(iid2)) == A.NORMAL


def test_deadlines_count_down_turn_overdue_and_stop_once_acknowledged():
    clock = {"t": T0}
    src, iid = _leak(clock)
    m = src.get(iid)
    detected = m["detected_at"]
    assert A.deadline_view(m, "phone", detected + 60) == {"text": "19:00", "overdue": False, "counting": True,
                                                           "late": False}
    late = A.deadline_view(m, "phone", detected + 1200 + 75)
    assert late["overdue"] and late["text"] == "OVERDUE 1:15"
    clock["t"] = detected + 1200 + 90
    src.acknowledge(iid, b'{"by": "wang.li"}', 5)
    m = src.get(iid)
    for later in (0, 600, 86_400):              # no longer counting, however long after
        v = A.deadline_view(m, "phone", clock["t"] + later)
        assert v == {"text": "acked 1:30 late", "overdue": False, "counting": False, "late": True}
    assert A.deadline_view(m, "written", clock["t"] + 5000)["text"] == "acked in time"


def test_shelving_needs_a_reason_and_a_bounded_expiry_and_an_upgrade_unshelves():
    clock = {"t": T0}
    src, iid = _leak(clock)
    shelves = S.ShelfBook(max_s=3600)
    with pytest.raises(S.ShelfError, match="why"):
        shelves.shelve(iid, "wang.li", " ", 600, T0, src.get(iid))
    with pytest.raises(S.ShelfError, match="up to 1 hours"):
        shelves.shelve(iid, "wang.li", "crew on site", 7200, T0, src.get(iid))
    with pytest.raises(S.ShelfError, match="1 minute"):
        shelves.shelve(iid, "wang.li", "crew on site", 59, T0, src.get(iid))
    shelf = shelves.shelve(iid, "wang.li", "crew on site", 600, T0, src.get(iid))
    assert A.alarm_state(src.get(iid), shelves.get(iid, T0 + 599, src.get(iid)), T0 + 599) == A.SHELVED
    # past its expiry a shelf shows as over at once, whenever its holder records that
    assert A.alarm_state(src.get(iid), shelf, T0 + 600) == A.UNACKED
    assert shelves.get(iid, T0 + 600, src.get(iid)) is None          # expired: back on the board
    shelf = shelves.shelve(iid, "wang.li", "crew on site", 600, T0, src.get(iid))
    for k in (2, 3):                                                  # a cluster of three: level rises
        src.observe(alarm(device(0x100001 + k, profile="household", site=f"文化东路{k}号", lat=36.66, lon=117.07),
                          T0 + k, 2))
    assert src.get(iid)["level"] == 3
    assert S.ended(shelf, T0 + 10, src.get(iid)) == S.UPGRADED
    assert A.alarm_state(src.get(iid), shelf, T0 + 10) == A.UNACKED
    assert shelves.due(T0 + 10, {iid: src.get(iid)}) == [(iid, shelf, "upgraded")]
    assert shelves.items() == {}


def test_flood_starts_above_ten_in_ten_minutes_and_ends_below_five():
    f = A.FloodDetector(A.FloodConfig(window_s=600, start_above=10, end_below=5))
    for i in range(10):
        f.add(T0 + i)
    assert f.state(T0 + 10)["flood"] is False                         # 10 is not above 10
    f.add(T0 + 11)
    assert f.state(T0 + 12) == {"flood": True, "count": 11, "window_s": 600, "since": T0 + 12, "start_above": 10}
    assert f.state(T0 + 605)["flood"] is True                         # 6 left in the window: still a flood
    assert f.state(T0 + 607)["flood"] is False                        # 4 left: below 5, over


def test_affected_devices_of_a_supply_incident_include_the_stations_it_feeds():
    clock = {"t": T0}
    src = EngineSource(lambda: clock["t"])
    src.observe(alarm(STATIONS[0], T0, 4, ptrip=True, value=900))
    m = next(iter(src.latest.values()))
    assert A.affected_devices(m) == ["0000a001", "0000a002", "0000a003"]
    assert A.site_name(m) == "燕山调压站"
