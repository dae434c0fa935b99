"""Alarm priority at ingest: which frames of a group move ahead (pure, header peek only)."""

from gasguard.testing.node import Node
from gasguard.gateway.ingest import alarms_first
from gasguard.protocol import frame
from gasguard.protocol.const import ALARM, READING


def test_only_an_alarm_with_no_earlier_frame_of_its_device_moves_ahead():
    a, b = Node(0x00B00001), Node(0x00B00002)
    rx = {"transport": "serial"}
    ra, aa = a.reading(), a.alarm(code=2)
    ab1, ab2, rb = b.alarm(code=2), b.alarm(code=1), b.reading()
    group = [(ra, rx, None), (None, rx, "noise"), (aa, rx, None), (ab1, rx, None), (ab2, rx, None),
             (b"\x01", rx, None), (rb, rx, None)]
    first, rest = alarms_first(group)
    assert [g[0] for g in first] == [ab1]                 # a's alarm follows a's reading; b's second waits
    assert [g[0] for g in rest] == [ra, None, aa, ab2, b"\x01", rb]
    readings_only = [(ra, rx, None), (rb, rx, None)]
    assert alarms_first(readings_only) == ([], readings_only)


def test_peek_reads_type_and_device_from_the_header_only():
    n = Node(0x00B00003)
    assert frame.peek(n.reading()) == (READING, 0x00B00003)
    assert frame.peek(n.alarm(code=2)) == (ALARM, 0x00B00003)
    assert frame.peek(b"\x00\x01") is None
