"""Scenarios against an in-process receiver that verifies every frame (MIC, counter) with the keys."""

import json

import pytest

from fleet_oracle import Oracle
from gasguard.protocol import ProtocolError, const, frame
from gasguard.testing.waits import wait_until
from gasguard.tools.sim import district
from gasguard.tools.sim import scenarios
from gasguard.tools.sim.fleet import Fleet
from gasguard.tools.sim.fleet_transport import CallbackTransport


@pytest.fixture(scope="module")
def devs():
    return district.generate(seed=11, scale=0.05, households=400, sim_keys=True)


def play(devs, name, ack=True, realtime=False, **kw):
    oracle = Oracle({d.dev_id: d.key for d in devs})

    def deliver(raw, node):
        f = oracle.accept(raw)
        r = oracle.reply(f) if ack else None
        return [r] if r else []

    fleet = Fleet.from_devices(devs, CallbackTransport(deliver), seed=5, record=True, speed=kw.pop("speed", 60.0),
                               rate=kw.pop("rate", 0.0))
    scen = scenarios.make(name, seed=5, **kw.pop("params", {}))
    rep = fleet.run(scen, realtime=realtime, **kw)
    return fleet, scen, rep, oracle


def test_quiet_day_is_readings_in_clean_air(devs):
    fleet, _scen, rep, oracle = play(devs, "quiet", duration=1800)
    assert rep.sent["alarm"] == rep.sent["event"] == 0 and rep.stopped_by == "duration"
    readings = [f for f in oracle.frames if f["type"] == "reading"]
    assert len(readings) == rep.frames > len(fleet.nodes)         # every node reported, stations more often
    assert all(0 <= f["gas"] <= 20 and f["state"] == 0 for f in readings)      # 0-2 % LEL, valve open
    homes = [f for f in readings if f["dev"] >= district.USER_BASE]
    st = [f for f in readings if f["dev"] < district.USER_BASE]
    assert all(1800 < f["pressure"] < 2200 and 0 < f["battery"] <= 100 and f["inlet"] is None for f in homes)
    assert all(f["battery"] is None and f["inlet"] > 50_000 for f in st)
    # station readings are 60 s apart, household readings 900 s
    per = {}
    for f in readings:
        per[f["dev"]] = per.get(f["dev"], 0) + 1
    assert max(per[d] for d in per if d < district.USER_BASE) >= 29
    assert max(per[d] for d in per if d >= district.USER_BASE) <= 2


def test_single_leak_warns_alarms_shuts_and_clears(devs):
    _fleet, scen, rep, oracle = play(devs, "single_leak")
    (dev,) = scen.targets
    assert oracle.alarms() == [(dev, const.AL_GAS_L1), (dev, const.AL_GAS_L2)]
    assert {c for _d, c in oracle.alarms(cleared=True)} == {const.AL_GAS_L1, const.AL_GAS_L2}
    l2 = next(f for f in oracle.frames if f["type"] == "alarm" and f["code"] == const.AL_GAS_L2)
    st = frame.state_fields(l2["state"])
    assert st["valve"] == const.VALVE_CLOSED and st["latched"] and st["gas_level"] == 2 and l2["value"] >= 250
    ev = [f for f in oracle.frames if f["type"] == "event"]
    assert [(e["code"], e["data"]) for e in ev] == [(const.EV_VALVE, bytes([const.VALVE_CLOSED, const.CAUSE_GAS]))]
    # when it clears the valve stays shut and latched (until an authenticated reset), gas level back to normal
    cleared = [f for f in oracle.frames if f["type"] == "alarm" and f["cleared"]][-1]
    st = frame.state_fields(cleared["state"])
    assert st["latched"] and st["valve"] == const.VALVE_CLOSED and st["gas_level"] == 0 and cleared["value"] < 100
    assert rep.alarms["acked"] == rep.alarms["raised"] == 4 and rep.alarms["unacked"] == 0


