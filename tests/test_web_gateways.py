"""The consoles' gateway line: `console.gateway_status`, the one rule for what of the district's gateways is
wrong (silent, offline, an id two gateway processes share), and both web sources fed from the real grader:
`StoreSource` from the command store's rows, the MQTT consoles' board from the grader's gateway messages.
The board in a browser: tests/test_web_browser.py."""

import threading

from gasguard.command import config as cconfig
from gasguard.command.console import IncidentBoard, gateway_status
from gasguard.command.store import open_store
from gasguard.command.web.source import StoreSource
from web_helpers import T0, GatewayGrader


def _hms(t):
    return f"@{t - T0:.0f}"          # shows which time was written, and that the caller's format is used


def _kinds(status):
    return [(w["gateway"], w["kind"]) for w in status["warnings"]]


def test_the_rule_names_each_silent_offline_and_shared_gateway_and_counts_the_rest():
    assert gateway_status([], _hms) is None                      # no command service heard: nothing to say
    fine = [{"gateway": f"gw{i:02d}", "online": True, "silent": False, "last_seen": T0} for i in range(19)]
    assert gateway_status(fine, _hms) == {"summary": "gateways: 19 heard", "heard": 19, "total": 19, "warnings": []}
    fine[7].update(silent=True, last_seen=T0 + 5)
    fine[9].update(online=False, last_seen=T0 + 6)
    fine[3].update(shared_by=["sub-17", "sub-18"])
    fine[12].update(online=False, silent=True, last_seen=T0 + 7, shared_by=["sub-1", "sub-2"])   # both
    fine[14].update(online=None, last_seen=None)                 # heard before its birth: nothing wrong
    st = gateway_status(fine, _hms)
    assert st["summary"] == "gateways: 15 heard" and st["heard"] == 15 and st["total"] == 19
    assert _kinds(st) == [("gw03", "shared"), ("gw07", "silent"), ("gw09", "offline"), ("gw12", "silent"),
                          ("gw12", "shared")]                    # silent wins over offline: it is the later news
    assert [w["text"] for w in st["warnings"]] == [
        "gw03 SHARED BY 2 GATEWAYS (sub-17, sub-18)", "SILENT gw07 (last heard @5)", "OFFLINE gw09 (last heard @6)",
        "SILENT gw12 (last heard @7)", "gw12 SHARED BY 2 GATEWAYS (sub-1, sub-2)"]
    board = IncidentBoard()                                      # the field console's line: the same rule, words
    for i, g in enumerate(fine):
        board.apply_gateway({**g, "t": float(i)})
    line = board.gateway_line()
    assert line.startswith("gateways: 15 heard, gw03 SHARED BY 2 GATEWAYS (sub-17, sub-18), SILENT gw07 (last heard ")
    assert line.count("SILENT") == 2 and line.count("OFFLINE") == 1 and line.count("SHARED") == 2


def test_store_source_and_the_mqtt_board_show_what_the_grader_decided(tmp_path):
    """The real grader on a SQLite store: births, a Last Will, a silence; the store source reads its rows and
    wakes the board when a gateway changes; the MQTT consoles' board applies its messages: same verdicts."""
    gg = GatewayGrader(tmp_path)
    board = IncidentBoard()

    def told(msgs):
        for _topic, msg in msgs:
            board.apply_gateway(msg)
    told(gg.status("gw1", True, T0))
    told(gg.status("gw2", True, T0 + 1))
    source = StoreSource(open_store(gg.cfg.store), "lixia", poll_s=0.02).start()   # the console's own connection
    woken = threading.Event()
    source.listen(lambda msg: woken.set() if msg is None else None)
    try:
        assert gateway_status(source.gateways(), _hms)["summary"] == "gateways: 2 heard"
        assert gateway_status(source.gateways(), _hms)["warnings"] == []
        told(gg.status("gw2", False, T0 + 10))                  # its Last Will
        assert woken.wait(5), "the store source did not wake the board when gw2 went offline"
        st = gateway_status(source.gateways(), _hms)
        assert _kinds(st) == [("gw2", "offline")] and st["warnings"][0]["text"] == "OFFLINE gw2 (last heard @10)"
        assert _kinds(gateway_status(board.gateway_states(), _hms)) == [("gw2", "offline")]
        woken.clear()
        told(gg.tick(T0 + 10 + gg.cfg.gateway_silent_s + 1))    # nothing heard from either since
        assert woken.wait(5), "the store source did not wake the board when the gateways went silent"
        assert _kinds(gateway_status(source.gateways(), _hms)) == [("gw1", "silent"), ("gw2", "silent")]
        assert gateway_status(board.gateway_states(), _hms)["warnings"] == \
            gateway_status(source.gateways(), _hms)["warnings"]
        woken.clear()
        told(gg.status("gw1", True, T0 + 400))                  # back
        assert woken.wait(5), "the store source did not wake the board when gw1 came back"
        st = gateway_status(source.gateways(), _hms)
        assert st["summary"] == "gateways: 1 heard" and _kinds(st) == [("gw2", "silent")]
    finally:
        source.close()
        gg.close()
