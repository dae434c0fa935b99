"""End to end: the node's real firmware -> its serial port -> the real gateway daemon (own process) ->
a real mosquitto -> the district's incident topic, graded by the district plan; with the faults the bench
injects: bit errors at 1e-3 both ways, a broker restart, and the gateway SIGKILLed.

The board runs in its own time (virtual on the virtual board), the gateway and broker in real time; the
helpers let the board run in steps while the gateway works."""

import pytest

from gasguard.testing.subscriber import Subscriber
from gasguard.protocol import const
from gasguard.tools.sim.vboard_client import pressure_raw
from hil_gateway import DISTRICT, HilGateway, quiet, registry_for, run_until
from hil_node import need_rig


def _stack(board, mosquitto, tmp_path, **registry):
    """The gateway on the board's port, a registry holding the board, a subscriber on all topics."""
    need_rig(board, "the node's inputs")
    if board.rig.tx_bytes() is None:
        pytest.skip("needs the rig's link passthrough: it counts the node's TX bytes, which tells when every "
                    "alarm was acked (hil_tests/README.md, 'Link passthrough')")
    reg = registry_for(tmp_path / "registry.db", board, **registry)
    gw = HilGateway(tmp_path / "gateway", board.port, mosquitto.port, reg).start()
    board.gateway_log = gw.log_path        # named by every failure of run_until
    sub = Subscriber(mosquitto.port, "gasguard/#", client_id="hil-sub", clean=False)
    yield board, gw, sub
    sub.close()
    gw.stop()


@pytest.fixture
def stack(household_board, mosquitto, tmp_path):
    yield from _stack(household_board, mosquitto, tmp_path, households=1)


@pytest.fixture
def station_stack(station_board, mosquitto, tmp_path):
    yield from _stack(station_board, mosquitto, tmp_path, households=12_000, pressure_class="subhigh_a")


def alarms(sub, code=const.AL_GAS_L2, cleared=False):
    return [d for d in sub.on("/alarm") if d.get("code") == code and d.get("cleared") == cleared]


def incidents(sub):
    return [d for t, d, _ in list(sub.messages) if f"/{DISTRICT}/command/incident/" in t]


def trip_and_wait(board, sub, what):
    board.rig.set_inputs(gas=board_gas(board, 300))
    return run_until(board, lambda: alarms(sub) and incidents(sub), what, board_ms=120_000)


def board_gas(board, tenths):
    from gasguard.tools.sim.vboard_client import gas_raw
    return gas_raw(tenths, (board.config.get("calibration") or {}).get("gas"))


def acked_quietly(board, what):
    """The gateway acked everything: not a byte from the node for longer than its retransmission cap (60 s).
    (The next heartbeat reading is 900 s after boot, outside these windows.)"""
    run_until(board, lambda: board.rig.valve() == 1 and quiet(board, 65_000) == 0, what, board_ms=300_000,
              step=1000)


def leak_while_broker_down(board, mosquitto):
    """A leak while the broker is down: the gateway acks once the alarm is in its spool, broker or not."""
    mosquitto.stop()
    board.rig.set_inputs(gas=board_gas(board, 300))
    acked_quietly(board, "the alarm acked from the spool while the broker is down")


def check_leak_incident(sub):
    inc = incidents(sub)[0]
    assert inc["kind"] == "new" and inc["level"] == 4 and inc["category"] == "safety_accident", inc
    assert inc["report"]["source"]["devices"] == [f"{sub_dev(inc)}"]
    return inc


def sub_dev(inc):
    return inc["report"]["source"]["devices"][0]


def test_gas_leak_reaches_the_district_graded_once_over_drops_and_duplicates(stack):
    board, gw, sub = stack
    board.rig.link(drop=1, dup=2)       # the first frame of the leak is lost, the next two arrive twice
    trip_and_wait(board, sub, "the leak alarm and its incident on the broker")
    u = board.rig.link()
    assert u["dropped"] == 1 and u["duplicated"] == 2, u
    al = alarms(sub)
    assert len(al) == 1 and al[0]["dev"] == f"{board.dev:08x}", al
    inc = check_leak_incident(sub)
    assert inc["report"]["place"]["site_name"] == "HIL bench household"
    acked_quietly(board, "the node falling quiet: every alarm and event acked")
    assert len(alarms(sub)) == 1                                     # duplicates refused, not published
    stats = sub.wait(lambda ms: [d for t, d, _ in ms if t.endswith("/stats") and d.get("rejected")], 10)
    assert stats[-1]["rejected"].get("duplicate") == 2, stats[-1]   # each copy seen and counted once
    assert len(alarms(sub)) == 1


