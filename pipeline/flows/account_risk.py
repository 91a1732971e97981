"""At-risk CRM accounts: the sentiment report of an account, and the owner's notification when it
turns at risk (once per episode).

An account's state (``account_risk``) flips by compare-and-set in the transaction that wrote the
sentiment that changed it, so two workers classifying two emails of one account at once notify
once: only the update that moved ``at_risk`` from false to true gets an episode number, and the
notification is unique on ``sentiment.at_risk:<account>:<episode>``. The episode ends when the
account no longer meets the rule (its negative mail aged out of the window, or better mail came in);
the next time it turns at risk is a new episode and a new notification. The ``account_risk`` sweep
re-evaluates, every :data:`SWEEP_EVERY`, the accounts at risk (so episodes end as mail ages) and
those with negative mail in the last day (mail linked to an account later, by retroactive linking).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from models import AccountRisk, CrmAccount, Email, EmailLink, EmailSentiment
from models.upsert import insert_ignore
from ops import metrics
from ops.settings import get_settings
from pipeline.flows import notifications
from pipeline.flows.events_outbox import record_event
from pipeline.scheduler import register_sweep
from pipeline.stages.account_risk import Mail, Policy, RiskReport, assess

__all__ = ["AT_RISK_KIND", "SWEEP_EVERY", "account_mail", "evaluate", "policy", "report_for", "sweep_account_risk"]

log = structlog.get_logger("mailpipe.sentiment")

AT_RISK_KIND = "sentiment.at_risk"
SWEEP_EVERY = timedelta(minutes=10)
_last_sweep: dict[str, datetime] = {}
_sweep_lock = threading.Lock()


def policy(window_days: int | None = None) -> Policy:
    """The at-risk policy from the settings (``window_days`` overrides the window)."""
    s = get_settings()
    return Policy(window_days=window_days or s.sentiment_window_days, negatives=s.sentiment_at_risk_negatives)


def account_mail(s: Session, org_id: str, account_ids: Iterable[str], since: datetime) -> dict[str, list[tuple[str, Mail]]]:
    """Each account's classified inbound mail since ``since``: (email id, :class:`Mail`), oldest first."""
    ids = sorted(set(account_ids))
    out: dict[str, list[tuple[str, Mail]]] = defaultdict(list)
    if not ids:
        return out
    at = func.coalesce(Email.received_at, Email.created_at)
    rows = s.execute(
        sa_select(col(EmailLink.entity_id), col(Email.id), at, col(EmailSentiment.label), col(EmailSentiment.score),
                  col(Email.from_email_norm), col(EmailSentiment.cues))
        .join(Email, col(Email.id) == EmailLink.email_id)
        .join(EmailSentiment, col(EmailSentiment.email_id) == Email.id)
        .where(col(EmailLink.org_id) == org_id, col(EmailLink.entity_type) == "account", col(EmailLink.entity_id).in_(ids),
               col(Email.direction) == "inbound", col(Email.deleted_at).is_(None), col(EmailSentiment.label).is_not(None), at > since)
        .order_by(at, Email.id)
    ).all()
    for account_id, email_id, when, label, score, sender, cues in rows:
        out[account_id].append((email_id, Mail(when, label, float(score or 0.0), sender, tuple(cues or ()))))
    return out


def report_for(s: Session, org_id: str, account_id: str, now: datetime, pol: Policy) -> RiskReport:
    """The sentiment report of one account now."""
    mails = account_mail(s, org_id, [account_id], now - timedelta(days=2 * pol.window_days)).get(account_id, [])
    return assess([m for _, m in mails], now, pol)


