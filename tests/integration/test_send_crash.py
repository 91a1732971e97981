"""Exactly-once sending under SIGKILL (issue: outbound, must-show 4).

A real ``mailpipe worker`` on RabbitMQ and PostgreSQL sends through aiosmtpd; a hook in the SMTP
server SIGKILLs the worker's process group at a chosen moment. RabbitMQ redelivers the unacked
message to a second worker, which must finish the job without a second copy reaching the server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import Session

from models import Delivery, Email, Outbox
from models.db import get_engine
from pipeline.flows import accounts as svc
from tests.harness.dovecot import Dovecot
from tests.harness.flow import make_org
from tests.harness.proc import MailpipeProcess, mailpipe_env
from tests.integration.conftest import process_env, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def crash_env(fresh_pg_url: str, amqp_url: str, dovecot: Dovecot, dovecot_user: tuple[str, str], smtp_server: Any,
              test_certs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """PostgreSQL + RabbitMQ settings shared with worker subprocesses, and one mailbox (no worker in this process)."""
    env, _ = process_env(fresh_pg_url, amqp_url, tmp_path, test_certs[0], monkeypatch, MAILPIPE_SEND_RETRY_BASE_SECONDS="0.2",
                         # The killed run cannot still be waiting for a reply; the default grace (180 s) would only slow the test.
                         MAILPIPE_SEND_DATA_GRACE_SECONDS="1")
    user, password = dovecot_user
    smtp_server.users[user] = password
    org_id, _ = make_org()
    with Session(get_engine()) as s:
        acct = svc.create_account(s, org_id=org_id, user_id="u1", provider="imap", email=user,
                                  imap_ep=svc.Endpoint(dovecot.host, dovecot.tls_port, "ssl", user, password),
                                  smtp_ep=svc.Endpoint(smtp_server.host, smtp_server.port, "starttls", user, password))
        acct.next_fetch_at = None  # this test is about sending; no sync is due
        s.add(acct)
        s.commit()
        account_id = acct.id
    return {"env": mailpipe_env(**env), "org_id": org_id, "account_id": account_id, "tmp": tmp_path,
            "smtp": smtp_server, "dovecot": dovecot, "user": user}


def _worker(c: dict[str, Any], name: str) -> MailpipeProcess:
    return MailpipeProcess("worker", "-p", "1", "-t", "2", "-Q", "send", env=c["env"], cwd=c["tmp"], name=name)


def _submit(c: dict[str, Any]) -> str:
    from pipeline.flows.outbound import Outgoing, submit
    from pipeline.flows.send_due import enqueue_send

    result = submit(c["org_id"], Outgoing(account_id=c["account_id"], to=["ada@engine.example"], subject="Contract",
                                          body_html="<p>Please sign.</p>", track_opens=False, track_clicks=False))
    enqueue_send(result.email_id)
    return result.email_id


def _state(email_id: str) -> tuple[str, str, str, list[str]]:
    with Session(get_engine()) as s:
        email = s.get(Email, email_id)
        box = s.get(Outbox, email_id)
        states = list(s.execute(select(Delivery.state).where(Delivery.email_id == email_id)).scalars())
        assert email is not None and box is not None
        return email.status, box.sent_copy, (email.error or {}).get("code", ""), states


def _crash_and_recover(c: dict[str, Any], arm: Callable[[Callable[[], None]], None], disarm: Callable[[], None]) -> str:
    """Submit, let the hook SIGKILL worker 1 mid-transaction, then let worker 2 finish."""
    worker1 = _worker(c, "worker1")
    killed = threading.Event()

    def kill() -> None:
        if not killed.is_set():
            worker1.kill_group()
            killed.set()

    arm(kill)
    try:
        email_id = _submit(c)
        assert killed.wait(90), worker1.output()[-3000:]
    finally:
        disarm()
        worker1.stop()
    worker2 = _worker(c, "worker2")
    try:
        wait_until(lambda: _state(email_id)[0] in ("sent", "failed") and _state(email_id)[1] in ("done", "failed"),
                   90, interval=0.2, what="worker 2 to finish the redelivered send")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker2.output()[-4000:]}") from None
    finally:
        assert worker2.stop() == 0, worker2.output()[-3000:]
    return email_id


def test_sigkill_after_the_server_accepted_data(crash_env: dict[str, Any]) -> None:
    """Killed right after the server stored the message: the redelivered message does not send it again."""
    c = crash_env
    smtp = c["smtp"]

    def arm(kill: Callable[[], None]) -> None:
        smtp.on_message = lambda _f, _r, _raw: kill()

    def disarm() -> None:
        smtp.on_message = None

    email_id = _crash_and_recover(c, arm, disarm)
    status, sent_copy, error, deliveries = _state(email_id)
    assert len(smtp.messages) == 1, "the server received the message exactly once"
    assert status == "sent" and deliveries == ["unconfirmed"] and error == "delivery_unconfirmed"
    assert sent_copy == "done" and len(c["dovecot"].flags(c["user"], "Sent")) == 1


def test_sigkill_before_data(crash_env: dict[str, Any]) -> None:
    """Killed during RCPT (DATA never issued): the redelivered message sends it, once."""
    c = crash_env
    smtp = c["smtp"]

    def arm(kill: Callable[[], None]) -> None:
        smtp.on_rcpt = lambda _address: kill()

    def disarm() -> None:
        smtp.on_rcpt = None

    email_id = _crash_and_recover(c, arm, disarm)
    status, sent_copy, error, deliveries = _state(email_id)
    assert len(smtp.messages) == 1 and status == "sent" and deliveries == ["sent"] and error == ""
    assert sent_copy == "done"
