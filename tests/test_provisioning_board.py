"""What follows a flash, against a real-time virtual board: config, calibration, self-test, key rotation and
decommissioning, each checked on the board's flash, in the registry and with the gateway's verifier."""

import json
import time

import pytest

from gasguard.registry import Registry
from gasguard.gateway.verify import Rejected
from gasguard.provisioning import calibration
from gasguard.provisioning.board import Board
from gasguard.provisioning.errors import ProvisioningError
from gasguard.tools.sim.vboard_client import gas_raw

from gasguard.testing.waits import wait_until
from provisioning_helpers import board_runs, capture, cli, cli_json, gateway_verifier, installed_board, new_device

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(180)]


@pytest.fixture
def setup(tmp_path):
    reg = tmp_path / "reg.db"
    dev = new_device(reg, site_name="Lane 3 No. 12", households=1)
    vb = installed_board(tmp_path, dev)
    yield reg, dev, vb
    vb.stop()


def test_config_change_reaches_the_board_drops_an_older_override_and_is_recorded(setup):
    reg, dev, vb = setup
    d = f"{dev.dev_id:08x}"
    # a gateway's SET_PARAM override of gas_l1 in the node's state must not hide the technician's value
    vb.ctl.power(False)
    (vb.flash / "gg_state.json").write_text(json.dumps({"params": {"gas_l1": 150, "report_s": 120}}))
    vb.ctl.power(True)
    rep = cli_json("device", "config", d, "gas_l1=120", "radio.baud=57600", "--port", vb.pty, registry=reg)
    assert rep["changed"] == {"gas_l1": 120} and rep["dropped_overrides"] == ["gas_l1"]
    cfg = json.loads((vb.flash / "gg_config.json").read_text())
    assert cfg["params"]["gas_l1"] == 120 and cfg["radio"]["baud"] == 57600
    assert json.loads((vb.flash / "gg_state.json").read_text())["params"] == {"report_s": 120}
    got = cli_json("device", "config", d, "--port", vb.pty, registry=reg)
    assert got["params"]["gas_l1"] == 120 and got["source"]["gas_l1"] == "config"
    assert got["source"]["report_s"] == "override" and got["source"]["gas_l2"] == "default"
    with Registry(reg) as r:
        assert r.get(dev.dev_id).config["gas_l1"] == 120
        assert r.history(dev.dev_id)[-1]["action"] == "config"


def test_calibration_zero_and_span_with_stability_lands_on_board_and_in_registry(setup):
    reg, dev, vb = setup
    steps = []

    def prompt(step, _msg):                 # the rig applies the test gas when asked, and takes it off
        steps.append(step)
        vb.ctl.set(gas=24500 if step == "span" else 8100)

    seen = []                               # what the technician sees live: reading and countdown
    with Registry(reg) as r, Board(vb.pty) as b:
        rep = calibration.calibrate(b, r, r.get(dev.dev_id), 500, prompt,
                                    watch=lambda *a: seen.append(a))
    assert steps == ["zero", "span", "clear"]
    assert {s for s, *_ in seen} == {"zero", "span", "clear"}
    span_live = [(pct, left) for s, _c, pct, _sp, left in seen if s == "span"]
    assert 45 <= span_live[-1][0] <= 55 and all(0 < left <= 120 for _, left in span_live)   # 50 % LEL gas
    assert all(abs(pct) < 3 for s, _c, pct, _sp, _l in seen if s == "zero")
    g = rep["gas"]
    assert abs(g["zero"] - 8100) <= 2 and abs(g["span"] - 24500) <= 2 and g["span_gas"] == 500
    assert json.loads((vb.flash / "gg_config.json").read_text())["calibration"]["gas"] == g
    with Registry(reg) as r:
        assert r.get(dev.dev_id).calibration["gas"] == g
    assert vb.ctl.request("info")["console"] == "firmware"      # rebooted into the firmware with it
    board_runs(vb, 2500)                                         # past the gas debounce (2 s)
    assert vb.ctl.get()["valve"] == 0                            # in clean air: no alarm, valve open


