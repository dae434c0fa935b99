"""Screenshots of the web console for the docs: `python -m gasguard.tools.demo.web_screenshots docs/web`
(or `make web-screenshots`). A small Lixia district graded by the real incident engine on a virtual clock,
served by the real app under uvicorn, photographed by headless Chromium (the test kit's fixtures)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from gasguard.command.web.app import WebConfig, create_app
from gasguard.command.web.login import new_password_file
from gasguard.protocol import frame
from gasguard.testing.chromium import Chromium
from gasguard.testing.webconsole import EngineSource, RecordingActing, quick_hasher
from gasguard.testing.webserver import WebServer

T = 1_795_400_000.0        # 2026-11-23 10:13:20 +08:00


def dev(i, profile="station", site="", lat=36.66, lon=117.06, households=0, upstream=None, pc="medium_a",
        key_area=False, address=""):
    return {"dev_id": i, "dev": f"{i:08x}", "profile": profile, "site_name": site, "address": address,
            "lat": lat, "lon": lon, "households": households, "user_class": "residential", "pressure_class": pc,
            "key_area": key_area, "upstream": upstream, "config": {}}


STATIONS = [
    dev(0xB001, site="东部门站出口", lat=36.676, lon=117.118, pc="subhigh_a", address="历下区经十东路"),
    dev(0xA001, site="燕山调压站", lat=36.659, lon=117.062, households=8_000, upstream=0xB001, pc="subhigh_a",
        address="历下区燕山立交桥东"),
    dev(0xA002, site="解放东路调压站", lat=36.668, lon=117.075, households=4_000, upstream=0xA001),
    dev(0xA003, site="历山路调压站", lat=36.652, lon=117.041, households=2_500, upstream=0xA001),
    dev(0xA004, site="千佛山调压站", lat=36.641, lon=117.033, households=3_200, upstream=0xA003),
    dev(0xA005, site="文化东路调压站", lat=36.662, lon=117.050, households=5_100, upstream=0xB001),
    dev(0xA006, site="山大路调压站", lat=36.680, lon=117.052, households=6_400, upstream=0xA005),
    dev(0xA007, site="泉城广场调压站", lat=36.664, lon=117.022, households=2_900, upstream=0xA005),
    dev(0xA008, site="奥体中心调压站", lat=36.655, lon=117.110, households=7_300, upstream=0xB001),
    dev(0xA009, site="龙洞调压站", lat=36.628, lon=117.090, households=1_800, upstream=0xA008),
]


def alarm(d, t, code, *, aseq=1, cleared=False, valve=1, ptrip=False, value=300):
    st = frame.make_state(valve, valve == 1, 2 if code == 2 else 0, False, False, ptrip)
    return {"id": f"{d['dev']}-a{aseq}", "t": t, "dev": d["dev_id"], "type": "alarm", "device": d, "rx": {},
            "frame": {"code": code, "cleared": cleared, "aseq": aseq, "age": 2, "value": value, "state": st},
            "state": frame.state_fields(st)}


def reading(d, t, *, pressure=None, inlet=None, valve=0):
    st = frame.make_state(valve, False, 0, False, False, False)
    fr = {"gas": 0, "pressure": pressure, "battery": None, "state": st}
    if inlet is not None:
        fr["inlet"] = inlet
    return {"id": f"{d['dev']}-r{t}", "t": t, "dev": d["dev_id"], "type": "reading", "frame": fr,
            "state": frame.state_fields(st), "device": d, "rx": {}}


def district(clock) -> EngineSource:
    src = EngineSource(lambda: clock["t"], STATIONS, {"district": "lixia", "gateway_id": "sub-017",
                                                      "reporter_unit": "历下区住房和城乡建设局",
                                                      "reporter_phone": "0531-00000000"})
    now = T
    # 21 minutes ago: the slam-shut at 燕山 tripped on under-pressure; it feeds 解放东路, 历山路 and 千佛山
    src.observe(alarm(STATIONS[1], now - 21 * 60, 4, ptrip=True, value=900))
    # a leak cluster of three homes on 文化东路, acknowledged
    for k in range(3):
        h = dev(0x100001 + k, "household", f"文化东路12号{k + 1}单元", 36.6625 + k * 0.0003, 117.0512, 1,
                0xA005, address="历下区文化东路12号")
        src.observe(alarm(h, now - 9 * 60 + k * 40, 2))
    iid = next(i for i in src.latest if "-leak-" in i)
    clock["t"] = now - 6 * 60
    src.acknowledge(iid, b'{"by": "wang.li"}', 5)
    # ... and shelved while the crew works there (ISA-18.2): on the board apart, in the watch marked "shelf"
    shelf = {"by": "zhao.min", "reason": "抢修队在场，三户阀门已关 (crew on site, valves closed)",
             "duration_s": 45 * 60}
    src.shelve(iid, json.dumps(shelf).encode(), shelf, 5)
    # a leak at a primary school: a key area raises blue to yellow (plan 3.3)
    school = dev(0x100100, "household", "历下实验小学 食堂", 36.6702, 117.0598, 1, 0xA006, key_area=True,
                 address="历下区山大路 历下实验小学")
    src.observe(alarm(school, now - 90, 2))
    # a home whose alarm cleared before anyone acknowledged it (returned to normal, unacknowledged)
    gone = dev(0x100200, "household", "千佛山路8号2单元", 36.6450, 117.0330, 1, 0xA004)
    src.observe(alarm(gone, now - 15 * 60, 2))
    src.observe(alarm(gone, now - 12 * 60, 2, aseq=2, cleared=True))
    src.observe({**reading(gone, now - 11 * 60, pressure=2000, valve=0)})
    # the east gate's inlet (sub-high-pressure A) falls under 0.2 MPa and keeps falling: red (plan 3.3.1(2))
    gate = STATIONS[0]
    for k in range(20):
        t = now - 19 * 60 + k * 60
        clock["t"] = t
        src.observe(reading(gate, t, pressure=2_500, inlet=int(215_000 - k * 3_000)))
    clock["t"] = now
    src.tick()
    # 24 h of readings at 燕山 for its station page: outlet near the 2.5 kPa set point, then lost at the trip
    rows = []
    for k in range(24 * 12):
        t = now - 24 * 3600 + k * 300
        day = math.sin((t - now) / 86_400 * 2 * math.pi)
        cut = t >= now - 21 * 60
        rows.append({"t": t, "pressure_pa": 150 if cut else 2_500 + 120 * day + 40 * math.sin(k),
                     "inlet_pa": 455_000 + 25_000 * day - (110_000 if cut else 0)})
    src.readings_rows["0000a001"] = rows
    src.valves["0000a001"] = [{"t": now - 26 * 3600 + 7200, "valve": "open", "cause": "reset", "gateway": "sub-017"},
                              {"t": now - 21 * 60, "valve": "closed", "cause": "upso", "gateway": "sub-017"}]
    return src


def watch_png(src, out_dir: Path, browser) -> None:
    """`gasguard command watch` at 100 x 30 on the same district: textual's SVG export, photographed."""
    import asyncio

    from gasguard.command.console import CommandClient
    from gasguard.command.watch import WatchApp
    client = CommandClient("127.0.0.1", 1, "lixia")          # never connected: the board is filled here
    for m in src.snapshot():
        client.board.apply(m)
    client.board.apply_shelves({"seq": 1, "shelves": src.shelves()})    # as the command service publishes them
    app = WatchApp(client, by="wang.li", clock=lambda: T, refresh=3600)

    async def shoot():
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            app.save_screenshot(str(out_dir / "watch.svg"))
    tz = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Shanghai"      # the watch says "until 10:58" in its machine's time: Lixia's here
    time.tzset()
    try:
        asyncio.run(shoot())
    finally:
        if tz is None:
            os.environ.pop("TZ")
        else:
            os.environ["TZ"] = tz
        time.tzset()
    browser.driver.get((out_dir / "watch.svg").resolve().as_uri())
    browser.screenshot(out_dir / "watch.png")
    (out_dir / "watch.svg").unlink()


