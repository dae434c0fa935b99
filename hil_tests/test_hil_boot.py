"""Boot and identity: the node says who it is, signed with its key, and answers a STATUS command."""

from gasguard.protocol import const
from hil_node import is_event, need_rig, state_of


def test_boot_event_after_power_on_is_signed_and_carries_the_profile(household):
    need_rig(household, "power cycling")
    household.rig.power_cycle()
    boot = household.expect_frame(is_event(const.EV_BOOT), 2000, "BOOT event after power-on")
    cause, major, minor, prof = boot["data"][:4]
    assert cause == 1, f"reset cause {cause}, expected 1 (power-on)"
    assert (major, minor) == (1, 0) and prof == 1          # firmware 1.0, profile 1 = household
    reading = household.expect_frame(lambda f: f["type"] == "reading", 2000, "first reading (heartbeat at boot)")
    assert reading["gas"] is not None and reading["gas"] < 50      # clean air at the sensor
    assert not state_of(reading)["latched"] and not household.rejected


def test_household_identifies_itself_on_status(household):
    household.command(const.CMD_STATUS, 8)
    assert household.expect_ack(8)["result"] == const.R_OK        # MIC with its key, its dev id, a fresh counter
    ev = household.expect_frame(is_event(const.EV_STATUS), 1000, "STATUS event", since=0)
    assert len(ev["data"]) == 6 and ev["data"][1] == 0   # state, gas level (0: clean air), faults, battery, ...
    assert not household.rejected


def test_station_identifies_itself_on_status(station):
    station.command(const.CMD_STATUS, 7)
    ack = station.expect_ack(7)
    assert ack["result"] == const.R_OK
    ev = station.expect_frame(is_event(const.EV_STATUS), 1000, "STATUS event", since=0)
    assert len(ev["data"]) == 6
    r = station.expect_frame(lambda f: f["type"] == "reading", 1000, "reading after STATUS", since=0)
    assert r["inlet"] is not None and r["pressure"] is not None    # a station reports both pressures
    assert not station.rejected
