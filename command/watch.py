"""`gasguard command watch`: the field console, a textual app over the MQTT `CommandClient`.

For a laptop in a van as much as for a desk: usable at 100 columns (site names are ellipsised in the
middle, so "…第一调压站" and "…第二调压站" stay apart), a help screen on `?`, a confirmation before an
acknowledgement, deadlines that stop counting once acknowledged, and what the gateway refused shown as
refused (never "sent"). The alarm logic is the web board's (`command/web/alarms.py`): one meaning for both.

Shelves (ISA-18.2) are the district command service's: it holds them in its store, the web console reads them
there, and it publishes them retained on `command/shelves` for consoles on the broker (this one). A shelved row
says "shelf", and a line under the board says who shelved it, why and how long is left; when the shelf ends
(its expiry by this console's clock, an upgrade: `command/shelving.py`) the row is back in its real state at
the next redraw, whether or not the service has said so yet. `s` shelves or unshelves the selected incident:
a reason, minutes, a confirmation, then a signed act the service checks, applies and audits (as the web
console's), shown done only once the service confirmed it.

Topics the broker refuses this console's account (its ACL: SUBACK 0x80) are named in a line on top of the
board, in the web board's words (`console.refused_line`): an empty board must not pass for a quiet district.
The line names this console's log file (`log_path`), where the client's warning says what to ask the broker's
admin; the help screen names it too. The log goes to that file only (`gasguard command watch --log`): while
textual holds the terminal, nothing may be written to it.
"""

from __future__ import annotations

import math
import time

from rich.cells import cell_len
from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Input, Static

from gasguard.command.console import CommandClient, ConsoleError, parse_input, refusal, refused_line
from gasguard.command.web import alarms as A
from gasguard.grading import engine as G

WARNING_STYLE = {"red": "bold white on red", "orange": "bold black on dark_orange", "yellow": "black on yellow",
                 "blue": "bold white on blue", None: "dim"}
STATE_SHORT = {A.UNACKED: ("UNACK", "bold white on dark_red"), A.ACKED: ("ack", ""),
               A.RTN_UNACKED: ("RTN", "bold black on yellow"), A.NORMAL: ("ok", "dim"),
               A.SHELVED: ("shelf", "italic black on grey70")}
SHELF_LINES = 4          # shelves listed under the board at most (the rest counted: the board stays visible)
CATEGORY_SHORT = {"safety_accident": "安全", "supply_assurance": "供应"}
HELP = """\
[b]GasGuard field console — keys[/b]

  [b]j[/b] / [b]↓[/b]   next incident          [b]k[/b] / [b]↑[/b]   previous incident
  [b]a[/b]       acknowledge the selected incident (asks first; waits for the confirmation)
  [b]i[/b]       operator input: facts from the site, e.g. deaths=0 evacuated=300 note='…'
  [b]s[/b]       shelve the selected incident (a reason, minutes; asks first), or unshelve it
  [b]r[/b]       show / hide the draft report (plan 4.1.3, Chinese)
  [b]?[/b]       this help                [b]q[/b]       quit

[b]state[/b]   UNACK active, not acknowledged · ack acknowledged · RTN cleared before anyone
        acknowledged it (still needs a look) · ok cleared and acknowledged · shelf shelved
[b]shelf[/b]   hidden on purpose by an operator (ISA-18.2 shelving), on every console; the
        lines under the board say who, the time left and why. It ends at its expiry, or
        at once if the incident is upgraded; the 20′ and 45′ reports still fall due. The
        command service (gasguard command serve) holds, checks and audits every shelving.
[b]20′ 45′[/b] time left to the phone and written reports (plan 4.1.2); OVER when late;
        ✓ once acknowledged (counting stops: the report is then yours)

Input fields: deaths, serious_injuries, direct_loss_cny, evacuated, forecast_excess_pct
(numbers); secondary_hazards, hazard_sources_nearby, warnings_issued, support_needed,
on_site_lead, note (text); evacuation_advised, resolved (yes/no).
{log}
Press any key to close."""


