"""Safety behaviour through the real inputs and the valve line: gas levels with debounce and hysteresis,
over- and under-pressure shut-off, sensor faults, and the latch across a power loss.

Numbers are the profile defaults (firmware/bounds.py): household gas L1 10 % LEL, L2 25 % LEL, hysteresis
3 % LEL, debounce 2 s, sample 1 s, OPSO 7 kPa, UPSO 0.75 kPa; station set point 2.5 kPa, OPSO 165 %,
UPSO 50 %, debounce 0.5 s, sample 0.1 s, fault_action alarm. Every expectation is in board time."""

import json

from gasguard.protocol import const
from hil_node import is_alarm, is_event, need_rig, state_of

SAMPLE, DEBOUNCE = 1000, 2000


def test_gas_warning_needs_the_debounce_and_clears_only_below_the_hysteresis(household):
    need_rig(household, "the gas input")
    n = household
    # a puff shorter than the debounce (two samples, one of them eaten by the median filter) raises nothing
    n.set_gas(150)
    n.run(1500, 500)
    n.set_gas(0)
    n.expect_no_frame(lambda f: f["type"] == "alarm", 5000, "alarm from a puff shorter than the debounce")
    # a lasting 15 % LEL: level 1 after the debounce, not before; the valve stays open (warning only)
    n.set_gas(150)
    n.expect_no_frame(lambda f: f["type"] == "alarm", DEBOUNCE - 500, "level-1 alarm before the debounce")
    al = n.expect_frame(is_alarm(const.AL_GAS_L1), 2 * SAMPLE + 1000, "level-1 alarm after the debounce")
    assert 140 <= al["value"] <= 160 and state_of(al)["gas_level"] == 1
    assert n.valve() == 0 and not state_of(al)["latched"]
    # 8 % LEL is under L1 but inside the 3 % LEL hysteresis band: still level 1
    n.set_gas(80)
    n.expect_no_frame(is_alarm(const.AL_GAS_L1, cleared=True), 6000, "level 1 cleared inside the hysteresis")
    n.set_gas(50)
    clr = n.expect_frame(is_alarm(const.AL_GAS_L1, cleared=True), DEBOUNCE + 3 * SAMPLE, "level 1 cleared")
    assert state_of(clr)["gas_level"] == 0 and n.valve() == 0


def test_gas_alarm_closes_and_latches_the_valve_within_two_samples_of_the_debounce(household):
    need_rig(household, "the gas input and the valve line")
    n = household
    n.set_gas(300)
    closed_after = n.valve_closes_within(6000, 250)
    # first sample <= 1 s after the gas arrives, median filter + 1 sample, then the 2 s debounce
    assert closed_after is not None and DEBOUNCE <= closed_after <= DEBOUNCE + 2 * SAMPLE + 250, closed_after
    al = n.expect_frame(is_alarm(const.AL_GAS_L2), 1000, "level-2 alarm", since=0)
    s = state_of(al)
    assert al["value"] == 300 and s["valve"] == const.VALVE_CLOSED and s["latched"] and s["gas_level"] == 2
    ev = n.expect_frame(is_event(const.EV_VALVE), 1000, "VALVE closed event", since=0)
    assert ev["data"] == bytes([const.VALVE_CLOSED, const.CAUSE_GAS])


def test_household_opso_and_upso_shut_off(household):
    need_rig(household, "the pressure input")
    n = household
    n.set_pressure(8000)                                      # over the 7 kPa OPSO
    al = n.expect_frame(is_alarm(const.AL_OPSO), DEBOUNCE + 3 * SAMPLE, "OPSO alarm")
    assert abs(al["value"] - 8000) <= 20 and state_of(al)["ptrip"] and n.valve() == 1
    n.set_pressure(500)                                       # under the 0.75 kPa UPSO
    al = n.expect_frame(is_alarm(const.AL_UPSO), DEBOUNCE + 3 * SAMPLE, "UPSO alarm")
    assert abs(al["value"] - 500) <= 20 and n.valve() == 1


def test_station_upso_trips_the_slam_shut_fast(station):
    need_rig(station, "the outlet pressure input")
    n = station
    n.set_pressure(2500)                                      # at the set point
    n.run(1000, 100)
    assert n.valve() == 0
    n.set_pressure(1000)                                      # 40 % of the set point: under UPSO 50 %
    closed_after = n.valve_closes_within(2000, 100)
    assert closed_after is not None and closed_after <= 500 + 2 * 100 + 100, closed_after
    al = n.expect_frame(is_alarm(const.AL_UPSO), 500, "UPSO alarm", since=0)
    assert abs(al["value"] - 1000) <= 20 and state_of(al)["latched"]


def test_sensor_faults_alarm_and_household_closes(household):
    need_rig(household, "opening and shorting the gas input")
    n = household
    n.rig.set_inputs(gas=0)                                   # transmitter unplugged: input pulled to 0 V
    al = n.expect_frame(is_alarm(const.AL_SENSOR_FAULT), DEBOUNCE + 3 * SAMPLE, "sensor fault alarm")
    assert al["value"] == (const.SENSOR_GAS << 8) | const.FAULT_OPEN and state_of(al)["fault"]
    assert n.valve() == 1                                     # household fault_action: close
    ev = n.expect_frame(is_event(const.EV_FAULT), 2000, "FAULT event", since=0)
    assert ev["data"] == bytes([const.SENSOR_GAS, const.FAULT_OPEN])
    n.command(const.CMD_STATUS, 3)
    n.expect_ack(3)
    r = n.expect_frame(lambda f: f["type"] == "reading", 1000, "reading after STATUS")
    assert r["gas"] is None                                   # a dead sensor is never reported as clean air


def test_station_sensor_fault_alarms_but_keeps_gas_flowing(station):
    need_rig(station, "shorting the gas input")
    n = station
    n.rig.set_inputs(gas=65535)                               # shorted to the supply
    al = n.expect_frame(is_alarm(const.AL_SENSOR_FAULT), 2000, "sensor fault alarm")
    assert al["value"] == (const.SENSOR_GAS << 8) | const.FAULT_SHORT
    n.run(1000, 100)
    assert n.valve() == 0                                     # station fault_action: alarm only


def test_latch_holds_across_power_loss_until_an_authenticated_reset(household):
    need_rig(household, "gas input, valve line and power")
    n = household
    n.set_gas(300)
    n.expect_frame(is_alarm(const.AL_GAS_L2), DEBOUNCE + 3 * SAMPLE, "level-2 alarm")
    n.set_gas(0)
    n.run(4000, 1000)
    n.rig.power(False)
    assert n.valve() == 1                                     # a latching valve holds without power
    n.rig.power(True)
    boot = n.expect_frame(is_event(const.EV_BOOT), 2000, "BOOT after power returns")
    assert boot["data"][0] == 1
    n.run(3000, 1000)
    assert n.valve() == 1, "the valve opened by itself after a power loss"
    r = [f for f in n.frames if f["type"] == "reading"][-1]
    assert state_of(r)["latched"]
    if n.board.flash is not None:                             # virtual board: what reached the flash
        assert json.loads((n.board.flash / "gg_state.json").read_text())["latched"] is True
    n.command(const.CMD_RESET, 9)
    assert n.expect_ack(9)["result"] == const.R_OK
    n.run(500, 100)
    assert n.valve() == 0
