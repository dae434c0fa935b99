"""Shared by the web console tests: a small district (stations with coordinates and supply links) and the
test kit's engine-backed source and recording `Acting`."""

from __future__ import annotations

from gasguard.testing.webconsole import EngineSource as _EngineSource
from gasguard.testing.webconsole import RecordingActing, quick_hasher  # noqa: F401
from grading_helpers import T0, alarm, device, reading, valve_event  # noqa: F401  (re-exported for the tests)

STATIONS = [
    device(0xA001, households=8_000, pressure_class="subhigh_a", site="燕山调压站", lat=36.659, lon=117.062),
    device(0xA002, households=4_000, site="解放东路调压站", upstream=0xA001, lat=36.668, lon=117.075),
    device(0xA003, households=2_500, site="历山路调压站", upstream=0xA001, lat=36.652, lon=117.041),
    device(0xB001, households=0, pressure_class="subhigh_a", site="东部门站出口", lat=36.672, lon=117.098),
]


def EngineSource(clock, cfg=None, stations=STATIONS, gate=None):  # noqa: N802 - the class, this district's defaults
    return _EngineSource(clock, stations, cfg, gate)
