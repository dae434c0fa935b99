"""FailoverClient's cuts of paho 2.2.0's per-message costs (gasguard.brokers, LEAN_PAHO): PUBACKs read many at a
time, decoded without new objects, one wake-up of paho's thread for many packets. Each test runs against a real
mosquitto with the cuts on and off: the behaviour must be paho's either way."""

import threading
import time

import paho.mqtt
import paho.mqtt.client as mqtt
import pytest

from gasguard import brokers
from gasguard.brokers import Endpoint, FailoverClient
from gasguard.testing.waits import wait_until


# the fixtures `lean` (the cuts on and off) and `broker` (a real mosquitto): tests/conftest.py


class Acks:
    """on_publish, counted by message id."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_mid: dict[int, int] = {}
        self.reasons: set = set()
        self.at: dict[int, float] = {}

    def __call__(self, _c, _u, mid, rc, props):
        with self.lock:
            self.by_mid[mid] = self.by_mid.get(mid, 0) + 1
            self.reasons.add((rc.value, type(props).__name__))
            self.at[mid] = time.monotonic()

    def count(self) -> int:
        with self.lock:
            return len(self.by_mid)


def _client(broker, acks: Acks, cid: str, bound: int = 0, many: bool = False) -> FailoverClient:
    """`bound`: paho's own in-flight bound (0: none, as the gateway's publisher keeps its own). `many`: PUBACKs
    handed over as runs (on_published_many, as the gateway's publisher takes them), each id of a run given to
    `acks` as paho's on_publish would give it; `c.runs` counts the hand-overs."""
    c = FailoverClient([Endpoint("127.0.0.1", broker.port)], mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                       clean_session=True)
    c.max_inflight_messages_set(bound)
    c.on_publish = acks
    c.runs = 0
    if many:
        def runs(mids):
            c.runs += 1
            for mid in mids:
                acks(c, None, mid, brokers._PUBACK_OK, brokers._NO_PROPERTIES)
        c.on_published_many = runs
    c.connects = 0

    def on_connect(*_a):
        c.connects += 1
    c.on_connect = on_connect
    c.start(keepalive=30)
    wait_until(lambda: c.connects, 10, "a CONNACK from the test's mosquitto")
    return c


@pytest.mark.parametrize("many", [False, True], ids=["one-by-one", "runs"])
def test_every_puback_of_a_burst_is_handed_over_once_each(lean, broker, many):
    """2,000 QoS-1 publishes queued at once: the broker's PUBACKs arrive many to a TCP read; each message id is
    acknowledged exactly once, as a success, and with the cuts on paho's reads are far fewer than the PUBACKs -
    and, handed over as runs, so are the hand-overs."""
    acks = Acks()
    c = _client(broker, acks, "burst", many=many)
    reads = [0]
    real = mqtt.Client._sock_recv

    def counted(self, n):
        reads[0] += 1
        return real(self, n)
    try:
        mqtt.Client._sock_recv = counted
        mids = [c.publish(f"t/lean/{i}", b"x" * 300, qos=1, retain=True).mid for i in range(2000)]
        wait_until(lambda: acks.count() >= len(set(mids)), 20, "every PUBACK handed over")
    finally:
        mqtt.Client._sock_recv = real
        c.loop_stop()
        c.disconnect()
    assert set(acks.by_mid) == set(mids) and set(acks.by_mid.values()) == {1}
    assert acks.reasons == {(0, "Properties")}
    if lean:
        assert reads[0] < len(mids) / 4, reads[0]     # paho alone: 3 reads a PUBACK and more
        assert (0 < c.runs < len(mids) / 4) if many else c.runs == 0, c.runs
    else:
        assert reads[0] >= 3 * len(mids), reads[0]
        assert c.runs == 0                            # (paho's own reading: on_publish, one by one)


@pytest.mark.parametrize("bound,many", [(0, False), (0, True), (20, True)], ids=["own-bound", "own-bound-runs",
                                                                                   "paho-bound"])
@pytest.mark.parametrize("most", [None, 3], ids=["whole-reads", "3-byte-reads"])
def test_pubacks_among_the_brokers_own_publishes_and_split_across_reads_are_each_handed_over_once(lean, broker, most,
                                                                                                  bound, many):
    """The client subscribes to what it publishes: the broker's PUBLISHes of those messages come between its
    PUBACKs, in the same reads. Every PUBACK is handed over once and every message comes back once, whole - also
    when each socket read returns at most 3 bytes, so PUBACKs and PUBLISHes are split across reads and the run of
    PUBACKs decoded at once (FailoverClient.loop_read) stops mid-packet; and with paho's own in-flight bound (the
    Sparkplug plugin's client), where every packet is paho's but what was read ahead is still read to its end (and
    runs are not handed over: paho's bound needs its own per-message path)."""
    acks = Acks()
    c = _client(broker, acks, f"mixed-{most}-{bound}-{many}", bound, many)
    got: dict[str, bytes] = {}
    subscribed = threading.Event()
    c.on_message = lambda _c, _u, m: got.__setitem__(m.topic, got.get(m.topic, b"") + m.payload)
    c.on_subscribe = lambda *_a: subscribed.set()
    c.subscribe("t/mixed/#", qos=0)
    assert subscribed.wait(10)
    real = mqtt.Client._sock_recv

    def short(self, n):
        return real(self, n if self is not c or most is None else min(n, most))
    payloads = {f"t/mixed/{i}": bytes([97 + i % 26]) * (1 + i % 300) for i in range(600)}
    try:
        mqtt.Client._sock_recv = short
        mids = [c.publish(t, p, qos=1).mid for t, p in payloads.items()]
        wait_until(lambda: acks.count() >= len(set(mids)) and len(got) >= len(payloads), 30,
                   "every PUBACK and every message back")
    finally:
        mqtt.Client._sock_recv = real
        c.loop_stop()
        c.disconnect()
    assert set(acks.by_mid) == set(mids) and set(acks.by_mid.values()) == {1}
    assert got == payloads
    if bound:
        assert c.runs == 0


@pytest.mark.parametrize("many", [False, True], ids=["one-by-one", "runs"])
def test_a_puback_for_a_message_not_in_flight_is_ignored(broker, many):
    """A PUBACK whose id is not in flight (a duplicate, or one for a message paho forgot at a reconnect) hands
    nothing over; the ones around it are handed over as usual. With the cuts on only: the stray PUBACK is put in
    their read-ahead, which paho alone never reads."""
    if not brokers.LEAN_PAHO:
        pytest.skip(f"paho {paho.mqtt.__version__} is not 2.2.0: the cuts are off")
    acks = Acks()
    c = _client(broker, acks, "stray", many=many)
    c.loop_stop()                                      # the PUBACKs stay in the socket until the loop reads them
    mids = [c.publish(f"t/stray/{i}", b"s", qos=1).mid for i in range(3)]
    stray = max(mids) + 100
    c._rbuf, c._rpos = bytes([0x40, 2, stray >> 8, stray & 0xFF]), 0     # as if read ahead before the real ones
    try:
        c.loop_start()
        wait_until(lambda: acks.count() >= 3, 10, "the three PUBACKs")
    finally:
        c.loop_stop()
        c.disconnect()
    assert set(acks.by_mid) == set(mids) and stray not in acks.by_mid


def test_a_publish_from_another_thread_wakes_paho_at_once(lean, broker):
    """Single publishes from two threads while paho's thread sleeps in select(): each is sent (and acked) at once.
    A lost wake-up would leave a message until paho's 1-second select timeout."""
    acks = Acks()
    c = _client(broker, acks, "wake")
    sent: dict[int, float] = {}
    sent_lock = threading.Lock()

    def one_by_one(tag: str):
        for i in range(150):
            n = acks.count()
            t = time.monotonic()
            info = c.publish(f"t/wake/{tag}/{i}", b"y", qos=1)
            with sent_lock:
                sent[info.mid] = t
            wait_until(lambda: acks.count() > n, 5, "the PUBACK")
    try:
        threads = [threading.Thread(target=one_by_one, args=(tag,)) for tag in "ab"]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    finally:
        c.loop_stop()
        c.disconnect()
    assert len(acks.by_mid) == 300
    worst = max(acks.at[mid] - t for mid, t in sent.items())
    assert worst < 0.5, f"a publish waited {worst:.3f} s for paho's thread"


def test_read_ahead_never_outlives_its_connection(lean, broker):
    """The connection is lost mid-stream: what was read ahead goes with its socket, the client reconnects and
    every later publish is acknowledged."""
    acks = Acks()
    c = _client(broker, acks, "restart")
    try:
        for i in range(200):
            c.publish(f"t/restart/{i}", b"z" * 100, qos=1)
        wait_until(lambda: acks.count() >= 200, 20, "the first PUBACKs")
        c.cut()                                          # as FailoverClient cuts a late CONNACK: paho reconnects
        wait_until(lambda: c.connects >= 2, 20, "reconnected")
        mids = [c.publish(f"t/restart/b{i}", b"z", qos=1).mid for i in range(200)]
        wait_until(lambda: all(m in acks.by_mid for m in mids), 20, "the PUBACKs after the reconnect")
    finally:
        c.loop_stop()
        c.disconnect()


def test_closing_the_socket_drops_what_was_read_ahead():
    c = FailoverClient([Endpoint("127.0.0.1", 1)], mqtt.CallbackAPIVersion.VERSION2, client_id="x")
    c._rbuf, c._rpos = b"\x40\x02\x00\x01", 1       # part of a PUBACK read from the socket being closed
    c._sock_close()
    assert (c._rbuf, c._rpos) == (b"", 0)


@pytest.mark.parametrize("many", [False, True], ids=["one-by-one", "runs"])
def test_waiting_for_a_publish_works_for_many_messages_at_once(lean, broker, many):
    """8 threads each wait on their own message while its PUBACK is on its way: each returns, published, within
    0.5 s of its own PUBACK (the lean message info shares one condition among all messages; a PUBACK that woke no
    waiter would leave them to wait_for_publish's 1-s poll, and this fails). paho's thread is stopped while they
    publish and start waiting, so no PUBACK is read before they all wait. (Whether notify_all rather than notify
    is needed is not caught here: with the GIL the waiters wake after every flag of the burst is set.)"""
    acks = Acks()
    c = _client(broker, acks, "waiters", many=many)
    c.loop_stop()                        # connected; PUBACKs stay unread in the socket
    infos = [c.publish(f"t/wait/{i}", b"w", qos=1) for i in range(8)]
    assert {i.rc for i in infos} == {mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS}
    waiting = threading.Barrier(len(infos) + 1)
    returned: dict[int, tuple[float, bool]] = {}

    def waiter(info):
        waiting.wait(10)
        info.wait_for_publish(10)
        returned[info.mid] = (time.monotonic(), info.is_published())
    threads = [threading.Thread(target=waiter, args=(info,)) for info in infos]
    for th in threads:
        th.start()
    try:
        waiting.wait(10)
        c.loop_start()                   # the PUBACKs are read now
        for th in threads:
            th.join(30)
    finally:
        c.loop_stop()
        c.disconnect()
    assert set(returned) == set(acks.by_mid) == {i.mid for i in infos}
    assert all(published for _t, published in returned.values())
    late = {mid: round(t - acks.at[mid], 3) for mid, (t, _p) in returned.items() if t - acks.at[mid] > 0.5}
    assert not late, f"waiters returned late after their PUBACK: {late}"


def test_a_message_published_before_the_connection_is_sent_after_it(lean, broker):
    """Published with no connection yet (paho's MQTT_ERR_NO_CONN): kept, and sent with the first CONNACK."""
    acks = Acks()
    c = FailoverClient([Endpoint("127.0.0.1", broker.port)], mqtt.CallbackAPIVersion.VERSION2, client_id="early",
                       clean_session=True)
    c.max_inflight_messages_set(0)
    c.on_publish = acks
    infos = [c.publish(f"t/early/{i}", "é" * 10, qos=1, retain=True) for i in range(20)]
    assert {i.rc for i in infos} == {mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN}
    try:
        c.start(keepalive=30)
        wait_until(lambda: acks.count() >= 20, 20, "the early messages' PUBACKs")
    finally:
        c.loop_stop()
        c.disconnect()
    assert set(acks.by_mid) == {i.mid for i in infos}


def test_queued_packets_go_out_joined_and_whole_through_short_writes(lean, broker):
    """1,500 messages of 40-900 bytes queued while paho's thread is held (in on_message of a message it receives),
    written once it is let go through a socket that takes at most 1,000 bytes a send(): a subscriber gets every
    one, whole and once, and each is acknowledged. With the cuts on the packets share send()s (fewer sends than
    packets); paho alone makes at least one a packet."""
    got: dict[str, bytes] = {}
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="joined-sub")
    sub.on_connect = lambda c, *_a: c.subscribe("t/join/#", qos=1)
    sub.on_subscribe = lambda *_a: subscribed.set()

    def on_message(_c, _u, m):
        got[m.topic] = got.get(m.topic, b"") + m.payload     # a second copy would show as a longer payload
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    assert subscribed.wait(10)
    acks = Acks()
    held, go, holding = threading.Event(), threading.Event(), threading.Event()

    def hold(*_a):                                    # paho's thread waits here (no lock a publish takes is held)
        held.set()
        go.wait(10)
    c = _client(broker, acks, "joined")
    c.on_message = hold
    c.on_subscribe = lambda *_a: holding.set()
    c.subscribe("t/hold", qos=0)
    assert holding.wait(10)
    first = c.publish("t/join/first", b"1", qos=1)
    payloads = {f"t/join/{i}": bytes([65 + i % 26]) * (40 + (i * 37) % 860) for i in range(1500)}
    sends = [0]
    real = mqtt.Client._sock_send

    def short(self, buf):
        if self is not c:                             # (the subscriber's PUBACKs)
            return real(self, buf)
        sends[0] += 1
        return real(self, buf[:1000])
    try:
        sub.publish("t/hold", b"h")
        assert held.wait(10), "the held message did not arrive"
        mqtt.Client._sock_send = short
        infos = [c.publish(topic, body, qos=1) for topic, body in payloads.items()]
        go.set()
        wait_until(lambda: acks.count() > len(infos), 30, "every PUBACK")
        wait_until(lambda: len(got) > len(payloads), 30, "every message at the subscriber")
    finally:
        go.set()
        mqtt.Client._sock_send = real
        c.loop_stop()
        c.disconnect()
        sub.loop_stop()
        sub.disconnect()
    assert set(acks.by_mid) == {i.mid for i in infos} | {first.mid} and set(acks.by_mid.values()) == {1}
    assert got == payloads | {"t/join/first": b"1"}
    if lean:
        # 717 KB of topics and payloads in sends of 1,000 bytes: 728 sends when this was written
        assert sends[0] < len(payloads) * 0.7, sends[0]
    else:
        assert sends[0] >= len(payloads), sends[0]


@pytest.mark.parametrize("retain", [False, True])
def test_the_lean_publish_packet_is_the_one_paho_writes(retain):
    """brokers.publish_packet, byte for byte against paho's own _send_publish, for payload sizes around each
    length of MQTT's remaining-length field (1, 2, 3 and 4 bytes)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="packets")
    c._sock = object()                          # "connected": _send_publish builds the packet and queues it
    queued = []
    c._packet_queue = lambda command, packet, mid, qos, info=None: queued.append(bytes(packet))
    topic = b"gasguard/v1/d/gw-7/00a1b2c3/state"
    head = 4 + len(topic)                       # the remaining length of an empty payload
    try:
        for n in (head, head + 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 2_200_000):
            size = n - head
            body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            for mid in (1, 255, 256, 65535):
                queued.clear()
                c._send_publish(mid, topic, body, 1, retain)
                assert brokers.publish_packet(topic, body, mid, retain) == queued[0], (size, mid)
    finally:
        c._sock = None                          # (nothing to close)