def test_bit_errors_at_1e_3_both_ways_lose_nothing_and_publish_once(stack):
    board, gw, sub = stack
    board.rig.link(ber=1e-3)          # every bit on the line, both ways, flips with probability 1e-3
    trip_and_wait(board, sub, "the leak alarm through a noisy line")
    # traffic both ways through the noise: 20 STATUS commands from the district (command, ack, STATUS event
    # and reading per command); the gateway repeats a command until the node's ack gets through
    for i in range(20):
        gw.command(sub, board.dev, f"ber-{i}")
    results = lambda: {d["request_id"]: d["result"] for d in sub.on("/cmd/result")}  # noqa: E731
    run_until(board, lambda: len(results()) == 20, "a result for each of 20 commands", board_ms=600_000,
              wall_s=90)
    assert set(results().values()) == {"ok"}, results()
    u = board.rig.link()
    assert u["bit_errors_tx"] > 0 and u["bit_errors_rx"] > 0, u      # the line really was noisy both ways
    acked_quietly(board, "the node falling quiet on the noisy line: every alarm and event acked")
    assert len(alarms(sub)) == 1, [a["id"] for a in alarms(sub)]     # copies de-duplicated, none lost
    check_leak_incident(sub)
    stats = sub.wait(lambda ms: [d for t, d, _ in ms if t.endswith("/stats") and d.get("rejected")], 10)
    assert sum(stats[-1]["rejected"].values()) > 0, stats[-1]        # corrupted frames counted, not accepted


def test_broker_restart_loses_no_alarm(stack, mosquitto):
    board, gw, sub = stack
    leak_while_broker_down(board, mosquitto)
    mosquitto.start()
    run_until(board, lambda: alarms(sub) and incidents(sub), "the spooled alarm published after the broker restart")
    assert len(alarms(sub)) == 1
    check_leak_incident(sub)


def test_gateway_sigkill_loses_neither_a_spooled_nor_an_unsent_alarm(stack, mosquitto):
    board, gw, sub = stack
    # 1. an alarm acked into the spool while the broker is down, then the gateway dies hard
    leak_while_broker_down(board, mosquitto)
    gw.kill()
    # 2. while the gateway is dead the gas clears: the cleared alarm has nobody to ack it
    board.rig.set_inputs(gas=board_gas(board, 0))
    board.rig.elapse(20_000)
    assert board.rig.snapshot()["uart"]["tx_bytes"] > 0
    mosquitto.start()
    gw.start()
    run_until(board, lambda: alarms(sub) and incidents(sub), "the spooled alarm published after the restart")
    run_until(board, lambda: alarms(sub, cleared=True), "the cleared alarm, retransmitted "
              "by the node until the restarted gateway acked it", board_ms=180_000, step=1000)
    assert len(alarms(sub)) == 1 and len(alarms(sub, cleared=True)) == 1
    check_leak_incident(sub)
    acked_quietly(board, "the node falling quiet after the restart")


def test_station_slam_shut_trip_is_graded_by_the_households_it_cuts_off(station_stack):
    board, gw, sub = station_stack
    board.rig.set_inputs(pressure=pressure_raw(1000, 10000))   # outlet at 40 % of the set point: UPSO
    run_until(board, lambda: alarms(sub, const.AL_UPSO) and incidents(sub), "the UPSO alarm and its incident")
    assert board.rig.valve() == 1
    inc = incidents(sub)[0]
    # plan 1.6.2: 10,000-29,999 households cut off is level III; a projection until 24 h have passed
    assert inc["level"] == 3 and inc["projected"] is True and inc["households"] == 12_000, inc
    assert inc["category"] == "supply_assurance" and inc["routes"] == ["district", "city"]
    assert inc["report"]["source"]["devices"] == [f"{board.dev:08x}"]


def test_a_new_alarm_after_a_power_cut_is_published_and_graded_and_a_retransmission_once(stack, rig_feature):
    """Issue 12 item 1: alarm, clear, power cut, a new alarm. The old firmware numbered alarms (and events)
    from the value it had saved with its last counter block, so after the power cut its new GAS_L2 carried
    the aseq of the first one and the gateway acked it as a retransmission: never published, never graded.
    Identities are now the counter of the first copy (SPEC 3.4). The new alarm's first ack is lost on the
    line, so the node retransmits it: the copy is acked and not published again."""
    board, gw, sub = stack
    trip_and_wait(board, sub, "the first leak alarm and its incident")
    board.rig.set_inputs(gas=board_gas(board, 0))
    run_until(board, lambda: alarms(sub, cleared=True), "the cleared alarm")
    acked_quietly(board, "every alarm and event of the first leak acked")
    board.rig.power_cycle()                                  # a power cut: RAM gone, flash kept
    run_until(board, lambda: quiet(board, 5_000) == 0, "the BOOT event after the power cut, acked",
              board_ms=120_000, step=1000)
    rig_feature(board.rig.link, drop_rx=1)                   # the next ack (the new alarm's) never arrives
    board.rig.set_inputs(gas=board_gas(board, 300))
    run_until(board, lambda: len(alarms(sub)) >= 2, "the new alarm after the power cut, published")
    run_until(board, lambda: len([i for i in incidents(sub) if i["kind"] == "new"]) >= 2,
              "the new alarm graded: a new incident")
    acked_quietly(board, "the node falling quiet: the new alarm retransmitted once its ack was lost, then acked")
    assert board.rig.link()["dropped_rx"] == 1
    first, second = alarms(sub)
    assert first["aid"] != second["aid"] and first["id"] != second["id"], (first, second)
    # the node fell quiet after its first ack was lost: the gateway acked a later copy, and did not publish it
    assert len(alarms(sub)) == 2 and len(alarms(sub, cleared=True)) == 1
    boots = [e for e in sub.on("/event") if e["code"] == const.EV_BOOT and e["fcnt"] > first["fcnt"]]
    assert len(boots) == 1, boots     # the BOOT event after the power cut: published too (events had the bug)
