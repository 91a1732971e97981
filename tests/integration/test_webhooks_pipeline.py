"""Must-show 1 of issue 16: with an endpoint subscribed to every event, inbound mail from a contact
(Dovecot), an unknown sender (auto lead), a send (aiosmtpd), an open and a click each reach a real
local receiver as deliveries the ``standardwebhooks`` verifier accepts, with API.md's fields."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import Session
from standardwebhooks.webhooks import Webhook
from starlette.testclient import TestClient

from models import Email, EmailAccount, utcnow
from models.db import get_engine
from tests.conftest import reset_process_state
from tests.harness.asgi_server import AsgiServer
from tests.harness.dovecot import Dovecot
from tests.harness.flow import CRM, count, make_org, seed_crm, tick
from tests.harness.mail import make_message
from tests.harness.ports import free_port
from tests.harness.webhook_receiver import WebhookReceiver
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration

CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"


@pytest.fixture
def stack(live: dict[str, Any], dovecot: Dovecot, dovecot_user: tuple[str, str], smtp_server: Any,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from web.app import create_app

    port = free_port("127.0.0.1")
    monkeypatch.setenv("MAILPIPE_PUBLIC_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MAILPIPE_TRUSTED_PROXIES", "127.0.0.1/32")
    monkeypatch.setenv("MAILPIPE_WEBHOOK_ALLOWED_NETS", "127.0.0.0/8")
    monkeypatch.setenv("MAILPIPE_SEND_RETRY_BASE_SECONDS", "0.2")
    reset_process_state()
    org_id, key = make_org(auto_create_leads=True)
    seed_crm(org_id)
    user, password = dovecot_user
    smtp_server.users[user] = password
    receiver = WebhookReceiver().start()
    server = AsgiServer(create_app(), "mailpipe under uvicorn", port=port, lifespan="on")
    with TestClient(create_app()) as client:
        server.start()
        try:
            yield {"client": client, "h": {"Authorization": f"Bearer {key}"}, "org_id": org_id, "user": user, "password": password,
                   "dovecot": dovecot, "smtp": smtp_server, "receiver": receiver, "port": port}
        finally:
            server.stop()
            receiver.stop()


def _pipeline_done(n: int) -> bool:
    return count(Email, Email.pipeline_state.in_(("done", "quarantined"))) >= n  # type: ignore[attr-defined]


def _verified(rec: WebhookReceiver, secret: str, event_type: str, n: int = 1, timeout: float = 60) -> list[dict[str, Any]]:
    """The first ``n`` deliveries of a type, each checked by the Standard Webhooks verifier."""
    got = wait_until(lambda: rec.of_type(event_type) if len(rec.of_type(event_type)) >= n else None, timeout,
                     what=f"{n} {event_type} webhook(s)")
    out = []
    for req in got:
        payload = Webhook(secret).verify(req.body, req.headers)
        assert req.headers["webhook-id"].startswith("evt_") and payload["type"] == event_type
        assert set(payload) == {"type", "timestamp", "data"}
        out.append(dict(payload["data"]))
    return out


def test_every_kind_of_event_arrives_signed_with_its_fields(stack: dict[str, Any]) -> None:
    st = stack
    client, h, rec = st["client"], st["h"], st["receiver"]
    r = client.post("/api/v1/webhooks", json={"url": rec.url, "events": ["*"], "description": "the CRM"}, headers=h)
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]

    # Inbound: one from a known contact, one from an unknown person (auto lead).
    st["dovecot"].seed(st["user"], "INBOX", [
        make_message(1, from_=f"Ada Lovelace <{CRM['contact'][1]}>", to=st["user"], message_id="<from-ada@t>", subject="Renewal"),
        make_message(2, from_="Nora New <nora@newco.example>", to=st["user"], message_id="<from-nora@t>", subject="Hello there"),
    ])
    body = {"user_id": "u1", "provider": "imap", "email": st["user"],
            "imap": {"host": st["dovecot"].host, "port": st["dovecot"].tls_port, "security": "ssl", "password": st["password"]},
            "smtp": {"host": st["smtp"].host, "port": st["smtp"].port, "security": "starttls", "password": st["password"]}}
    r = client.post("/api/v1/accounts", json=body, headers=h)
    assert r.status_code == 201, r.text
    account_id = r.json()["id"]
    with Session(get_engine()) as s:
        s.execute(update(EmailAccount).values(next_fetch_at=None))
        s.commit()
    tick()
    wait_until(lambda: _pipeline_done(2), 90, what="2 inbound emails through the pipeline")

    received = {d["from_email"]: d for d in _verified(rec, secret, "email.received", 2)}
    ada = received[CRM["contact"][1]]
    assert ada["account_id"] == account_id and ada["user_id"] == "u1" and ada["subject"] == "Renewal"
    assert ada["contact_ids"] == [CRM["contact"][0]] and ada["account_ids"] == [CRM["account_of_contact"]]
    assert ada["email_id"] and ada["direction"] == "inbound" and "body_text" not in ada and "body_html" not in ada
    (lead,) = _verified(rec, secret, "lead.created")
    assert lead["from_email"] == "nora@newco.example" and lead["lead_id"] and lead["lead"]["email"] == "nora@newco.example"
    assert lead["lead_id"] in received["nora@newco.example"]["lead_ids"]
    linked = {d["email_id"] for d in _verified(rec, secret, "email.linked", 2)}
    assert linked == {ada["email_id"], received["nora@newco.example"]["email_id"]}

    # A tracked send to the contact.
    r = client.post("/api/v1/emails/send", headers=h, json={
        "account_id": account_id, "to": [f"Ada Lovelace <{CRM['contact'][1]}>"], "subject": "Proposal",
        "body_html": '<html><body><p>Hi Ada, <a href="https://engine.example/deck">the deck</a></p></body></html>'})
    assert r.status_code == 202, r.text
    eid = r.json()["id"]
    (sent,) = _verified(rec, secret, "email.sent")
    assert sent["email_id"] == eid and sent["account_id"] == account_id and sent["user_id"] == "u1"
    assert sent["subject"] == "Proposal" and sent["status"] == "sent" and CRM["contact"][1] in sent["recipients"]

    # An open and a click by a person (a browser, a minute after the send).
    wait_until(lambda: st["smtp"].messages, 10, what="the message at the SMTP server")
    with Session(get_engine()) as s:
        s.execute(update(Email).where(Email.id == eid).values(sent_at=utcnow() - timedelta(minutes=1)))  # type: ignore[arg-type]
        s.commit()
    raw = st["smtp"].messages[-1][2].decode("utf-8", "replace").replace("=\r\n", "").replace("=3D", "=")
    pixel = re.search(r'/track/open/[^"\s]+', raw).group(0)  # type: ignore[union-attr]
    click = re.search(r'/track/click/[^"\s]+', raw).group(0).replace("&amp;", "&")  # type: ignore[union-attr]
    with httpx.Client(base_url=f"http://127.0.0.1:{st['port']}") as http:
        assert http.get(pixel, headers={"User-Agent": CHROME, "X-Forwarded-For": "203.0.113.9"}).status_code == 200
    (opened,) = _verified(rec, secret, "email.opened")
    assert opened["email_id"] == eid and opened["recipient_email"] == CRM["contact"][1] and opened["user_id"] == "u1"
    with httpx.Client(base_url=f"http://127.0.0.1:{st['port']}") as http:
        assert http.get(click, headers={"User-Agent": CHROME, "X-Forwarded-For": "203.0.113.9"}).status_code == 302
    (clicked,) = _verified(rec, secret, "email.clicked")
    assert clicked["email_id"] == eid and clicked["url"] == "https://engine.example/deck"
    assert clicked["contact_ids"] == [CRM["contact"][0]] or clicked["contact_ids"] == []

    # Every delivery is in the log as succeeded, with one attempt each.
    ep_id = client.get("/api/v1/webhooks", headers=h).json()["items"][0]["id"]

    def all_logged() -> list[dict[str, Any]] | None:  # the receiver answers a moment before the run records it
        items = client.get(f"/api/v1/webhooks/{ep_id}/deliveries?status=succeeded&limit=200", headers=h).json()["items"]
        return items if len(items) == len(rec.requests) else None

    log = wait_until(all_logged, 10, what="every delivery logged as succeeded")
    assert all(d["attempts"] == 1 for d in log)
    assert secret not in json.dumps([r.body.decode() for r in rec.requests])
