"""Ingest stage 1 (``ingest.parse``): raw bytes from storage → structured email fields, conversation and snippet.

A message that cannot be used is quarantined with the reason (its raw bytes stay in storage);
one bad message never fails the batch, and nothing is retried forever.
"""

from __future__ import annotations

import structlog
from sqlalchemy import update
from sqlmodel import Session, col, select

from models import Email, EmailAccount, normalize_email, utcnow
from models.db import get_engine
from models.search import write_docs
from ops import metrics
from pipeline.clients.storage import StorageError, forget_raw, read_raw
from pipeline.flows import notifications
from pipeline.flows.bounces import AppliedReport, apply_report
from pipeline.flows.chain import in_state, move
from pipeline.flows.conversations import Incoming, thread_emails
from pipeline.flows.raw import refetch_raw
from pipeline.flows.search_index import rows_for_parsed
from pipeline.stages.bounces import Report, detect_report
from pipeline.stages.parse import ParsedEmail, parse_email, snippet

__all__ = ["apply_parsed", "parse_batch"]

log = structlog.get_logger("mailpipe.parse")


def apply_parsed(email: Email, parsed: ParsedEmail, account_email: str | None) -> None:
    """Copy a parse result onto the email row (pure assignment; no I/O)."""
    email.message_id = (email.message_id or parsed.message_id or "")[:995] or None
    email.in_reply_to = parsed.in_reply_to[:995] if parsed.in_reply_to else None
    email.references = [r[:995] for r in parsed.references[-100:]]
    email.subject = parsed.subject
    if parsed.from_ is not None:
        email.from_email = parsed.from_.email[:320]
        email.from_email_norm = normalize_email(email.from_email)
        email.from_name = parsed.from_.name[:500] or None
    email.to_emails = [a.email for a in parsed.to]
    email.cc_emails = [a.email for a in parsed.cc]
    email.bcc_emails = [a.email for a in parsed.bcc] or email.bcc_emails  # our own sends know their Bcc
    email.body_text = parsed.text
    email.body_html = parsed.html
    email.snippet = snippet(parsed.text, 100)
    email.headers = dict(parsed.headers)
    email.suspicious_sender = parsed.suspicious_sender
    email.defects = list(parsed.defects)
    email.attachment_count = len(parsed.attachments)
    if parsed.date is not None:
        email.sent_at = parsed.date
    if email.received_at is None:
        email.received_at = parsed.date
    own = normalize_email(account_email)
    if own is not None and email.from_email_norm == own:
        email.direction = "outbound"
        email.status = "sent"


_FIELDS = ("message_id", "in_reply_to", "references", "subject", "from_email", "from_email_norm", "from_name", "to_emails",
           "cc_emails", "bcc_emails", "body_text", "body_html", "snippet", "headers", "defects", "attachment_count", "sent_at",
           "received_at", "direction", "status", "parse_error", "suspicious_sender", "kind", "silent")


def parse_batch(email_ids: list[str]) -> list[str]:
    """Parse every email of the batch still in state ``fetched`` (one bulk UPDATE for the batch)."""
    with Session(get_engine(), expire_on_commit=False) as s:
        emails = in_state(s, email_ids, "fetched")
        if not emails:
            return email_ids
        accounts = dict(s.execute(select(EmailAccount.id, EmailAccount.email).where(
            col(EmailAccount.id).in_({e.account_id for e in emails}))).all())
        s.expunge_all()  # rows are written below in one executemany, not by the unit of work
        results: list[tuple[Email, ParsedEmail]] = []
        quarantined: list[Email] = []
        reports: list[tuple[Email, Report]] = []
        for email in emails:
            try:
                raw = read_raw(email.raw_key or "")
            except StorageError as exc:
                refetched = refetch_raw(s, email)
                if refetched is None:
                    email.parse_error = f"raw message missing from storage and no longer on the server: {exc}"
                    quarantined.append(email)
                    continue
                raw = refetched
            parsed = parse_email(raw)
            if parsed.error:
                email.parse_error = parsed.error
                email.defects = list(parsed.defects)
                quarantined.append(email)
                continue
            apply_parsed(email, parsed, accounts.get(email.account_id))
            if email.direction == "inbound":
                report = detect_report(raw)
                if report is not None:  # a delivery report or complaint: never linked, no lead, no "new email"
                    email.kind, email.silent = report.kind, True
                    reports.append((email, report))
            results.append((email, parsed))
        rows = [{"id": e.id, **{f: getattr(e, f) for f in _FIELDS}} for e, _ in results] + \
               [{"id": e.id, **{f: getattr(e, f) for f in _FIELDS}} for e in quarantined]
        if rows:
            s.execute(update(Email), rows)
        # Threads are joined on the stored fields (the conversation's numbers are recomputed from them).
        # Delivery reports and complaints stay out of conversations: they are about our mail, not a
        # customer waiting for an answer (the bounced email shows them in `bounces`).
        thread_emails(s, [Incoming(e, p.in_reply_to, p.references, p.headers.get("thread_index")) for e, p in results
                          if e.kind == "message"],
                      {k: v for k, v in accounts.items()})
        write_docs(s, rows_for_parsed(results))  # the full-text index, in the same transaction as the parse
        move(s, [e.id for e, _ in results], "parsed")
        move(s, [e.id for e in quarantined], "quarantined")
        now = utcnow()
        applied: list[AppliedReport] = [apply_report(s, email, report, now) for email, report in reports]
        s.commit()
    # The attachments stage reads the raw message again only when there are attachments.
    forget_raw([e.raw_key for e, _ in results if not e.attachment_count] + [e.raw_key for e in quarantined])
    for done in applied:
        notifications.publish(done.notes)
        for entry in done.bounced:
            metrics.BOUNCES.labels(entry["type"]).inc()
        if done.became_bounced:
            metrics.EMAILS_BOUNCED.inc()
    metrics.INGESTED.labels("parse", "ok").inc(len(results))
    if quarantined:
        metrics.INGESTED.labels("parse", "quarantined").inc(len(quarantined))
        log.warning("emails_quarantined", count=len(quarantined), reasons=sorted({e.parse_error or "" for e in quarantined})[:5])
    return email_ids
