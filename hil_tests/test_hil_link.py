"""The link as the gateway sees it: authenticated commands, replay protection, frame counters across
reboots and power cuts, and alarms retransmitted until acked over a link that drops and duplicates."""

import json

from gasguard.protocol import const
from hil_node import is_alarm, is_event, need_rig, state_of

SAMPLE, DEBOUNCE = 1000, 2000


def _trip(n):
    n.set_gas(300)
    return n.expect_frame(is_alarm(const.AL_GAS_L2), DEBOUNCE + 3 * SAMPLE, "level-2 alarm")


def test_forged_and_replayed_commands_get_no_answer(household):
    """Needs no rig: on a real board this checks the key and the persisted replay window through the port."""
    n = household
    n.command(const.CMD_STATUS, 20)
    assert n.expect_ack(20)["result"] == const.R_OK
    accepted = n.down
    n.command(const.CMD_STATUS, 21, key=bytes(16))             # forged
    n.command(const.CMD_STATUS, 22, fcnt=accepted)            # replay of the accepted counter
    n.expect_no_frame(lambda f: f["type"] == "ack", 1500, "an answer to a forged or replayed command")
    n.command(const.CMD_STATUS, 23)                           # the next authentic one still works
    assert n.expect_ack(23)["result"] == const.R_OK
    assert not n.rejected


def test_reset_is_refused_while_gas_persists_forged_or_replayed_and_accepted_when_authentic(household):
    need_rig(household, "gas input and valve line")
    n = household
    _trip(n)
    n.command(const.CMD_RESET, 1)
    assert n.expect_ack(1)["result"] == const.R_REFUSED and n.valve() == 1   # gas still there
    n.set_gas(0)
    n.run(4000, 1000)
    accepted = n.down
    n.command(const.CMD_RESET, 2, key=bytes(16))              # forged: sealed with the wrong key
    n.command(const.CMD_RESET, 3, fcnt=accepted)              # replay of the last accepted counter
    n.command(const.CMD_RESET, 4, fcnt=accepted - 1)          # and of an older one
    n.expect_no_frame(lambda f: f["type"] == "ack", 1500, "an ack to a forged or replayed reset")
    assert n.valve() == 1
    if n.board.vb is not None:                                # the shared console shows why
        n.run(100)
        assert b"refused a downlink frame: mic" in n.console()
        assert b"refused a downlink frame: replay" in n.console()
    n.command(const.CMD_RESET, 5)
    assert n.expect_ack(5)["result"] == const.R_OK
    ev = n.expect_frame(lambda f: is_event(const.EV_VALVE)(f) and f["data"][0] == const.VALVE_OPEN, 1000,
                        "VALVE open event", since=0)
    assert ev["data"] == bytes([const.VALVE_OPEN, const.CAUSE_RESET]) and n.valve() == 0
    # the replay window survives a reboot: the accepted reset cannot be replayed after a power cycle
    n.rig.power_cycle()
    n.set_gas(300)
    n.expect_frame(is_alarm(const.AL_GAS_L2), DEBOUNCE + 3 * SAMPLE, "level-2 alarm after reboot")
    n.set_gas(0)
    n.run(4000, 1000)
    n.command(const.CMD_RESET, 6, fcnt=n.down)
    n.expect_no_frame(lambda f: f["type"] == "ack", 1500, "an ack to a reset replayed after a reboot")
    assert n.valve() == 1