def main(out: str = "docs/web") -> int:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    clock = {"t": T}
    src = district(clock)
    acting = RecordingActing({"wang.li": {"name": "王丽", "role": "operator"}})
    book = new_password_file(out_dir / ".pw.json", "wang.li", "screenshot only", quick_hasher())
    app = create_app(WebConfig(), src, acting, book, stations=lambda: STATIONS, clock=lambda: clock["t"])
    supply = next(i for i in src.latest if "-supply-" in i)
    try:
        with WebServer(app) as web, Chromium(1600, 900) as b:
            d = b.driver
            d.get(web.url + "/login")
            d.find_element("id", "operator-id").send_keys("wang.li")
            d.find_element("id", "password").send_keys("screenshot only")
            d.find_element("id", "login").click()
            b.wait_css("#live.on", 10)
            shots = {"board.png": ("/", "#rows tr"), "map.png": ("/map", ".station"),
                     "map-incident.png": (f"/map?incident={supply}", ".station"),
                     "incident.png": (f"/incidents/{supply}", "#report-zh"),
                     "incident-en.png": (f"/incidents/{supply}?lang=en", "#report-en"),
                     "station.png": ("/stations/0000a001", "#outlet-chart")}
            for name, (path, css) in shots.items():
                d.get(web.url + path)
                b.wait_css(css, 10)
                b.screenshot(out_dir / name, full_height=not name.startswith(("board", "map")))
                print(out_dir / name)
            b.reset()
            watch_png(src, out_dir, b)
            print(out_dir / "watch.png")
    finally:
        (out_dir / ".pw.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
