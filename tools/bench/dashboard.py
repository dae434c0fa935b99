"""`gasguard bench dashboard`: a picture of monitoring/grafana/gasguard-dashboard.json with real data.

No Grafana is installable here (not in Debian, not on PyPI or npm), so this renders the dashboard another,
honest way: a real gateway (`gasguard gateway run --clock speed=60`, grading plugin, metrics on) takes a few
minutes of a drill from pty cables (readings, a leak alarm that goes past its 20- and 45-minute deadlines,
frames with a bad MIC, a pulled cable, the broker stopped and started); a real Prometheus (Debian's) scrapes
it every second with the alert rules loaded; then every panel's own PromQL from the dashboard JSON is run
against that Prometheus (query_range) and drawn with matplotlib where the JSON places it (gridPos). Stat
panels show the last value with the JSON's thresholds and value mappings; timeseries their series with the
JSON's legend format. The district command service (`gasguard command serve`, same drill clock) runs beside
it, scraped as job gasguard-command, so the command row has data too; the gateway's own grading plugin is on
as well (a standalone substation's panels), which a real district would not do (two graders).

Needs: prometheus (apt-get install prometheus), mosquitto, matplotlib (pip install matplotlib==3.11.2, pinned
in requirements.lock; `pip install -e '.[docs]'`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana" / "gasguard-dashboard.json"
RULES = ROOT / "monitoring" / "prometheus" / "gasguard-rules.yml"
PX_W, PX_H = 80, 34          # one grid unit (Grafana: 24 columns; 30 px rows plus margins)
BG, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a", "blue": "#5794f2"}
SERIES = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0", "#37872d"]


def _get(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = pred()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s")


def expand(expr: str, window_s: int) -> str:
    """Grafana's template variables as this capture's values."""
    return (expr.replace("$__rate_interval", "5s").replace("$__range", f"{window_s}s")
            .replace("$job", "gasguard-gateway").replace("$command_job", "gasguard-command")
            .replace("$instance", ".*"))


def legend(fmt: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt or "") or \
        ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__")


class Drill:
    """mosquitto + the gateway on a drill clock + Prometheus, in a work folder; the scenario that feeds them."""

    def __init__(self, work: Path, log=print):
        self.work, self.log = work, log
        self.procs: list[subprocess.Popen] = []

    def start(self):
        from gasguard.testing.config import write_config
        from gasguard.testing.links import PtyCable
        from gasguard.testing.mosquitto import Mosquitto, free_port
        from gasguard.testing.node import Node, make_registry
        self.broker = Mosquitto(workdir=self.work / "broker").start()
        self.nodes = [Node(0x00D10000 + i) for i in range(6)]
        make_registry(self.work / "registry.db", self.nodes)
        self.cables = [PtyCable(self.work / f"ttyGG{i}") for i in range(2)]
        self.metrics_port, self.prom_port, self.cmd_port = free_port(), free_port(), free_port()
        cfg = write_config(self.work / "gateway.toml", registry=self.work / "registry.db",
                           spool=self.work / "spool.db", mqtt_port=self.broker.port,
                           serial=[str(c.link) for c in self.cables], gateway_id="sub-017", district="lixia",
                           extra=f'[metrics]\nbind = "127.0.0.1:{self.metrics_port}"\ntick_interval = 0.2\n'
                                 '[batch]\ndelay = 0.2\n[plugins]\ngrading = true\n')
        self.gw_log = open(self.work / "gateway.log", "wb")
        t0 = time.time()            # the drill clock both services share
        self.procs.append(subprocess.Popen([sys.executable, "-m", "gasguard.cli", "gateway", "run", "-c", str(cfg),
                                            "--clock", "speed=60", "--t0", repr(t0)], stdout=self.gw_log,
                                           stderr=subprocess.STDOUT))
        (self.work / "command.toml").write_text('[command]\ndistrict = "lixia"\ninstance = "cmd-a"\n')
        self.cmd_log = open(self.work / "command.log", "wb")
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "gasguard.cli", "command", "serve", "--config", str(self.work / "command.toml"),
             "--store", f"sqlite:///{self.work / 'command.db'}", "--registry", str(self.work / "registry.db"),
             "--mqtt", f"127.0.0.1:{self.broker.port}", "--metrics", f"127.0.0.1:{self.cmd_port}",
             "--clock", "speed=60", "--t0", repr(t0)], stdout=self.cmd_log, stderr=subprocess.STDOUT))
        (self.work / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            "scrape_configs:\n  - job_name: gasguard-gateway\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{self.metrics_port}']\n"
            "  - job_name: gasguard-command\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{self.cmd_port}']\n")
        prom = shutil.which("prometheus") or "/usr/bin/prometheus"
        self.prom_log = open(self.work / "prometheus.log", "wb")
        self.procs.append(subprocess.Popen(
            [prom, f"--config.file={self.work / 'prometheus.yml'}", f"--storage.tsdb.path={self.work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.prom_port}"], stdout=self.prom_log, stderr=subprocess.STDOUT))
        self.api = f"http://127.0.0.1:{self.prom_port}/api/v1"
        _wait(lambda: urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).status == 200,
              30, "gateway metrics endpoint")
        _wait(lambda: all(t["health"] == "up" for t in _get(f"{self.api}/targets")["data"]["activeTargets"]),
              60, "Prometheus scrapes the gateway and the command service")
        self.log(f"gateway metrics on :{self.metrics_port}, Prometheus on :{self.prom_port}, broker "
                 f"on :{self.broker.port}")

    def run(self, seconds: float):
        """The scenario, in wall seconds from now (the gateway's clock runs 60x: 20 min of plan time in 20 s)."""
        t0 = time.monotonic()
        done: set[str] = set()
        while (t := time.monotonic() - t0) < seconds:
            for i, n in enumerate(self.nodes):
                cable = self.cables[i % 2]
                if cable.master is not None:
                    cable.send(n.reading(gas=20 + i, pressure=2000 + 10 * i))
            if t > 15 and "alarm" not in done:
                done.add("alarm")
                self.cables[0].send(self.nodes[0].alarm(code=2, value=260, state=0x15))
                self.log(f"T+{t:.0f}s leak alarm from {self.nodes[0].dev:08x}: an incident opens")
            if 30 < t < 40:
                bad = bytearray(self.nodes[1].reading())
                bad[-2] ^= 0xFF
                self.cables[1].send(bytes(bad))
            if t > 50 and "unplug" not in done:
                done.add("unplug")
                self.cables[1].unplug()
                self.log(f"T+{t:.0f}s cable ttyGG1 pulled")
            if t > 80 and "replug" not in done:
                done.add("replug")
                self.cables[1].replug()
                self.log(f"T+{t:.0f}s cable ttyGG1 back")
            if t > 95 and "broker" not in done:
                done.add("broker")
                self.broker.stop()
                self.log(f"T+{t:.0f}s broker stopped: the spool fills")
            if t > 125 and "broker up" not in done:
                done.add("broker up")
                self.broker.start()
                self.log(f"T+{t:.0f}s broker back: the spool drains")
            time.sleep(1.5)       # every node about 40 readings a minute: under limits.rate_per_min (60)

    def query_range(self, expr: str, start: float, end: float, step: float = 2.0) -> list[dict]:
        q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
        got = _get(f"{self.api}/query_range?{q}")
        if got.get("status") != "success":
            raise RuntimeError(f"{expr}: {got}")
        return got["data"]["result"]

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        for c in getattr(self, "cables", []):
            c.close()
        if getattr(self, "broker", None):
            self.broker.stop()
        for f in (getattr(self, "gw_log", None), getattr(self, "prom_log", None), getattr(self, "cmd_log", None)):
            if f:
                f.close()


def _fmt(v: float, unit: str | None) -> str:
    if unit == "percentunit":
        return f"{v:.0%}" if abs(v) >= 0.1 or v == 0 else f"{v * 100:.2g}%"
    if unit == "bytes":
        return f"{v / 1e6:.0f} MB"
    if unit == "s":
        return f"{v:.0f} s" if v >= 10 else f"{v:.2g} s"
    if unit == "reqps":
        return f"{v:.1f}/s"
    return f"{v:g}"


def _color(v: float, steps: list[dict]) -> str:
    c = "green"
    for s in steps or []:
        if s["value"] is None or v >= s["value"]:
            c = s["color"]
    return COLORS.get(c, c)


def render(dash: dict, data: dict, out: Path, note: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) + 2
    W, H = 24 * PX_W, rows * PX_H
    fig = plt.figure(figsize=(W / 100, H / 100), dpi=100, facecolor=BG)

    def box(p):       # figure coordinates of a panel (top line kept for the dashboard title)
        g = p["gridPos"]
        return (g["x"] * PX_W + 4) / W, 1 - ((g["y"] + 2) * PX_H + g["h"] * PX_H - 4) / H, \
            (g["w"] * PX_W - 8) / W, (g["h"] * PX_H - 8) / H

    fig.text(0.005, 1 - 0.6 * PX_H / H, dash["title"], color=TEXT, fontsize=15, weight="bold", va="center")
    fig.text(0.995, 1 - 0.6 * PX_H / H, note, color="#8e8e8e", fontsize=8.5, va="center", ha="right")
    for p in panels:
        x, y, w, h = box(p)
        if p["type"] == "row":
            fig.text(x, y + h / 2, p["title"], color=TEXT, fontsize=12, weight="bold", va="center")
            continue
        # the panel: its background and title, then the plot inset (room for the axis labels inside it)
        fig.patches.append(Rectangle((x, y), w, h, transform=fig.transFigure, color=PANEL, zorder=-10))
        fig.text(x + 6 / W, y + h - 4 / H, p["title"], color=TEXT, fontsize=9.5, va="top", ha="left")
        left = 58 / W if p["type"] == "timeseries" else 6 / W
        bottom = 20 / H if p["type"] == "timeseries" else 6 / H
        ax = fig.add_axes((x + left, y + bottom, w - left - 8 / W, h - bottom - 24 / H))
        ax.set_facecolor(PANEL)
        for s in ax.spines.values():
            s.set_color(GRID)
        d = p["fieldConfig"]["defaults"]
        series = data.get(p["id"], [])
        if p["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            vals = [(legend(fmt, r["metric"]), float(r["values"][-1][1])) for fmt, r in series if r["values"]]
            if not vals:
                ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
            maps = {}
            for m in d.get("mappings", []):
                maps.update(m.get("options", {}))
            n = max(1, len(vals))
            for i, (name, v) in enumerate(vals):
                m = maps.get(str(int(v)) if v == int(v) else str(v), {})
                col = COLORS.get(m.get("color"), None) or _color(v, d.get("thresholds", {}).get("steps"))
                ax.add_patch(Rectangle((i / n + 0.01, 0.05), 1 / n - 0.02, 0.9, transform=ax.transAxes, color=col))
                ax.text(i / n + 0.5 / n, 0.62, m.get("text") or _fmt(v, d.get("unit")), color="white", fontsize=15,
                        weight="bold", ha="center", va="center", transform=ax.transAxes)
                ax.text(i / n + 0.5 / n, 0.25, name, color="white", fontsize=7.5, ha="center", va="center",
                        transform=ax.transAxes)
        elif p["type"] == "timeseries":
            ax.tick_params(colors="#8e8e8e", labelsize=7)
            ax.grid(color=GRID, linewidth=0.6)
            drawn = 0
            for i, (fmt, r) in enumerate(series):
                xs = [float(t) - data["start"] for t, _ in r["values"]]
                ys = [float(v) for _, v in r["values"]]
                if not xs:
                    continue
                ax.plot(xs, ys, color=SERIES[i % len(SERIES)], linewidth=1.3, label=legend(fmt, r["metric"]))
                drawn += 1
            if drawn:
                ax.legend(loc="upper left", fontsize=6.5, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT,
                          ncol=min(4, drawn))
                unit = d.get("unit")
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p, u=unit: _fmt(v, u)))
            else:
                ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlim(0, data["end"] - data["start"])
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: f"T+{v:.0f}s"))
        else:   # table: one line per series, its labels
            ax.set_xticks([])
            ax.set_yticks([])
            lines = []
            for _fmt_, r in series:
                lab = {k: v for k, v in r["metric"].items() if k not in ("__name__", "job")}
                lines.append(" ".join(f"{k}={v}" for k, v in sorted(lab.items())))
            ax.text(0.02, 0.9, "\n".join(lines) or "No data", color=TEXT, fontsize=7, va="top", family="monospace",
                    transform=ax.transAxes, wrap=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=BG)
    plt.close(fig)


