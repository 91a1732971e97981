"""The sentiment stage (``ingest.sentiment``): inbound mail that has been linked is classified on its new
text, and the CRM accounts it is linked to are re-assessed.

It runs beside the ingest chain, never inside it: the link stage hands the batch on by job
(:func:`fan_out`) and the chain moves on whatever happens here, so a slow or failing classifier
never holds up leads and notifications, and ``pipeline_state`` keeps its meaning. The work is
idempotent: one ``email_sentiments`` row per email (inserted, never overwritten by a repeat), and
the at-risk flip and the owner's notification are written in the same transaction as the rows that
caused them. A lost message is found again by the ``sentiment_unclassified`` sweep.

Classifying happens outside any transaction (the LLM backend makes HTTP calls): the batch is read,
classified, then written in one short transaction. ``MAILPIPE_SENTIMENT_BACKEND=off`` turns the stage off.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, exists
from sqlmodel import Session, col, select

from models import AccountRisk, Email, EmailLink, EmailSentiment, Organization, utcnow
from models.db import get_engine
from models.upsert import insert_ignore
from ops import metrics
from ops.settings import get_settings
from pipeline import jobs
from pipeline.flows import account_risk, notifications
from pipeline.flows.sentiment_backends import backend_kind, classifier_for
from pipeline.scheduler import register_sweep
from pipeline.stages.reply_text import new_text

__all__ = ["READY_STATES", "Outcome", "classify_batch", "fan_out", "sweep_unclassified"]

log = structlog.get_logger("mailpipe.sentiment")

#: The states of mail that has been linked (the chain may still be creating leads or notifying).
READY_STATES = ("linked", "leads", "done")
SWEEP_EVERY = timedelta(minutes=1)
SWEEP_GRACE = timedelta(minutes=2)  # the fast path's message has had time to run
SWEEP_HORIZON = timedelta(days=2)  # older unclassified mail is `mailpipe sentiment backfill`'s work
BATCH = 100
BATCH_SECONDS = 60.0  # time one batch may spend on the LLM endpoint
_last_sweep: dict[str, datetime] = {}
_sweep_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Outcome:
    classified: int
    failed: int
    notified: int


def fan_out(email_ids: Sequence[str]) -> None:
    """Hand linked inbound mail to the sentiment stage (the link stage calls this after its commit).

    Never raises: the chain must not wait for sentiment, and the sweep finds what a lost message missed.
    """
    ids = list(email_ids)
    if get_settings().sentiment_backend == "off":
        return
    try:
        for i in range(0, len(ids), BATCH):
            jobs.INGEST_SENTIMENT.send(ids[i : i + BATCH])
    except Exception as exc:  # the broker is down: the sweep re-finds these emails
        log.warning("sentiment_fan_out_failed", count=len(ids), error=type(exc).__name__)


def classify_batch(email_ids: Sequence[str], *, redo: bool = False) -> Outcome:
    """Classify the batch's linked inbound emails that have no sentiment yet (all of them with ``redo``)."""
    ids = list(email_ids)
    if not ids or get_settings().sentiment_backend == "off":
        return Outcome(0, 0, 0)
    with Session(get_engine()) as s:
        stmt = (select(Email.id, Email.org_id, Email.body_text, Email.body_html)
                .where(col(Email.id).in_(ids), col(Email.direction) == "inbound", col(Email.pipeline_state).in_(READY_STATES),
                       col(Email.deleted_at).is_(None)))
        if not redo:
            stmt = stmt.where(~exists().where(col(EmailSentiment.email_id) == Email.id))
        emails = s.execute(stmt).all()
        opted = dict(s.execute(select(Organization.id, Organization.sentiment_llm)
                               .where(col(Organization.id).in_({e.org_id for e in emails}))).all()) if emails else {}
    if not emails:
        return Outcome(0, 0, 0)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for e in emails:
        # A slow LLM endpoint (each call within its timeout) must not stretch a batch toward Dramatiq's time
        # limit: past the budget, the rest of the batch goes to the default backend.
        in_budget = time.monotonic() - started < BATCH_SECONDS
        rows.append(_classify(e.id, e.org_id, e.body_text, e.body_html, bool(opted.get(e.org_id)) and in_budget))
    return _store(rows, redo=redo)


