"""FailoverClient with its network I/O on an asyncio loop (`start(keepalive, loop)`, the gateway's publisher unless
`[mqtt] network_thread`): no paho thread, every callback on the loop's thread, the blocking TCP connect on a
worker thread so the loop keeps turning, paho's failover and backoff kept. Real mosquittos and real sockets."""

import asyncio
import socket
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from gasguard.brokers import Endpoint, FailoverClient
from gasguard.testing.mosquitto import Mosquitto
from gasguard.testing.subscriber import Subscriber
from gasguard.testing.waits import until


# the fixtures `lean` (paho 2.2.0's cuts on and off) and `broker` (a real mosquitto): tests/conftest.py


def _client(endpoints, connect_timeout=5.0) -> FailoverClient:
    c = FailoverClient(endpoints, mqtt.CallbackAPIVersion.VERSION2, client_id="loop-test", clean_session=True)
    c.max_inflight_messages_set(0)
    c.max_queued_messages_set(0)
    c.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
    c.connect_timeout = connect_timeout
    return c


class Ticker:
    """A probe on the loop every 10 ms (a timer, not a wait): the largest gap between two of its calls is how long
    the loop was held."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.last = time.monotonic()
        self.worst = 0.0
        self.handle = self.loop.call_later(0.01, self._tick)

    def _tick(self):
        now = time.monotonic()
        self.worst = max(self.worst, now - self.last)
        self.last = now
        self.handle = self.loop.call_later(0.01, self._tick)

    def stop(self):
        self.handle.cancel()


def test_on_a_loop_there_is_no_network_thread_and_every_callback_runs_on_the_loop(broker, lean):
    sub = Subscriber(broker.port, "t/#")
    threads: set[int] = set()
    acked: set[int] = set()

    async def main():
        loop_thread = threading.get_ident()
        c = _client([Endpoint("127.0.0.1", broker.port)])
        c.on_connect = lambda *a: threads.add(threading.get_ident())
        c.on_publish = lambda _c, _u, mid, _rc, _p: (threads.add(threading.get_ident()), acked.add(mid))
        c.start(30, asyncio.get_running_loop())
        await until(c.is_connected, 10, "the CONNACK")
        assert not [t for t in threading.enumerate() if t.name == "paho-mqtt-client-loop-test"]
        mids = {c.publish(f"t/{i}", b"x" * 300, qos=1).mid for i in range(500)}
        await until(lambda: mids <= acked, 10, "500 PUBACKs")
        assert threads == {loop_thread}
        c.disconnect()
        c.loop_stop()
        assert c.socket() is None
    try:
        asyncio.run(main())
        sub.wait(lambda m: len({t for t, _, _ in m}) >= 500, 10)
    finally:
        sub.close()


def test_on_a_loop_a_connect_that_hangs_does_not_hold_the_loop_and_the_next_node_is_taken(broker):
    """The first node's listen queue is full, so its TCP connect hangs until connect_timeout: on a worker thread,
    while the loop keeps turning; then the next node."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(0)
    fillers = []
    for _ in range(3):                    # fill the accept queue: further SYNs are dropped, connects hang
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(hung.getsockname())
        except BlockingIOError:
            pass
        fillers.append(f)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        probe.connect(hung.getsockname())
        pytest.skip("this kernel accepted a connect past a full listen queue: no hanging connect to test with")
    except (socket.timeout, TimeoutError):
        pass
    finally:
        probe.close()
    attempts: list[tuple[Endpoint, int]] = []

    class Recording(FailoverClient):
        def reconnect(self):
            try:
                return super().reconnect()
            finally:
                attempts.append((self.endpoint, threading.get_ident()))

    async def main():
        loop_thread = threading.get_ident()
        c = Recording([Endpoint("127.0.0.1", hung.getsockname()[1]), Endpoint("127.0.0.1", broker.port)],
                      mqtt.CallbackAPIVersion.VERSION2, client_id="loop-test", clean_session=True)
        c.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        c.connect_timeout = 1.0
        ticker = Ticker()
        c.start(30, asyncio.get_running_loop())
        await until(c.is_connected, 15, "the CONNACK of the second node")
        ticker.stop()
        assert c.endpoint == Endpoint("127.0.0.1", broker.port)
        assert attempts[0][0].port == hung.getsockname()[1]
        assert all(tid != loop_thread for _, tid in attempts)
        # the hung connect took ~connect_timeout (1 s); the loop was never held for a fraction of it
        assert ticker.worst < 0.5, f"the loop was held {ticker.worst:.2f} s"
        c.disconnect()
        c.loop_stop()
    try:
        asyncio.run(main())
    finally:
        for f in fillers:
            f.close()
        hung.close()


