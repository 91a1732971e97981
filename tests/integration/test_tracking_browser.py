"""A real browser end to end (issue: tracking, must-show 1): headless Chromium opens a sent email's
body, clicks a link, and a CRM page subscribed to the notifications websocket hears both within 2 s.

PostgreSQL, RabbitMQ (the tracking batches, and the fanout exchange the web process listens on), an
in-process worker and the app under uvicorn; the SMTP side is the fake transport (sending has its
own integration tests).
"""

from __future__ import annotations

import email
import threading
import time
from datetime import timedelta
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Email, TrackingEvent, utcnow
from models.db import get_engine
from pipeline.flows.connections import use_smtp_transport
from tests.conftest import reset_process_state
from tests.harness.asgi_server import AsgiServer
from tests.harness.chromium import Chromium
from tests.harness.fake_smtp import FakeSmtpTransport
from tests.harness.flow import CRM, make_account, make_org, seed_crm
from tests.harness.ports import free_port
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration


class _Site:
    """The outside world: the link's original target and two pages (the email body, the CRM)."""

    def __init__(self) -> None:
        self.pages: dict[str, bytes] = {"/demo": b"<!doctype html><title>Demo</title><h1>Demo booked</h1>"}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path.split("?")[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(body or b"not found")

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port("127.0.0.1")
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()


def _serve_app(port: int) -> AsgiServer:
    from web.app import create_app

    return AsgiServer(create_app(), "mailpipe under uvicorn", port=port, lifespan="on").start()


def test_chromium_open_click_and_websocket_pushes(live: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    app_port = free_port("127.0.0.1")
    monkeypatch.setenv("MAILPIPE_PUBLIC_URL", f"http://127.0.0.1:{app_port}")
    reset_process_state()
    smtp = FakeSmtpTransport()
    use_smtp_transport(smtp)
    site = _Site()
    org_id, key = make_org()
    seed_crm(org_id)
    account_id = make_account(org_id)
    h = {"Authorization": f"Bearer {key}"}
    server = _serve_app(app_port)
    # A person's desktop Chrome (headless Chromium's own UA says HeadlessChrome, which the crawler list flags)
    browser = Chromium(user_agent="Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36")
    try:
        with TestClient(__import__("web.app", fromlist=["create_app"]).create_app()) as api:
            r = api.post("/api/v1/emails/send", headers=h, json={
                "account_id": account_id, "to": [f"Ada Lovelace <{CRM['contact'][1]}>"], "subject": "Proposal Follow-Up",
                "body_html": f'<html><body><p>Hi Ada,</p><p><a href="{site.url("/demo")}">Schedule Demo</a></p></body></html>'})
            assert r.status_code == 202, r.text
            eid = r.json()["id"]
            wait_until(lambda: api.get(f"/api/v1/emails/{eid}", headers=h).json()["status"] == "sent", 30, what="sent")
            token = api.post("/api/v1/notifications/token", headers=h, json={"user_id": "u1"}).json()["token"]
        with Session(get_engine()) as s:  # sent a minute ago: an open or click now is not "seconds after delivery"
            s.execute(update(Email).where(Email.id == eid).values(sent_at=utcnow() - timedelta(minutes=1)))
            s.commit()
        ((_, _, _, raw),) = smtp.sends
        body = email.message_from_bytes(raw, policy=policy.default).get_body(("html",)).get_content()
        site.pages["/email.html"] = body.encode()
        site.pages["/crm.html"] = (
            "<!doctype html><title>CRM</title><script>window.events=[];"
            f"const ws=new WebSocket('ws://127.0.0.1:{app_port}/api/v1/notifications/ws?token={token}');"
            "ws.onmessage=e=>window.events.push(Object.assign(JSON.parse(e.data),{seen:performance.timeOrigin+performance.now()}));"
            "</script>").encode()

        crm = browser.open(site.url("/crm.html"))
        crm.wait_for("window.events.some(e => e.type === 'hello')")
        opened_at = time.time() * 1000
        reader = browser.open(site.url("/email.html"))  # loading the body fetches the pixel
        push = crm.wait_for("window.events.find(e => e.type === 'email.opened')", timeout=5)
        assert push["email_id"] == eid and push["title"] == "Ada Lovelace opened your email 'Proposal Follow-Up'"
        assert push["seen"] - opened_at < 2000, f"open pushed after {push['seen'] - opened_at:.0f} ms"

        clicked_at = time.time() * 1000
        reader.evaluate("document.querySelector('a').click(), true")
        landed = reader.wait_for("location.href.endsWith('/demo') && document.querySelector('h1') && location.href", timeout=10)
        assert landed == site.url("/demo")
        push = crm.wait_for("window.events.find(e => e.type === 'email.clicked')", timeout=5)
        assert push["title"] == "Ada Lovelace clicked 'Schedule Demo'" and push["url"] == site.url("/demo")
        assert push["seen"] - clicked_at < 2000, f"click pushed after {push['seen'] - clicked_at:.0f} ms"

        with Session(get_engine()) as s:
            events = list(s.execute(select(TrackingEvent).where(TrackingEvent.email_id == eid).order_by(TrackingEvent.at)).scalars())
        opens = [e for e in events if e.kind == "open"]
        clicks = [e for e in events if e.kind == "click"]
        assert opens and opens[0].user_agent == browser.user_agent and "Chrome" in (opens[0].user_agent or "")
        assert opens[0].machine is False and opens[0].ip == "127.0.0.1"
        assert len(clicks) == 1 and clicks[0].url == site.url("/demo") and clicks[0].machine is False
        reader.close()
        crm.close()
    finally:
        browser.close()
        server.stop()
        site.close()


def test_forged_ids_and_open_redirect_attempts_against_the_real_server(live: dict[str, Any]) -> None:
    """Must-show 2 on uvicorn + PostgreSQL + RabbitMQ: forged pixel ids get the GIF and record nothing;
    forged or doctored click links are 404s, never a redirect elsewhere."""
    import httpx

    from models import TrackedLink
    from pipeline.actors.tracking import settle_clicks  # noqa: F401  (declares the actor on this broker)

    port = free_port("127.0.0.1")
    reset_process_state()
    org_id, _ = make_org()
    account_id = make_account(org_id)
    smtp = FakeSmtpTransport()
    use_smtp_transport(smtp)
    from pipeline.flows.outbound import Outgoing, submit
    from pipeline.flows.send_due import enqueue_send

    sent = submit(org_id, Outgoing(account_id=account_id, to=["ada@engine.example"], subject="S",
                                   body_html='<a href="https://engine.example/x">x</a>'))
    enqueue_send(sent.email_id)
    wait_until(lambda: len(smtp.sends) == 1, 30, what="the email sent")
    with Session(get_engine()) as s:
        link = s.execute(select(TrackedLink).where(TrackedLink.email_id == sent.email_id)).scalar_one()
    server = _serve_app(port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            for path in (f"/track/open/{sent.email_id}/{'0' * 32}", f"/track/open/{'0' * 24}/{'ab' * 16}",
                         f"/track/open/{sent.email_id}/%2e%2e%2f", "/track/open/x/y"):
                r = c.get(path)
                assert r.status_code == 200 and r.headers["content-type"] == "image/gif" and len(r.content) == 43, path
            good = f"/track/click/{sent.email_id}/{link.link_hash}"
            assert c.get(good + "?next=https://evil.example/").headers["location"] == "https://engine.example/x"
            for path in (f"/track/click/{sent.email_id}/{'0' * 32}", f"/track/click/{sent.email_id}/https%3A%2F%2Fevil.example",
                         f"{good}%2F%2Fevil.example", f"/track/click/{sent.email_id}/{link.link_hash[:-1]}",
                         f"/track/click/{'0' * 24}/{link.link_hash}"):
                r = c.get(path)
                assert r.status_code == 404 and "location" not in r.headers, path
        from web.intake import reset_intake

        reset_intake()
        time.sleep(3)  # the recording worker has had its chance
        with Session(get_engine()) as s:
            kinds = list(s.execute(select(TrackingEvent.kind).where(TrackingEvent.email_id == sent.email_id)).scalars())
        assert kinds == ["click"], "only the genuine click is recorded"
    finally:
        server.stop()