def _classify(email_id: str, org_id: str, body_text: str | None, body_html: str | None, llm_opt_in: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"email_id": email_id, "org_id": org_id}
    try:
        text = new_text(body_text or "", body_html)
        result = classifier_for(llm_opt_in).classify(text)
    except Exception as exc:  # one unreadable email is recorded with the reason, not retried forever
        log.warning("sentiment_failed", email_id=email_id, error=type(exc).__name__)
        return {**row, "label": None, "score": None, "model": classifier_for(False).name, "cues": [], "chars": 0,
                "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {**row, "label": result.label, "score": result.score, "model": result.model, "cues": list(result.cues),
            "chars": len(text), "error": None}


def _store(rows: list[dict[str, Any]], *, redo: bool) -> Outcome:
    now = utcnow()
    with Session(get_engine(), expire_on_commit=False) as s:
        if redo:
            s.execute(delete(EmailSentiment).where(col(EmailSentiment.email_id).in_([r["email_id"] for r in rows])))
        inserted = insert_ignore(s, EmailSentiment, [{**r, "created_at": now} for r in rows], ["email_id"])
        accounts = _accounts_to_assess(s, rows)
        pol = account_risk.policy()
        pushed: list[dict[str, Any]] = []
        for org_id, account_ids in accounts.items():
            pushed += account_risk.evaluate(s, org_id, account_ids, now, pol)
        s.commit()
    notifications.publish(pushed)
    for r in rows:
        metrics.SENTIMENT.labels(r["label"] or "error", backend_kind(r["model"])).inc()
    failed = sum(1 for r in rows if r["label"] is None)
    return Outcome(max(inserted - failed, 0), failed, len(pushed))


def _accounts_to_assess(s: Session, rows: list[dict[str, Any]]) -> dict[str, set[str]]:
    """The CRM accounts the batch's mail may change: those it brings negative mail, and those already
    at risk (more mail may end their episode). Other mail cannot turn an account at risk."""
    negative = {r["email_id"] for r in rows if r["label"] == "negative"}
    linked = s.execute(select(EmailLink.org_id, EmailLink.entity_id, EmailLink.email_id).where(
        col(EmailLink.email_id).in_([r["email_id"] for r in rows if r["label"] is not None]),
        col(EmailLink.entity_type) == "account")).all()
    out: dict[str, set[str]] = defaultdict(set)
    others: dict[str, set[str]] = defaultdict(set)
    for org_id, account_id, email_id in linked:
        (out if email_id in negative else others)[org_id].add(account_id)
    for org_id, ids in others.items():
        pending = ids - out[org_id]
        if pending:
            out[org_id] |= set(s.execute(select(AccountRisk.account_id).where(
                col(AccountRisk.org_id) == org_id, col(AccountRisk.account_id).in_(pending), col(AccountRisk.at_risk).is_(True))).scalars())
    return {org_id: ids for org_id, ids in out.items() if ids}


@register_sweep("sentiment_unclassified")
def sweep_unclassified(session: Session, now: datetime) -> int:
    """Once a minute: linked inbound mail of the last two days that the fast path missed."""
    with _sweep_lock:
        last = _last_sweep.get("at")
        if last is not None and now - last < SWEEP_EVERY:
            return 0
        _last_sweep["at"] = now
    if get_settings().sentiment_backend == "off":
        return 0
    ids = list(session.execute(
        select(Email.id).where(col(Email.pipeline_state).in_(READY_STATES), col(Email.stage_at) > now - SWEEP_HORIZON,
                               col(Email.stage_at) < now - SWEEP_GRACE, col(Email.direction) == "inbound",
                               ~exists().where(col(EmailSentiment.email_id) == Email.id)).limit(10 * BATCH)).scalars())
    for i in range(0, len(ids), BATCH):
        jobs.INGEST_SENTIMENT.send(ids[i : i + BATCH])
    return len(ids)
