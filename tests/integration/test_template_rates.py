"""Template open rates from real tracking (issue: templates, must-show 4): pixel hits through uvicorn,
the intake and RabbitMQ, recorded and classified by the worker on PostgreSQL."""

from __future__ import annotations

import email
import re
from datetime import timedelta
from email import policy
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Email, Template, TrackingEvent, utcnow
from models.db import get_engine
from pipeline.flows.connections import use_smtp_transport
from tests.conftest import reset_process_state
from tests.harness.asgi_server import AsgiServer
from tests.harness.fake_smtp import FakeSmtpTransport
from tests.harness.flow import count, make_account, make_org, seed_crm
from tests.harness.ports import free_port
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"


def test_open_rates_count_real_opens_only(live: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from web.app import create_app

    port = free_port("127.0.0.1")
    monkeypatch.setenv("MAILPIPE_PUBLIC_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MAILPIPE_TRUSTED_PROXIES", "127.0.0.1/32")  # the test plays the readers' networks via XFF
    reset_process_state()
    smtp = FakeSmtpTransport()
    use_smtp_transport(smtp)
    org_id, key = make_org()
    seed_crm(org_id)
    account_id = make_account(org_id)
    h = {"Authorization": f"Bearer {key}"}
    with Session(get_engine()) as s:
        a = Template(org_id=org_id, name="Template A", subject="A for {{company|you}}", body_html="<p>Hi {{firstName|there}}</p>")
        b = Template(org_id=org_id, name="Template B", subject="B", body_html="<p>Hello {{firstName|there}}</p>")
        s.add_all([a, b])
        s.commit()
        ta, tb = a.id, b.id
    sent: dict[str, list[str]] = {ta: [], tb: []}
    with TestClient(create_app()) as api:
        for tid, n in ((ta, 10), (tb, 5)):
            for i in range(n):
                r = api.post("/api/v1/emails/send", headers=h, json={"account_id": account_id, "to": [f"reader{tid[-4:]}{i}@x.example"],
                                                                    "template_id": tid, "merge": {}})
                assert r.status_code == 202, r.text
                sent[tid].append(r.json()["id"])
        wait_until(lambda: count(Email, Email.status == "sent") == 15, 60, what="15 sent")
    with Session(get_engine()) as s:
        s.execute(update(Email).values(sent_at=utcnow() - timedelta(minutes=5)))
        s.commit()
    pixel = {}
    for _, _, _, raw in smtp.sends:
        msg = email.message_from_bytes(raw, policy=policy.default)
        m = re.search(r'src="http://127\.0\.0\.1:\d+(/track/open/[^"]+)"', msg.get_body(("html",)).get_content())
        assert m is not None
        pixel[msg["X-Mailpipe-Email-Id"]] = m.group(1)
    server = AsgiServer(create_app(), "mailpipe under uvicorn", port=port, lifespan="on").start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            for i, eid in enumerate(sent[ta][:4]):  # four people open A in a browser
                assert c.get(pixel[eid], headers={"User-Agent": BROWSER, "X-Forwarded-For": f"198.51.100.{i + 1}"}).status_code == 200
            c.get(pixel[sent[ta][4]], headers={"User-Agent": GMAIL, "X-Forwarded-For": "66.102.8.20"})  # Gmail: counted, though flagged
            c.get(pixel[sent[ta][5]], headers={"User-Agent": "Mozilla/5.0", "X-Forwarded-For": "17.58.63.9"})  # Apple MPP: not
            c.get(pixel[sent[tb][0]], headers={"User-Agent": BROWSER, "X-Forwarded-For": "203.0.113.5"})
        wait_until(lambda: count(TrackingEvent, TrackingEvent.settled.is_(True)) == 7, 60,  # type: ignore[attr-defined]
                   what="7 hits recorded and settled (people's opens are counted at the settle pass)")
        with TestClient(create_app()) as api:
            items = api.get("/api/v1/templates?sort=open_rate", headers=h).json()["items"]
        top = [(t["name"], t["avg_open_rate"], t["usage_count"]) for t in items[:2]]
        assert top == [("Template A", 0.5, 10), ("Template B", 0.2, 5)]
        assert count(TrackingEvent, TrackingEvent.machine.is_(True), TrackingEvent.reason == "apple_mpp") == 1  # type: ignore[attr-defined]
        assert count(TrackingEvent, TrackingEvent.machine.is_(True), TrackingEvent.reason == "gmail_proxy") == 1  # type: ignore[attr-defined]
    finally:
        server.stop()