def test_on_a_loop_a_lost_node_is_left_after_paho_backoff_and_nothing_in_flight_is_lost(tmp_path):
    """Two brokers; the first is killed with messages in flight: paho re-sends them to the second after its
    CONNACK, and the move waits reconnect_min first (paho's backoff, not a spin)."""
    with Mosquitto(workdir=tmp_path / "a") as a, Mosquitto(workdir=tmp_path / "b") as b:
        sub = Subscriber(b.port, "t/#")
        acked: set[int] = set()
        lost_at: list[float] = []
        back_at: list[float] = []

        async def main():
            c = _client([Endpoint("127.0.0.1", a.port), Endpoint("127.0.0.1", b.port)])
            c.reconnect_delay_set(min_delay=0.3, max_delay=1.0)
            c.on_publish = lambda _c, _u, mid, _rc, _p: acked.add(mid)
            c.on_disconnect = lambda *a: lost_at.append(time.monotonic())
            c.on_connect = lambda *a: back_at.append(time.monotonic())
            c.start(30, asyncio.get_running_loop())
            await until(c.is_connected, 10, "the first CONNACK")
            a.kill()
            mids = {c.publish(f"t/{i}", b"y" * 100, qos=1).mid for i in range(200)}
            await until(lambda: mids <= acked, 15, "every message PUBACKed by the second node")
            assert c.endpoint == Endpoint("127.0.0.1", b.port)
            assert len(back_at) == 2 and back_at[1] - lost_at[0] >= 0.3
            c.disconnect()
            c.loop_stop()
        try:
            asyncio.run(main())
            sub.wait(lambda m: {f"t/{i}" for i in range(200)} <= {t for t, _, _ in m}, 10)
        finally:
            sub.close()


def test_on_a_loop_wait_published_drives_the_socket_itself(broker):
    """During stop the loop does not turn: wait_published reads the PUBACK itself, within the call."""
    async def main():
        c = _client([Endpoint("127.0.0.1", broker.port)])
        c.start(30, asyncio.get_running_loop())
        await until(c.is_connected, 10, "the CONNACK")
        info = c.publish("t/last", b"offline", qos=1, retain=True)
        assert not info.is_published()
        assert c.wait_published(info, 5.0) and info.is_published()
        c.disconnect()
        c.loop_stop()
    asyncio.run(main())


def test_on_a_loop_an_exception_out_of_a_callback_drops_the_connection_and_it_is_made_again(broker, caplog):
    """paho re-raises what a callback raises; on the loop that would be a reader raising at every turn. The
    connection is dropped instead, said in the log, and made again: later messages arrive."""
    got: list[str] = []
    connects: list[float] = []
    subacks: list[float] = []

    def on_message(_c, _u, m):
        if m.topic == "t/boom":
            raise RuntimeError("a callback's bug")
        got.append(m.topic)

    async def main():
        c = _client([Endpoint("127.0.0.1", broker.port)])
        c.on_connect = lambda cl, *a: (connects.append(time.monotonic()), cl.subscribe("t/#", qos=1))
        c.on_message = on_message
        c.on_subscribe = lambda *a: subacks.append(time.monotonic())
        c.start(30, asyncio.get_running_loop())
        await until(lambda: subacks, 10, "the SUBACK")
        other = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="loop-test-other")
        other.connect("127.0.0.1", broker.port)
        other.loop_start()
        try:
            other.publish("t/boom", b"1", qos=1).wait_for_publish(5)
            await until(lambda: len(subacks) >= 2, 10, "the connection made again, and its SUBACK")
            other.publish("t/ok", b"2", qos=1).wait_for_publish(5)
            await until(lambda: "t/ok" in got, 10, "a message after the reconnect")
        finally:
            other.loop_stop()
            other.disconnect()
        c.disconnect()
        c.loop_stop()
    with caplog.at_level("ERROR", logger="gasguard.brokers"):
        asyncio.run(main())
    assert any("a callback's bug" in r.getMessage() and "dropping the connection" in r.getMessage()
               for r in caplog.records)
