"""`gasguard command watch`: the field console, a textual app over the MQTT `CommandClient`.

For a laptop in a van as much as for a desk: usable at 100 columns (site names are ellipsised in the
middle, so "…第一调压站" and "…第二调压站" stay apart), a help screen on `?`, a confirmation before an
acknowledgement, deadlines that stop counting once acknowledged, and what the gateway refused shown as
refused (never "sent"). The alarm logic is the web board's (`command/web/alarms.py`): one meaning for both.
"""

from __future__ import annotations

import time

from rich.cells import cell_len
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Input, Static

from gasguard.command.console import CommandClient, ConsoleError, parse_input
from gasguard.command.web import alarms as A
from gasguard.grading import engine as G

WARNING_STYLE = {"red": "bold white on red", "orange": "bold black on dark_orange", "yellow": "black on yellow",
                 "blue": "bold white on blue", None: "dim"}
STATE_SHORT = {A.UNACKED: ("UNACK", "bold white on dark_red"), A.ACKED: ("ack", ""),
               A.RTN_UNACKED: ("RTN", "bold black on yellow"), A.NORMAL: ("ok", "dim"), A.SHELVED: ("shelf", "dim")}
CATEGORY_SHORT = {"safety_accident": "安全", "supply_assurance": "供应"}
HELP = """\
[b]GasGuard field console — keys[/b]

  [b]j[/b] / [b]↓[/b]   next incident          [b]k[/b] / [b]↑[/b]   previous incident
  [b]a[/b]       acknowledge the selected incident (asks first; waits for the gateway to confirm)
  [b]i[/b]       operator input: facts from the site, e.g.  deaths=0 evacuated=300 on_site_lead='张三 138…'
  [b]r[/b]       show / hide the draft report (plan 4.1.3, Chinese)
  [b]?[/b]       this help                [b]q[/b]       quit

[b]state[/b]   UNACK active, not acknowledged · ack acknowledged · RTN cleared before anyone
        acknowledged it (still needs a look) · ok cleared and acknowledged
[b]20′ 45′[/b] time left to the phone and written reports (plan 4.1.2); OVER when late;
        ✓ once acknowledged (counting stops: the report is then yours)

Input fields: deaths, serious_injuries, direct_loss_cny, evacuated, forecast_excess_pct (numbers);
secondary_hazards, hazard_sources_nearby, warnings_issued, support_needed, on_site_lead, note (text);
evacuation_advised, resolved (yes/no).

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


class HelpScreen(ModalScreen):
    DEFAULT_CSS = "HelpScreen { align: center middle; } #help { width: 96; height: auto; border: round $accent; " \
                  "padding: 1 2; background: $panel; }"

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

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


class InputScreen(ModalScreen[dict | None]):
    DEFAULT_CSS = "InputScreen { align: center middle; } #box { width: 96; height: auto; border: round $accent; " \
                  "padding: 1 2; background: $panel; } #error { color: $error; }"
    BINDINGS = [Binding("escape", "cancel", "cancel")]

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

    def action_cancel(self) -> None:
        self.dismiss(None)


class WatchApp(App):
    TITLE = "GasGuard district command"
    CSS = "#report { height: auto; max-height: 50%; border: round $accent; padding: 0 1; display: none; } " \
          "#report.shown { display: block; } #status { height: auto; padding: 0 1; }"
    BINDINGS = [Binding("j,down", "move(1)", "next", show=False), Binding("k,up", "move(-1)", "prev", show=False),
                Binding("a", "ack", "acknowledge"), Binding("i", "input", "input"),
                Binding("r", "report", "report"), Binding("question_mark", "help", "help"),
                Binding("q", "quit", "quit")]

    def __init__(self, client: CommandClient, *, by: str, refresh: float = 1.0, clock=time.time,
                 confirm_timeout: float = 10.0):
        super().__init__()
        self.client, self.by, self.refresh_s, self.clock = client, by, refresh, clock
        self.confirm_timeout = confirm_timeout
        self.selected: str | None = None
        self.status_text = ""
        self._shown_version = -1

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="board", cursor_type="row", zebra_stripes=True)
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
        cleared and acknowledged ones for `keep_normal_s`."""
        now = self.clock()
        with self.client.board._lock:
            msgs = list(self.client.board.incidents.values())
        rows = [A.board_row(m, now) for m in msgs]
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
        report = self.query_one("#report", Static)
        if report.has_class("shown") and self.selected:
            m = self.client.board.get(self.selected)
            report.update(Text(m["text_zh"]) if m else "")
        self.query_one("#status", Static).update(self.status_text)

    def say(self, text: str) -> None:
        self.status_text = text
        self.query_one("#status", Static).update(text)

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
        self.push_screen(HelpScreen())

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
        return None if res is None or res.get("outcome") == "allowed" else f"{res.get('reason')}: {res.get('detail')}"

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
