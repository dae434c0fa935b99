"""The district command's web console (issue 16): a Starlette app served by uvicorn.

Pages: login; the live incident board (server-sent events: every change is pushed at once, and the board is
re-sent every second so the 20'/45' deadlines count down from the server's clock, not the browser's); the
district map; an incident's page (plan 4.1.3 report in Chinese and English, timeline, acknowledge with a
confirmation, operator input with errors at the field, shelving, print stylesheet); a station's page
(24 h of inlet/outlet pressure with the alarm bounds, valve history).

Every act is signed on behalf of the logged-in operator and audited (`Acting`), refusals too. A POST without
the session's CSRF token is refused. The app holds no incident store: it reads `IncidentSource`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from gasguard.command.console import gateway_status, refused_line
from gasguard.command.shelving import MAX_S
from gasguard.grading import engine as G

from . import alarms as A
from . import chart, forms, mapsvg, report_en
from .acting import Acting
from .login import LockoutConfig, LoginGuard, PasswordBook, csrf_ok, csrf_token
from .source import IncidentSource, Refused, SourceError

HERE = Path(__file__).parent
FLOOD_INCIDENTS_MAX = 10_000     # incidents whose alarm devices the flood count remembers, before forgetting gone ones


@dataclass
class WebConfig:
    district: str = "lixia"
    session_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    https_only: bool = False          # True behind TLS: the session cookie is then never sent in clear
    session_idle_s: float = 8 * 3600.0   # a shift; the cookie and the server both enforce it
    lockout: LockoutConfig = field(default_factory=LockoutConfig)
    flood: A.FloodConfig = field(default_factory=A.FloodConfig)
    confirm_timeout_s: float = 10.0   # how long an act waits for the gateway/service to confirm it
    shelve_max_s: float = MAX_S      # a console alone (no command service) holds shelves itself, this long at most
    readings_window_s: float = 24 * 3600.0   # the station page's plot (the service keeps at least this)
    keep_normal_s: float = 600.0     # a cleared and acknowledged incident stays on the board this long
    grading: dict = field(default_factory=dict)   # [grading] table: timezone, pressure bounds by class


class Console:
    """The app's state: the source, who acts, the flood detector, and the SSE wake-ups."""

    def __init__(self, cfg: WebConfig, source: IncidentSource, acting: Acting, passwords: PasswordBook,
                 stations, clock=time.time):
        self.cfg, self.source, self.acting, self.passwords = cfg, source, acting, passwords
        self.stations = stations                     # () -> [registry public dicts of stations]
        self.grading = G.load_config(cfg.grading or None)
        self.clock = clock
        self.guard = LoginGuard(cfg.lockout)
        self.flood = A.FloodDetector(cfg.flood)
        self._lock = threading.Lock()
        self._waiters: set[asyncio.Event] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.version = 0                             # grows with every change seen (and every shelving)
        self._board_cache: tuple | None = None       # ((version, whole second), JSON): shared by every stream
        # the alarm devices already counted by the flood detector, per incident (bounded: _forget)
        self._alarm_devs: dict[str, set] = {m["incident_id"]: A.annunciations(None, m)[1] for m in source.snapshot()}
        self.unlisten = source.listen(self._on_change)

    # --- change feed (source thread -> event loop) -----------------------------------------------
    def _on_change(self, msg: dict | None) -> None:
        if msg is not None:
            with self._lock:
                iid = msg["incident_id"]
                n, self._alarm_devs[iid] = A.annunciations(self._alarm_devs.get(iid), msg)
                if n:
                    self.flood.add(self.clock(), n)
                if len(self._alarm_devs) > FLOOD_INCIDENTS_MAX:
                    self._forget()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._wake)

    def _forget(self) -> None:
        """Keep only the incidents the source still holds (called with the lock held)."""
        held = {m["incident_id"] for m in self.source.snapshot()}
        self._alarm_devs = {k: v for k, v in self._alarm_devs.items() if k in held}

    def _wake(self) -> None:
        self.version += 1
        for ev in list(self._waiters):
            ev.set()

    async def changed(self, timeout: float) -> bool:
        ev = asyncio.Event()
        self._waiters.add(ev)
        try:
            await asyncio.wait_for(ev.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._waiters.discard(ev)

    async def wait_for(self, iid: str, pred, timeout: float) -> dict | None:
        """The incident once `pred` holds for its latest revision, or None after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.source.get(iid)
            if m is not None and pred(m):
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await self.changed(min(left, 0.5))

    # --- views -----------------------------------------------------------------------------------
    def board(self) -> dict:
        now = self.clock()
        rows = []
        shelves = self.source.shelves()
        for m in self.source.snapshot():
            row = A.board_row(m, now, shelves.get(m["incident_id"]))
            if row["state"] == A.NORMAL and now - (m.get("resolved_at") or now) > self.cfg.keep_normal_s:
                continue
            row["category_zh"] = G.CATEGORY_NAMES_ZH.get(row["category"], row["category"])
            row["level_name"] = G.LEVEL_NAMES.get(row["level"])
            rows.append(row)
        rows.sort(key=A.sort_key)
        with self._lock:
            flood = self.flood.state(now)
        return {"now": now, "now_text": self.fmt_time(now), "rows": rows, "flood": flood,
                "district": self.cfg.district, "refused": self.refused_line(), "gateways": self.gateways()}

    def gateways(self) -> dict | None:
        """The gateway line (console.gateway_status: the field console's rule and wording, times in the
        district's timezone), None when the source knows no gateway."""
        return gateway_status(self.source.gateways(), self.fmt_time)

    def refused_line(self) -> str:
        """The board's status line when the broker refuses this console topics (the log has the whole text):
        an empty board must not pass for a quiet district."""
        return refused_line(getattr(self.source, "refused_topics", dict)())

    def board_json(self) -> str:
        """The board as JSON, made once per change and per second whoever asks (a wall of screens costs
        one render, not one per screen)."""
        key = (self.version, int(self.clock()))
        if self._board_cache is None or self._board_cache[0] != key:
            self._board_cache = (key, json.dumps(self.board(), ensure_ascii=False))
        return self._board_cache[1]

    def fmt_time(self, t: float | None, seconds: bool = True) -> str:
        if t is None:
            return "-"
        return G.local_time(self.grading, t).strftime("%H:%M:%S" if seconds else "%H:%M")

    def fmt_datetime(self, t: float | None) -> str:
        return "-" if t is None else G.local_time(self.grading, t).strftime("%Y-%m-%d %H:%M:%S")


def _address(request: Request) -> str:
    return request.client.host if request.client else "?"


# Served with every response: scripts and styles from this console only (no inline script, nothing from
# outside: the console runs without internet), never framed, no MIME sniffing, pages not cached (they hold
# incident facts and a CSRF token).
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "same-origin",
}


class SecurityHeaders:
    """Pure ASGI middleware (it must not buffer the event stream)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope["path"].startswith("/static/")

        async def send_with(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)
        await self.app(scope, receive, send_with)


def _client(request: Request) -> dict:
    """Who is behind a signed request: the session (by a digest, never the cookie) and the address."""
    import hashlib
    sid = hashlib.sha256(f"{request.session.get('op')}:{request.session.get('at')}".encode()).hexdigest()[:16]
    return {"client_id": f"web-{sid}", "address": _address(request)}


def create_app(cfg: WebConfig, source: IncidentSource, acting: Acting, passwords: PasswordBook,
               stations=lambda: [], *, clock=time.time) -> Starlette:
    con = Console(cfg, source, acting, passwords, stations, clock)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(fmt_time=con.fmt_time, fmt_datetime=con.fmt_datetime,
                                 LEVEL_NAMES=G.LEVEL_NAMES, CATEGORY_NAMES_ZH=G.CATEGORY_NAMES_ZH,
                                 WARNING_NAMES_ZH=G.WARNING_NAMES_ZH, FORM_LABELS=forms.LABELS,
                                 FORM_NUMBERS=forms.NUMBERS, FORM_TEXTS=forms.TEXTS)

    def page(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
        op = request.session.get("op")
        ctx.update(request=request, csrf=csrf_token(request.session), operator=op,
                   operator_info=acting.operator(op) if op else None, district=cfg.district,
                   flash=request.session.pop("flash", None))
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def flash(request: Request, text: str, kind: str = "ok") -> None:
        request.session["flash"] = {"text": text, "kind": kind}

    def current(request: Request) -> str | None:
        """The logged-in operator, if the session is fresh and the operator still active in the roster."""
        op, seen = request.session.get("op"), request.session.get("seen", 0)
        now = clock()
        if op is None:
            return None
        info = acting.operator(op)
        if now - seen > cfg.session_idle_s or info is None or not info.get("active", True):
            acting.audit(category="access", type="session_end", operator=op, address=_address(request),
                         outcome="info", reason="idle" if info and info.get("active", True) else "revoked")
            request.session.clear()
            return None
        request.session["seen"] = now
        return op

    def need_login(handler):
        async def wrapped(request: Request):
            op = current(request)
            if op is None:
                if request.url.path.startswith("/api/") or request.url.path == "/events":
                    return JSONResponse({"error": "log in first"}, status_code=401)
                return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
            request.state.op = op
            return await handler(request)
        return wrapped

    async def checked_form(request: Request):
        """The POSTed form, or None when its CSRF token is not this session's (refused and audited)."""
        form = await request.form()
        if not csrf_ok(request.session, form.get("csrf")):
            acting.audit(category="access", type="csrf", operator=request.session.get("op"),
                         address=_address(request), outcome="refused", reason="missing or wrong CSRF token",
                         path=request.url.path)
            return None
        return form

    def csrf_refused() -> Response:
        return HTMLResponse("<h1>Refused</h1><p>This form is stale or did not come from this console "
                            "(CSRF token missing or wrong). Go back, reload the page and try again.</p>",
                            status_code=403)

    # --- login -----------------------------------------------------------------------------------
    async def login_page(request: Request):
        return page(request, "login.html", next=request.query_params.get("next", "/"))

    async def login(request: Request):
        form = await checked_form(request)
        if form is None:
            return csrf_refused()
        op, pw = (form.get("operator") or "").strip(), form.get("password") or ""
        nxt = form.get("next") or "/"
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"                                   # never redirect off this console
        addr = _address(request)
        keys = [f"op:{op}", f"ip:{addr}"]
        now = clock()
        left = con.guard.locked(keys, now)
        if left > 0:
            acting.audit(category="access", type="login", operator=op or None, address=addr,
                         outcome="refused", reason=f"locked out for {left:.0f} s more")
            return page(request, "login.html", 429, next=nxt, entered=op,
                        error=f"Too many failed logins: locked for {int(left // 60) + 1} more minutes. "
                              "Ask an admin if this was not you.")
        info = acting.operator(op) if op else None
        ok = await asyncio.to_thread(passwords.verify, op, pw)   # argon2 is slow by design: off the loop
        if ok and info is not None and info.get("active", True):
            con.guard.success(keys)
            request.session.clear()                     # a new session on login (no fixation)
            request.session.update(op=op, at=now, seen=now)
            csrf_token(request.session)
            acting.audit(category="access", type="login", operator=op, address=addr, outcome="allowed")
            return RedirectResponse(nxt, status_code=303)
        locked = con.guard.failure(keys, now)
        why = "revoked" if ok and info is not None else "unknown operator or wrong password"
        acting.audit(category="access", type="login", operator=op or None, address=addr,
                     outcome="refused", reason=why + ("; now locked out" if locked else ""))
        msg = "Operator id or password is wrong." if why != "revoked" else \
            "This operator has been revoked by the district authority."
        if locked:
            msg += f" Too many failures: locked for {cfg.lockout.lockout_s / 60:g} minutes."
        return page(request, "login.html", 401, next=nxt, entered=op, error=msg)

    async def logout(request: Request):
        form = await checked_form(request)
        if form is None:
            return csrf_refused()
        op = request.session.get("op")
        if op:
            acting.audit(category="access", type="logout", operator=op, address=_address(request),
                         outcome="allowed")
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # --- board -----------------------------------------------------------------------------------
    async def board_page(request: Request):
        b = con.board()
        return page(request, "board.html", refused=b["refused"], board=json.dumps(b, ensure_ascii=False).replace("</", "<\\/"))

    async def board_json(request: Request):
        return JSONResponse(con.board())

    async def events(request: Request):
        async def stream():
            while True:
                yield {"event": "board", "data": con.board_json()}
                await con.changed(1.0)                  # a change at once; otherwise the 1 s countdown tick
                if await request.is_disconnected():
                    return
        return EventSourceResponse(stream(), ping=15, send_timeout=10)

    # --- incident --------------------------------------------------------------------------------
    def not_found(request: Request) -> Response:
        return page(request, "message.html", 404, title="No such incident",
                    text=f"The command holds no incident {request.path_params['iid']}: it may have been "
                         "resolved and dropped. Go back to the board.")

    def incident_view(request: Request, m: dict, status: int = 200, **extra) -> HTMLResponse:
        now = clock()
        shelf = source.shelves().get(m["incident_id"])
        lang = request.query_params.get("lang", "zh")
        devs = set(A.affected_devices(m))
        svg = mapsvg.render([s for s in stations() if s["dev"] in devs] or stations(), source.snapshot(),
                            highlight=m["incident_id"]) if devs else ""
        return page(request, "incident.html", status, m=m, row=A.board_row(m, now, shelf), lang=lang,
                    en_rows=report_en.rows(m, con.fmt_time), svg=svg,
                    timeline=m["report"]["what_happened"]["timeline"], notes=m["report"].get("notes", []),
                    journal=source.journal(m["incident_id"]) if hasattr(source, "journal") else None,
                    errors=extra.pop("errors", {}), values=extra.pop("values", {}), **extra)

    async def incident_page(request: Request):
        m = source.get(request.path_params["iid"])
        return incident_view(request, m) if m else not_found(request)

    async def ack_confirm(request: Request):
        m = source.get(request.path_params["iid"])
        if m is None:
            return not_found(request)
        return page(request, "ack_confirm.html", m=m, row=A.board_row(m, clock(), None),
                    back=request.query_params.get("back", f"/incidents/{m['incident_id']}"))

    def refuse(request: Request, op: str, action: str, iid: str) -> Response:
        acting.audit(category="incident", type=action, operator=op, address=_address(request),
                     outcome="refused", reason=f"role {acting.operator(op).get('role')} may not {action}",
                     incident=iid)
        return page(request, "message.html", 403, title="Not allowed",
                    text=f"Your role may not {action}. Ask an admin of the district authority.")

    async def preamble(request: Request, action: str | None):
        """(form, operator, incident id, incident) for an act on an incident, or the Response that refuses it:
        a stale or forged form (CSRF), an incident the command no longer holds, a role that may not."""
        form = await checked_form(request)
        if form is None:
            return csrf_refused()
        op, iid = request.state.op, request.path_params["iid"]
        m = source.get(iid)
        if m is None:
            return not_found(request)
        if action is not None and not acting.may(op, action):
            return refuse(request, op, action, iid)
        return form, op, iid, m

    async def acknowledge(request: Request):
        got = await preamble(request, "ack")
        if isinstance(got, Response):
            return got
        form, op, iid, m = got
        if form.get("confirm") != "yes":
            return RedirectResponse(f"/incidents/{iid}/ack", status_code=303)
        try:
            rev = int(form.get("revision", ""))
        except ValueError:
            rev = m["revision"]
        back = form.get("back") or f"/incidents/{iid}"
        if not back.startswith("/") or back.startswith("//"):
            back = f"/incidents/{iid}"
        topic = source.act_topic("ack", iid)
        request_ = acting.sign(op, topic, {"by": op, "revision": rev, "t": clock()}, **_client(request))
        try:
            await asyncio.to_thread(source.acknowledge, iid, request_, cfg.confirm_timeout_s)
        except Refused as e:
            acting.audit(category="incident", type="ack", operator=op, address=_address(request),
                         outcome="refused", reason=str(e), incident=iid, revision=rev)
            flash(request, f"NOT acknowledged: the command refused it ({e}).", "error")
            return RedirectResponse(back, status_code=303)
        except SourceError as e:
            acting.audit(category="incident", type="ack", operator=op, address=_address(request),
                         outcome="failed", reason=str(e), incident=iid, revision=rev)
            flash(request, f"NOT acknowledged: {e}", "error")
            return RedirectResponse(back, status_code=303)
        done = await con.wait_for(iid, lambda x: bool(x.get("acked")) and x["acked"].get("by") == op
                                  and x["revision"] > rev, cfg.confirm_timeout_s)
        if done is None:
            acting.audit(category="incident", type="ack", operator=op, address=_address(request),
                         outcome="failed", reason=f"no confirmation within {cfg.confirm_timeout_s:g} s",
                         incident=iid, revision=rev)
            flash(request, f"Acknowledgement of {iid} sent but NOT confirmed by the command within "
                           f"{cfg.confirm_timeout_s:g} s: it is still unacknowledged. Check the gateway link "
                           "and try again.", "error")
        else:
            acting.audit(category="incident", type="ack", operator=op, address=_address(request),
                         outcome="done", incident=iid, revision=rev, confirmed_revision=done["revision"])
            flash(request, f"Acknowledged {iid} (revision {rev}); confirmed at revision {done['revision']}.")
        return RedirectResponse(back, status_code=303)

    async def operator_input(request: Request):
        got = await preamble(request, None)
        if isinstance(got, Response):
            return got
        form, op, iid, m = got
        fields, errors = forms.parse(form)
        action = "resolve" if fields.get("resolved") else "input"
        if not acting.may(op, action):
            return refuse(request, op, action, iid)
        if errors:
            return incident_view(request, m, 422, errors=errors, values=dict(form))
        topic = source.act_topic("input", iid)
        request_ = acting.sign(op, topic, {**fields, "by": op}, **_client(request))
        try:
            await asyncio.to_thread(source.send_input, iid, request_, cfg.confirm_timeout_s)
        except Refused as e:
            acting.audit(category="incident", type=action, operator=op, address=_address(request),
                         outcome="refused", reason=str(e), incident=iid, fields=sorted(fields))
            return incident_view(request, m, 409, errors={"_form": f"REFUSED by the command: {e}"},
                                 values=dict(form))
        except SourceError as e:
            acting.audit(category="incident", type=action, operator=op, address=_address(request),
                         outcome="failed", reason=str(e), incident=iid, fields=sorted(fields))
            return incident_view(request, m, 502, errors={"_form": f"not sent: {e}"}, values=dict(form))
        rev = m["revision"]
        done = await con.wait_for(iid, lambda x: x["revision"] > rev, cfg.confirm_timeout_s)
        # the engine answers refused input with a note "rejected input: ..." and applies nothing
        before = {(n["t"], n["by"], n["text"]) for n in m["report"].get("notes") or []}
        new = [n for n in (done or {}).get("report", {}).get("notes") or []
               if (n["t"], n["by"], n["text"]) not in before and n["by"] == op]
        rejected = next((n["text"] for n in new if n["text"].startswith("rejected input")), None)
        if done is None:
            outcome, text, kind = "failed", (f"Input sent but NOT confirmed within {cfg.confirm_timeout_s:g} s: "
                                                 "nothing is applied until the command confirms it."), "error"
        elif rejected:
            outcome, text, kind = "refused", f"REJECTED by the command: {rejected}", "error"
        else:
            outcome, text, kind = "done", (f"Applied: {', '.join(sorted(fields))} (revision {done['revision']}, "
                                              f"level {G.LEVEL_NAMES.get(done['level'], '-')}, "
                                              f"warning {done['warning'] or 'none'})."), "ok"
        acting.audit(category="incident", type=action, operator=op, address=_address(request), outcome=outcome,
                     reason=rejected or "", incident=iid, fields=sorted(fields))
        if kind == "error":
            return incident_view(request, done or m, 409 if rejected else 504, errors={"_form": text},
                                 values=dict(form))
        flash(request, text)
        return RedirectResponse(f"/incidents/{iid}", status_code=303)

    async def shelve(request: Request):
        """Shelve (reason, minutes) or unshelve: a signed act the command service checks, holds and audits;
        its refusal (no reason, too long, resolved...) is shown at the field."""
        got = await preamble(request, "shelve")
        if isinstance(got, Response):
            return got
        form, op, iid, m = got
        undo = bool(form.get("unshelve"))
        if undo:
            body = {"by": op, "unshelve": True}
        else:
            try:
                minutes = float(form.get("minutes") or "")
            except ValueError:
                minutes = -1.0                       # not a number: the rules say what to write
            body = {"by": op, "reason": form.get("reason", ""), "duration_s": minutes * 60}
        action = "unshelve" if undo else "shelve"
        signed = acting.sign(op, source.act_topic("shelve", iid), body, **_client(request))
        try:
            await asyncio.to_thread(source.shelve, iid, signed, body, cfg.confirm_timeout_s)
        except SourceError as e:                     # Refused included: the command said no, and why
            refused = isinstance(e, Refused)
            acting.audit(category="incident", type=action, operator=op, address=_address(request),
                         outcome="refused" if refused else "failed", reason=str(e), incident=iid)
            why = str(e) if refused else f"not sent: {e}"       # the command's reason, said at the field
            if undo:
                flash(request, f"NOT unshelved: {why}", "error")
                return RedirectResponse(f"/incidents/{iid}", status_code=303)
            return incident_view(request, m, 422 if refused else 502, errors={"shelve": why}, values=dict(form))
        con._wake()
        if undo:
            acting.audit(category="incident", type="unshelve", operator=op, address=_address(request),
                         outcome="allowed", incident=iid)
            flash(request, f"{iid} is back on the board.")
            return RedirectResponse(f"/incidents/{iid}", status_code=303)
        shelf = source.shelves().get(iid) or {}
        acting.audit(category="incident", type="shelve", operator=op, address=_address(request),
                     outcome="allowed", incident=iid, reason=shelf.get("reason", body["reason"]),
                     until=shelf.get("until"))
        flash(request, f"{iid} shelved until {con.fmt_time(shelf.get('until'))}: {shelf.get('reason', '')}")
        return RedirectResponse("/", status_code=303)

    # --- map and station -------------------------------------------------------------------------
    async def map_page(request: Request):
        hl = request.query_params.get("incident")
        return page(request, "map.html", svg=mapsvg.render(stations(), source.snapshot(), highlight=hl),
                    highlight=hl, board=con.board())

    async def map_svg(request: Request):
        svg = mapsvg.render(stations(), source.snapshot(), highlight=request.query_params.get("incident"))
        return Response(svg, media_type="image/svg+xml")

    async def station_page(request: Request):
        from gasguard.firmware import bounds as B
        dev = request.path_params["dev"]
        st = next((s for s in stations() if s["dev"] == dev), None)
        if st is None:
            return page(request, "message.html", 404, title="No such station",
                        text=f"No regulator station {dev} in the registry.")
        now = clock()
        t0 = now - cfg.readings_window_s
        rows = source.readings(dev, t0)
        params = {**B.defaults(B.STATION), **(st.get("config") or {})}
        opso, upso = B.trip_pressures(B.STATION, params)
        outlet = chart.render(rows, "pressure_pa", t0, now, unit_div=1000, unit="kPa",
                              title=f"outlet pressure, last {cfg.readings_window_s / 3600:g} h",
                              fmt_time=lambda t: con.fmt_time(t, False),
                              bounds=[{"label": "OPSO trip", "value": opso, "kind": "high"},
                                      {"label": "set point", "value": params["setpoint"], "kind": "set"},
                                      {"label": "UPSO trip", "value": upso, "kind": "low"}])
        pc = st.get("pressure_class")
        inlet_bounds = [{"label": f"{w} warning (plan 3.3)", "value": con.grading[f"pressure_{w}_mpa"][pc] * 1e6,
                         "kind": w} for w in ("orange", "red") if pc in con.grading[f"pressure_{w}_mpa"]]
        inlet = chart.render(rows, "inlet_pa", t0, now, unit_div=1e6, unit="MPa",
                             title=f"inlet pressure ({pc}), last {cfg.readings_window_s / 3600:g} h",
                             fmt_time=lambda t: con.fmt_time(t, False), bounds=inlet_bounds)
        touching = [m for m in source.snapshot() if dev in A.affected_devices(m)]
        feeds = [s for s in stations() if s.get("upstream") == st["dev_id"]]
        upstream = next((s for s in stations() if s["dev_id"] == st.get("upstream")), None)
        return page(request, "station.html", st=st, outlet=outlet, inlet=inlet, n=len(rows),
                    valves=source.valve_history(dev, t0), incidents=touching, feeds=feeds, upstream=upstream)

    async def healthz(request: Request):
        return JSONResponse({"ok": True, "incidents": len(source.snapshot())})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        con.loop = asyncio.get_running_loop()
        yield
        con.unlisten()

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", need_login(board_page)),
        Route("/api/board", need_login(board_json)),
        Route("/events", need_login(events)),
        Route("/incidents/{iid}", need_login(incident_page)),
        Route("/incidents/{iid}/ack", need_login(ack_confirm), methods=["GET"]),
        Route("/incidents/{iid}/ack", need_login(acknowledge), methods=["POST"]),
        Route("/incidents/{iid}/input", need_login(operator_input), methods=["POST"]),
        Route("/incidents/{iid}/shelve", need_login(shelve), methods=["POST"]),
        Route("/map", need_login(map_page)),
        Route("/map.svg", need_login(map_svg)),
        Route("/stations/{dev}", need_login(station_page)),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders), Middleware(SessionMiddleware, secret_key=cfg.session_secret.hex(), session_cookie="gg_session",
                             max_age=int(cfg.session_idle_s), same_site="strict", https_only=cfg.https_only)]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.console = con
    return app
