"""RabbitMQ stopped in the middle of a sync: nothing is lost, nothing is duplicated once it is back."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import Session

from models import Email, EmailLocation, utcnow
from models.db import get_engine
from tests.harness.dovecot import Dovecot
from tests.harness.flow import count, make_account, make_org, tick
from tests.harness.mail import make_message
from tests.harness.services import ensure_rabbitmq
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration


def _rabbit(action: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", action], check=True, capture_output=True, timeout=120)


def test_rabbitmq_outage_mid_sync(live: dict[str, Any], dovecot: Dovecot, dovecot_user: tuple[str, str]) -> None:
    """`rabbitmqctl stop_app` while 1,500 messages are being synced; after `start_app` the
    database-driven sweeps finish the job: exactly 1,500 emails, each through the pipeline once."""
    user, password = dovecot_user
    n = 1500
    dovecot.seed(user, "INBOX", [make_message(i, message_id=f"<out{i}@t>") for i in range(n)])
    org_id, _ = make_org()
    make_account(org_id, host=dovecot.host, port=dovecot.tls_port, email=user, password=password)
    tick()
    wait_until(lambda: count(Email) >= 150, 60, 0.02, what="the sync under way")
    try:
        _rabbit("stop_app")
        at_stop = count(Email)
        wait_until(lambda: True, 1)
    finally:
        _rabbit("start_app")
        ensure_rabbitmq()
    assert at_stop < n, "the sync finished before the broker stopped; nothing was tested"

    from sqlalchemy import update

    from models import EmailAccount
    from pipeline.flows.chain import resume_ingest

    def fetched_all() -> bool:
        if count(Email) < n:
            # What the scheduler does on its own: the mailbox comes due again and is re-swept.
            with Session(get_engine()) as s:
                s.execute(update(EmailAccount).where(EmailAccount.fetch_owner.is_(None)).values(next_fetch_at=None))  # type: ignore[union-attr]
                s.commit()
            tick()
        return count(Email) >= n

    wait_until(fetched_all, 240, 2, what=f"{n} emails fetched after the outage")
    # Chains whose messages died with the broker are restarted by the stall sweep; run it once
    # as if its 15-minute window had passed.
    with Session(get_engine()) as s:
        resume_ingest(s, utcnow() + timedelta(hours=1))
        s.commit()
    wait_until(lambda: count(Email, Email.pipeline_state == "done") >= n, 240, 1, what=f"{n} emails through the pipeline")
    assert count(Email) == n and count(EmailLocation) == n
    assert count(Email, Email.ingest_attempts > 1) == 0
