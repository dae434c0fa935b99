"""Notifications (issue 15 item 4) on both stores: queued with the revision that needs them, delivered by
e-mail to a real local SMTP server (aiosmtpd) and by webhook to a real local HTTP server, retried with a
backoff when the receiver fails, and recorded attempt by attempt. Virtual time throughout."""

import http.server
import json
import threading

import pytest
from aiosmtpd.controller import Controller

from gasguard.command import notify
from gasguard.command.store import open_store
from gasguard.testing.mosquitto import free_port


class Inbox:
    def __init__(self):
        self.mails = []

    async def handle_DATA(self, server, session, envelope):
        self.mails.append((envelope.rcpt_tos, envelope.content.decode("utf-8", "replace")))
        return "250 OK"


class Hook(http.server.BaseHTTPRequestHandler):
    fail_first = 0
    got: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Hook.fail_first > 0:
            Hook.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        Hook.got.append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def smtp():
    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=free_port())
    ctl.start()
    yield ctl, inbox
    ctl.stop()


@pytest.fixture
def hook():
    Hook.got, Hook.fail_first = [], 0
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook"
    srv.shutdown()
    srv.server_close()


PAYLOAD = {"incident_id": "lixia-supply-0000a001-100", "revision": 2, "district": "lixia", "level": 3,
           "warning": "yellow", "projected": True, "title": "supply stopped: 燕山调压站", "text_zh": "燕山调压站停止供气"}


def test_email_and_webhook_delivered_retried_and_recorded(store_url, smtp, hook):
    ctl, inbox = smtp
    cfg = notify.load_config({"max_attempts": 3, "retry_s": [10, 60],
                              "email": {"host": "127.0.0.1", "port": ctl.port, "sender": "gasguard@lixia.example"},
                              "route": [{"levels": [1, 2, 3], "reasons": ["phone"], "email": ["duty@lixia.example"],
                                         "webhook": [hook]}]})
    pick = notify.routes(cfg)
    assert pick(4, "phone") == [] and pick(3, "new") == []
    store = open_store(store_url)
    store.migrate()
    fence = store.acquire_lease("a", 3600)
    with store.write(fence) as tx:
        for ch, who in pick(3, "phone"):
            tx.notification(PAYLOAD["incident_id"], 2, "phone", ch, who, 1000.0, PAYLOAD)
    Hook.fail_first = 1                                   # the webhook's receiver is down for one attempt
    d = notify.Dispatcher(cfg, store)
    assert d.run_due(1000.0, fence) == 2
    assert len(inbox.mails) == 1 and inbox.mails[0][0] == ["duty@lixia.example"]
    assert "phone report overdue" in inbox.mails[0][1] and "lixia-supply-0000a001-100" in inbox.mails[0][1]
    assert Hook.got == [] and d.failures == 1
    assert d.run_due(1009.0, fence) == 0                  # backoff: not before 10 s
    assert d.run_due(1010.0, fence) == 1
    assert Hook.got[0]["incident"]["incident_id"] == PAYLOAD["incident_id"] and Hook.got[0]["reason"] == "phone"
    rows = {r["channel"]: r for r in store.notifications()}
    assert (rows["email"]["status"], rows["email"]["attempts"]) == ("sent", 1)
    assert (rows["webhook"]["status"], rows["webhook"]["attempts"]) == ("sent", 2)
    attempts = store.deliveries(rows["webhook"]["seq"])
    assert [(a["attempt"], a["ok"]) for a in attempts] == [(1, False), (2, True)]
    assert "HTTP 503" in attempts[0]["error"] and attempts[0]["t"] == 1000.0 and attempts[1]["t"] == 1010.0
    store.close()


def test_a_receiver_that_stays_down_fails_for_good_after_max_attempts(store_url):
    cfg = notify.load_config({"max_attempts": 2, "retry_s": [1],
                              "route": [{"webhook": [f"http://127.0.0.1:{free_port()}/nobody"]}]})
    store = open_store(store_url)
    store.migrate()
    fence = store.acquire_lease("a", 3600)
    with store.write(fence) as tx:
        for ch, who in notify.routes(cfg)(None, "new"):
            tx.notification("x", 1, "new", ch, who, 0.0, PAYLOAD)
    d = notify.Dispatcher(cfg, store)
    d.run_due(0.0, fence)
    d.run_due(1.0, fence)
    assert d.run_due(100.0, fence) == 0
    (row,) = store.notifications()
    assert (row["status"], row["attempts"]) == ("failed", 2) and d.gave_up == 1
    assert "FAILED after 2 attempts" in store.journal()[-1]["text"]
    store.close()


def test_routes_are_checked_before_anything_runs():
    with pytest.raises(notify.NotifyConfigError, match="levels 1"):
        notify.load_config({"route": [{"levels": [5], "email": ["a@b"]}]})
    with pytest.raises(notify.NotifyConfigError, match="unknown channel 'sms'"):
        notify.load_config({"route": [{"sms": ["+86..."]}]})
    with pytest.raises(notify.NotifyConfigError, match="at least one channel"):
        notify.load_config({"route": [{"levels": [1]}]})
