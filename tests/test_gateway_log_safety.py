"""Logs cannot be forged or flooded (issue 12 item 7).

A node's serial text is escaped (a newline in it cannot start a forged `CRITICAL` line in the text log) and
limited per port with a count of what was held back; a plugin that fails on every frame leaves one traceback
per window and a count, not one per frame. The real `gasguard gateway run` over a real pty (its text-mode log
file is what an operator reads), and the daemon in-process for the plugin."""

import logging
import re

import pytest

from gasguard.testing.gateway import GatewayProcess
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.mosquitto]

FORGED = "2026-12-02T03:04:05.678Z CRITICAL gasguard.gateway: SPOOL WRITE FAILED (full): all alarms lost"
LINE_START = re.compile(r"^t=\S+Z level=(debug|info|warning|error|critical) logger=")     # logfmt (gasguard/logs.py)
FLOOD = 2000
ALLOW = 5


@pytest.mark.timeout(90)
def test_node_text_is_escaped_and_limited_with_a_count_of_what_was_held_back(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, sub=False,
              extra=f"[limits]\nlog_window = 2\nnode_log_lines = {ALLOW}\n")
    log = tmp_path / "gateway.log"
    gw = GatewayProcess(rig.config_path, log).start()
    cable = rig.cables[0]
    try:
        wait_until(lambda: "serial" in gw.log() and " open (" in gw.log(), 20, "the port is open")
        # a node prints a "log line" of its own: a newline, then what looks like a gateway line
        cable.write(b"\x00boot ok\n" + FORGED.encode() + b"\r\n\tdone\x00")
        for i in range(FLOOD):                                  # 2,000 printable garbage segments
            cable.write(b"\x00garbage %d ~~~~\x00" % i)
        wait_until(lambda: "node_text:" in gw.log() and "more suppressed" in gw.log(), 20,
                   "the summary of held-back node lines")
        assert gw.terminate(20) == 0
    finally:
        gw.close()
        rig.close()
    lines = log.read_text().splitlines()
    assert not [ln for ln in lines if ln.startswith(FORGED[:19])], "the node forged a log line"
    assert not [ln for ln in lines if "level=critical" in ln], "a CRITICAL line in a run with no fault"
    for ln in lines:                                            # every line is one of the gateway's own
        assert LINE_START.match(ln), f"a line the gateway did not write: {ln!r}"
        assert "\x1b" not in ln and "\r" not in ln
    (node_line,) = [ln for ln in lines if "boot ok" in ln]
    # escaped once by the gateway (untrusted), its backslashes once more by logfmt
    assert r"boot ok\\n" + FORGED + r"\\r\\n\\tdone" in node_line, node_line
    logged = [ln for ln in lines if "node log on " in ln]
    held = sum(int(m.group(1)) for ln in lines if (m := re.search(r"node_text:\S+: (\d+) more suppressed", ln)))
    assert len(logged) + held == FLOOD + 1, (len(logged), held)      # every node line logged or counted
    assert len(logged) <= ALLOW * 4, len(logged)                     # a few windows' worth, not 2,001


class Broken:
    name = "broken"
    subscriptions: list = []

    def __init__(self):
        self.calls = 0

    def observe(self, obs):
        self.calls += 1
        raise KeyError("state")

    def tick(self, now):
        return []

    def close(self):
        pass


@pytest.mark.timeout(60)
def test_a_traceback_repeating_per_frame_is_logged_once_per_window_with_a_count(tmp_path, mosquitto, caplog):
    caplog.set_level(logging.INFO)
    rig = Rig(tmp_path, mosquitto.port, sub=False, extra="[limits]\nlog_window = 60\nrate_per_min = 100000\n"
                                                         "burst = 1000\n")
    plugin = Broken()
    try:
        rig.start(plugins=[plugin])
        a, _ = rig.nodes
        for _ in range(300):
            rig.cables[0].send(a.reading())
        wait_until(lambda: plugin.calls == 300, 20, "every reading observed")
        rig.daemon.burst.window = 0               # close the window now: its summary is logged
        rig.runner.call(rig.daemon.burst.flush)
        suppressed = rig.metric("gasguard_gateway_log_lines_suppressed_total", what="plugin")
    finally:
        rig.close()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "plugin broken.observe failed" in tracebacks[0].getMessage()
    (summary,) = [r.getMessage() for r in caplog.records if "more suppressed" in r.getMessage()]
    assert summary.startswith("plugin:broken.observe:KeyError: 299 more suppressed"), summary
    assert suppressed == 299


def test_untrusted_text_cannot_break_a_line():
    from gasguard.gateway.burstlog import untrusted
    for bad in ("a\nb", "a\rb", "a\x1b[2Jb", "a\u2028b", "a\x85b", "a\x00b", "a\x7fb"):
        out = untrusted(bad)
        assert out.isprintable() and out.startswith("a") and out.endswith("b"), repr(out)
    assert untrusted(b"\xff\xfe ok") == "\\xff\\xfe ok"
    assert untrusted("x" * 1000).endswith("...(+800 chars)")
