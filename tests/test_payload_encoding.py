"""The ingest hot path encodes a reading as a gasguard.readings/2 row with orjson (issue 17); the text must be what the
standard library's json.dumps makes of `reading_row` (the independent oracle), and the row, read back as consumers
read it (`reading_fields`, through command/readings.py), must be the reading's fields by name (`reading_entry`,
what /1 published), for every state byte, with and without an inlet pressure, so no consumer loses a fact."""

import json

import pytest

from gasguard.command.readings import readings_of
from gasguard.gateway import payloads


def test_reading_json_is_the_stdlib_encoding_of_the_row_and_reads_back_as_the_entry_for_every_state_byte():
    rx = {"transport": "serial", "port": "ttyUSB0", "rssi": -71.5}
    for st in range(256):
        for inlet in (None, 1_200_000):
            f = {"dev": 0x00A1B2C3, "fcnt": 70_000 + st, "gas": st * 3, "pressure": 2000 + st, "battery": st % 101,
                 "state": st, "inlet": inlet}
            t = 1764661234.1234 + st
            text = payloads.reading_json(f, t, rx)
            assert text == json.dumps(payloads.reading_row(f, t, rx), separators=(",", ":"))
            assert payloads.reading_fields("gw-7", json.loads(text)) == payloads.reading_entry(
                payloads.msg_id("gw-7", 0x00A1B2C3, 70_000 + st), f, t, rx)


def test_a_batch_is_read_as_the_entries_it_carries_and_a_v1_batch_as_it_is():
    rx = {"transport": "lora", "rssi": -101, "snr": 7.5}
    fs = [{"dev": 0x00B00000 + i, "fcnt": 5 + i, "gas": None if i == 1 else 10 * i, "pressure": 2000 + i,
           "battery": None if i == 2 else 80, "state": 0x41 * i % 256, "inlet": 300_000 if i == 0 else None}
          for i in range(3)]
    doc = json.loads(payloads.batch("sub-17", "d", 1764661300.0, [payloads.reading_json(f, 1764661299.5, rx)
                                                                  for f in fs]))
    assert doc["schema"] == "gasguard.readings/3" and doc["columns"] == list(payloads.READING_COLUMNS)
    assert readings_of(doc) == [payloads.reading_entry(payloads.msg_id("sub-17", f["dev"], f["fcnt"]), f, 1764661299.5,
                                                       rx) for f in fs]
    v1 = {"schema": "gasguard.readings/1", "gateway": "old-gw", "readings": [{"id": "old-gw:00b00000:5"}]}
    assert readings_of(v1) == v1["readings"]          # an older gateway's batch, as it is


@pytest.mark.parametrize("row", [["00b00000", 5, 1.0, 0, 2000, 80, 0], ["00b00000", 5, 1.0, 0, 2000, 80, 0, {}, 1, 2],
                                 ["00b00000", 5, 1.0, 0, 2000, 80, 256, {}], ["zz", 5, 1.0, 0, 2000, 80, 0, {}],
                                 ["00b00000", 5, 1.0, 0, 2000, 80, 0, "serial"],
                                 ["00b00000", 5, 1.0, 0, 2000, 80, 0, ":tty0"], {"dev": "00b00000"}])
@pytest.mark.parametrize("schema", ["gasguard.readings/2", "gasguard.readings/3"])
def test_a_row_that_is_not_one_is_refused_by_name(row, schema):
    with pytest.raises(ValueError):
        readings_of({"schema": schema, "gateway": "gw", "readings": [row]})


WIRE = {"transport": "serial", "port": "tty0", "rssi": None, "snr": None}


@pytest.mark.parametrize("rx, cell", [
    (WIRE, "serial:tty0"),
    ({"transport": "lora_uart", "port": "/dev/serial/by-id/usb-x:y-if00", "rssi": None, "snr": None},
     "lora_uart:/dev/serial/by-id/usb-x:y-if00"),                      # a colon in the port: split at the first
    ({**WIRE, "rssi": -101, "snr": 7.5}, None),                         # a radio's: the object
    ({"transport": "udp", "gw": "aa555a0000000001", "rssi": -101, "snr": -3.5, "port": "x"}, None),
    ({**WIRE, "transport": "odd:kind"}, None),                          # the text could not be split back
    ({**WIRE, "port": 7}, None),
    ({"transport": "serial", "port": "tty0"}, None),                    # not the four keys
    ({}, None)])