def test_counters_are_never_reused_across_reboots_and_power_cuts_mid_write(household, rig_feature):
    need_rig(household, "power")
    n = household
    for _ in range(3):
        n.run(2000, 1000)
        n.rig.power_cycle()
        n.expect_frame(is_event(const.EV_BOOT), 2000, "BOOT after power cycle")
    # power fails during the first write after a boot: the reservation of the next counter block
    rig_feature(n.rig.cut_at_write, 1)
    before = len(n.frames)
    n.rig.power(False)
    n.rig.power(True, wait=False)
    n.run(3000, 1000)
    assert len(n.frames) == before, "frames left the node although its counter block never reached the flash"
    n.rig.power(True)
    n.expect_frame(is_event(const.EV_BOOT), 2000, "BOOT after the cut during the counter reservation")
    # power fails in the middle of the next flash write (the latch write of a gas trip)
    n.set_gas(300)
    rig_feature(n.rig.cut_at_write, 1)
    n.run(6000, 500)
    assert not [f for f in n.frames if f["type"] == "alarm"], \
        "an alarm left the node although the latch it reports never reached the flash"
    if n.board.flash is not None:
        st = json.loads((n.board.flash / "gg_state.json").read_text())
        assert st["latched"] is False                          # the old state survived intact
        assert (n.board.flash / "gg_state.tmp").exists()       # next to the torn temp file
    n.rig.power(True)
    al = n.expect_frame(is_alarm(const.AL_GAS_L2), DEBOUNCE + 4 * SAMPLE, "level-2 alarm after the cut")
    assert state_of(al)["latched"] and n.valve() == 1
    if n.board.flash is not None:
        assert json.loads((n.board.flash / "gg_state.json").read_text())["latched"] is True
        assert not (n.board.flash / "gg_state.tmp").exists()   # the left-over was discarded at boot
    counters = [f["fcnt"] for f in n.frames]
    assert len(counters) >= 10 and not n.rejected, n.rejected  # each verified above the previous one
    assert counters == sorted(set(counters))


def test_alarm_is_retransmitted_until_acked_over_a_link_that_drops_frames(household, rig_feature):
    need_rig(household, "gas input and a link that drops frames")
    n = household
    n.set_gas(300)
    rig_feature(n.rig.link, drop=3)                           # the next three frames never arrive
    first = n.expect_frame(is_alarm(const.AL_GAS_L2), DEBOUNCE + 3 * SAMPLE + 30_000, "level-2 alarm copy")
    assert n.rig.link()["dropped"] == 3
    n.run(16_000, 1000)
    copies = [f for f in n.frames if f["type"] == "alarm" and f["code"] == const.AL_GAS_L2]
    assert len(copies) >= 2 and len({c["aseq"] for c in copies}) == 1         # same alarm ...
    assert len({c["fcnt"] for c in copies}) == len(copies)                     # ... new counter each copy
    n.ack(first)
    n.run(200, 100)
    # past the 60 s retransmission cap: an unacked alarm would have gone out again by now
    n.expect_no_frame(is_alarm(const.AL_GAS_L2), 70_000, "a retransmission after the ack")


def test_a_duplicated_frame_is_an_authentic_replay_and_is_refused(household, rig_feature):
    need_rig(household, "a link that duplicates frames")
    n = household
    rig_feature(n.rig.link, dup=1)
    n.command(const.CMD_STATUS, 1)
    n.expect_ack(1)
    n.run(300, 100)
    assert [r for r, _ in n.rejected] == ["replay"]           # the copy: valid MIC, counter already seen
    assert n.rig.link()["duplicated"] == 1


def test_a_cut_during_the_latch_write_never_leaves_a_shut_valve_the_node_believes_open(household, rig_feature):
    """The latch reaches the flash before the valve moves. Cut power in the middle of that write and clear
    the gas while the board is off: at power-on the valve line and the state the node reports agree (here:
    never driven, open, not latched). With the valve driven first, the valve stayed shut while the node
    reported it open, and nobody was ever told of the shut-off."""
    need_rig(household, "power, gas input and valve line")
    n = household
    n.run(2000, 1000)
    n.set_gas(300)
    rig_feature(n.rig.cut_at_write, 1)
    n.run(6000, 500)
    n.set_gas(0)
    n.rig.power(True)
    n.expect_frame(is_event(const.EV_BOOT), 3000, "BOOT after the cut during the latch write")
    since = len(n.frames)
    n.command(const.CMD_STATUS, 30)
    n.expect_ack(30, since=since)
    rd = n.expect_frame(lambda f: f["type"] == "reading", 3000, "the reading a STATUS command sends", since=since)
    st = state_of(rd)
    closed_line = n.valve() == 1
    assert closed_line == (st["valve"] == const.VALVE_CLOSED), (closed_line, st)
    assert st["latched"] == closed_line
