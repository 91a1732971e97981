"""At-least-once in practice: a worker SIGKILLed mid-backfill, restarted, and nothing duplicated or lost."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from models import Document, Email, EmailLocation, utcnow
from models.db import get_engine
from ops.crypto import generate_key_entry
from pipeline.clients.storage import get_storage
from tests.conftest import reset_process_state
from tests.harness.dovecot import Dovecot
from tests.harness.flow import count, make_account, make_org, tick
from tests.harness.mail import make_message
from tests.harness.proc import MailpipeProcess, mailpipe_env
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration

N = 2000


def test_sigkill_mid_backfill(fresh_pg_url: str, amqp_url: str, dovecot: Dovecot, dovecot_user: tuple[str, str],
                              test_certs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill -9 the worker while a 2,000-message backfill runs; after a restart there are exactly
    2,000 emails, no duplicate locations, and every attachment is in storage."""
    from ops.migrate import upgrade
    from pipeline.broker import build_broker, use_broker

    upgrade(fresh_pg_url)
    keys = generate_key_entry("crash")
    storage_url = f"file://{tmp_path / 'store'}"
    env = {"MAILPIPE_DATABASE_URL": fresh_pg_url, "MAILPIPE_BROKER_URL": amqp_url, "MAILPIPE_SECRET_KEYS": keys,
           "MAILPIPE_STORAGE_URL": storage_url, "MAILPIPE_SYNC_RATE_PER_HOUR": "100000", "SSL_CERT_FILE": str(test_certs[0])}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_process_state()
    broker = use_broker(build_broker(amqp_url))
    for q in broker.get_declared_queues():
        broker.flush(q)

    user, password = dovecot_user
    messages = [make_message(i, message_id=f"<crash{i}@t>",
                             attachments=[(f"a{i}.txt", "text/plain", f"attachment {i}\n".encode() * 20)] if i % 10 == 0 else None)
                for i in range(N)]
    dovecot.seed(user, "INBOX", messages)
    org_id, _ = make_org()
    make_account(org_id, host=dovecot.host, port=dovecot.tls_port, email=user, password=password)

    worker_env = mailpipe_env(**env)
    worker = MailpipeProcess("worker", "-p", "1", "-t", "4", env=worker_env, cwd=tmp_path, name="worker1")
    try:
        tick()
        try:
            wait_until(lambda: count(Email) >= 300, 120, what="backfill under way")
        except AssertionError:
            raise AssertionError(worker.output()[-4000:]) from None
        worker.kill_group()  # SIGKILL the master and its worker process mid-backfill
        at_kill = count(Email)
        assert at_kill < N, "backfill finished before the kill; the test proves nothing"
    finally:
        worker.stop()
    worker2 = MailpipeProcess("worker", "-p", "1", "-t", "4", env=worker_env, cwd=tmp_path, name="worker2")
    try:
        # RabbitMQ redelivers what the dead worker held (the fetch re-takes its lease by message id)
        # and the chain continues from each email's recorded state.
        def finished() -> bool:
            done = count(Email, Email.pipeline_state.in_(("done", "quarantined")))  # type: ignore[attr-defined]
            if done < N:
                tick()
            return done >= N

        wait_until(lambda: count(Email) >= N, 300, interval=1, what=f"{N} emails fetched after restart")
        # Anything whose chain message died with the worker is picked up by the stall sweep;
        # run it once as if its window had passed.
        from pipeline.flows.chain import resume_ingest

        with Session(get_engine()) as s:
            resume_ingest(s, utcnow() + timedelta(hours=1))
            s.commit()
        wait_until(finished, 300, interval=1, what=f"{N} emails through the pipeline after restart")
    finally:
        assert worker2.stop() == 0, worker2.output()[-3000:]
    with Session(get_engine()) as s:
        assert s.execute(select(func.count(func.distinct(Email.message_id)))).scalar_one() == N
        assert count(Email) == N and count(Email, Email.pipeline_state == "done") == N
        assert count(EmailLocation) == N
        docs = list(s.execute(select(Document)).scalars())
    assert len(docs) == N // 10
    storage = get_storage()
    for d in docs:
        i = int(d.document_name[1:-4])
        assert storage.get(d.storage_key) == f"attachment {i}\n".encode() * 20
