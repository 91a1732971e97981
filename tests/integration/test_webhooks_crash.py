"""Webhook events survive a SIGKILLed worker (issue 16, must-show 3).

Events are recorded with their cause's commit while no worker runs; a real ``mailpipe worker``
(RabbitMQ, PostgreSQL) starts dispatching and delivering, and the receiver SIGKILLs the worker's
process group in the middle of the third POST (after the receiver has read it, before the worker
could record the answer). A second worker takes over: every event reaches the receiver, the
interrupted one again with the same ``webhook-id``; none is lost and every delivery ends succeeded.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import Session

from models import WebhookDelivery
from models.db import get_engine
from pipeline.flows import webhook_endpoints
from pipeline.flows.events_outbox import record_event
from tests.harness.flow import make_org, tick
from tests.harness.proc import MailpipeProcess, mailpipe_env
from tests.harness.webhook_receiver import WebhookReceiver
from tests.integration.conftest import process_env, wait_until

pytestmark = pytest.mark.integration

EVENTS = 20


@pytest.fixture
def crash_env(fresh_pg_url: str, amqp_url: str, test_certs: tuple[Path, Path], tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    env, _ = process_env(fresh_pg_url, amqp_url, tmp_path, test_certs[0], monkeypatch,
                         MAILPIPE_WEBHOOK_ALLOWED_NETS="127.0.0.0/8", MAILPIPE_WEBHOOK_RETRY_BASE_SECONDS="0.5")
    org_id, _ = make_org()
    return {"env": mailpipe_env(**env), "org_id": org_id, "tmp": tmp_path}


def _worker(c: dict[str, Any], name: str) -> MailpipeProcess:
    return MailpipeProcess("worker", "-p", "1", "-t", "2", "-Q", "webhooks", env=c["env"], cwd=c["tmp"], name=name)


def _statuses() -> list[str]:
    with Session(get_engine()) as s:
        return list(s.execute(select(WebhookDelivery.status)).scalars())


def test_sigkill_mid_delivery_loses_nothing(crash_env: dict[str, Any]) -> None:
    c = crash_env
    holder: dict[str, MailpipeProcess] = {}
    killed = threading.Event()

    def answer(n: int, webhook_id: str) -> int:
        if n == 3 and not killed.is_set():
            holder["w1"].kill_group()  # the worker dies while this POST is open
            killed.set()
        return 200

    rec = WebhookReceiver(answer=answer).start()
    try:
        ep = webhook_endpoints.create_endpoint(c["org_id"], rec.url, ["*"], None)
        ids = []
        for i in range(EVENTS):  # each in the transaction of its "change"
            with Session(get_engine()) as s:
                eid = record_event(s, c["org_id"], "lead.created", {"lead_id": f"lead-{i}", "n": i}, dedupe_key=f"lead.created:lead-{i}")
                s.commit()
            assert eid is not None
            ids.append(eid)
        holder["w1"] = _worker(c, "worker1")
        assert killed.wait(90), holder["w1"].output()[-3000:]
        holder["w1"].stop()
        interrupted = rec.requests[2].headers["webhook-id"]
        worker2 = _worker(c, "worker2")
        try:
            def all_done() -> bool:
                tick()  # the scheduler's sweep, as a running deployment would have it
                statuses = _statuses()
                return len(statuses) == EVENTS and all(st == "succeeded" for st in statuses)

            wait_until(all_done, 120, interval=1.0, what="every delivery succeeded after the restart")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{worker2.output()[-4000:]}") from None
        finally:
            assert worker2.stop() == 0, worker2.output()[-3000:]
        got = [r.headers["webhook-id"] for r in rec.requests]
        assert set(got) == set(ids), "every event delivered, none lost"
        assert got.count(interrupted) == 2, "the interrupted delivery again, with the same webhook-id"
        assert len(got) == EVENTS + 1
        first_attempts = list(dict.fromkeys(got))
        assert first_attempts == ids, "one endpoint's deliveries go in event order"
        assert ep["id"]
    finally:
        rec.stop()