def test_station_trip_closes_the_slam_shut_and_cuts_off_downstream(devs):
    fleet, scen, _rep, oracle = play(devs, "station_trip")
    (dev,) = scen.targets
    got = {}
    for d, c in oracle.alarms():
        got.setdefault(d, set()).add(c)
    assert got[dev] == {const.AL_OPSO, const.AL_UPSO}            # over-pressure, then its own outlet runs down
    assert len(scen.expect) > 10 and got == scen.expect           # every node downstream tripped UPSO
    node = fleet.by_dev[dev]
    opso = next(f for f in oracle.frames if f["type"] == "alarm" and f["dev"] == dev)
    assert opso["value"] > node.trips()[0] and frame.state_fields(opso["state"])["ptrip"]
    last = [f for f in oracle.frames if f["type"] == "reading" and f["dev"] == dev][-1]
    assert last["pressure"] < 0.05 * node.p_nom and last["state"] & const.ST_VALVE_MASK == const.VALVE_CLOSED
    homes = [d for d in scen.expect if fleet.by_dev[d].profile == "household"]
    assert homes and all(fleet.by_dev[d].valve == const.VALVE_CLOSED for d in homes)


def test_pressure_falling_crosses_the_plan_bound_and_keeps_falling(devs):
    _fleet, scen, _rep, oracle = play(devs, "pressure_falling", params={"pclass": "subhigh_b", "cross": 0.3},
                                     duration=1200)
    assert scen.targets
    for dev in scen.targets:
        inlets = [(f["fcnt"], f["inlet"]) for f in oracle.frames if f["type"] == "reading" and f["dev"] == dev]
        vals = [v for _c, v in inlets]
        assert vals[0] > 550_000 and vals[-1] < scenarios.PLAN_BOUND["subhigh_b"]
        below = [i for i, v in enumerate(vals) if v < scenarios.PLAN_BOUND["subhigh_b"]]
        assert len(below) >= 2 and vals[below[-1]] < vals[below[0]]      # still falling after the crossing
    # the feeder on this network cannot hold its 0.3 MPa outlet at the end: its UPSO trips
    assert {c for _d, c in oracle.alarms()} >= {const.AL_UPSO}
    assert {d for d, _c in oracle.alarms()} >= set(scen.expect)


def test_alarm_storm_is_bounded_and_every_alarm_is_acked(devs):
    _fleet, scen, rep, oracle = play(devs, "alarm_storm", params={"count": 150, "window": 30})
    assert len(scen.targets) == 150
    got = oracle.alarms()
    assert sorted(got) == sorted((d, c) for d in scen.targets for c in (const.AL_GAS_L1, const.AL_GAS_L2))
    assert rep.alarms["raised"] == 300 and rep.alarms["acked"] == 300 and rep.alarms["unacked"] == 0


def test_same_seed_same_frames_and_runs_are_bounded(devs):
    a = play(devs, "alarm_storm", params={"count": 20})[0].records
    b = play(devs, "alarm_storm", params={"count": 20})[0].records
    key = lambda r: (r["vt"], r["dev"], r["fcnt"], r["type"], r.get("aseq"), r.get("gas"))
    assert [key(r) for r in a] == [key(r) for r in b] and len(a) > 100
    _f, _s, rep, _o = play(devs, "quiet", duration=3600, max_frames=500)
    assert rep.stopped_by == "max_frames" and rep.frames == 500
    _f, _s, rep, _o = play(devs, "quiet", realtime=True, speed=1.0, duration=3600, wall_timeout=0.5)
    assert rep.stopped_by == "wall_timeout" and rep.wall_s < 1.5 and rep.virtual_s < 2


def test_unacked_alarms_are_retransmitted_with_new_counters(devs):
    _fleet, scen, rep, oracle = play(devs, "single_leak", ack=False)
    copies = [f for f in oracle.frames if f["type"] == "alarm" and f["code"] == const.AL_GAS_L1 and not f["cleared"]]
    assert len(copies) >= 5 and len({f["aseq"] for f in copies}) == 1
    assert len({f["fcnt"] for f in copies}) == len(copies)
    assert [f["age"] for f in copies] == sorted(f["age"] for f in copies) and copies[-1]["age"] > copies[0]["age"]
    assert rep.alarms["unacked"] == 4 and rep.alarms["retransmitted"] > 0


