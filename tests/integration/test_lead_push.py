"""A new lead reaches the salesperson's browser (issue 15, must-show 4): mail from an unknown human
sender, synced from Dovecot through the ingest chain on PostgreSQL and RabbitMQ, becomes a lead,
and the mailbox owner's websocket (served by uvicorn, fed by the RabbitMQ fanout exchange) receives
``lead.created``. The notification row alone was written before; the push was missing."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import Session
from starlette.testclient import TestClient
from websockets.sync.client import connect

from models import Lead, Notification
from models.db import get_engine
from tests.conftest import reset_process_state
from tests.harness.asgi_server import AsgiServer
from tests.harness.dovecot import Dovecot
from tests.harness.flow import make_account, make_org, sync_until_done
from tests.harness.mail import make_message
from tests.harness.ports import free_port

pytestmark = pytest.mark.integration


def test_websocket_receives_lead_created(live: dict[str, Any], dovecot: Dovecot, dovecot_user: tuple[str, str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from web.app import create_app

    port = free_port("127.0.0.1")
    monkeypatch.setenv("MAILPIPE_PUBLIC_URL", f"http://127.0.0.1:{port}")
    reset_process_state()
    user, password = dovecot_user
    org_id, key = make_org()
    h = {"Authorization": f"Bearer {key}"}
    make_account(org_id, host=dovecot.host, port=dovecot.tls_port, email=user, password=password)
    api = TestClient(create_app())
    assert api.patch("/api/v1/org", headers=h, json={"auto_create_leads": True}).status_code == 200
    token = api.post("/api/v1/notifications/token", headers=h, json={"user_id": "u1"}).json()["token"]
    server = AsgiServer(create_app(), "mailpipe under uvicorn", port=port, lifespan="on")
    server.start()
    try:
        with connect(f"ws://127.0.0.1:{port}/api/v1/notifications/ws?token={token}") as socket:
            assert json.loads(socket.recv(timeout=5))["type"] == "hello"
            time.sleep(0.5)  # the web process's exchange binding is in place (it is bound before "hello" is served)
            dovecot.seed(user, "INBOX", make_message(1, from_="Grace Hopper <grace@newprospect.example>", to=user,
                                                     subject="Question about your pricing"))
            sync_until_done(1)
            pushed: list[dict[str, Any]] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(p.get("type") == "lead.created" for p in pushed):
                try:
                    pushed.append(json.loads(socket.recv(timeout=max(0.1, deadline - time.monotonic()))))
                except TimeoutError:
                    break
    finally:
        server.stop()
    with Session(get_engine()) as s:
        lead = s.execute(select(Lead).where(Lead.org_id == org_id)).scalar_one()
        note = s.execute(select(Notification).where(Notification.kind == "lead.created")).scalar_one()
    assert (lead.firstName, lead.lastName, lead.email, lead.lead_source) == ("Grace", "Hopper", "grace@newprospect.example", "Email")
    created = [p for p in pushed if p.get("type") == "lead.created"]
    print(f"\nwebsocket pushes: {[p.get('type') for p in pushed]}")
    assert len(created) == 1, pushed
    assert created[0]["lead_id"] == lead.id and created[0]["email_id"] == note.email_id
    assert created[0]["title"] == note.title == "New lead created from email: Grace Hopper"