def evaluate(s: Session, org_id: str, account_ids: Iterable[str], now: datetime, pol: Policy) -> list[dict[str, Any]]:
    """Re-assess accounts in the caller's transaction: flip their state, and return the owner
    notifications of accounts that just turned at risk (inserted; the caller commits, then publishes)."""
    ids = sorted(set(account_ids))
    if not ids:
        return []
    mails = account_mail(s, org_id, ids, now - timedelta(days=2 * pol.window_days))
    insert_ignore(s, AccountRisk, [{"org_id": org_id, "account_id": a, "at_risk": False, "episode": 0, "evaluated_at": now}
                                   for a in ids], ["org_id", "account_id"])
    turned: list[tuple[str, int, RiskReport, str | None]] = []
    for account_id in ids:
        rows = mails.get(account_id, [])
        report = assess([m for _, m in rows], now, pol)
        key = (col(AccountRisk.org_id) == org_id, col(AccountRisk.account_id) == account_id)
        if report.at_risk:
            episode = s.execute(update(AccountRisk).where(*key, col(AccountRisk.at_risk).is_(False))
                                .values(at_risk=True, episode=AccountRisk.episode + 1, since=now, evaluated_at=now)
                                .returning(col(AccountRisk.episode))).scalar_one_or_none()
            if episode is not None:
                newest = next((eid for eid, m in reversed(rows) if m.label == "negative"), None)
                turned.append((account_id, int(episode), report, newest))
        else:
            s.execute(update(AccountRisk).where(*key, col(AccountRisk.at_risk).is_(True))
                      .values(at_risk=False, since=None, evaluated_at=now))
    if not turned:
        return []
    owners = {a.id: a for a in s.execute(select(CrmAccount).where(
        col(CrmAccount.org_id) == org_id, col(CrmAccount.id).in_([t[0] for t in turned]))).scalars()}
    notes = []
    for account_id, episode, report, email_id in turned:
        metrics.ACCOUNTS_AT_RISK.inc()
        account = owners.get(account_id)
        log.info("account_at_risk", account_id=account_id, episode=episode)
        if account is None:
            continue
        data = at_risk_data(account, episode, report, email_id)
        # The webhook event, in this transaction (the CRM hears it even when nobody owns the account).
        record_event(s, org_id, AT_RISK_KIND, data, dedupe_key=f"{AT_RISK_KIND}:{account_id}:{episode}")
        if not account.assigned_to:
            continue  # nobody to tell; the state still records the episode
        notes.append({"org_id": org_id, "user_id": account.assigned_to, "kind": AT_RISK_KIND,
                      "title": f"{account.name} is at risk"[:500], "body": "; ".join(report.reasons)[:2000], "email_id": email_id,
                      "data": data, "dedupe_key": f"{AT_RISK_KIND}:{account_id}:{episode}"[:200]})
    return notifications.insert_new(s, notes)


def at_risk_data(account: CrmAccount, episode: int, report: RiskReport, email_id: str | None) -> dict[str, Any]:
    """What the notification (and the ``sentiment.at_risk`` event) carries."""
    return {"account_id": account.id, "account_name": account.name, "user_id": account.assigned_to, "episode": episode,
            "reasons": report.reasons, "counts": report.counts, "window_days": report.window_days, "trend": report.trend,
            "latest_negative_email_id": email_id}


@register_sweep("account_risk")
def sweep_account_risk(session: Session, now: datetime) -> int:
    """Every :data:`SWEEP_EVERY`: re-assess accounts at risk and accounts with negative mail in the last day."""
    with _sweep_lock:
        last = _last_sweep.get("at")
        if last is not None and now - last < SWEEP_EVERY:
            return 0
        _last_sweep["at"] = now
    pol = policy()
    by_org: dict[str, set[str]] = defaultdict(set)
    for org_id, account_id in session.execute(select(AccountRisk.org_id, AccountRisk.account_id)
                                              .where(col(AccountRisk.at_risk).is_(True)).limit(5000)).all():
        by_org[org_id].add(account_id)
    for org_id, account_id in session.execute(
            select(EmailLink.org_id, EmailLink.entity_id).distinct()
            .join(EmailSentiment, col(EmailSentiment.email_id) == EmailLink.email_id)
            .where(col(EmailLink.entity_type) == "account", col(EmailSentiment.label) == "negative",
                   col(EmailSentiment.created_at) > now - timedelta(days=1)).limit(5000)).all():
        by_org[org_id].add(account_id)
    pushed: list[dict[str, Any]] = []
    for org_id, ids in by_org.items():
        pushed += evaluate(session, org_id, ids, now, pol)
    session.commit()
    notifications.publish(pushed)
    return sum(len(ids) for ids in by_org.values())
