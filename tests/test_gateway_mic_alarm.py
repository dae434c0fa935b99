"""MIC failures are alarmed (SPEC 5, issue 12 item 9): limits.mic_failures failed MICs for one device within
limits.mic_window seconds publish one security event on <root>/event and raise a metric; fewer do not, and
the event is not repeated within the window. Frames forged for a real device id over a real pty, real
mosquitto, the daemon in-process."""

import os

import pytest

from gasguard.testing.node import Node
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.mosquitto]


@pytest.mark.timeout(60)
def test_repeated_mic_failures_for_a_device_publish_one_security_event(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, extra="[limits]\nmic_failures = 4\nmic_window = 30\n[batch]\ndelay = 0.1\n")
    try:
        rig.start()
        a, b = rig.nodes
        cable = rig.cables[0]
        forger = Node(a.dev, key=os.urandom(16))       # a's id, not a's key
        forger.fcnt = 1000

        def events():
            return [d for d in rig.sub.on("/event") if d.get("event") == "mic_failures"]

        for _ in range(3):
            cable.send(forger.reading())
        cable.send(Node(b.dev, key=os.urandom(16)).alarm())   # another device's failure: its own count
        wait_until(lambda: rig.rejected("mic") == 4, 10, "four MIC failures counted")
        cable.send(a.reading())                                  # and the real device is still heard
        rig.sub.wait(lambda ms: rig.readings(), 10)
        assert events() == [] and rig.metric("gasguard_gateway_security_events_total", kind="mic_failures") == 0
        cable.send(forger.alarm())                              # the fourth for a within the window
        (ev,) = rig.sub.wait(lambda ms: events(), 10)
        assert ev["detail"]["dev"] == f"{a.dev:08x}" and ev["detail"]["failures"] == 4
        assert ev["detail"]["window_s"] == 30 and ev["detail"]["rx"]["transport"] == "serial"
        assert rig.metric("gasguard_gateway_security_events_total", kind="mic_failures") == 1
        for _ in range(6):                                       # more within the window: counted, not re-raised
            cable.send(forger.reading())
        wait_until(lambda: rig.rejected("mic") == 11, 10, "all failures counted")
        # (the metric rises with the event, in the same step as the failure is counted)
        assert len(events()) == 1 and rig.metric("gasguard_gateway_security_events_total", kind="mic_failures") == 1
        rig.validated()                                          # the event follows gateway-event.schema.json
    finally:
        rig.close()


def test_mic_watch_window_and_bound():
    from gasguard.gateway.micwatch import MicWatch
    w = MicWatch(3, 10.0, max_devices=2)
    assert [w.failed(1, t) for t in (0, 1, 20)] == [None, None, None]     # spread wider than the window
    assert [w.failed(1, t) for t in (21, 22)] == [None, 3]                # 20, 21, 22: three within 10 s
    assert w.failed(1, 23) is None                                        # not again within the window
    assert [w.failed(1, t) for t in (33, 34, 35)] == [None, None, 3]      # a new window: raised again
    w.failed(2, 40)
    w.failed(3, 41)                                                       # a third device: the oldest goes
    assert set(w.failures) == {2, 3} and w.forgotten == 1
