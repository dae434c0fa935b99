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


class GatewayGrader:
    """The real district grader (SQLite store, an empty registry) fed only the gateways' status messages (births,
    Last Wills) and the passing of time: what it tells the consoles of each gateway, its
    `gasguard.command-gateway/1` messages as (topic, message), as the command service publishes them."""

    def __init__(self, folder, district: str = "lixia"):
        from gasguard.command import config as cconfig
        from gasguard.registry import Registry
        from gasguard.testing.grader import district_grader
        with Registry(folder / "registry.db"):
            pass
        self.district = district
        self.cfg = cconfig.load(None, district=district, store=f"sqlite:///{folder / 'command.db'}",
                                registry=str(folder / "registry.db"))
        self.grader, self.store, self.fence = district_grader(self.cfg)

    def status(self, gid: str, online: bool, t: float, instance: str | None = None,
               host: str | None = None) -> list[tuple[str, dict]]:
        from gasguard.gateway import payloads
        doc = payloads.status(gid, self.district, t, online, "1", instance, host)
        return self._told(self.grader.handle([(f"gasguard/v1/{self.district}/{gid}/status", doc)], t, self.fence))

    def tick(self, t: float) -> list[tuple[str, dict]]:
        return self._told(self.grader.tick(t, self.fence))

    @staticmethod
    def _told(out) -> list[tuple[str, dict]]:
        return [(topic, msg) for topic, msg, _retain in out.direct if "/command/gateway/" in topic]

    def close(self) -> None:
        self.store.close()
