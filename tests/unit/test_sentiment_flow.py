"""The sentiment stage end to end on the in-memory fake IMAP server and the StubBroker: classification
beside the chain, the API (``?sentiment=``, the account report), at-risk episodes and the owner's
notification (must-show 3), and a failing classifier that never blocks the chain."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select, update
from sqlmodel import Session
from starlette.testclient import TestClient

from models import AccountRisk, CrmAccount, Email, EmailAccount, EmailSentiment, Notification, utcnow
from models.db import get_engine
from pipeline.broker import QUEUES
from pipeline.flows import ingest_sentiment
from pipeline.flows.account_risk import sweep_account_risk
from pipeline.flows.connections import use_imap_connector
from tests.harness.fake_imap import FakeImapServer, fake_connect
from tests.harness.flow import CRM, count, drain, make_account, make_org, seed_crm, tick
from tests.harness.mail import make_message
from web.app import create_app

ACME = CRM["account"][1]  # hello@acme-corp.example, linked to CRM account a-acme
GLOWING = "Great news, everything works perfectly and we love it!"
COMPLAINTS = [
    "The export is still broken and nobody answers our tickets. This is unacceptable.",
    "We were charged twice again. I want a refund today.",
    "Third outage this week. We are considering switching to another provider.",
]


@pytest.fixture
def server() -> Iterator[FakeImapServer]:
    srv = FakeImapServer("alice@example.test", "alicepass")
    use_imap_connector(fake_connect(srv))
    yield srv
    use_imap_connector(None)


@pytest.fixture
def org(db: str) -> tuple[str, str]:
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


def _reply(i: int, text: str, quoted: str, sender: str = ACME) -> bytes:
    body = f"{text}\n\nOn Mon, 6 Jan 2025 at 10:02, Alice <alice@example.test> wrote:\n> {quoted}\n"
    return make_message(i, from_=sender, body=body, message_id=f"<s{i}@t>")


def _sync(server: FakeImapServer, messages: list[bytes], broker: StubBroker, worker: Worker) -> None:
    server.seed("INBOX", messages)
    with Session(get_engine()) as s:
        s.execute(update(EmailAccount).values(next_fetch_at=None))
        s.commit()
    tick()
    drain(broker, worker)


def _labels() -> dict[str, str | None]:
    with Session(get_engine()) as s:
        rows = s.execute(select(Email.message_id, EmailSentiment.label).join(EmailSentiment, EmailSentiment.email_id == Email.id)).all()
    return {mid: label for mid, label in rows}


def _at_risk_notes() -> list[Notification]:
    with Session(get_engine()) as s:
        return list(s.execute(select(Notification).where(Notification.kind == "sentiment.at_risk")).scalars())


class TestSentimentStage:
    def test_replies_are_classified_on_their_new_text(self, org: tuple[str, str], server: FakeImapServer, stub_broker: StubBroker,
                                                      stub_worker: Worker) -> None:
        """Must-show 2 through the pipeline: a complaint over a glowing quote is negative, the reverse positive,
        HTML-only mail is classified; outbound mail is not; the chain finishes every email."""
        make_account(org[0])
        html = make_message(3, from_=CRM["contact"][1], body="", message_id="<s3@t>",
                            html='<div>We are <b>thrilled</b> with the new dashboard, fantastic work!</div>'
                                 f'<blockquote type="cite">{COMPLAINTS[0]}</blockquote>')
        _sync(server, [_reply(1, COMPLAINTS[0], GLOWING), _reply(2, "That fixed it, thanks a lot. Works perfectly now!", COMPLAINTS[1]),
                       html], stub_broker, stub_worker)
        assert _labels() == {"s1@t": "negative", "s2@t": "positive", "s3@t": "positive"}
        assert count(Email, Email.pipeline_state != "done") == 0

    def test_account_turns_at_risk_and_owner_is_notified_once(self, org: tuple[str, str], server: FakeImapServer,
                                                             stub_broker: StubBroker, stub_worker: Worker) -> None:
        """Must-show 3: three complaints to one account → at risk, one notification to its assigned_to user (also
        after a repeated stage and a sweep); an account with positive mail is not at risk."""
        org_id, key = org
        make_account(org_id)
        _sync(server, [_reply(i, text, GLOWING) for i, text in enumerate(COMPLAINTS, start=10)]
              + [_reply(20 + i, "Excellent support, the fix works perfectly. Thank you!", COMPLAINTS[0], CRM["contact"][1])
                 for i in range(3)], stub_broker, stub_worker)
        notes = _at_risk_notes()
        assert len(notes) == 1
        note = notes[0]
        assert note.user_id == "u1" and note.data["account_id"] == CRM["account"][0] and note.data["episode"] == 1
        assert note.body.startswith("3 negative emails from 1 contact in 14 days")
        # The same batch again, the sweep, and a re-run of the stage: still one notification.
        with Session(get_engine()) as s:
            ids = list(s.execute(select(Email.id)).scalars())
        ingest_sentiment.classify_batch(ids)
        ingest_sentiment.classify_batch(ids, redo=True)
        with Session(get_engine()) as s:
            sweep_account_risk(s, utcnow())
        assert len(_at_risk_notes()) == 1
        with TestClient(create_app()) as client:
            h = {"Authorization": f"Bearer {key}"}
            risky = client.get(f"/api/v1/crm/accounts/{CRM['account'][0]}/sentiment", headers=h).json()
            assert risky["at_risk"] is True and risky["counts"] == {"positive": 0, "neutral": 0, "negative": 3}
            assert risky["reasons"][0] == "3 negative emails from 1 contact in 14 days" and risky["at_risk_since"]
            assert any("talk of cancelling or leaving" in r for r in risky["reasons"])
            happy = client.get(f"/api/v1/crm/accounts/{CRM['account_of_contact']}/sentiment", headers=h).json()
            assert happy["at_risk"] is False and happy["counts"]["positive"] == 3 and happy["reasons"] == []
            negative = client.get("/api/v1/emails?sentiment=negative", headers=h).json()["items"]
            assert {e["message_id"] for e in negative} == {"s10@t", "s11@t", "s12@t"}
            assert all(e["sentiment"]["label"] == "negative" and e["sentiment"]["model"] == "vader-business-1" for e in negative)
            one = client.get(f"/api/v1/emails/{negative[0]['id']}", headers=h).json()
            assert one["sentiment"]["score"] < 0
            assert client.get("/api/v1/emails?sentiment=angry", headers=h).status_code == 422
            assert client.get("/api/v1/crm/accounts/nope/sentiment", headers=h).status_code == 404
        with Session(get_engine()) as s:
            state = s.get(AccountRisk, (org_id, CRM["account"][0]))
            assert state is not None and state.at_risk and state.episode == 1

    def test_a_failing_classifier_never_blocks_the_chain(self, org: tuple[str, str], server: FakeImapServer, stub_broker: StubBroker,
                                                         stub_worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
        """The sentiment stage raising (its own message fails) leaves leads and notifications untouched; the
        sweep later classifies what was missed."""
        make_account(org[0])

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("classifier down")

        monkeypatch.setattr(ingest_sentiment, "_store", broken)
        server.seed("INBOX", [_reply(30, COMPLAINTS[0], GLOWING)])
        tick()
        for _ in range(3):  # fetch, then the chain and the sentiment message beside it
            for q in QUEUES:
                stub_broker.join(q, fail_fast=False)
            stub_worker.join()
        assert len(stub_broker.dead_letters) == 1 and stub_broker.dead_letters[0].actor_name == "ingest.sentiment"
        assert count(Email, Email.pipeline_state == "done") == 1
        assert count(Notification, Notification.kind == "email.received") == 1
        assert _labels() == {}
        monkeypatch.undo()
        for dead in stub_broker.dead_letters_by_queue.values():
            dead.clear()  # seen above; the drain below would raise it again
        with Session(get_engine()) as s:
            s.execute(update(Email).values(stage_at=utcnow() - ingest_sentiment.SWEEP_GRACE * 2))
            s.commit()
            ingest_sentiment._last_sweep.clear()
            assert ingest_sentiment.sweep_unclassified(s, utcnow()) == 1
        drain(stub_broker, stub_worker)
        assert _labels() == {"s30@t": "negative"}


class TestBackfill:
    def test_backfill_classifies_existing_mail_once(self, org: tuple[str, str]) -> None:
        """`mailpipe sentiment backfill` classifies mail stored before the stage existed (outbound and already
        classified mail skipped), turns the account at risk, and a second run finds nothing to do."""
        from click.testing import CliRunner

        from models import EmailLink
        from ops.cli import main

        org_id, _ = org
        account = make_account(org_id)
        with Session(get_engine()) as s:
            for i, (direction, text) in enumerate([("inbound", t) for t in COMPLAINTS] + [("outbound", COMPLAINTS[0])]):
                e = Email(org_id=org_id, account_id=account, direction=direction, dedupe_key=f"mid:b{i}@t", message_id=f"b{i}@t",
                          from_email=ACME, from_email_norm=ACME, body_text=text, pipeline_state="done", received_at=utcnow())
                s.add(e)
                s.flush()
                s.add(EmailLink(org_id=org_id, email_id=e.id, entity_type="account", entity_id=CRM["account"][0],
                                how="auto:accounts.email"))
            s.commit()
        runner = CliRunner()
        first = runner.invoke(main, ["sentiment", "backfill", "--json"])
        assert first.exit_code == 0, first.output
        assert '"seen": 3, "classified": 3, "failed": 0, "notified": 1' in first.output
        assert _labels() == {"b0@t": "negative", "b1@t": "negative", "b2@t": "negative"}
        second = runner.invoke(main, ["sentiment", "backfill", "--json"])
        assert '"seen": 0' in second.output
        redo = runner.invoke(main, ["sentiment", "backfill", "--redo", "--org", org_id])
        assert redo.exit_code == 0 and "classified 3 of 3 emails with backend 'lexicon' (0 failed, 0 at-risk" in redo.output
        assert len(_at_risk_notes()) == 1
