"""The Semtech UDP listener's intake (issue 17): a burst of datagrams is read in a few readiness callbacks, not
one datagram per turn of the event loop, so ingest's commits grow with the burst instead of paying a commit and
an fsync per frame while the kernel drops the rest; datagrams the kernel drops are counted, never silent; a
receive buffer the kernel caps is reported. Real UDP sockets on loopback, the real listener (`listen`), the
real daemon and mosquitto for the commits."""

import asyncio
import logging
import math
import signal
import socket
from pathlib import Path

import pytest

from gasguard.gateway.burstlog import BurstLog
from gasguard.gateway.metrics import Metrics
from gasguard.gateway.transports import procnet
from gasguard.gateway.transports.procnet import udp_socket_stats
from gasguard.gateway.transports.semtech_udp import DatagramReader, listen
from gasguard.testing.gateway import GatewayProcess, scrape
from gasguard.testing.links import PacketForwarder
from gasguard.testing.mosquitto import free_port
from gasguard.testing.node import Node
from gasguard.testing.rig import Rig
from gasguard.testing.waits import until, wait_until

EUI = b"\xaa\x55\x5a\x00\x00\x00\x00\x01"


async def _listener(**kw):
    got: list[bytes] = []
    metrics = Metrics()
    transport, proto = await listen("127.0.0.1:0", lambda raw, rx, route: got.append(raw), metrics,
                                    BurstLog(logging.getLogger("gasguard.gateway"), 10), **kw)
    return transport, proto, got, metrics


@pytest.mark.timeout(30)
def test_a_burst_sent_before_the_loop_runs_is_read_in_ceil_k_over_the_bound_callbacks(monkeypatch):
    k, bound = 160, 16       # 160 datagrams of ~200 bytes fit the kernel's default receive buffer
    node = Node(0xA1, bytes(16))
    frames = [node.reading() for _ in range(k)]
    calls = []
    read_ready = DatagramReader._read_ready

    def counted(self):
        calls.append(1)
        read_ready(self)
    monkeypatch.setattr(DatagramReader, "_read_ready", counted)    # (before listen registers it)

    async def go():
        transport, _proto, got, _m = await _listener()
        transport.read_max, transport.budget = bound, 60.0     # the count binds here, not the time
        fwd = PacketForwarder(transport.get_extra_info("sockname"))
        try:
            for raw in frames:                    # all sent before the loop turns again
                fwd.push(raw)
            await until(lambda: len(got) == k, 10, f"{k} datagrams read")
        finally:
            fwd.close()
            transport.close()
        return got
    got = asyncio.run(go())
    assert got == frames
    # one readiness callback per `bound` datagrams (asyncio's transport: one a datagram, and a turn of the loop
    # each)
    assert len(calls) <= math.ceil(k / bound), f"{k} datagrams took {len(calls)} readiness callbacks"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("proc_first", [False, True], ids=["rxq_ovfl_first", "proc_first"])
def test_datagrams_the_kernel_drops_are_counted_once(caplog, proc_first):
    """Counted from SO_RXQ_OVFL on the next datagram, or from /proc on a tick (`poll_drops`, called here as the
    daemon's ticker would), whichever comes first; the other then adds nothing."""
    caplog.set_level(logging.WARNING)

    async def go():
        transport, _proto, got, metrics = await _listener(rcvbuf=4096)     # the kernel's smallest, near enough
        addr = transport.get_extra_info("sockname")
        fwd = PacketForwarder(addr)
        try:
            raw = Node(0xA1, bytes(16)).reading()
            for _ in range(200):                  # not read meanwhile: most overflow the buffer
                fwd.push(raw)
            dropped = udp_socket_stats(addr[1])[1]
            assert dropped > 100, dropped
            if proc_first:
                transport.poll_drops()            # a tick: the count from /proc, before any datagram is read
            await until(lambda: len(got) == 200 - dropped, 10, "the datagrams that fit read")
            # none of those carries a drop count (queued before the loss): only the tick has counted
            assert metrics.value("gasguard_gateway_udp_kernel_drops_total") == (dropped if proc_first else 0)
            fwd.push(raw)                         # carries SO_RXQ_OVFL = dropped
            await until(lambda: len(got) == 201 - dropped, 10, "the next datagram read")
            transport.poll_drops()                # /proc shows the same count
        finally:
            fwd.close()
            transport.close()
        return dropped, metrics.value("gasguard_gateway_udp_kernel_drops_total")
    dropped, counted = asyncio.run(go())
    assert counted == dropped
    lines = [r.getMessage() for r in caplog.records if "the kernel dropped" in r.getMessage()]
    assert len(lines) == 1 and f"the kernel dropped {dropped} datagrams" in lines[0], lines


@pytest.mark.timeout(30)
def test_without_proc_the_drops_are_counted_from_the_next_datagram_and_that_is_logged_once(caplog, monkeypatch,
                                                                                           tmp_path):
    monkeypatch.setattr(procnet, "PROC_NET_UDP", (str(tmp_path / "no-proc-net-udp"),))   # a hardened /proc
    caplog.set_level(logging.WARNING)

    async def go():
        transport, _proto, got, metrics = await _listener(rcvbuf=4096)
        fwd = PacketForwarder(transport.get_extra_info("sockname"))
        try:
            raw = Node(0xA1, bytes(16)).reading()
            for _ in range(200):
                fwd.push(raw)
            await until(lambda: len(got) > 0, 10, "the datagrams that fit read")
            for _ in range(3):                    # three ticks
                transport.poll_drops()
            assert metrics.value("gasguard_gateway_udp_kernel_drops_total") == 0
            fwd.push(raw)                         # as before /proc was read: with the next datagram
            await until(lambda: metrics.value("gasguard_gateway_udp_kernel_drops_total") > 100, 10,
                        "the drops counted from SO_RXQ_OVFL")
        finally:
            fwd.close()
            transport.close()
    asyncio.run(go())
    assert len([r for r in caplog.records if "/proc/net/udp does not show" in r.getMessage()]) == 1


