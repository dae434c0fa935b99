"""The ingest hot path encodes reading entries with orjson and pre-encoded state fields (issue 17); the text
must be what the standard library's json.dumps makes of `reading_entry` (the independent oracle), for every
state byte, with and without an inlet pressure, so no consumer sees a difference."""

import json

from gasguard.gateway import payloads


def test_reading_json_is_the_stdlib_encoding_of_the_entry_for_every_state_byte():
    rx = {"transport": "serial", "port": "ttyUSB0", "rssi": -71.5}
    for st in range(256):
        for inlet in (None, 1_200_000):
            f = {"dev": 0x00A1B2C3, "fcnt": 70_000 + st, "gas": st * 3, "pressure": 2000 + st, "battery": st % 101,
                 "state": st, "inlet": inlet}
            want = json.dumps(payloads.reading_entry("gw:00a1b2c3:1", f, 1764661234.1234 + st, rx),
                              separators=(",", ":"))
            assert payloads.reading_json("gw:00a1b2c3:1", f, 1764661234.1234 + st, rx) == want


def test_dumps_matches_json_for_published_documents_and_keeps_non_string_keys():
    doc = payloads.gateway_event("gw1", 12.5, "thinned", {"readings": 3, "devices": {"00a1b2c3": 3}, "n": None})
    assert payloads.dumps(doc) == json.dumps(doc, separators=(",", ":"))
    assert json.loads(payloads.dumps({1: "a", "b": [1.5, True]})) == {"1": "a", "b": [1.5, True]}


def test_dumps_takes_integers_past_64_bits():
    """orjson refuses them (TypeError); an incident may echo one an operator typed: the publish must not fail."""
    doc = {"incident_id": "lixia-leak-1", "input": {"evacuated": 2 ** 70}}
    assert json.loads(payloads.dumps(doc)) == doc
    f = {"dev": 1, "fcnt": 2, "gas": 0, "pressure": 2000, "battery": 90, "state": 0, "inlet": None}
    rx = {"transport": "udp", "rssi": 2 ** 70}                # what a forwarder's JSON may say
    assert json.loads(payloads.reading_json("gw:00000001:2", f, 1.0, rx))["rx"]["rssi"] == 2 ** 70