@pytest.mark.parametrize("span_raw,why", [
    (9000, "nominal sensitivity"),   # a poisoned sensor barely answers the span gas
    (24500, "still reads gas"),      # the span gas left on: the node must not restart into an alarm
])
def test_calibration_refused_stores_nothing(setup, span_raw, why):
    reg, dev, vb = setup
    before = (vb.flash / "gg_config.json").read_text()
    with Registry(reg) as r, Board(vb.pty) as b:
        with pytest.raises(ProvisioningError, match=why):
            calibration.calibrate(b, r, r.get(dev.dev_id), 500,
                                  lambda step, _m: vb.ctl.set(gas=8100 if step == "zero" else span_raw), settle_s=3)
    assert (vb.flash / "gg_config.json").read_text() == before
    with Registry(reg) as r:
        assert r.get(dev.dev_id).calibration == {}


def test_selftest_strokes_the_valve_checks_sensors_and_the_link(setup):
    reg, dev, vb = setup
    code, out, err = cli("device", "selftest", f"{dev.dev_id:08x}", "--port", vb.pty, "--json", registry=reg)
    rep = json.loads(out)
    assert code == 0, out + err
    assert rep["passed"] and rep["checks"] == {"valve": True, "sensors": True, "link": True}
    assert vb.ctl.get()["valve"] == 0                            # stroked and opened again
    vb.ctl.set(gas=0)                                            # sensor unplugged: open circuit
    board_runs(vb, 1500)                                         # the firmware samples it as a fault
    code, out, _ = cli("device", "selftest", f"{dev.dev_id:08x}", "--port", vb.pty, "--json", registry=reg)
    assert code == 1 and json.loads(out)["checks"]["sensors"] is False


def test_rotate_key_old_key_frames_rejected_new_key_frames_verified(setup):
    reg, dev, vb = setup
    old_frames = capture(vb.pty, 10)
    assert old_frames and gateway_verifier(reg).check(old_frames[0], time.time())
    running = gateway_verifier(reg, refresh=30.0)               # a gateway that loaded the registry before
    rep = cli_json("device", "rotate-key", f"{dev.dev_id:08x}", "--port", vb.pty, registry=reg)
    assert rep["key_version"] == 2 and rep["on_board"]
    with Registry(reg) as r:
        new_key = r.get(dev.dev_id).key
    assert new_key != dev.key and (vb.flash / "gg_key.bin").read_bytes() == new_key
    assert not (vb.flash / "gg_key.new").exists()
    with pytest.raises(Rejected) as e:
        gateway_verifier(reg).check(old_frames[0], time.time())
    assert e.value.reason == "mic"
    new_frames = capture(vb.pty, 10)
    assert new_frames and gateway_verifier(reg).check(new_frames[0], time.time()).device.key_version == 2
    # the running gateway takes the new key at its first MIC failure, not after its 30 s registry refresh
    assert running.check(new_frames[0], time.time()).device.key_version == 2
    with pytest.raises(Rejected):
        running.check(old_frames[0], time.time())


def test_decommission_frames_rejected_and_board_wiped(setup):
    reg, dev, vb = setup
    frames = capture(vb.pty, 10)
    rep = cli_json("device", "decommission", f"{dev.dev_id:08x}", "--port", vb.pty, "--reason", "meter replaced",
                   "--yes",
                   registry=reg)
    assert "/gg_key.bin" in rep["wiped"] and not (vb.flash / "gg_key.bin").exists()
    with pytest.raises(Rejected) as e:
        gateway_verifier(reg).check(frames[0], time.time())
    assert e.value.reason == "decommissioned"
    code, _, err = cli("device", "flash", f"{dev.dev_id:08x}", "--port", vb.pty, registry=reg)
    assert code == 2 and "decommissioned" in err              # a retired identity is never flashed again


