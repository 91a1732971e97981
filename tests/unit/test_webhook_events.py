"""Emit points through the real stages (SQLite, stub broker, the fake IMAP server): an account
turning at risk records ``sentiment.at_risk`` in the transaction that flipped it, once per episode,
beside the ``email.received`` events of the mail that caused it."""

from __future__ import annotations

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlmodel import Session, select

from models import WebhookEndpoint, WebhookEvent, utcnow
from models.db import get_engine
from ops.keys import seal
from pipeline.flows import events_outbox
from pipeline.flows.account_risk import sweep_account_risk
from pipeline.stages.webhooks import new_secret
from tests.harness.fake_imap import FakeImapServer
from tests.harness.flow import CRM, make_account
from tests.unit.test_sentiment_flow import COMPLAINTS, GLOWING, _reply, _sync, org, server  # noqa: F401

SECRET = new_secret(b"s" * 32)


def test_at_risk_and_received_events_recorded_with_their_causes(org: tuple[str, str], server: FakeImapServer,  # noqa: F811
                                                                 stub_broker: StubBroker, stub_worker: Worker,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_outbox, "_kick", lambda session: None)  # record only: this test reads the outbox
    org_id, _ = org
    with Session(get_engine()) as s:
        s.add(WebhookEndpoint(org_id=org_id, url="https://crm.example/hook", events=["sentiment.at_risk", "email.received"],
                              secret=seal("webhook_endpoints", "secret", SECRET)))
        s.commit()
    make_account(org_id)
    _sync(server, [_reply(i, text, GLOWING) for i, text in enumerate(COMPLAINTS, start=10)], stub_broker, stub_worker)
    with Session(get_engine()) as s:
        sweep_account_risk(s, utcnow())  # a re-evaluation: the same episode records nothing new
        events = list(s.execute(select(WebhookEvent).order_by(WebhookEvent.id)).scalars())  # type: ignore[arg-type]
    risk = [e for e in events if e.type == "sentiment.at_risk"]
    received = [e for e in events if e.type == "email.received"]
    assert len(received) == 3 and all(e.data["from_email"] == CRM["account"][1] for e in received)
    assert all(e.data["account_ids"] == [CRM["account"][0]] and "body_text" not in e.data for e in received)
    assert len(risk) == 1, "one event per at-risk episode"
    data = risk[0].data
    assert data["account_id"] == CRM["account"][0] and data["user_id"] == "u1" and data["episode"] == 1
    assert data["reasons"][0].startswith("3 negative emails") and data["latest_negative_email_id"]
    assert risk[0].dedupe_key == f"sentiment.at_risk:{CRM['account'][0]}:1"
