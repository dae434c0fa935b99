"""A serial port's backlog (issue 17): one wake-up of the transport reads the line on, a tty's 4 KB at a time, while
ingest has room - so a backlog shares commits and fsyncs instead of paying one per 4 KB - and stops at ingest's
stream bound (STREAM_MAX), leaving the rest on the line. A real pty, the real transport and the real ingest queue."""

import asyncio
import os
import tty

from gasguard.gateway import ingest as I
from gasguard.gateway.config import Config, SerialPort
from gasguard.gateway.daemon import Daemon
from gasguard.gateway.metrics import Metrics
from gasguard.gateway.transports import serial as S
from gasguard.protocol import framing
from gasguard.testing.node import Node, make_registry
from gasguard.testing.waits import until

FRAME_LEN = len(framing.wrap(Node(0x00C00001).reading()))


def _fill(master: int, frames: list[bytes]) -> list[bytes]:
    """Write the frames into the pty until it takes no more (the sender's side of a backlog): the frames written
    whole (the pty may take part of the last one, which the deframer keeps waiting for its end)."""
    data, n = b"".join(frames), 0
    while n < len(data):
        try:
            n += os.write(master, data[n:n + 4096])
        except BlockingIOError:
            break
    return frames[:n // FRAME_LEN]


async def _run(tmp_path, frames: list[bytes], deliver, done):
    """Open the transport on a fresh pty, then - before its first read - fill the pty with `frames` without
    giving the loop a turn; wait for done(written). Returns the frames written."""
    m, s = os.openpty()
    tty.setraw(s)
    tty.setraw(m)
    os.set_blocking(m, False)
    link = tmp_path / "tty0"
    link.symlink_to(os.ttyname(s))
    t = S.SerialTransport(SerialPort(str(link), name="tty0"), deliver, Metrics())
    task = asyncio.create_task(t.run())
    try:
        await until(lambda: t.ser is not None, 5, "the port opened")   # (opening flushes what was there)
        written = _fill(m, [framing.wrap(f) for f in frames])
        await until(lambda: done(written), 5, "the frames delivered")
    finally:
        task.cancel()
        os.close(m)
        os.close(s)
    return written


def _by_turn(tmp_path, frames: list[bytes]):
    """_run with a delivery recorder: (the frames written, [(the event loop's turns so far, the raw frames)] per
    delivery). A turn of the loop is one look at its selector, counted where the loop makes it."""
    async def go():
        selector = asyncio.get_running_loop()._selector      # (each turn of a selector loop calls select once)
        turns, select = [0], selector.select

        def counted(timeout=None):
            turns[0] += 1
            return select(timeout)
        selector.select = counted
        got: list = []

        async def deliver(fs):
            got.append((turns[0], [raw for raw, _rx, _route in fs]))
        try:
            written = await _run(tmp_path, frames, deliver, lambda w: sum(len(g) for _t, g in got) >= len(w))
        finally:
            selector.select = select
        return written, got
    return asyncio.run(go())


def test_one_wake_up_reads_the_whole_backlog_without_a_turn_of_the_loop(tmp_path):
    """Each delivery is stamped with the turns of the event loop so far: the whole backlog is delivered within one
    turn. (One read a wake-up - the old transport - took a turn a read.)"""
    node = Node(0x00C00001)
    written, got = _by_turn(tmp_path, [node.reading() for _ in range(2000)])
    assert len(written) * FRAME_LEN > 2 * 4096, "the pty took less than two tty reads' worth"
    assert len(got) >= 2 and len({t for t, _g in got}) == 1, [(t, len(g)) for t, g in got]
    assert [framing.wrap(f) for _t, g in got for f in g] == written       # every frame, once, in order


def test_a_wake_up_reads_at_most_wake_max_then_gives_the_loop_a_turn(tmp_path, monkeypatch):
    """What ingest does not queue (a node's text) cannot hold the loop: past WAKE_MAX bytes the transport waits for
    its next wake-up, and the rest of the line comes then, in order."""
    monkeypatch.setattr(S, "WAKE_MAX", 4096)
    node = Node(0x00C00004)
    written, got = _by_turn(tmp_path, [node.reading() for _ in range(2000)])
    assert len(written) * FRAME_LEN > 2 * 4096, "the pty took less than two tty reads' worth"
    first = [g for t, g in got if t == got[0][0]]       # (the bound is checked before a read: one more may come)
    assert sum(map(len, first)) * FRAME_LEN <= 4096 + 4096 and len({t for t, _g in got}) >= 2
    assert [framing.wrap(f) for _t, g in got for f in g] == written


def _daemon(tmp_path) -> Daemon:
    """A daemon that is not started: its ingest queue is what these tests read."""
    make_registry(tmp_path / "registry.db", [])
    d = Daemon(Config(gateway_id="gw", district="d", registry=tmp_path / "registry.db",
                      spool=tmp_path / "s.db", mqtt_port=1), plugins=[])
    d.ingest.start()          # its queue (on the running loop); nothing is read from it but by the test
    return d


def test_the_transport_stops_at_the_stream_bound_leaving_the_rest_on_the_line(tmp_path, monkeypatch):
    monkeypatch.setattr(I, "STREAM_MAX", 100)

    async def go():
        d = _daemon(tmp_path)
        q = d.ingest.queue
        assert q.stream_max == 100
        try:
            node = Node(0x00C00002)
            written = await _run(tmp_path, [node.reading() for _ in range(2000)], d.ingest.deliver_many,
                                 lambda w: q.stream_waits == 1)       # the transport waits for room
            assert len(written) > 300
            # at the bound, plus the one read that reached it: the rest waits on the line
            assert 100 <= q.frames < 100 + 4096 // FRAME_LEN + 1, q.frames
        finally:
            d.spool.close()
    asyncio.run(go())


def test_a_drained_queue_lets_the_rest_of_the_line_in_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(I, "STREAM_MAX", 100)

    async def go():
        d = _daemon(tmp_path)
        q = d.ingest.queue
        taken: list = []

        def drained(w):          # the test as ingest: takes what is queued, until every frame came
            while not q.empty():
                item = q.get_nowait()
                taken.extend(item) if type(item) is list else taken.append(item)
            return len(taken) >= len(w)
        try:
            node = Node(0x00C00003)
            written = await _run(tmp_path, [node.reading() for _ in range(2000)], d.ingest.deliver_many, drained)
        finally:
            d.spool.close()
        assert [framing.wrap(raw) for raw, _rx, _route in taken] == written
    asyncio.run(go())


def test_an_alarm_read_from_the_line_goes_ahead_of_the_queued_readings(tmp_path):
    async def go():
        d = _daemon(tmp_path)
        try:
            readings = [(Node(0x00C00100 + i).reading(), {"transport": "serial"}, None) for i in range(50)]
            await d.ingest.deliver_many(readings)
            alarm = (Node(0x00C00999).alarm(code=2), {"transport": "serial"}, None)   # nothing of it queued
            more = [(Node(0x00C00200 + i).reading(), {"transport": "serial"}, None) for i in range(5)]
            await d.ingest.deliver_many([more[0], alarm, *more[1:]])
            q = d.ingest.queue
            assert q.get_nowait() == [alarm]
            assert q.get_nowait() == readings and q.get_nowait() == [more[0], *more[1:]] and q.empty()
        finally:
            d.spool.close()
    asyncio.run(go())
