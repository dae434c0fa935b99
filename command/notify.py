"""Telling people: notification routes from configuration, pluggable notifiers, retries, a delivery record.

Plan 4.1: the command reports by phone within 20 minutes and in writing within 45 minutes, and a change of
level is a new report; escalation goes on until someone acknowledges. The grader queues one notification per
(revision, channel, recipient) in the same transaction as the revision that needs it (`notifications` table,
status `pending`), so a crash cannot lose one. `Dispatcher.run_due` (the leader's loop) sends what is due
through the channel's notifier and records every attempt: `sent`, `pending` again after a backoff, or
`failed` for good after `max_attempts` (counted in the metrics and the journal).

Configuration (`[notify]` in the command's TOML):

    [notify]
    max_attempts = 5
    retry_s = [5, 30, 120, 600]          # backoff between attempts (the last repeats)
    [notify.email]                       # SMTP
    host = "smtp.example.org"
    port = 25
    sender = "gasguard@lixia.example"
    starttls = false
    [notify.webhook]
    timeout_s = 5
    [[notify.route]]                     # who hears about which levels, and why
    levels = [1, 2, 3, 4]                # plan 1.6.2 levels (I = 1); "any" for every level incl. ungraded
    reasons = ["new", "level", "phone", "written"]
    email = ["duty@lixia.example"]
    webhook = ["https://sms-gateway.example/hook"]   # SMS and voice-call vendors plug in as webhooks

A new channel is a class with `channel` and `send(recipient, notification) -> None` (raise to fail), added
to `NOTIFIERS`.
"""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.error
import urllib.request
from email.message import EmailMessage

log = logging.getLogger("gasguard.command.notify")

REASONS = ("new", "level", "phone", "written")
REASON_TEXT = {"new": "new incident", "level": "level changed (a new report, plan 4.1)",
               "phone": "phone report overdue (20 min, plan 4.1.2)",
               "written": "written report overdue (45 min, plan 4.1.2)"}
DEFAULTS = {"max_attempts": 5, "retry_s": [5.0, 30.0, 120.0, 600.0], "email": {}, "webhook": {}, "route": []}


class NotifyConfigError(ValueError):
    """A [notify] value that cannot be used; the message says how to fix it."""


class DeliveryError(Exception):
    """One attempt failed; the message is recorded with the attempt."""


