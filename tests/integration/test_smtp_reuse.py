"""Sending over reused SMTP connections (issue 21): one authenticated session carries many sends; a
session the server dropped (closed socket, or 421 "closing") is replaced and the email is delivered
exactly once; a session lost after DATA began is never resent.

The real send run (SQLite, StubBroker worker) against aiosmtpd with STARTTLS and AUTH.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select
from sqlmodel import Session

from models import Delivery, Email
from models.db import get_engine
from pipeline.clients.smtp import PooledSmtpTransport
from pipeline.flows import accounts as svc
from pipeline.flows.connections import smtp_transport, tls_context
from tests.harness.flow import drain, make_org, tick
from tests.harness.smtp import SmtpServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

USER, PASSWORD = "alice@example.test", "alicepass-reuse"


@pytest.fixture
def env(db: str, stub_broker: StubBroker, stub_worker: Worker, smtp_server: SmtpServer, test_certs: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("SSL_CERT_FILE", str(test_certs[0]))
    monkeypatch.setenv("MAILPIPE_SEND_RETRY_BASE_SECONDS", "0.05")
    from ops.settings import reset_settings

    reset_settings()
    tls_context.cache_clear()
    smtp_server.users[USER] = PASSWORD
    org_id, _ = make_org()
    with Session(get_engine()) as s:
        acct = svc.create_account(s, org_id=org_id, user_id="u1", provider="imap", email=USER,
                                  imap_ep=svc.Endpoint("imap.invalid", 993, "ssl", USER, PASSWORD),
                                  smtp_ep=svc.Endpoint(smtp_server.host, smtp_server.port, "starttls", USER, PASSWORD))
        acct.next_fetch_at = None
        acct.saves_sent_copy = True  # no IMAP Sent copy: this test is about SMTP
        s.add(acct)
        s.commit()
        account_id = acct.id
    transport = smtp_transport()
    assert isinstance(transport, PooledSmtpTransport)
    yield {"org_id": org_id, "account_id": account_id, "smtp": smtp_server, "transport": transport,
           "broker": stub_broker, "worker": stub_worker}
    transport.close()
    tls_context.cache_clear()


def _send(env: dict[str, Any], n: int) -> str:
    from pipeline.flows.outbound import Outgoing, submit
    from pipeline.flows.send_due import enqueue_send

    result = submit(env["org_id"], Outgoing(account_id=env["account_id"], to=[f"reader{n}@customer.example"],
                                            subject=f"Note {n}", body_html=f"<p>Number {n}</p>", track_opens=True,
                                            track_clicks=False))
    enqueue_send(result.email_id)
    for _ in range(40):
        drain(env["broker"], env["worker"])
        with Session(get_engine()) as s:
            if s.get_one(Email, result.email_id).status in ("sent", "failed"):
                break
        tick()
    return result.email_id


def _delivered(env: dict[str, Any], n: int) -> int:
    return sum(1 for _, rcpts, _ in env["smtp"].messages if rcpts == [f"reader{n}@customer.example"])


def _status(email_id: str) -> tuple[str, list[str]]:
    with Session(get_engine()) as s:
        return (s.get_one(Email, email_id).status,
                list(s.execute(select(Delivery.state).where(Delivery.email_id == email_id)).scalars()))


def test_one_session_carries_many_sends(env: dict[str, Any]) -> None:
    before = len(env["smtp"].sessions)  # aiosmtpd's own readiness probe connects once at start
    for n in range(5):
        assert _status(_send(env, n)) == ("sent", ["sent"])
    assert [_delivered(env, n) for n in range(5)] == [1] * 5
    assert env["transport"].opened == 1 and len(env["smtp"].sessions) - before == 1
    assert len(env["smtp"].logins) == 1  # one AUTH for five messages


def test_a_session_the_server_closed_is_replaced_and_the_email_delivered_once(env: dict[str, Any]) -> None:
    assert _status(_send(env, 1))[0] == "sent"
    assert env["smtp"].drop_connections() == 1  # the server hangs up on the idle session
    email_id = _send(env, 2)
    assert _status(email_id) == ("sent", ["sent"])
    assert _delivered(env, 2) == 1
    assert env["transport"].opened == 2 and env["transport"].reconnects == 1
    with Session(get_engine()) as s:
        log = s.execute(select(Delivery.log).where(Delivery.email_id == email_id)).scalar_one()
    assert [e["event"] for e in log] == ["attempt", "data", "reply"]  # one attempt, no retry needed
    assert _status(_send(env, 3))[0] == "sent" and env["transport"].opened == 2  # the new session is reused


def test_a_421_on_the_reused_session_reconnects_and_delivers_once(env: dict[str, Any]) -> None:
    assert _status(_send(env, 1))[0] == "sent"
    env["smtp"].fail_with(421, "4.4.2 idle too long, closing connection", stage="mail", times=1)
    email_id = _send(env, 2)
    assert _status(email_id) == ("sent", ["sent"])
    with Session(get_engine()) as s:
        log = s.execute(select(Delivery.log).where(Delivery.email_id == email_id)).scalar_one()
    assert [e["event"] for e in log] == ["attempt", "data", "reply"]  # replaced within the attempt, no retry
    assert _delivered(env, 2) == 1 and len(env["smtp"].messages) == 2
    assert env["transport"].opened == 2 and env["transport"].reconnects == 1


def test_a_session_lost_during_data_is_not_resent(env: dict[str, Any]) -> None:
    assert _status(_send(env, 1))[0] == "sent"
    smtp: SmtpServer = env["smtp"]

    def hang_up(mail_from: str, rcpts: list[str], raw: bytes) -> None:
        smtp.on_message = None
        smtp.drop_connections()  # the server has the message but the reply never arrives
        raise ConnectionResetError("dropped")

    smtp.on_message = hang_up
    email_id = _send(env, 2)
    status, states = _status(email_id)
    # recorded as possibly delivered (unconfirmed), never retried on the fresh session
    assert states == ["unconfirmed"] and status == "sent"
    assert env["transport"].reconnects == 0


def test_idle_sessions_are_closed(env: dict[str, Any]) -> None:
    transport: PooledSmtpTransport = env["transport"]
    transport.idle_seconds = 0.2
    assert _status(_send(env, 1))[0] == "sent"
    smtp: SmtpServer = env["smtp"]
    open_sessions = [p for p in smtp.sessions if p.transport is not None and not p.transport.is_closing()]
    assert open_sessions  # kept after the send
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(p.transport is not None and not p.transport.is_closing() for p in open_sessions):
        time.sleep(0.1)
    assert not any(p.transport is not None and not p.transport.is_closing() for p in open_sessions)
    assert _status(_send(env, 2))[0] == "sent" and transport.opened == 2  # a new session after the reaping
