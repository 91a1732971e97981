"""web.http_metrics, pipeline.fleet and ops.logging.LogContext: route-template labels, fleet gauges
from the database and the in-memory broker, and log context per Dramatiq message."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import update
from sqlmodel import Session
from starlette.testclient import TestClient

from models import EmailAccount, utcnow
from models.db import get_engine
from ops import metrics
from tests.harness.flow import make_account, make_org


def value(counter: Any, *labels: str) -> float:
    return float(counter.labels(*labels)._value.get())


def test_requests_are_counted_by_route_template_never_by_path(db: str, stub_broker: StubBroker) -> None:
    from web.app import create_app

    _, key = make_org()
    h = {"Authorization": f"Bearer {key}"}
    route = "/api/v1/emails/{id}"
    before = value(metrics.HTTP_REQUESTS, route, "GET", "404")
    unmatched = value(metrics.HTTP_REQUESTS, "unmatched", "GET", "404")
    pixel = value(metrics.HTTP_REQUESTS, "/track/open/{email_id}/{recipient_hash}", "GET", "200")
    with TestClient(create_app()) as c:
        for i in range(3):
            assert c.get(f"/api/v1/emails/0000000000000000000000{i:02d}", headers=h).status_code == 404
        assert c.get("/no/such/path/a1b2c3").status_code == 404
        assert c.get("/track/open/0123456789abcdef01234567/00112233445566778899aabbccddeeff").status_code == 200
    assert value(metrics.HTTP_REQUESTS, route, "GET", "404") == before + 3
    assert value(metrics.HTTP_REQUESTS, "unmatched", "GET", "404") == unmatched + 1
    assert value(metrics.HTTP_REQUESTS, "/track/open/{email_id}/{recipient_hash}", "GET", "200") == pixel + 1
    body = metrics.render()[0].decode()
    assert "0000000000000000000000" not in body and "/no/such/path" not in body


def test_fleet_gauges_count_states_stale_mailboxes_and_queue_depths(db: str, stub_broker: StubBroker) -> None:
    from pipeline.actors.selftest import first
    from pipeline.flows.fleet import sweep_fleet_gauges

    org_id, _ = make_org()
    ids = [make_account(org_id, email=f"a{i}@example.test") for i in range(4)]
    now = utcnow()
    with Session(get_engine()) as s:
        s.execute(update(EmailAccount).where(EmailAccount.id == ids[0]).values(sync_state="reconnect_required"))
        s.execute(update(EmailAccount).where(EmailAccount.id == ids[1]).values(sync_state="error", last_synced_at=now - timedelta(hours=2)))
        s.execute(update(EmailAccount).where(EmailAccount.id == ids[2]).values(last_synced_at=now))
        s.execute(update(EmailAccount).where(EmailAccount.id == ids[3]).values(created_at=now - timedelta(hours=1)))
        s.commit()
    for _ in range(3):
        first.send("run")
    with Session(get_engine()) as s:
        sweep_fleet_gauges(s, now)
    assert metrics.ACCOUNTS.labels("reconnect_required")._value.get() == 1
    assert metrics.ACCOUNTS.labels("error")._value.get() == 1 and metrics.ACCOUNTS.labels("idle")._value.get() == 2
    assert metrics.ACCOUNTS_STALE._value.get() == 2, "the erroring one synced 2 h ago, the new one never in an hour"
    assert metrics.QUEUE_MESSAGES.labels("ops", "ready")._value.get() == 3
    assert metrics.QUEUE_MESSAGES.labels("fetch", "dead")._value.get() == 0


def test_log_context_names_the_actor_message_and_mailbox(db: str, stub_broker: StubBroker, stub_worker: Worker) -> None:
    from pipeline.broker import actor
    from pipeline.jobs import Job

    seen: list[dict[str, Any]] = []

    @actor(Job("test.logctx", "ops"), max_retries=0)
    def probe(account_id: str) -> None:
        seen.append(dict(structlog.contextvars.get_contextvars()))

    from ops.logging import _FIRST_ARG

    _FIRST_ARG["test.logctx"] = "account_id"
    try:
        message = probe.send("acct-1")
        stub_broker.join("ops")
        stub_worker.join()
    finally:
        _FIRST_ARG.pop("test.logctx", None)
    assert seen == [{"actor": "test.logctx", "message_id": message.message_id, "account_id": "acct-1"}]
