"""One node logic: a simulated fleet node answers downlink commands and boots as the firmware does (issue 13
step 4). The firmware runs here as on the host tests of tests/test_firmware_app.py (its App with fake ADCs, a
UART and a flash folder); the fleet node is tools/sim/fleet_node.SimNode. Both get the same signed commands
and must give the same result codes and report the same BOOT and CONFIG data."""

import random

import pytest

from gasguard.protocol import const, frame
from gasguard.tools.sim.fleet_node import SimNode
from test_firmware_app import DEV, KEY, Node, acks

# (command, args): unknown parameter id, short args, a pressure parameter out of bounds, one in bounds,
# a gas threshold in bounds, and an unknown command
CASES = [
    (const.CMD_SET_PARAM, bytes([99, 0, 10])),
    (const.CMD_SET_PARAM, b"\x01"),
    (const.CMD_SET_PARAM, bytes([const.P_OPSO, 0x7F, 0xFF])),
    (const.CMD_SET_PARAM, bytes([const.P_OPSO, 0x1B, 0x58])),           # 7000 Pa
    (const.CMD_SET_PARAM, bytes([const.P_GAS_L1, 0, 120])),              # 12 % LEL
    (99, b""),
]


def _firmware_answers(tmp_path):
    n = Node(tmp_path)
    n.run(200)
    boot = [f for f in n.frames() if f["type"] == "event" and f["code"] == const.EV_BOOT]
    fr = []
    for cid, (cmd, args) in enumerate(CASES, 1):      # one at a time: the node keeps MAX_ACKS answers queued
        n.send({"type": "command", "cmd": cmd, "cid": cid, "args": args})
        n.run(300)
        fr += n.frames()
    config = [f["data"] for f in fr if f["type"] == "event" and f["code"] == const.EV_CONFIG]
    return boot[0]["data"], sorted(acks(fr)), config


def _sim_answers():
    node = SimNode(DEV, KEY, "household", random.Random(1))
    boot = node.boot_event(0.0, cause=0)["data"]
    out = []
    for cid, (cmd, args) in enumerate(CASES, 1):
        raw = frame.seal({"type": "command", "dev": DEV, "fcnt": cid, "cmd": cmd, "cid": cid, "args": args},
                         KEY, const.DOWN)
        status, fields = node.on_downlink(raw, 1.0)
        assert status == "command"
        out.extend(fields)
    answers = sorted((f["ref_type"], f["ref"], f["result"]) for f in out if f["type"] == "ack")
    config = [f["data"] for f in out if f["type"] == "event" and f["code"] == const.EV_CONFIG]
    return boot, answers, config


@pytest.mark.parametrize("what", ["boot", "acks", "config"])
def test_a_simulated_node_answers_as_the_firmware(tmp_path, what):
    fw, sim = _firmware_answers(tmp_path), _sim_answers()
    i = ("boot", "acks", "config").index(what)
    assert len(fw[1]) == len(CASES)                      # the firmware answered every command
    assert sim[i] == fw[i]


def test_the_boot_event_carries_the_firmware_version_of_spec_3_5(tmp_path):
    data, _, _ = _firmware_answers(tmp_path)
    # SPEC 3.5 BOOT: reset cause, firmware major, minor, profile (1 household); the firmware is 1.0
    assert data[1:] == bytes([1, 0, 1])


def test_a_simulated_station_trips_as_the_firmware_safety_machine_does():
    """A dynamic SimNode's alarms, step by step, are what firmware/safety.Safety raises and clears on the same
    signals: over-pressure closes the slam-shut; behind it the outlet runs down, so OPSO clears and UPSO
    follows (the old simulator reported the OPSO alone)."""
    from gasguard.firmware import bounds, safety

    node = SimNode(0x00A0F001, KEY, "station", random.Random(2), pressure_class="medium_a")
    node.dynamic = True
    node.gas_fn = lambda t: 10                                    # clean air
    node.inlet_fn = lambda t: 300_000
    node.p_fn = lambda t: 2500 if t < 10 else 5000               # past OPSO (165 % of the 2.5 kPa set point)
    fw = safety.Safety("station", dict(bounds.defaults("station"), **node.params))
    sim_alarms, fw_alarms = [], []
    for t in range(0, 120):
        sim_alarms += [(t, f["code"], f["cleared"]) for f in node.step(float(t), random.Random(t))
                       if f["type"] == "alarm"]
        fw.step(t * 1000, node.gas, node.pressure, 0)            # the same samples the node just took
        fw_alarms += [(t, code, False) for code in range(1, 9) if fw.raised & (1 << code)]
        fw_alarms += [(t, code, True) for code in range(1, 9) if fw.cleared & (1 << code)]
    assert [c for _t, c, cl in fw_alarms if not cl] == [const.AL_OPSO, const.AL_UPSO]
    assert sim_alarms == fw_alarms