def test_a_wires_rx_is_its_text_in_a_row_and_reads_back_as_the_object(rx, cell):
    """gasguard.readings/3: a serial port's rx ({transport, port, rssi: null, snr: null}) is "transport:port" in a
    row, 60 -> ~14 B of the row; anything else stays the object. Either way the reader gets the object back, from
    the general path's text and the compiled lane's alike (tests/test_fastlane.py holds the two texts equal)."""
    f = {"dev": 0x00B00001, "fcnt": 9, "gas": 10, "pressure": 2000, "battery": 80, "state": 0, "inlet": None}
    row = json.loads(payloads.reading_json(f, 1764661299.5, rx))
    assert row[7] == (rx if cell is None else cell)
    doc = json.loads(payloads.batch("sub-17", "d", 1764661300.0, [payloads.reading_json(f, 1764661299.5, rx)]))
    assert readings_of(doc)[0]["rx"] == rx
    assert readings_of({**doc, "schema": "gasguard.readings/2"})[0]["rx"] == rx     # a /2 row is a /3 row


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
    assert json.loads(payloads.reading_json(f, 1.0, rx))[7]["rssi"] == 2 ** 70


def test_a_retained_state_is_the_stdlib_encoding_of_its_object_with_the_readings_entry_without_rx():
    """PresenceTable.state_item writes the state from pieces (payloads.state_text), with the last reading from the
    fields it keeps per device; the text must read back as the state's object, key for key and value for value,
    whose last reading is the reading's own entry with its rx removed, for every state byte, values not available, an
    inlet pressure or none, and a gateway id JSON must escape."""
    import random

    from gasguard.gateway.config import Config
    from gasguard.gateway.presence import Presence, PresenceTable
    from gasguard.protocol.topics import GatewayTopics
    r = random.Random(9)
    for gid in ("gw-7", 'gw"7"\\ö'):
        cfg = Config(gateway_id=gid, district="d", registry="r.db", spool="s.db", mqtt_port=1)
        table = PresenceTable(cfg, GatewayTopics("gasguard/v1/d/gw-7"))
        for b in range(256):
            st = Presence()
            st.online, st.last_seen = r.random() < 0.5, r.choice([1764661234.5 + b, 1764661234.0004 + b, 7])
            st.r_fcnt, st.r_gas, st.r_pressure, st.r_battery, st.r_state, st.r_inlet, st.r_t = (
                r.randrange(1, 1 << 32), r.choice([None, 0, 17, 1000]), r.choice([None, 2000, 401_325.0]),
                r.choice([None, 0, 90, 100]), b, r.choice([None, 300, 400_000.5]), 1764661230.1234 + b)
            f = {"dev": 0x00A1B2C3, "fcnt": st.r_fcnt, "gas": st.r_gas, "pressure": st.r_pressure,
                 "battery": st.r_battery, "state": b, "inlet": st.r_inlet}
            entry = payloads.reading_entry(payloads.msg_id(gid, 0x00A1B2C3, st.r_fcnt), f, st.r_t, {})
            entry.pop("rx")
            now = r.choice([1764661300.0, 1764661300.12349])
            doc = {"schema": "gasguard.state/1", "gateway": gid, "dev": "00a1b2c3", "t": round(now, 3),
                   "online": st.online, "last_seen": round(st.last_seen, 3), "last_reading": entry}
            item = table.state_item(0x00A1B2C3, now, st)
            got = json.loads(item.payload)
            assert got == doc and list(got) == list(doc) and list(got["last_reading"]) == list(entry), (gid, b)
            assert " " not in item.payload          # compact, as every payload
            assert item.topic == "gasguard/v1/d/gw-7/00a1b2c3/state" and item.retain
        st = Presence()                     # never sent a reading: no last reading
        st.online, st.last_seen = True, 1.5
        doc = json.loads(table.state_item(1, 2.0, st).payload)
        assert doc["last_reading"] is None and doc["gateway"] == gid