def test_commands_are_verified_and_answered_like_the_firmware(devs):
    fleet, scen, _rep, oracle = play(devs, "single_leak", duration=150)   # gas still high at 150 s
    dev = scen.targets[0]
    node = fleet.by_dev[dev]
    fleet.now = 150.0

    def command(cmd, cid, args=b""):
        """Send a signed command; the frames the node answered with (verified by the oracle on the way)."""
        n = len(oracle.frames)
        fleet.deliver_downlink(oracle.downlink(dev, {"type": "command", "cmd": cmd, "cid": cid, "args": args}))
        return oracle.frames[n:]

    got = command(const.CMD_RESET, 7)
    assert got[0]["type"] == "ack" and got[0]["ref"] == 7 and got[0]["result"] == const.R_REFUSED
    assert node.valve == const.VALVE_CLOSED and node.latched       # refused while the gas persists
    node.gas_fn = lambda t: 5
    node.step(151.0, fleet.rng)
    got = command(const.CMD_RESET, 8)
    assert got[0]["result"] == const.R_OK and node.valve == const.VALVE_OPEN and not node.latched
    assert got[1]["type"] == "event" and got[1]["data"] == bytes([const.VALVE_OPEN, const.CAUSE_RESET])
    # SET_PARAM outside the firmware's safe bounds is refused; inside is taken
    assert command(const.CMD_SET_PARAM, 9, bytes([const.P_GAS_L2, 0x01, 0x2C]))[0]["result"] == const.R_OUT_OF_BOUNDS
    assert command(const.CMD_SET_PARAM, 10, bytes([const.P_GAS_L2, 0x00, 0xC8]))[0]["result"] == const.R_OK
    assert node.params["gas_l2"] == 200
    # a replayed or forged command changes nothing and gets no answer
    replay = oracle.downlink(dev, {"type": "command", "cmd": const.CMD_STATUS, "cid": 11, "args": b""})
    assert fleet.deliver_downlink(replay) and fleet.deliver_downlink(replay) == []
    forged = bytearray(oracle.downlink(dev, {"type": "command", "cmd": const.CMD_STATUS, "cid": 12, "args": b""}))
    forged[-1] ^= 1
    assert fleet.deliver_downlink(bytes(forged)) == []
    assert fleet.report.downlinks["replay"] == 1 and fleet.report.downlinks["mic"] == 1


def test_counters_resume_past_a_saved_state(devs, tmp_path):
    fleet, _s, _r, oracle = play(devs, "quiet", duration=600)
    fleet.save_counters(tmp_path / "c.json")
    fleet2, *_ = play(devs, "quiet", duration=1)
    assert fleet2.load_counters(tmp_path / "c.json") == len(devs)
    n = fleet.nodes[0]
    assert fleet2.by_dev[n.dev].fcnt == n.fcnt + const.COUNTER_BLOCK
    # a frame from the resumed node verifies after the last one the receiver accepted
    raw = fleet2.by_dev[n.dev].seal(fleet2.by_dev[n.dev].reading(0, fleet2.rng))
    assert frame.open_frame(raw, n.key, const.UP, oracle.last[n.dev])["fcnt"] > oracle.last[n.dev]
    with pytest.raises(ProtocolError):
        frame.open_frame(raw, n.key, const.UP, oracle.last[n.dev] + 2 * const.COUNTER_BLOCK)
    assert json.loads((tmp_path / "c.json").read_text())[str(n.dev)][0] == n.fcnt


def test_bad_scenarios_say_what_to_choose():
    with pytest.raises(ValueError, match="choose one of"):
        scenarios.make("earthquake")
    with pytest.raises(ValueError, match="choose one of"):
        scenarios.make("pressure_falling", pclass="ultra")
    with pytest.raises(ValueError, match="must be a number"):
        scenarios.make("alarm_storm", count="x5")
    with pytest.raises(ValueError, match="takes seed, count, window, start"):
        scenarios.make("alarm_storm", cnt=5)


def test_rate_caps_frames_per_wall_second(devs):
    _f, _s, rep, oracle = play(devs, "quiet", realtime=True, speed=10_000.0, duration=86_400, wall_timeout=1.0,
                               rate=300.0)
    assert rep.stopped_by == "wall_timeout"
    assert 150 <= rep.frames <= 300 * rep.wall_s + 1 and len(oracle.frames) == rep.frames


