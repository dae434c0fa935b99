"""Drills and training: `gasguard gateway run --clock speed=N|virtual` runs the real daemon on a drill clock
and marks every message it publishes ("drill": {"clock": ...}), so no consumer can take a drill for a real
alarm; a virtual clock moves only with `gasguard gateway advance-clock`."""

import json

import pytest
from click.testing import CliRunner

from gasguard.cli import cli
from gasguard.testing.gateway import GatewayProcess
from gasguard.testing.rig import Rig
from gasguard.testing.schemas import validate
from gasguard.testing.subscriber import Subscriber
from gasguard.testing.waits import wait_until

GRADING = "[plugins]\ngrading = true\n"


def _run(tmp_path, mosquitto, clock: str):
    rig = Rig(tmp_path, mosquitto.port, extra=GRADING + "[batch]\ndelay = 0.05\n")
    sub = Subscriber(mosquitto.port, "gasguard/#")
    gw = GatewayProcess(rig.config_path, tmp_path / "gw.log", args=("--clock", clock)).start()
    wait_until(lambda: "open (serial" in gw.log(), 30, "the port opens")
    return rig, sub, gw


def _every_message_marked(sub, clock: str, root: str) -> int:
    with sub.lock:
        ms = [(t, d) for t, d, _ in sub.messages if not t.endswith("/drill/clock")]
    for topic, doc in ms:
        assert doc.get("drill") == {"clock": clock}, (topic, doc)
        if topic.startswith(root + "/"):
            validate(topic, doc, root)
    return len(ms)


@pytest.mark.mosquitto
@pytest.mark.timeout(90)
def test_speed_clock_brings_the_deadline_in_seconds_and_marks_every_message(tmp_path, mosquitto):
    rig, sub, gw = _run(tmp_path, mosquitto, "speed=600")       # 20 minutes in 2 s
    try:
        node = rig.nodes[0]
        rig.cables[0].send(node.reading())
        rig.cables[0].send(node.alarm(code=2, value=260, state=0x15))
        sub.wait(lambda ms: any(d.get("kind") == "escalation" for _, d, _ in ms), 30)
        assert gw.terminate() == 0
        kinds = {t.rsplit("/", 1)[-1] for t, _, _ in sub.messages}
        assert {"status", "alarm", "state", "reading"} <= kinds, kinds
        assert _every_message_marked(sub, "speed=600", rig.root) >= 6
        assert "DRILL CLOCK speed=600" in gw.log()
    finally:
        sub.close()
        gw.close()
        rig.close()


@pytest.mark.mosquitto
@pytest.mark.timeout(90)
def test_virtual_clock_moves_only_when_told(tmp_path, mosquitto):
    rig, sub, gw = _run(tmp_path, mosquitto, "virtual")
    try:
        node = rig.nodes[0]
        rig.cables[0].send(node.alarm(code=2, value=260, state=0x15))
        new = sub.wait(lambda ms: [d for _, d, _ in ms if d.get("kind") == "new"], 15)[0]
        r = CliRunner().invoke(cli, ["gateway", "advance-clock", "19m", "-c", str(rig.config_path), "--json"])
        assert r.exit_code == 0 and json.loads(r.stdout)["advance_s"] == 19 * 60, r.output
        wait_until(lambda: "drill clock moved 1140 s" in gw.log(), 10, "the gateway takes the first move")
        assert not [d for _, d, _ in sub.messages if d.get("kind") == "escalation"]     # 19 min: not due
        r = CliRunner().invoke(cli, ["gateway", "advance-clock", "1m", "-c", str(rig.config_path)])
        assert r.exit_code == 0, r.output
        esc = sub.wait(lambda ms: [d for _, d, _ in ms if d.get("kind") == "escalation"], 10)[0]
        assert esc["published_at"] == pytest.approx(new["published_at"] + 1200)      # the clock stood still between
        assert gw.terminate() == 0
        _every_message_marked(sub, "virtual", rig.root)
    finally:
        sub.close()
        gw.close()
        rig.close()


@pytest.mark.parametrize("args, says", [
    (["--clock", "fast"], "use real, speed=N"),
    (["--clock", "speed=0"], "use real, speed=N"),
    (["--clock", "real", "--t0", "1795400000"], "--t0 needs a drill clock"),
])
def test_a_bad_clock_is_refused_with_exit_2(tmp_path, args, says):
    r = CliRunner().invoke(cli, ["gateway", "run", "-c", str(tmp_path / "none.toml"), *args])
    assert r.exit_code == 2 and says in r.stderr, r.output


def test_advance_clock_refuses_a_duration_it_cannot_read(tmp_path):
    r = CliRunner().invoke(cli, ["gateway", "advance-clock", "soon", "-c", str(tmp_path / "none.toml")])
    assert r.exit_code == 2 and "e.g. 90s, 20m, 1.5h" in r.stderr