def ellipsise(text: str, width: int) -> str:
    """`text` in at most `width` terminal cells, cut in the middle: the end of a site name (the number, the
    building) is what tells two sites apart, the start (the district, the road) is what they share."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    keep = width - 1
    head_w, tail_w = keep * 2 // 5, keep - keep * 2 // 5
    head, tail = "", ""
    for ch in text:
        if cell_len(head + ch) > head_w:
            break
        head += ch
    for ch in reversed(text):
        if cell_len(ch + tail) > tail_w:
            break
        tail = ch + tail
    return head + "…" + tail


def deadline_cell(v: dict) -> Text:
    if not v["counting"]:
        if v["text"] == "resolved":                    # cleared, not acknowledged: no tick for that
            return Text("cleared", style="dim")
        return Text("✓ late" if v.get("late") else "✓", style="dim")
    if v["overdue"]:
        return Text("OVER " + v["text"].split()[-1], style="bold red")
    return Text(v["text"])


def time_left(s: float) -> str:
    """`s` seconds as m:ss, from an hour as h:mm:ss (a shelf lasts up to a shift)."""
    s = max(0, int(s))
    h, rest = divmod(s, 3600)
    return f"{h:d}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:d}:{rest % 60:02d}"


def clock_time(t: float) -> str:
    return time.strftime("%H:%M", time.localtime(t))


def shelf_line(row: dict, now: float, width: int) -> Text:
    """A shelved row's shelf in one line of `width` cells: the site (ellipsised in the middle, as on the
    board), who shelved it, the time left and when it ends, then the reason (cut at the end if it must be)."""
    shelf = row["shelf"]
    line = Text()
    line.append("shelf", style=STATE_SHORT[A.SHELVED][1])
    line.append(f" {ellipsise(row['site'], 24)} · by ")
    line.append(ellipsise(str(shelf["by"]), 14), style="bold")
    line.append(f" · {time_left(shelf['until'] - now)} left, until {clock_time(shelf['until'])} · ")
    line.append(" ".join(str(shelf["reason"]).split()), style="italic")   # one line, whatever was typed
    line.truncate(width, overflow="ellipsis")
    return line


class HelpScreen(ModalScreen):
    DEFAULT_CSS = "HelpScreen { align: center middle; } #help { width: 96; height: auto; border: round $accent; " \
                  "padding: 1 2; background: $panel; }"

    def __init__(self, log_path: str | None = None):
        super().__init__()
        self.log_path = log_path

    def compose(self) -> ComposeResult:
        log = (f"\n[b]log[/b]     {escape(self.log_path)}\n        what the broker refused and what to ask its "
               "admin, and other warnings\n" if self.log_path else "")
        yield Static(HELP.format(log=log), id="help")

    def on_key(self, event) -> None:
        event.stop()
        self.dismiss()


class ConfirmAck(ModalScreen[bool]):
    DEFAULT_CSS = "ConfirmAck { align: center middle; } #confirm { width: 90; height: auto; border: thick $warning; " \
                  "padding: 1 2; background: $panel; }"
    BINDINGS = [Binding("y", "answer(True)", "yes, acknowledge"), Binding("n", "answer(False)", "no"),
                Binding("escape", "answer(False)", "cancel")]

    def __init__(self, m: dict, by: str):
        super().__init__()
        self.m, self.by = m, by

    def compose(self) -> ComposeResult:
        m = self.m
        lv = G.LEVEL_NAMES.get(m["level"], "-") + (" (projected)" if m["projected"] else "")
        yield Static(f"[b]Acknowledge this incident?[/b]\n\n{A.site_name(m)}\n{m['incident_id']}  revision "
                     f"{m['revision']}\nwarning {(m['warning'] or 'none').upper()}, level {lv}, "
                     f"{G.CATEGORY_NAMES_ZH.get(m['category'], m['category'])}\n\nAs [b]{self.by}[/b] you take over "
                     "the 20′ phone and 45′ written reports (plan 4.1.2).\n\n[b]y[/b] yes, acknowledge    "
                     "[b]n[/b] / Esc  no", id="confirm")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class FormScreen(ModalScreen[dict | None]):
    """A small form over the board (#box, with an #error line): Esc cancels, dismissed with None."""
    DEFAULT_CSS = "FormScreen { align: center middle; } FormScreen #box { width: 96; height: auto; " \
                  "border: round $accent; padding: 1 2; background: $panel; } FormScreen #error { color: $error; }"
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)