def load_config(table: dict | None) -> dict:
    t = dict(table or {})
    unknown = set(t) - set(DEFAULTS)
    if unknown:
        raise NotifyConfigError(f"unknown [notify] keys {sorted(unknown)}: known are {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **t}
    if not isinstance(cfg["max_attempts"], int) or cfg["max_attempts"] < 1:
        raise NotifyConfigError("[notify] max_attempts: a whole number of attempts >= 1, e.g. 5")
    if not cfg["retry_s"] or not all(isinstance(x, (int, float)) and x >= 0 for x in cfg["retry_s"]):
        raise NotifyConfigError("[notify] retry_s: a list of seconds between attempts, e.g. [5, 30, 120, 600]")
    for i, r in enumerate(cfg["route"]):
        where = f"[[notify.route]] #{i + 1}"
        levels = r.get("levels", "any")
        if levels != "any" and not (isinstance(levels, list) and all(x in (1, 2, 3, 4) for x in levels)):
            raise NotifyConfigError(f"{where} levels = {levels!r}: give levels 1 (I) .. 4 (IV), e.g. [1, 2, 3], "
                                    "or \"any\"")
        reasons = r.get("reasons", list(REASONS))
        if not isinstance(reasons, list) or set(reasons) - set(REASONS):
            raise NotifyConfigError(f"{where} reasons = {reasons!r}: choose from {list(REASONS)}")
        channels = [k for k in r if k not in ("levels", "reasons")]
        for ch in channels:
            if ch not in NOTIFIERS:
                raise NotifyConfigError(f"{where}: unknown channel {ch!r}; known are {sorted(NOTIFIERS)}")
            if not isinstance(r[ch], list) or not all(isinstance(x, str) and x for x in r[ch]):
                raise NotifyConfigError(f"{where} {ch}: a list of recipients, e.g. [\"duty@lixia.example\"]")
        if not channels:
            raise NotifyConfigError(f"{where}: name at least one channel ({', '.join(sorted(NOTIFIERS))})")
    return cfg


def routes(cfg: dict):
    """`routes(level, reason) -> [(channel, recipient)]` from [[notify.route]], each pair once."""
    def pick(level, reason):
        out: list = []
        for r in cfg["route"]:
            levels = r.get("levels", "any")
            if levels != "any" and level not in levels:
                continue
            if reason not in r.get("reasons", REASONS):
                continue
            for ch in NOTIFIERS:
                for who in r.get(ch, ()):
                    if (ch, who) not in out:
                        out.append((ch, who))
        return out
    return pick


def text(n: dict) -> tuple[str, str]:
    """Subject and body of a notification (the Chinese draft report follows the English head line)."""
    p = n["payload"]
    level = {1: "I", 2: "II", 3: "III", 4: "IV"}.get(p.get("level"), "-")
    subject = (f"[GasGuard {p.get('district')}] {REASON_TEXT.get(n['reason'], n['reason'])}: {p.get('title')} "
               f"— level {level}{' (projected)' if p.get('projected') else ''}, warning {p.get('warning') or '-'}")
    body = (f"{subject}\nincident {p['incident_id']} revision {p['revision']}\n"
            f"acknowledge: gasguard command ack {p['incident_id']}\n\n{p.get('text_zh', '')}\n")
    return subject, body


class EmailNotifier:
    channel = "email"

    def __init__(self, cfg: dict):
        self.host = cfg.get("host", "127.0.0.1")
        self.port = int(cfg.get("port", 25))
        self.sender = cfg.get("sender", "gasguard@localhost")
        self.starttls = bool(cfg.get("starttls", False))
        self.user, self.password = cfg.get("username"), cfg.get("password")
        self.timeout = float(cfg.get("timeout_s", 10))

    def send(self, recipient: str, n: dict) -> None:
        subject, body = text(n)
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = self.sender, recipient, subject
        msg["X-GasGuard-Incident"] = n["payload"]["incident_id"]
        msg.set_content(body)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as s:
                if self.starttls:
                    s.starttls()
                if self.user:
                    s.login(self.user, self.password or "")
                s.send_message(msg)
        except (OSError, smtplib.SMTPException) as e:
            raise DeliveryError(f"SMTP {self.host}:{self.port}: {e}") from None


class WebhookNotifier:
    """POST the notification as JSON; any 2xx is delivered. SMS and voice-call vendors plug in here."""
    channel = "webhook"

    def __init__(self, cfg: dict):
        self.timeout = float(cfg.get("timeout_s", 5))
        self.headers = dict(cfg.get("headers", {}))

    def send(self, recipient: str, n: dict) -> None:
        subject, body = text(n)
        doc = {"schema": "gasguard.notification/1", "reason": n["reason"], "subject": subject, "text": body,
               "incident": n["payload"]}
        req = urllib.request.Request(recipient, data=json.dumps(doc, ensure_ascii=False).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **self.headers})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                if not 200 <= r.status < 300:
                    raise DeliveryError(f"webhook {recipient}: HTTP {r.status}")
        except urllib.error.HTTPError as e:
            raise DeliveryError(f"webhook {recipient}: HTTP {e.code}") from None
        except (OSError, ValueError) as e:
            raise DeliveryError(f"webhook {recipient}: {e}") from None


NOTIFIERS = {"email": EmailNotifier, "webhook": WebhookNotifier}


class Dispatcher:
    """Sends due notifications through their notifiers and records each attempt in the store."""

    def __init__(self, cfg: dict, store, notifiers: dict | None = None):
        self.cfg = cfg
        self.store = store
        self.notifiers = notifiers or {name: cls(cfg.get(name, {})) for name, cls in NOTIFIERS.items()}
        self.sent = 0
        self.failures = 0           # attempts that failed (each retry counts)
        self.gave_up = 0            # notifications failed for good

    def run_due(self, now: float, fence, limit: int = 50) -> int:
        """One pass: every pending notification whose time has come. Returns attempts made."""
        due = self.store.due_notifications(now, limit)
        for n in due:
            notifier = self.notifiers.get(n["channel"])
            err = None
            try:
                if notifier is None:
                    raise DeliveryError(f"no notifier for channel {n['channel']!r}")
                notifier.send(n["recipient"], n)
            except DeliveryError as e:
                err = str(e)[:500]
            except Exception as e:      # a notifier's own bug must not stop the others: recorded, counted
                log.exception("notifier %s failed", n["channel"])
                err = f"{type(e).__name__}: {e}"[:500]
            attempt = n["attempts"] + 1
            retry = self.cfg["retry_s"]
            next_at = None if err is None or attempt >= self.cfg["max_attempts"] else \
                now + retry[min(attempt - 1, len(retry) - 1)]
            with self.store.write(fence) as tx:
                tx.delivery(n["seq"], ok=err is None, t=now, error=err, next_at=next_at)
                if err is None:
                    tx.journal(now, "notification", f"{n['reason']}: {n['channel']} to {n['recipient']} delivered "
                               f"(attempt {attempt})", incident_id=n["incident_id"], revision=n["revision"])
                elif next_at is None:
                    tx.journal(now, "notification", f"{n['reason']}: {n['channel']} to {n['recipient']} FAILED after "
                               f"{attempt} attempts: {err}", incident_id=n["incident_id"], revision=n["revision"])
            if err is None:
                self.sent += 1
            else:
                self.failures += 1
                self.gave_up += next_at is None
                log.warning("notification %s to %s failed (attempt %d): %s", n["channel"], n["recipient"], attempt, err)
        return len(due)
