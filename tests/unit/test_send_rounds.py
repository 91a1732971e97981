"""How many bookkeeping transactions a send run makes (issue 21: as few round trips as exactly-once allows).

A single-copy send is three: the claim (with the cap slot, the suppression check and the delivery's
``sending`` mark), the ``data`` mark (with the click map) and the reply (with the email's final state);
each further copy adds two (its ``sending`` mark rides on the previous copy's reply).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import event, select, update
from sqlmodel import Session

from models import Delivery, EmailAccount, Outbox, TrackedLink
from models.db import get_engine
from pipeline.flows.connections import use_smtp_transport
from pipeline.flows.outbound import Outgoing, submit
from pipeline.flows.send_run import run_send
from tests.harness.fake_smtp import FakeSmtpTransport
from tests.harness.flow import make_account, make_org

HTML = '<html><body><p>Hi,</p><p><a href="https://engine.example/deck">deck</a></p></body></html>'


@pytest.fixture
def env(db: str, stub_broker: StubBroker, stub_worker: Worker) -> Iterator[dict[str, Any]]:
    smtp = FakeSmtpTransport()
    use_smtp_transport(smtp)
    org_id, _ = make_org()
    account_id = make_account(org_id)
    with Session(get_engine()) as s:  # no IMAP here: the provider files its own Sent copy
        s.execute(update(EmailAccount).where(EmailAccount.id == account_id).values(saves_sent_copy=True))
        s.commit()
    commits: list[int] = []
    me = threading.get_ident()

    def count(_conn: Any) -> None:
        if threading.get_ident() == me:  # the run's own; the worker threads run the ingest batch beside it
            commits.append(1)

    event.listen(get_engine(), "commit", count)
    try:
        yield {"smtp": smtp, "org_id": org_id, "account_id": account_id, "commits": commits}
    finally:
        event.remove(get_engine(), "commit", count)
        use_smtp_transport(None)


def _run(env: dict[str, Any], to: list[str]) -> tuple[int, list[list[str]], str]:
    email_id = submit(env["org_id"], Outgoing(account_id=env["account_id"], to=to, subject="Deck", body_html=HTML)).email_id
    env["commits"].clear()
    run_send(email_id, "msg-1:abcd")
    with Session(get_engine()) as s:
        logs = [[e["event"] for e in d.log] for d in s.execute(
            select(Delivery).where(Delivery.email_id == email_id).order_by(Delivery.seq)).scalars()]
        box = s.get_one(Outbox, email_id)
        assert box.state == "sent" and box.lease_owner is None, "sent, and the lease given back in the last write"
        assert s.execute(select(TrackedLink.url).where(TrackedLink.email_id == email_id)).scalars().all() == \
            ["https://engine.example/deck"]
    return len(env["commits"]), logs, email_id


def test_a_single_copy_send_commits_three_times(env: dict[str, Any]) -> None:
    commits, logs, _ = _run(env, ["ada@engine.example"])
    assert logs == [["attempt", "data", "reply"]]
    assert commits == 3
    (sent,) = env["smtp"].sends
    assert b"/track/click/" in sent[3] and b"https://engine.example/deck" in sent[3]  # the text part keeps the link


def test_each_further_copy_adds_two(env: dict[str, Any]) -> None:
    commits, logs, _ = _run(env, ["ada@engine.example", "bob@engine.example", "cy@engine.example"])
    assert logs == [["attempt", "data", "reply"]] * 3
    assert commits == 3 + 2 * 2
    assert len(env["smtp"].sends) == 3 and len({raw for *_, raw in env["smtp"].sends}) == 3  # a pixel of their own


def test_sent_emails_share_one_ingest_chain(env: dict[str, Any], stub_broker: StubBroker, stub_worker: Worker,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Each send asks for the chain after a short delay; the first batcher takes every sent email waiting, once."""
    import pipeline.flows.send_run as send_run
    from models import Email, utcnow
    from pipeline.flows.chain import start_sent_chains
    from tests.harness.flow import drain

    asked: list[str] = []
    monkeypatch.setattr(send_run, "chain_sent", asked.append)  # the batch requests, held back here
    ids = [_run(env, [f"r{i}@engine.example"])[2] for i in range(3)]
    assert asked == [env["account_id"]] * 3
    with Session(get_engine()) as s:
        assert {s.get_one(Email, i).pipeline_state for i in ids} == {"fetched"}
    assert start_sent_chains(env["account_id"]) == 3
    assert start_sent_chains(env["account_id"]) == 0, "claimed: a concurrent or later batcher starts no second chain"
    with Session(get_engine()) as s:
        assert all(s.get_one(Email, i).stage_at > utcnow() for i in ids)
    drain(stub_broker, stub_worker)
    with Session(get_engine()) as s:
        assert {s.get_one(Email, i).pipeline_state for i in ids} == {"done"}


def test_a_run_that_never_connects_counts_no_attempt(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim marks the first delivery `sending` ahead of time; failing before any connection un-counts it."""
    import pipeline.flows.send_run as send_run
    from models import Email

    def broken(_account: Any, **_kw: Any) -> Any:
        raise ValueError("the SMTP settings are unusable")

    monkeypatch.setattr(send_run, "smtp_settings", broken)
    email_id = submit(env["org_id"], Outgoing(account_id=env["account_id"], to=["ada@engine.example"], subject="Deck",
                                              body_html=HTML)).email_id
    run_send(email_id, "msg-2:abcd")
    with Session(get_engine()) as s:
        (d,) = s.execute(select(Delivery).where(Delivery.email_id == email_id)).scalars()
        assert (d.state, d.attempts, [e["event"] for e in d.log]) == ("failed", 0, ["attempt", "failed"])
        assert s.get_one(Email, email_id).status == "failed" and s.get_one(Outbox, email_id).lease_owner is None
    assert env["smtp"].sends == []