@pytest.mark.timeout(30)
def test_a_receive_buffer_the_kernel_caps_is_reported(caplog):
    try:
        cap = int(Path("/proc/sys/net/core/rmem_max").read_text())
    except OSError:
        pytest.skip("no /proc/sys/net/core/rmem_max: not Linux")
    caplog.set_level(logging.INFO)

    async def go():
        transport, *_ = await _listener(rcvbuf=cap + (1 << 20))
        got = transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        transport.close()
        return got
    assert asyncio.run(go()) == 2 * cap
    (line,) = [r.getMessage() for r in caplog.records if "net.core.rmem_max" in r.getMessage()]
    assert f"net.core.rmem_max is {cap} bytes" in line and r"sysctl -w net.core.rmem_max=" in line


@pytest.mark.mosquitto
@pytest.mark.timeout(90)
def test_frames_per_commit_grow_under_a_burst_and_nothing_is_lost(tmp_path, mosquitto):
    devices, per_dev, chunk = 40, 25, 100     # under limits.burst (30) per device
    rig = Rig(tmp_path, mosquitto.port, nodes=devices, cables=0, udp=True)
    fwd = PacketForwarder(rig.udp_addr, EUI)
    try:
        d = rig.start()
        commits: list[int] = []          # readings per spool commit (a transaction and its fsync)
        commit = d.outbox.commit

        def counted(items, *a, **kw):
            commits.append(sum(it.count for it in items))
            return commit(items, *a, **kw)
        d.outbox.commit = counted
        frames = [n.reading() for _ in range(per_dev) for n in rig.nodes]
        base = d.accepted_count
        for i in range(0, len(frames), chunk):
            # at most two chunks in flight: they fit the kernel's default receive buffer, so a loss here is the
            # listener's, not this sender's
            wait_until(lambda: d.accepted_count - base >= i - chunk, 20, f"frames up to {i - chunk} accepted")
            for raw in frames[i:i + chunk]:
                fwd.push(raw)
        wait_until(lambda: d.accepted_count - base >= len(frames), 20, "every frame accepted")
        assert d.metrics.value("gasguard_gateway_udp_kernel_drops_total") == 0
        # asyncio's transport read one datagram a turn of the loop: one frame a commit, an fsync each
        assert len(frames) / len(commits) >= 4 and max(commits) >= 16, commits
    finally:
        fwd.close()
        rig.close()


@pytest.mark.mosquitto
@pytest.mark.timeout(90)
def test_drops_are_counted_in_the_quiet_after_a_flood_with_no_datagram_after_it(tmp_path, mosquitto):
    """The gateway (the real command, a child process) stopped (SIGSTOP) while a flood overflows its receive
    buffer, then resumed with nothing sent after the flood: no datagram read carries a drop count (SO_RXQ_OVFL
    rides on datagrams queued after a loss, and none was), yet the metric reaches the kernel's count within a
    few ticks (0.1 s here), from the socket's `drops` in /proc/net/udp."""
    bind = f"127.0.0.1:{free_port()}"
    rig = Rig(tmp_path, mosquitto.port, nodes=1, cables=0, udp=True, sub=False,
              metrics=f'tick_interval = 0.1\nbind = "{bind}"\n', udp_extra="rcvbuf_kb = 64\n")  # the smallest
    port = rig.udp_addr[1]
    gw = GatewayProcess(rig.config_path, tmp_path / "gateway.log")
    fwd = PacketForwarder(rig.udp_addr, EUI)

    def counted():
        return scrape(bind, "gasguard_gateway_udp_kernel_drops_total")
    stopped = False
    try:
        gw.start()
        gw.wait_log("udp packet-forwarder listener on", 20)
        gw.wait_log("prometheus metrics on", 20)
        if udp_socket_stats(port) is None:
            pytest.skip("/proc/net/udp does not list the gateway's socket (not Linux, or not readable here)")
        assert udp_socket_stats(port)[1] == 0 and counted() == 0
        gw.proc.send_signal(signal.SIGSTOP)
        stopped = True
        raw = rig.nodes[0].reading()
        for _ in range(2000):                     # a few hundred fit 128 KiB (64 KiB asked, doubled); the rest not
            fwd.push(raw)
        dropped = udp_socket_stats(port)[1]       # loopback: a datagram is queued or dropped within its sendto
        assert dropped > 1000, dropped
        gw.proc.send_signal(signal.SIGCONT)
        stopped = False
        # nothing more is sent: the queued datagrams are read (none carries a drop count), then the quiet
        wait_until(lambda: udp_socket_stats(port)[0] == 0, 20, "the queued datagrams read")
        wait_until(lambda: counted() == dropped, 5, f"the metric at the kernel's {dropped} drops")
        assert udp_socket_stats(port)[1] == dropped   # the kernel dropped nothing since: the same count
        assert f"the kernel dropped {dropped} datagrams ({dropped} since start)" in gw.run_log()
    finally:
        if stopped:
            gw.proc.send_signal(signal.SIGCONT)
        fwd.close()
        gw.stop()
        rig.close()
