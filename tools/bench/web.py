"""`gasguard bench web`: how long from a new incident revision in the console's source to its row on the
board in a real browser (issue 16: under 1 s), with N browsers watching the board at once.

The source is the real incident engine in this process (no broker, no store: those legs are measured by
`gasguard bench gateway` and the command service's figures); the app runs under uvicorn; each browser is a
headless Chromium. The page stamps `Date.now()` when a row for the new incident appears (a MutationObserver);
the bench stamps `time.time()` when the engine published it: the same clock, one machine."""

from __future__ import annotations

import statistics
import time

import click

WATCH_JS = """
window.__seen = {};
new MutationObserver(() => {
  for (const tr of document.querySelectorAll('#rows tr[data-incident]')) {
    const id = tr.dataset.incident;
    if (!(id in window.__seen)) window.__seen[id] = Date.now();
  }
}).observe(document.getElementById('rows'), {childList: true, subtree: true});
"""


@click.command("web")
@click.option("--incidents", default=30, show_default=True, help="new incidents, one after another")
@click.option("--browsers", default=2, show_default=True, help="browsers watching the board")
@click.option("--gap", default=0.3, show_default=True, help="seconds between incidents")
def web_bench(incidents, browsers, gap):
    """Source -> board row in headless Chromium: p50 / p99 / max latency."""
    from gasguard.command.web.app import WebConfig, create_app
    from gasguard.command.web.login import new_password_file
    from gasguard.testing.chromium import Chromium
    from gasguard.testing.webconsole import EngineSource, RecordingActing, quick_hasher
    from gasguard.testing.webserver import WebServer
    from gasguard.tools.demo.web_screenshots import STATIONS, alarm, dev
    import tempfile
    from pathlib import Path

    src = EngineSource(time.time, STATIONS)
    tmp = Path(tempfile.mkdtemp(prefix="gg-bench-web-"))
    book = new_password_file(tmp / "pw.json", "bench", "bench password", quick_hasher())
    # a flood of new incidents is the point here: no banner logic changes what is measured
    app = create_app(WebConfig(), src, RecordingActing({"bench": {"role": "operator"}}), book,
                     stations=lambda: STATIONS)
    published: dict[str, float] = {}
    src.listen(lambda m: published.setdefault(m["incident_id"], time.time()))
    seen: list[float] = []
    with WebServer(app) as web:
        views = [Chromium(1400, 900).__enter__() for _ in range(browsers)]
        try:
            for b in views:
                b.driver.get(web.url + "/login")
                b.driver.find_element("id", "operator-id").send_keys("bench")
                b.driver.find_element("id", "password").send_keys("bench password")
                b.driver.find_element("id", "login").click()
                b.wait_css("#live.on", 15)
                b.driver.execute_script(WATCH_JS)
            t0 = time.time()
            for k in range(incidents):      # homes far apart: each alarm is a new incident
                home = dev(0x300000 + k, "household", f"bench home {k}", 36.60 + k * 0.01, 117.00, 1)
                src.observe(alarm(home, time.time(), 2))
                time.sleep(gap)
            deadline = time.monotonic() + 10
            for b in views:
                b.wait(lambda d: len(d.execute_script("return window.__seen")) >= incidents,
                       max(0.1, deadline - time.monotonic()), "every row")
                stamps = b.driver.execute_script("return window.__seen")
                seen += [stamps[i] / 1000 - published[i] for i in stamps if published.get(i, 0) >= t0]
        finally:
            for b in views:
                b.reset()
                b.close()
    ms = sorted(x * 1000 for x in seen)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    click.echo(f"web board: {len(ms)} rows seen ({incidents} incidents x {browsers} browsers), source -> row "
               f"p50 {statistics.median(ms):.0f} ms, p99 {p99:.0f} ms, max {ms[-1]:.0f} ms")
