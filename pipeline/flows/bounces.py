"""Applying delivery reports and complaints to the mail we sent (called by the parse stage, inside its
transaction, so a report is applied exactly when it is parsed and never twice).

A report is matched to our outbound email by the ``X-Mailpipe-Email-Id`` or Message-ID it returns;
each failed recipient is added to the email's ``bounces`` (one entry per recipient and report), the
email becomes ``bounced`` once every recipient hard-bounced, hard bounces and complaints put the
address on the organization's suppression list, and the sender gets an ``email.bounced`` (or
``email.complained``) notification written in the same transaction: :func:`record_email_bounced` is
where the webhook outbox's ``email.bounced`` event belongs too.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from email.utils import getaddresses
from typing import Any

import structlog
from sqlalchemy import update
from sqlmodel import Session, col, or_, select

from models import Email, EmailAccount, Outbox, Suppression, normalize_email
from models.upsert import insert_ignore
from pipeline.flows import notifications
from pipeline.flows.events_outbox import email_payloads, record_event, wants
from pipeline.stages.bounces import Report

__all__ = ["AppliedReport", "apply_report", "record_email_bounced", "suppress"]

log = structlog.get_logger("mailpipe.bounces")


class AppliedReport:
    """What one report changed: the matched email (or None) and the notification rows to push after commit."""

    def __init__(self, email_id: str | None, notes: list[dict[str, Any]], bounced: list[dict[str, Any]],
                 became_bounced: bool = False) -> None:
        self.email_id = email_id
        self.notes = notes
        self.bounced = bounced
        self.became_bounced = became_bounced


def _recipients(e: Email) -> set[str]:
    return {a for a in (normalize_email(addr) for _, addr in getaddresses([*e.to_emails, *e.cc_emails, *e.bcc_emails])) if a}


def _match(s: Session, org_id: str, report: Report) -> Email | None:
    conds = []
    if report.email_ids:
        conds.append(col(Email.id).in_(list(report.email_ids)))
    if report.message_ids:
        conds.append(col(Email.message_id).in_(list(report.message_ids)))
    if not conds:
        return None
    return s.execute(select(Email).where(Email.org_id == org_id, Email.direction == "outbound", col(Email.deleted_at).is_(None),
                                         or_(*conds)).order_by(col(Email.created_at)).limit(1).with_for_update()).scalar_one_or_none()


def suppress(s: Session, org_id: str, addresses: Iterable[str], reason: str, email_id: str | None) -> None:
    """Put addresses on the suppression list; a hard bounce or complaint outranks an earlier unsubscribe
    (which blocks marketing mail only)."""
    norms = sorted({normalize_email(a) or a for a in addresses})
    if not norms:
        return
    insert_ignore(s, Suppression, [{"org_id": org_id, "address_norm": a, "reason": reason, "email_id": email_id} for a in norms],
                  ["org_id", "address_norm"])
    if reason != "unsubscribe":
        s.execute(update(Suppression).where(col(Suppression.org_id) == org_id, col(Suppression.address_norm).in_(norms),
                                            col(Suppression.reason) == "unsubscribe").values(reason=reason, email_id=email_id))


def record_email_bounced(s: Session, email: Email, user_id: str, entries: list[dict[str, Any]], report_email_id: str,
                         kind: str = "email.bounced") -> list[dict[str, Any]]:
    """The ``email.bounced`` (or ``email.complained``) event of ``email``, written in the caller's transaction.

    The sender's in-app notification (pushed after the commit by the caller) and the webhook
    outbox's ``email.bounced`` event (a complaint is an ``email.bounced`` whose entries have
    ``type: "complaint"``: the webhook contract has no separate complaint event), both in the
    same transaction. Returns the notification rows that are new.
    """
    if wants(s, email.org_id, "email.bounced"):
        data = {**email_payloads(s, [email.id]).get(email.id, {"email_id": email.id}), "status": email.status,
                "bounce": entries, "report_email_id": report_email_id}
        record_event(s, email.org_id, "email.bounced", data, dedupe_key=f"email.bounced:{email.id}:{report_email_id}"[:200])
    who = ", ".join(b["recipient"] for b in entries)[:300]
    verb = "Complaint about" if kind == "email.complained" else "Bounced"
    rows = [{
        "org_id": email.org_id, "user_id": user_id, "kind": kind, "title": f"{verb}: {email.subject or '(no subject)'}"[:500],
        "body": who[:2000], "email_id": email.id,
        "data": {"bounce": entries, "report_email_id": report_email_id, "status": email.status},
        "dedupe_key": f"{kind}:{email.id}:{report_email_id}"[:200],
    }]
    return notifications.insert_new(s, rows)


def apply_report(s: Session, report_email: Email, report: Report, now: datetime) -> AppliedReport:
    """Apply one parsed report (``report_email`` is the report as stored) to the email it is about."""
    target = _match(s, report_email.org_id, report)
    hard = [r.recipient for r in report.recipients if r.type == "hard"]
    if target is None:
        log.info("report_unmatched", report_email_id=report_email.id, kind=report.kind, recipients=len(report.recipients))
        return AppliedReport(None, [], [])
    if report.kind == "complaint":
        suppress(s, target.org_id, [r.recipient for r in report.recipients], "complaint", target.id)
        entries = [{"recipient": r.recipient, "type": "complaint", "status": r.status, "diagnostic": r.diagnostic,
                    "at": now.isoformat()} for r in report.recipients]
        return AppliedReport(target.id, _notify(s, target, entries, report_email.id, "email.complained"), entries)
    known = {(b.get("recipient"), b.get("report_email_id")) for b in target.bounces or []}
    entries = [{"recipient": r.recipient, "type": r.type, "status": r.status, "diagnostic": r.diagnostic, "at": now.isoformat(),
                "report_email_id": report_email.id} for r in report.recipients if (r.recipient, report_email.id) not in known]
    if not entries:
        return AppliedReport(target.id, [], [])
    bounces = [*(target.bounces or []), *entries]
    hard_all = {b["recipient"] for b in bounces if b.get("type") == "hard"}
    rcpts = _recipients(target)
    status = "bounced" if rcpts and rcpts <= hard_all and target.status in ("sent", "bounced", "failed") else target.status
    became = status == "bounced" and target.status != "bounced"
    s.execute(update(Email).where(col(Email.id) == target.id).values(bounces=bounces, status=status))
    target.bounces, target.status = bounces, status
    if hard:
        suppress(s, target.org_id, hard, "hard_bounce", target.id)
    return AppliedReport(target.id, _notify(s, target, entries, report_email.id, "email.bounced"), entries, became)


def _notify(s: Session, target: Email, entries: list[dict[str, Any]], report_email_id: str, kind: str) -> list[dict[str, Any]]:
    user_id = s.execute(select(Outbox.user_id).where(Outbox.email_id == target.id)).scalar_one_or_none() or \
        s.execute(select(EmailAccount.user_id).where(EmailAccount.id == target.account_id)).scalar_one_or_none()
    if user_id is None:
        return []
    return record_email_bounced(s, target, user_id, entries, report_email_id, kind)
