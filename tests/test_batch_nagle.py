"""A batch of readings that is not full waits for company (`[batch] delay`) only while the last batch sent waits for
its PUBACK: Nagle's rule (issue 17, gateway/publisher.py `_batch_unacked`). On an idle link the readings go at once;
behind an unacknowledged batch they gather, and go together when its PUBACK comes.

The real daemon on a real mosquitto, held with SIGSTOP so that a batch stays unacknowledged; `[batch] delay` is
far longer than the tests wait, so only the rule can send a batch that is not full."""

import pytest

from gasguard.gateway.spool import READING
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(60)]

RX = {"transport": "serial", "port": "tty0", "rssi": None, "snr": None}
DELAY = 600.0         # s: a batch that waited for company would not arrive during a test


def _rig(tmp_path, port) -> Rig:
    rig = Rig(tmp_path, port, nodes=1)
    rig.cfg.batch_delay = DELAY
    rig.cfg.inflight = 10
    rig.cfg.alarm_connection = False      # one connection: one order for everything the subscriber sees
    rig.cfg.puback_timeout = 0            # a broker held with SIGSTOP is not to be left for another
    rig.start()
    wait_until(lambda: rig.runner.call(lambda: not rig.daemon.publisher.inflight), 10, "the start's PUBACKs")
    return rig


def _batches(rig: Rig) -> list[list[int]]:
    """The fcnts of each reading batch the subscriber got, in order."""
    with rig.sub.lock:
        return [[r[1] for r in doc["readings"]] for t, doc, _ in rig.sub.messages if t == f"{rig.root}/reading"]


def _send(rig: Rig, n: int) -> list[int]:
    node = rig.nodes[0]
    frames = [(node.reading(), RX, "serial:tty0") for _ in range(n)]
    rig.runner.call(lambda: rig.daemon.process(frames))
    return list(range(node.fcnt - n + 1, node.fcnt + 1))


def _reading_flights(rig: Rig) -> int:
    return rig.runner.call(lambda: sum(f.lane == READING for f in rig.daemon.publisher.inflight.values()))


def test_readings_on_an_idle_link_go_at_once_not_after_the_batch_delay(tmp_path, mosquitto):
    rig = _rig(tmp_path, mosquitto.port)
    try:
        sent = _send(rig, 3)
        rig.sub.wait(lambda ms: _batches(rig) == [sent], 10)
        sent2 = _send(rig, 2)         # the first batch acknowledged: the link is idle again
        rig.sub.wait(lambda ms: _batches(rig) == [sent, sent2], 10)
    finally:
        rig.close()


def test_readings_behind_an_unacknowledged_batch_gather_and_go_together_at_its_puback(tmp_path, mosquitto):
    rig = _rig(tmp_path, mosquitto.port)
    try:
        with mosquitto.frozen():
            first = _send(rig, 3)
            wait_until(lambda: _reading_flights(rig) == 1, 10, "the first batch in flight")
            second = _send(rig, 2) + _send(rig, 4)
            # the broker answers nothing: the first batch is still in flight, and the rest waits for company
            assert _reading_flights(rig) == 1
            assert rig.runner.call(lambda: sum(r.count for r in rig.daemon.publisher.buf[READING])) == 6
        rig.sub.wait(lambda ms: sum(map(len, _batches(rig))) == 9, 10)
        assert _batches(rig) == [first, second]
    finally:
        rig.close()
