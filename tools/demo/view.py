"""How the demo shows itself: plain log lines (CI, pipes, `--no-tui`) or the district console live (rich).

Both views take the same calls from tools/demo/run.py: `say` (a line of the story), `incident` (a new revision
taken by the district's or the city's console client, from paho's thread), `attach` (the demo is up),
`select` (the operator's cursor and status line, as the console's own `a` key shows them).
"""

from __future__ import annotations

import collections
import threading

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from gasguard.grading import engine as G
from gasguard.command.console import WARNING_STYLE, render_board


def clock(t: float) -> str:
    """Demo seconds -> "T+MM:SS" (minutes since the demo started, in demo time)."""
    t = max(0, int(t))
    return f"T+{t // 60:02d}:{t % 60:02d}"


def describe(m: dict) -> str:
    """One incident revision in a line: what the console's board shows in its columns."""
    lv = G.LEVEL_NAMES.get(m.get("level"), "-") + (" (projected)" if m.get("projected") else "")
    hh = f", {m['households']:,} households" if m.get("households") else ""
    state = (f"acked by {m['acked']['by']}" if m.get("acked") else
             f"ESCALATED x{m['escalation']['count']} ({m['escalation']['stage']})" if m.get("escalation") else
             "not acked")
    return (f"{m['incident_id']} rev {m['revision']} {m['kind']}: level {lv} {(m.get('warning') or 'none').upper()} "
            f"{G.CATEGORY_NAMES_ZH.get(m['category'], m['category'])}{hh}, {state}")


def _topic(client) -> str:
    return "city" if client.topic.startswith("gasguard/v1/city") else "district"


class _Changes:
    """Which revisions are worth a line: new, escalation, final, and updates that change what the board
    shows (level, warning, households, acknowledgement). A trip's every downstream station adds a revision
    to the timeline; the board's columns stay the same, so the log does too."""

    def __init__(self):
        self.seen: dict = {}
        self.lock = threading.Lock()

    def worth(self, where: str, m: dict) -> bool:
        if m.get("kind") == "sync":
            return False
        key = (m.get("level"), m.get("warning"), m.get("projected"), m.get("households"), bool(m.get("acked")),
               m.get("status"))
        with self.lock:
            before = self.seen.get((where, m["incident_id"]))
            self.seen[(where, m["incident_id"])] = key
        return m.get("kind") != "update" or before != key


class LogView:
    """Plain lines on stdout, flushed: readable in CI logs and through pipes."""

    def __init__(self, out=None):
        import sys
        self.out = out or sys.stdout
        self.demo = None
        self.lock = threading.Lock()
        self.changes = _Changes()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _line(self, t: float, text: str) -> None:
        with self.lock:
            self.out.write(f"{clock(t)}  {text}\n")
            self.out.flush()

    def say(self, t: float, text: str, style: str = "") -> None:
        self._line(t, text)

    def attach(self, demo) -> None:
        self.demo = demo

    def incident(self, client, m: dict) -> None:
        if self.demo is not None and self.changes.worth(_topic(client), m):
            self._line(self.demo.t(), f"   [{_topic(client)}] {describe(m)}")

    def select(self, iid: str, status: str) -> None:
        pass            # the story already says what the operator did


class TuiView:
    """The district console's board (command/console.py render_board) live, the city's routing under it,
    and the story's last lines in a panel. Redrawn 4 times a second by rich's own thread."""

    def __init__(self, console: Console | None = None, lines: int = 12):
        self.console = console or Console()
        self.demo = None
        self.story: collections.deque = collections.deque(maxlen=lines)
        self.selected: str | None = None
        self.status = ""
        self.changes = _Changes()
        self.live = Live(get_renderable=self.render, console=self.console, refresh_per_second=4,
                         redirect_stdout=False, redirect_stderr=False)

    def __enter__(self):
        self.live.start()
        return self

    def __exit__(self, *exc):
        try:
            self.live.stop()
        except OSError:         # the terminal is gone (SIGHUP): everything is already stopped, nothing to show
            pass
        return False

    def say(self, t: float, text: str, style: str = "") -> None:
        self.story.append(Text(f"{clock(t)}  {text}", style=style))

    def attach(self, demo) -> None:
        self.demo = demo

    def incident(self, client, m: dict) -> None:
        if self.demo is None or _topic(client) == "city" or not self.changes.worth("district", m):
            return
        style = {"new": WARNING_STYLE.get(m.get("warning"), ""), "escalation": "bold red"}.get(m["kind"], "")
        self.story.append(Text(f"{clock(self.demo.t())}     {describe(m)}", style=style))

    def select(self, iid: str, status: str) -> None:
        self.selected, self.status = iid, status

    def render(self):
        d = self.demo
        story = Panel(Group(*self.story) if self.story else Text("starting…"), title="the story", border_style="dim")
        if d is None or d.district_client is None:
            return Group(Text("GasGuard demo: bringing the district up", style="bold"), story)
        now = d.now()
        head = Text.assemble(("GasGuard demo  ", "bold"), (f"{clock(d.t())} demo time (x{d.o.speed:g})", "cyan"),
                             f"   {d.broker_desc}   gateway {d.gateway.pid if d.gateway else '-'}   "
                             f"{len(d.boards)} virtual boards + {len(d.fleet.nodes) if d.fleet else 0:,} simulated "
                             "nodes   Ctrl-C stops everything")
        board = render_board(d.district_client.board, now, district=d.district_client.district,
                             selected=self.selected, status=self.status)
        city = d.city_client.board.rows(now) if d.city_client else []
        routed = Text("city command (gasguard/v1/city/incident/+): ", style="bold")
        routed.append(", ".join(f"{m['incident_id']} level {G.LEVEL_NAMES.get(m['level'], '-')} "
                                f"{(m['warning'] or '').upper()} rev {m['revision']}" for m in city) or "nothing routed")
        return Group(head, board, routed, story)