def capture(out: Path, seconds: float = 150.0, keep: bool = False, log=print) -> dict:
    """Run the drill, query every panel, write the PNG; returns what was drawn per panel (the figures)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError("matplotlib is missing: .venv/bin/pip install -c requirements.lock matplotlib") from None
    if not (shutil.which("prometheus") or os.path.exists("/usr/bin/prometheus")):
        raise RuntimeError("prometheus is missing: apt-get install prometheus")
    dash = json.loads(DASHBOARD.read_text())
    work = Path(tempfile.mkdtemp(prefix="gasguard-dashboard-"))
    drill = Drill(work, log)
    try:
        drill.start()
        start = time.time()
        drill.run(seconds)
        end = time.time()
        time.sleep(2)                      # the last scrape
        data: dict = {"start": start, "end": end}
        summary = {}
        for p in dash["panels"]:
            if p["type"] == "row":
                continue
            got = []
            for t in p["targets"]:
                for r in drill.query_range(expand(t["expr"], int(end - start)), start, end):
                    got.append((t.get("legendFormat", ""), r))
            data[p["id"]] = got
            summary[p["title"]] = len(got)
        render(dash, data, out, f"rendered by tools/bench/dashboard.py from {DASHBOARD.relative_to(ROOT)}: each "
                                f"panel's PromQL on a real Prometheus scraping a real gateway drill "
                                f"and the command service ({seconds:.0f} s, clock speed=60); not Grafana")
        return {"out": str(out), "panels": summary, "work": str(work) if keep else None}
    finally:
        drill.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
