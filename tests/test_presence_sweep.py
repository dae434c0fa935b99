"""Presence at a district's scale (issue 17): the offline sweep walks a bounded slice of the devices a tick,
and the online/offline counts are kept as devices flip, not counted by walking them all. Checked against a
brute-force walk of the same table."""

from gasguard.gateway import presence as P
from gasguard.gateway.presence import PresenceTable
from gasguard.protocol import topics


class _Cfg:
    gateway_id, offline_after, offline_missed = "gw1", 10.0, 0


def _walk(pt):
    on = sum(1 for st in pt.devices.values() if st.online)
    return on, sum(1 for st in pt.devices.values() if st.pub != P.NEVER) - on


def _reading(dev):
    return {"type": "reading", "dev": dev, "fcnt": 1, "gas": 0, "pressure": 2000, "battery": 90, "state": 0}


def test_every_silent_device_goes_offline_once_within_a_sweep_of_bounded_slices(monkeypatch):
    monkeypatch.setattr(P, "SWEEP_SLICE", 7)
    pt = PresenceTable(_Cfg(), topics.GatewayTopics("gasguard/v1/d1/gw1"))
    for dev in range(50):
        pt.heard(dev, _reading(dev), 0.0 if dev < 30 else 5.0, f"m{dev}")
    pt.route(99, None, {})                         # routed, never heard: not counted, never offline
    assert pt.counts() == _walk(pt) == (50, 0)
    gone, calls = [], 0
    while True:                                    # at t=12: the first 30 are past 10 s, the rest are not
        calls += 1
        got = pt.gone_quiet(12.0)
        assert len(got) <= P.SWEEP_SLICE
        gone += [dev for dev, _, _ in got]
        if pt.sweep_at >= len(pt.sweep):
            break
    assert sorted(gone) == list(range(30)) and calls == -(-51 // 7)
    assert pt.counts() == _walk(pt) == (20, 30)
    pt.heard(3, _reading(3), 13.0, "m3x")          # back online
    assert pt.counts() == _walk(pt) == (21, 29)
    assert [d for d, _, _ in pt.gone_quiet(13.0)] == []   # a new sweep: nobody else is past the timeout
    pt.heard(1000, _reading(1000), 13.0, "new")    # a device added during a sweep: in the next one
    assert pt.counts() == _walk(pt) == (22, 29)
    late = []
    for _ in range(2 * (-(-52 // 7))):
        late += [dev for dev, _, _ in pt.gone_quiet(30.0)]
    assert sorted(late) == sorted([3, 1000] + list(range(30, 50)))   # each once, over two sweeps at most
    assert pt.counts() == _walk(pt) == (0, 51)
