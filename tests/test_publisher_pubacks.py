"""PUBACKs from paho's thread reach the loop in one hand-over for all that came meanwhile (publisher.py,
_puback_threadsafe), one id at a time from paho or a run of them from FailoverClient. None is lost: one that comes
while there is no running loop (before start, between two loops) is handled when the next loop starts, and one whose
handling raises does not strand those behind it, in its run or after."""

import asyncio
import logging

from gasguard.brokers import Endpoint
from gasguard.gateway.config import Config
from gasguard.gateway.daemon import Daemon
from gasguard.testing.mosquitto import free_port
from gasguard.testing.node import Node, make_registry


def _publisher(tmp_path, monkeypatch):
    make_registry(tmp_path / "registry.db", [Node(0x00C50000)])
    cfg = Config(gateway_id="gw1", district="d1", registry=tmp_path / "registry.db", spool=tmp_path / "s.db",
                 udp_bind=f"127.0.0.1:{free_port()}", mqtt_client_id="gw1", mqtt_brokers=[Endpoint("127.0.0.1", 1)])
    d = Daemon(cfg, plugins=[])
    pub = d.publisher
    for link in pub.links():                         # no broker here: the hand-over alone
        monkeypatch.setattr(link.client, "start", lambda keepalive, loop=None: None)
    return d, pub


class Handled(list):
    """The PUBACKs the publisher handled (its _on_puback), and an event on the running loop for each."""

    def __init__(self):
        super().__init__()
        self.grew: asyncio.Event | None = None

    def add(self, mid: int) -> None:
        self.append(mid)
        if self.grew is not None:
            self.grew.set()

    async def until(self, n: int, timeout: float = 5.0) -> None:
        """Until `n` were handled (each drain is a callback on this loop: nothing lands between the check and
        the wait)."""
        self.grew = asyncio.Event()
        while len(self) < n:
            self.grew.clear()
            await asyncio.wait_for(self.grew.wait(), timeout)


def test_pubacks_without_a_running_loop_are_handled_when_the_next_one_starts(tmp_path, monkeypatch):
    d, pub = _publisher(tmp_path, monkeypatch)
    seen = Handled()
    monkeypatch.setattr(pub, "_on_puback", lambda link, mid: seen.add(mid))
    try:
        pub._puback_threadsafe(pub.main, (1,))       # before start: no loop to hand it to
        assert not pub.puback_pending and list(pub.pubacks) == [(pub.main, (1,))]

        async def run(mids, n):
            pub.start()
            for m in mids:
                pub._puback_threadsafe(pub.main, (m,))
            await seen.until(n)
        asyncio.run(run([2, 3], 3))
        assert seen == [1, 2, 3] and not pub.pubacks
        pub.puback_pending = True                    # as if a drain was scheduled on the loop that just ended
        pub.pubacks.append((pub.main, (4,)))
        asyncio.run(run([5], 5))
        assert seen == [1, 2, 3, 4, 5] and not pub.pubacks
    finally:
        d.spool.close()


def test_a_puback_whose_handling_raises_does_not_strand_the_rest(tmp_path, monkeypatch, caplog):
    d, pub = _publisher(tmp_path, monkeypatch)
    seen = Handled()

    def on_puback(link, mid):
        if mid == 2:
            raise ValueError("bad entry")
        seen.add(mid)
    monkeypatch.setattr(pub, "_on_puback", on_puback)
    caplog.set_level(logging.ERROR)
    try:
        async def run():
            pub.start()
            pub._puback_threadsafe(pub.main, [1, 2, 3])     # a run of PUBACKs (FailoverClient.on_published_many)
            pub._puback_threadsafe(pub.main, (4,))
            await seen.until(3)
        asyncio.run(run())
        assert seen == [1, 3, 4] and not pub.pubacks      # 3: after the one that raised, in the same run
        assert "bad entry" in caplog.text
    finally:
        d.spool.close()
