"""Sentiment on the real components: mail synced from Dovecot through the ingest chain on PostgreSQL and
RabbitMQ, the sentiment stage beside it on the same workers.

* must-show 2 and 3: complaints to one CRM account (each quoting a glowing earlier message) are negative
  and turn the account at risk; its owner's websocket receives ``sentiment.at_risk`` once, and more
  negative mail does not notify again; an account with positive mail (HTML-only among it) is not at risk;
* must-show 4: an opted-in organization's mail is labelled by an OpenAI-compatible stand-in; with the
  stand-in stopped, mail still gets the default backend's label and nothing is left unclassified or queued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlmodel import Session
from starlette.testclient import TestClient
from websockets.sync.client import connect

from models import CrmAccount, Email, EmailSentiment, Notification
from models.db import get_engine
from pipeline.flows.sentiment_backends import reset_backends
from tests.conftest import reset_process_state
from tests.harness.asgi_server import AsgiServer
from tests.harness.dovecot import Dovecot
from tests.harness.flow import CRM, make_account, make_org, seed_crm, sync_until_done
from tests.harness.llm_server import LlmStandIn
from tests.harness.mail import make_message
from tests.harness.ports import free_port
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration

ACME, ENGINE_CONTACT = CRM["account"][1], CRM["contact"][1]
GLOWING = "Great news, everything works perfectly and we are thrilled with your team!"
COMPLAINTS = ["The export is still broken and nobody answers our tickets. This is unacceptable.",
              "We were charged twice again. I want a refund today.",
              "Third outage this week. We are considering switching to another provider.",
              "Still waiting for a real answer. Please escalate this to your manager."]


def _reply(i: int, to: str, text: str, quoted: str, sender: str = ACME) -> bytes:
    return make_message(i, from_=sender, to=to, message_id=f"<live{i}@t>",
                        body=f"{text}\n\nOn Mon, 6 Jan 2025 at 10:02, Alice <{to}> wrote:\n> {quoted}\n")


def _classified() -> dict[str, tuple[str | None, str]]:
    with Session(get_engine()) as s:
        rows = s.execute(select(Email.message_id, EmailSentiment.label, EmailSentiment.model)
                         .join(EmailSentiment, EmailSentiment.email_id == Email.id)).all()
    return {mid: (label, model) for mid, label, model in rows}


def _count(model: Any, *where: Any) -> int:
    with Session(get_engine()) as s:
        return int(s.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


@pytest.fixture
def crm_org() -> tuple[str, str]:
    org_id, key = make_org()
    seed_crm(org_id)
    with Session(get_engine()) as s:
        for account_id in (CRM["account"][0], CRM["account_of_contact"]):
            acct = s.get(CrmAccount, (org_id, account_id))
            assert acct is not None
            acct.assigned_to = "u1"
            s.add(acct)
        s.commit()
    return org_id, key


def test_account_turns_at_risk_and_owner_is_pushed_once(live: dict[str, Any], dovecot: Dovecot, dovecot_user: tuple[str, str],
                                                        crm_org: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from web.app import create_app

    port = free_port("127.0.0.1")
    monkeypatch.setenv("MAILPIPE_PUBLIC_URL", f"http://127.0.0.1:{port}")
    reset_process_state()
    user, password = dovecot_user
    org_id, key = crm_org
    h = {"Authorization": f"Bearer {key}"}
    make_account(org_id, host=dovecot.host, port=dovecot.tls_port, email=user, password=password)
    api = TestClient(create_app())
    token = api.post("/api/v1/notifications/token", headers=h, json={"user_id": "u1"}).json()["token"]
    server = AsgiServer(create_app(), "mailpipe under uvicorn", port=port, lifespan="on")
    server.start()
    pushed: list[dict[str, Any]] = []
    try:
        with connect(f"ws://127.0.0.1:{port}/api/v1/notifications/ws?token={token}") as socket:
            assert json.loads(socket.recv(timeout=5))["type"] == "hello"
            time.sleep(0.5)
            html = make_message(9, from_=ENGINE_CONTACT, to=user, body="", message_id="<live9@t>",
                                html="<div>The new reports are <b>fantastic</b>, great work!</div>"
                                     f'<blockquote type="cite">{COMPLAINTS[0]}</blockquote>')
            praise = _reply(5, user, "Excellent support, the fix works perfectly. Thank you!", COMPLAINTS[1], ENGINE_CONTACT)
            dovecot.seed(user, "INBOX", [_reply(i, user, text, GLOWING) for i, text in enumerate(COMPLAINTS[:3])] + [praise, html])
            sync_until_done(5)
            wait_until(lambda: len(_classified()) == 5, 60, what="five emails classified")
            dovecot.seed(user, "INBOX", [_reply(3, user, COMPLAINTS[3], GLOWING)])  # the same episode: no second notification
            sync_until_done(6)
            wait_until(lambda: len(_classified()) == 6, 60, what="the sixth email classified")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    pushed.append(json.loads(socket.recv(timeout=max(0.1, deadline - time.monotonic()))))
                except TimeoutError:
                    break
    finally:
        server.stop()
    labels = {mid: label for mid, (label, _) in _classified().items()}
    assert labels == {"live0@t": "negative", "live1@t": "negative", "live2@t": "negative", "live3@t": "negative",
                      "live5@t": "positive", "live9@t": "positive"}
    at_risk = [p for p in pushed if p.get("type") == "sentiment.at_risk"]
    print(f"\nwebsocket pushes: {[p.get('type') for p in pushed]}")
    assert len(at_risk) == 1, pushed
    assert at_risk[0]["account_id"] == CRM["account"][0] and at_risk[0]["episode"] == 1
    assert _count(Notification, Notification.kind == "sentiment.at_risk") == 1
    risky = api.get(f"/api/v1/crm/accounts/{CRM['account'][0]}/sentiment", headers=h).json()
    assert risky["at_risk"] is True and risky["counts"]["negative"] == 4
    assert risky["reasons"][0] == "4 negative emails from 1 contact in 14 days"
    happy = api.get(f"/api/v1/crm/accounts/{CRM['account_of_contact']}/sentiment", headers=h).json()
    assert happy["at_risk"] is False and happy["counts"] == {"positive": 2, "neutral": 0, "negative": 0}
    negative = api.get("/api/v1/emails?sentiment=negative", headers=h).json()["items"]
    assert len(negative) == 4 and all(e["sentiment"]["label"] == "negative" for e in negative)


@pytest.fixture
def standin() -> Iterator[LlmStandIn]:
    server = LlmStandIn().start()
    yield server
    server.stop()


def test_llm_backend_and_its_fallback(live: dict[str, Any], dovecot: Dovecot, dovecot_user: tuple[str, str], crm_org: tuple[str, str],
                                      standin: LlmStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    from web.app import create_app

    monkeypatch.setenv("MAILPIPE_SENTIMENT_BACKEND", "llm")
    monkeypatch.setenv("MAILPIPE_SENTIMENT_LLM_URL", standin.url)
    monkeypatch.setenv("MAILPIPE_SENTIMENT_LLM_KEY", standin.key)
    monkeypatch.setenv("MAILPIPE_SENTIMENT_LLM_MODEL", "standin-1")
    monkeypatch.setenv("MAILPIPE_SENTIMENT_LLM_TIMEOUT_SECONDS", "2")
    reset_process_state()
    reset_backends()
    try:
        user, password = dovecot_user
        org_id, key = crm_org
        api = TestClient(create_app())
        assert api.patch("/api/v1/org", headers={"Authorization": f"Bearer {key}"}, json={"sentiment_llm": True}).json()["sentiment_llm"]
        make_account(org_id, host=dovecot.host, port=dovecot.tls_port, email=user, password=password)
        # The stand-in's marker words: "zorp" is negative to it and means nothing to the lexicon, which reads this as positive.
        dovecot.seed(user, "INBOX", [_reply(20, user, "Great zorp, thank you, works perfectly!", COMPLAINTS[0]),
                                     _reply(21, user, "Please send the blix invoice.", COMPLAINTS[1])])
        sync_until_done(2)
        wait_until(lambda: len(_classified()) == 2, 60, what="two emails classified by the stand-in")
        assert _classified() == {"live20@t": ("negative", "llm:standin-1"), "live21@t": ("positive", "llm:standin-1")}
        assert all(r["messages"][-1]["content"] in ("Great zorp, thank you, works perfectly!", "Please send the blix invoice.")
                   for r in standin.requests)
        standin.stop()
        dovecot.seed(user, "INBOX", [_reply(22, user, "Great zorp, thank you, works perfectly!", COMPLAINTS[0]),
                                     _reply(23, user, COMPLAINTS[2], GLOWING)])
        started = time.monotonic()
        sync_until_done(4)
        wait_until(lambda: len(_classified()) == 4, 60, what="the fallback classifying with the stand-in down")
        print(f"\nfallback classified 2 emails {time.monotonic() - started:.1f}s after the sync started")
        got = _classified()
        assert got["live22@t"] == ("positive", "vader-business-1") and got["live23@t"] == ("negative", "vader-business-1")
        assert _count(Email, Email.pipeline_state != "done") == 0
        counts = live["broker"].get_queue_message_counts("pipeline")
        assert counts[0] == 0 and counts[2] == 0, counts  # nothing ready or dead on the pipeline queue
    finally:
        reset_backends()