def test_monitor_shows_verified_frames_and_rejects_what_the_registry_does_not_know(setup, tmp_path):
    reg, dev, vb = setup
    code, out, err = cli("device", "monitor", "--port", vb.pty, "--count", "1", "--duration", "15", "--json",
                         registry=reg)
    recs = [json.loads(x) for x in out.splitlines() if '"dev"' in x]
    assert code == 0 and recs, out + err
    assert recs[0]["verified"] and recs[0]["dev"] == f"{dev.dev_id:08x}" and recs[0]["fcnt"] > 0
    assert vb.ctl.request("info")["console"] == "firmware"     # monitoring never stops the node
    other = tmp_path / "other.db"
    Registry(other).close()
    code, out, _ = cli("device", "monitor", "--port", vb.pty, "--count", "1", "--duration", "15", "--json",
                       registry=other)
    recs = [json.loads(x) for x in out.splitlines() if '"dev"' in x]
    assert code == 0 and recs and not recs[0]["verified"] and recs[0]["reason"] == "unknown_device"


def test_flashing_a_new_identity_over_an_old_one_starts_its_counters_over_and_warns(setup):
    reg, old, vb = setup
    capture(vb.pty, 10)                                          # the old identity has used counters
    new = new_device(reg, profile="station", households=300)
    code, out, err = cli("device", "flash", f"{new.dev_id:08x}", "--port", vb.pty, registry=reg)
    assert code == 0, out + err
    assert f"this board was {old.dev_id:08x}, still active" in err
    assert "counter 1)" in out                                   # the new identity's first frame counter
    cfg = json.loads((vb.flash / "gg_config.json").read_text())
    assert cfg["dev_id"] == new.dev_id and cfg["profile"] == "station"
    frames = capture(vb.pty, 15)
    assert frames and gateway_verifier(reg).check(frames[0], time.time()).device.dev_id == new.dev_id


def test_the_firmware_watchdog_is_fed_while_the_technician_works_at_the_repl(setup):
    """The node's watchdog outlives the soft reset into the REPL (as on an ESP32): a session must feed it."""
    reg, dev, vb = setup
    with Board(vb.pty, wdt_ms=1000) as b:        # a short watchdog so the test is quick
        b.repl()
        with b.keepalive():
            board_runs(vb, 2500)                 # a technician fitting the calibration cap
        assert b.exec("print(1)").strip() == "1"
    assert vb.ctl.get()["wdt_resets"] == 0
    with Board(vb.pty, wdt_ms=1000) as b:        # the control: an unfed session is reset under our feet
        b.repl()
        wait_until(lambda: vb.ctl.get()["wdt_resets"] == 1, 10, "the watchdog resets an unfed session")


def test_monitor_shows_an_alarm_and_the_nodes_log_line_as_they_happen(setup):
    reg, dev, vb = setup
    vb.ctl.set(gas=gas_raw(300))                                 # 30 % LEL: above the household alarm level
    code, out, err = cli("device", "monitor", "--port", vb.pty, "--duration", "12", "--count", "6", registry=reg)
    assert code == 0, out + err
    assert "alarm gas_l2" in out and "log   alarm: gas_l2" in out and "LATCHED" not in out.split("alarm gas_l2")[0]


def test_selftest_never_strokes_open_a_valve_that_is_latched_shut(setup):
    reg, dev, vb = setup
    vb.ctl.set(gas=gas_raw(300))                                 # 30 % LEL: shut-off, latched
    wait_until(lambda: vb.ctl.get()["valve"] == 1, 15, "the node shuts the valve", step=0.2)
    vb.ctl.set(gas=gas_raw(0))                                   # gas gone, but the latch holds
    board_runs(vb, 1000)
    rep = cli_json("device", "selftest", f"{dev.dev_id:08x}", "--port", vb.pty, registry=reg)
    assert rep["valve_latched"] and rep["checks"]["valve"]       # closed, as it must be
    assert vb.ctl.get()["valve"] == 1 and json.loads((vb.flash / "gg_state.json").read_text())["latched"]