def test_runs_in_sequence_continue_the_clock_and_the_demo_story_plays_both(devs):
    fleet, scen, rep, oracle = play(devs, "leak_then_trip")
    leak, trip = scen.parts
    got = set(oracle.alarms())
    assert {(leak.targets[0], const.AL_GAS_L2), (trip.targets[0], const.AL_OPSO)} <= got
    assert {d for d, _c in got} == set(scen.expect)
    first_opso = min(f["fcnt"] for f in oracle.frames if f["type"] == "alarm" and f["code"] == const.AL_OPSO)
    assert first_opso and fleet.now == 900.0
    # a second run on the same fleet continues at t=900: its leak starts 60 s in, counters keep rising
    n = len(fleet.records)
    rep2 = fleet.run(scenarios.make("single_leak", seed=9), duration=300, realtime=False)
    assert fleet.t0 == 900.0 and fleet.now == 1200.0 and rep2.virtual_s == 300.0
    later = fleet.records[n:]
    assert min(r["vt"] for r in later) >= 900.0 and rep2.alarms["raised"] >= 2
    assert min(r["vt"] for r in later if r["type"] == "alarm") >= 960.0
    assert len(oracle.frames) == len(fleet.records)                 # every frame verified: no counter reused


def test_scheduled_actions_send_what_they_return(devs):
    """fleet.at() is how a scenario injects frames at a virtual time: here, a power cut and BOOT events."""
    oracle = Oracle({d.dev_id: d.key for d in devs})
    fleet = Fleet.from_devices(devs, CallbackTransport(lambda raw, node: [oracle.reply(oracle.accept(raw))]
                                                       if raw[0] >> 3 & 7 == const.EVENT else []), record=True)
    homes = fleet.households()[:3]
    fleet.at(42.0, lambda fl, t: [n.boot_event(t, cause=2) for n in homes])
    rep = fleet.run("quiet", duration=100, realtime=False)
    boots = [r for r in fleet.records if r["type"] == "event"]
    assert [(r["dev"], r["vt"], r["code"]) for r in boots] == [(n.dev, 42.0, const.EV_BOOT) for n in homes]
    got = [f for f in oracle.frames if f["type"] == "event"]
    # SPEC 3.5 BOOT: cause 2, firmware 1.0 (as the firmware reports it), household
    assert all(f["data"] == bytes([2, 1, 0, 1]) for f in got) and rep.downlinks == {"ack": 3}


def test_downlinks_handed_in_from_another_thread_reach_the_node(devs):
    """The demo bridges acks from MQTT in its own thread: deliver_downlink() queues them for the run loop."""
    import threading

    oracle = Oracle({d.dev_id: d.key for d in devs})
    fleet = Fleet.from_devices(devs, CallbackTransport(lambda raw, node: (oracle.accept(raw), [])[1]), speed=200.0)
    queued = []

    def bridge():
        # ack the first alarm, from this thread, while the fleet runs
        f = wait_until(lambda: next((f for f in oracle.frames if f["type"] == "alarm"), None), 5, "an alarm",
                       step=0.005)
        queued.append(fleet.deliver_downlink(oracle.downlink(f["dev"], {"type": "ack", "ref_type": 1,
                                                                         "ref": f["aseq"], "result": 0})))

    t = threading.Thread(target=bridge)
    t.start()
    rep = fleet.run("single_leak", duration=200, params={"seed": 5}, wall_timeout=10)
    t.join()
    assert queued == [[]] and rep.downlinks.get("ack") == 1 and rep.alarms["acked"] == 1


def test_a_fleet_is_made_from_a_registry_path_or_devices(devs, tmp_path):
    path = tmp_path / "d.db"
    district.write(path, seed=11, scale=0.05, households=400, sim_keys=True)
    a = Fleet(str(path), CallbackTransport(lambda raw, node: []))
    b = Fleet(devs, CallbackTransport(lambda raw, node: []))
    assert [(n.dev, n.key, n.profile, n.upstream) for n in a.nodes] == \
        [(n.dev, n.key, n.profile, n.upstream) for n in sorted(b.nodes, key=lambda n: n.dev)]
    with pytest.raises(FileNotFoundError, match="gasguard sim district"):
        Fleet(str(tmp_path / "missing.db"), CallbackTransport(lambda raw, node: []))