class ShelveScreen(FormScreen):
    """Why and for how long: a reason is required; whether it is long enough, and the longest shelf, are the
    command service's rules (command/shelving.py), which it says when it refuses."""

    def __init__(self, m: dict):
        super().__init__()
        self.m = m

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            yield Static(f"[b]Shelve[/b] {escape(A.site_name(self.m))}  ({self.m['incident_id']})\nWhy (required), "
                         "then for how many minutes. Tab moves, Enter goes on (asks first), Esc cancels.")
            yield Input(placeholder="reason, e.g. crew on site, valve closed", id="reason")
            yield Input(value="30", placeholder="minutes", id="minutes")
            yield Static("", id="error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        reason = self.query_one("#reason", Input).value.strip()
        error = self.query_one("#error", Static)
        if not reason:
            error.update("not sent: write why it is shelved (a reason is required)")
            self.query_one("#reason", Input).focus()
            return
        try:
            minutes = float(self.query_one("#minutes", Input).value)
            if not math.isfinite(minutes):
                raise ValueError("nan or inf")
        except ValueError:
            error.update("not sent: minutes as a number, e.g. 30")
            self.query_one("#minutes", Input).focus()
            return
        self.dismiss({"reason": reason, "duration_s": minutes * 60})


class ConfirmShelve(ModalScreen[bool]):
    DEFAULT_CSS = "ConfirmShelve { align: center middle; } #confirm { width: 90; height: auto; " \
                  "border: thick $warning; padding: 1 2; background: $panel; }"
    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n", "answer(False)", "no"),
                Binding("escape", "answer(False)", "cancel")]

    def __init__(self, m: dict, by: str, now: float, body: dict | None = None, shelf: dict | None = None):
        super().__init__()
        self.m, self.by, self.now, self.body, self.shelf = m, by, now, body, shelf

    def compose(self) -> ComposeResult:
        m = self.m
        head = f"{escape(A.site_name(m))}\n{m['incident_id']}  warning {(m['warning'] or 'none').upper()}, level " \
               f"{G.LEVEL_NAMES.get(m['level'], '-')}{' (projected)' if m['projected'] else ''}"
        if self.shelf is not None:
            s = self.shelf
            text = (f"[b]Unshelve this incident?[/b]\n\n{head}\n\nShelved by {escape(str(s['by']))} until "
                    f"{clock_time(s['until'])} ({time_left(s['until'] - self.now)} left): {escape(str(s['reason']))}"
                    "\n\nIt is back on every console's board at once.\n\n[b]y[/b] yes, unshelve    [b]n[/b] / Esc  no")
        else:
            b = self.body
            text = (f"[b]Shelve this incident?[/b]\n\n{head}\n\nAs [b]{escape(self.by)}[/b], for "
                    f"{b['duration_s'] / 60:g} minutes (until about {clock_time(self.now + b['duration_s'])}): "
                    f"{escape(b['reason'])}\n\nIt is shelved "
                    "on every console; it comes back at the expiry, or at once if it is upgraded. The 20′ and 45′ "
                    "reports still fall due.\n\n[b]y[/b] yes, shelve    [b]n[/b] / Esc  no")
        yield Static(text, id="confirm")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class InputScreen(FormScreen):
    def __init__(self, iid: str):
        super().__init__()
        self.iid = iid

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            yield Static(f"Operator input for {self.iid}\ne.g. deaths=0 evacuated=300 on_site_lead='张三 138…' "
                         "note='警戒已设置'  (Enter sends, Esc cancels)")
            yield Input(id="fields")
            yield Static("", id="error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        from gasguard.grading import report as R
        text = event.value.strip()
        if not text:
            self.dismiss(None)
            return
        try:
            fields = parse_input(text)
        except ValueError as e:
            self.query_one("#error", Static).update(f"not sent: {e}")
            return
        problems = R.validate_operator_input(fields)
        if problems:                     # refused here, at the field, before anything leaves
            self.query_one("#error", Static).update("not sent: " + "; ".join(problems))
            return
        self.dismiss(fields)


class WatchApp(App):
    TITLE = "GasGuard district command"
    CSS = "#report { height: auto; max-height: 50%; border: round $accent; padding: 0 1; display: none; } " \
          "#report.shown { display: block; } #status { height: auto; padding: 0 1; } " \
          "#refused { height: auto; padding: 0 1; display: none; background: $error; color: $text; } " \
          "#refused.shown { display: block; } " \
          "#board { height: 1fr; } #shelves { height: auto; padding: 0 1; display: none; " \
          "border-top: solid $accent; } #shelves.shown { display: block; }"
    BINDINGS = [Binding("j,down", "move(1)", "next", show=False), Binding("k,up", "move(-1)", "prev", show=False),
                Binding("a", "ack", "acknowledge"), Binding("i", "input", "input"), Binding("s", "shelve", "shelve"),
                Binding("r", "report", "report"), Binding("question_mark", "help", "help"),
                Binding("q", "quit", "quit")]

    def __init__(self, client: CommandClient, *, by: str, refresh: float = 1.0, clock=time.time,
                 confirm_timeout: float = 10.0, log_path: str | None = None):
        super().__init__()
        self.client, self.by, self.refresh_s, self.clock = client, by, refresh, clock
        self.log_path = log_path        # where this console's log goes (named in the help and the refusal line)
        self.confirm_timeout = confirm_timeout
        self.selected: str | None = None
        self.status_text = ""
        self._shown_version = -1

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="refused")          # what the broker will not let this console read (redraw)
        yield DataTable(id="board", cursor_type="row", zebra_stripes=True)
        yield Static("", id="shelves")
        yield Static("", id="report")
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.client.district} — ? help"
        self.redraw()
        self.set_interval(self.refresh_s, self.redraw)

    # --- drawing ---------------------------------------------------------------------------------
    def rows(self, keep_normal_s: float = 600.0) -> list[dict]:
        """Open incidents, and cleared ones nobody acknowledged (ISA-18.2: they stay until someone looks);
        cleared and acknowledged ones for `keep_normal_s`. Shelved ones say so while their shelf holds."""
        now = self.clock()
        board = self.client.board
        with board._lock:
            msgs = list(board.incidents.values())
            shelves = board.shelves or {}
        rows = [A.board_row(m, now, shelves.get(m["incident_id"])) for m in msgs]
        return sorted((r for r, m in zip(rows, msgs) if r["state"] != A.NORMAL
                       or now - (m.get("resolved_at") or now) < keep_normal_s), key=A.sort_key)

    def redraw(self) -> None:
        table = self.query_one("#board", DataTable)
        rows = self.rows()
        ids = [r["incident_id"] for r in rows]
        if self.selected not in ids:
            self.selected = ids[0] if ids else None
        width = max(self.size.width, 60)
        fixed = {"state": 5, "warning": 6, "level": 8, "cat": 4, "households": 7, "phone": 10, "written": 10,
                 "ack": 10}
        site_w = max(12, width - sum(fixed.values()) - 2 * (len(fixed) + 1) - 2)
        table.clear(columns=True)
        table.add_column("state", width=fixed["state"])
        table.add_column("warn", width=fixed["warning"])
        table.add_column("level", width=fixed["level"])
        table.add_column("cat", width=fixed["cat"])
        table.add_column("site", width=site_w)
        table.add_column("homes", width=fixed["households"])
        table.add_column("20′ phone", width=fixed["phone"])
        table.add_column("45′ writ.", width=fixed["written"])
        table.add_column("ack", width=fixed["ack"])
        for r in rows:
            label, style = STATE_SHORT[r["state"]]
            lv = G.LEVEL_NAMES.get(r["level"], "-") + (" proj" if r["projected"] else "")
            if r["acked"]:
                ack = Text(ellipsise(str(r["acked"]["by"]), fixed["ack"]), style="green")
            elif r["escalation"]:
                ack = Text(f"ESC×{r['escalation']['count']}", style="bold red")
            else:
                ack = Text("NO", style="yellow")
            table.add_row(Text(label, style=style), Text((r["warning"] or "none").upper(),
                                                         style=WARNING_STYLE.get(r["warning"], "dim")),
                          lv, CATEGORY_SHORT.get(r["category"], "?"), ellipsise(r["site"], site_w),
                          f"{r['households']:,}" if r["households"] else "-",
                          deadline_cell(r["phone"]), deadline_cell(r["written"]), ack, key=r["incident_id"])
        if self.selected:
            table.move_cursor(row=ids.index(self.selected), animate=False)
        if not rows:
            table.add_row("", "", "", "", "no open incidents", "", "", "", "")
        self._draw_shelves([r for r in rows if r["state"] == A.SHELVED], width - 2)
        report = self.query_one("#report", Static)
        if report.has_class("shown") and self.selected:
            m = self.client.board.get(self.selected)
            report.update(Text(m["text_zh"]) if m else "")
        self.query_one("#status", Static).update(Text(self.status_text))
        self._draw_refused()

    def _draw_refused(self) -> None:
        """The topics the broker refuses this console's account, on top of the board (the web board's line):
        an empty board must not pass for a quiet district. Hidden when it refuses none."""
        with self.client.results_cond:          # paho's thread fills it under this lock
            line = refused_line(dict(self.client.refused_topics), self.log_path)
        panel = self.query_one("#refused", Static)
        panel.set_class(bool(line), "shown")
        panel.update(Text(line))                # never markup: topics are the broker's and the config's

    def _draw_shelves(self, shelved: list[dict], width: int) -> None:
        """Who shelved what, why, and the time left: one line each under the board (at most SHELF_LINES)."""
        panel = self.query_one("#shelves", Static)
        panel.set_class(bool(shelved), "shown")
        panel.border_title = f"shelved ({len(shelved)}): who, time left, why"
        now = self.clock()
        lines = [shelf_line(r, now, width) for r in shelved[:SHELF_LINES]]
        if len(shelved) > SHELF_LINES:
            lines.append(Text(f"… and {len(shelved) - SHELF_LINES} more shelved (rows marked shelf)", style="dim"))
        panel.update(Text("\n").join(lines))

    def say(self, text: str) -> None:
        self.status_text = text
        self.query_one("#status", Static).update(Text(text))     # never markup: it quotes what people typed

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value:
            self.selected = event.row_key.value

    # --- actions ---------------------------------------------------------------------------------
    def action_move(self, step: int) -> None:
        ids = [r["incident_id"] for r in self.rows()]
        if ids:
            i = ids.index(self.selected) if self.selected in ids else 0
            self.selected = ids[max(0, min(len(ids) - 1, i + step))]
            self.redraw()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.log_path))

    def action_report(self) -> None:
        self.query_one("#report", Static).toggle_class("shown")
        self.redraw()

    def action_ack(self) -> None:
        m = self.client.board.get(self.selected) if self.selected else None
        if m is None:
            self.say("nothing selected")
            return
        if m.get("acked"):
            self.say(f"{m['incident_id']} is already acknowledged by {m['acked']['by']}")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.say(f"acknowledging {m['incident_id']} … waiting for the gateway")
                self.send_ack(m)
            else:
                self.say("not acknowledged")
        self.push_screen(ConfirmAck(m, self.by), answered)

    @property
    def who(self) -> str:
        """Who the gateway will record: the signing operator when acts are signed (issue 14), else `by`."""
        signer = getattr(self.client, "signer", None)
        return (getattr(signer, "on_behalf_of", None) or getattr(signer, "id", None)) if signer else self.by

    def _refusal(self, sent) -> str | None:
        """The gateway's refusal of the request we sent (signed acts are answered by hash), if any yet."""
        results = getattr(self.client, "results", None)
        res = results.get(sent) if results is not None and isinstance(sent, str) else None
        return None if res is None or res.get("outcome") == "allowed" else refusal(res)

    def _await(self, iid: str, sent, pred) -> dict:
        """The incident once `pred` holds, or ConsoleError: refused by the gateway, or no answer in time."""
        deadline = time.monotonic() + self.confirm_timeout
        while True:
            why = self._refusal(sent)
            if why:
                raise ConsoleError(f"REFUSED by the gateway: {why}")
            try:
                return self.client.wait_for(iid, min(0.5, max(0.05, deadline - time.monotonic())), pred)
            except ConsoleError:
                if time.monotonic() >= deadline:
                    raise ConsoleError(f"no confirmation from the gateway within {self.confirm_timeout:g} s") from None

    @work(thread=True, exclusive=True, group="act")
    def send_ack(self, m: dict) -> None:
        iid, rev, who = m["incident_id"], m["revision"], self.who
        try:
            sent = self.client.ack(iid, self.by, rev, self.confirm_timeout)
            done = self._await(iid, sent, lambda x: bool(x.get("acked")) and x["acked"].get("by") == who
                               and x["revision"] > rev)
            text = f"acknowledged {iid} as {who}: confirmed by the gateway (revision {done['revision']})"
        except ConsoleError as e:
            text = f"NOT acknowledged: {e}"
        self.call_from_thread(self.say, text)
        self.call_from_thread(self.redraw)

    def action_input(self) -> None:
        iid = self.selected
        if iid is None:
            self.say("nothing selected")
            return

        def entered(fields: dict | None) -> None:
            if fields:
                self.say(f"sending {', '.join(fields)} for {iid} … waiting for the gateway")
                self.send_input(iid, fields)
            else:
                self.say("input cancelled")
        self.push_screen(InputScreen(iid), entered)

    @work(thread=True, exclusive=True, group="act")
    def send_input(self, iid: str, fields: dict) -> None:
        m = self.client.board.get(iid)
        before = {(n["t"], n["by"], n["text"]) for n in m["report"].get("notes") or []}
        try:
            sent = self.client.send_input(iid, {**fields, "by": self.by}, self.confirm_timeout)
            done = self._await(iid, sent, lambda x: x["revision"] > m["revision"])
            new = [n["text"] for n in done["report"].get("notes") or []
                   if (n["t"], n["by"], n["text"]) not in before]
            rejected = next((t for t in new if t.startswith("rejected input")), None)
            text = (f"REJECTED by the gateway for {iid}: {rejected}" if rejected else
                    f"applied {', '.join(fields)} for {iid}: level {G.LEVEL_NAMES.get(done['level'], '-')}, "
                    f"warning {done['warning'] or 'none'} (revision {done['revision']})")
        except ConsoleError as e:
            text = f"NOT applied: {e}"
        self.call_from_thread(self.say, text)
        self.call_from_thread(self.redraw)

    def action_shelve(self) -> None:
        m = self.client.board.get(self.selected) if self.selected else None
        if m is None:
            self.say("nothing selected")
            return
        if self.client.board.shelves is None:
            self.say("shelving needs the district command service (gasguard command serve), which holds, checks and "
                     "audits shelves: none has published them here (a substation alone, or the city view, has none)")
            return
        now = self.clock()
        row = A.board_row(m, now, self.client.board.shelf(m["incident_id"]))
        iid = m["incident_id"]

        def confirmed(body: dict):
            def answered(yes: bool | None) -> None:
                if yes:
                    self.say(f"{'unshelving' if body.get('unshelve') else 'shelving'} {iid} … waiting for the "
                             "command service")
                    self.send_shelve(iid, body)
                else:
                    self.say("not unshelved" if body.get("unshelve") else "not shelved")
            return answered
        if row["state"] == A.SHELVED:
            body = {"by": self.by, "unshelve": True}
            self.push_screen(ConfirmShelve(m, self.by, now, shelf=row["shelf"]), confirmed(body))
            return

        def entered(fields: dict | None) -> None:
            if not fields:
                self.say("not shelved")
                return
            body = {"by": self.by, **fields}
            self.push_screen(ConfirmShelve(m, self.by, self.clock(), body=body), confirmed(body))
        self.push_screen(ShelveScreen(m), entered)

    @work(thread=True, exclusive=True, group="act")
    def send_shelve(self, iid: str, body: dict) -> None:
        """The signed act; done only once the command service allowed it AND its published shelves show it."""
        undo, before = bool(body.get("unshelve")), self.client.board.shelf(iid)
        try:
            sent = self.client.shelve(iid, body, self.confirm_timeout)
            if undo:
                self.client.wait_shelves(sent, lambda sh: iid not in sh, self.confirm_timeout)
                text = f"unshelved {iid}: back on the board, confirmed by the command service"
            else:
                got = self.client.wait_shelves(sent, lambda sh: sh.get(iid) not in (None, before),
                                               self.confirm_timeout)[iid]
                text = (f"shelved {iid} as {got['by']} until {clock_time(got['until'])}: {got['reason']} "
                        "(confirmed by the command service)")
        except ConsoleError as e:
            text = f"NOT {'unshelved' if undo else 'shelved'}: {e}"
        self.call_from_thread(self.say, text)
        self.call_from_thread(self.redraw)
