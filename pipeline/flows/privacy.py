"""Privacy jobs (queue ``privacy``): export everything held about an address, or erase it.

:func:`request_job` records the job (the address is kept on it only while it runs) and enqueues
``privacy.run``; :func:`run_job` does the work in small batches, writing progress counts to the job
row after each, and clears the address when the job ends, so a finished job keeps counts only. A
job that stopped (a killed worker, a lost message) is found again by :func:`sweep_privacy_jobs`,
which also deletes export archives whose download has expired. Both kinds are idempotent: an erase
that runs again finds what is left; an export that runs again writes the archive again.

What belongs to an address: every email it sent (From) or received (To, Cc, Bcc) in the
organization, with their attachments, tracking events, tracked links, CRM links and notifications.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from email.utils import getaddresses
from typing import Any

import structlog
from sqlalchemy import Text, cast, func, or_, update
from sqlmodel import Session, col, select

from models import (
    Document,
    Email,
    EmailAddress,
    EmailLink,
    Notification,
    PrivacyJob,
    TrackedLink,
    TrackingEvent,
    normalize_email,
    utcnow,
)
from models.db import get_engine
from ops import metrics
from pipeline import jobs
from pipeline.clients.storage import StorageError, get_storage
from pipeline.flows.purge import PurgeCounts, in_flight, purge_emails
from pipeline.scheduler import register_sweep

__all__ = ["BATCH", "EXPORT_TTL", "emails_of_address", "export_key", "request_job", "run_job", "sweep_privacy_jobs"]

log = structlog.get_logger("mailpipe.privacy")

BATCH = 50                      # emails per erase transaction (short locks)
EXPORT_TTL = timedelta(days=7)  # the export archive and its download URL
STALL = timedelta(minutes=5)    # a running job not updated this long is resumed by the sweep
MAX_ATTEMPTS = 5
JOB_BUDGET_SECONDS = 120.0      # an erase continues in a fresh message after this
BUSY_RETRY_MS = 10_000          # an erase waiting for mail still in the ingest chain or being sent


def export_key(org_id: str, job_id: str) -> str:
    return f"privacy/{org_id}/{job_id}.zip"


def request_job(org_id: str, kind: str, address: str) -> str:
    """Record an export or erase job for ``address`` and hand it to the ``privacy`` queue."""
    norm = normalize_email(address) or address.strip().lower()
    with Session(get_engine(), expire_on_commit=False) as s:
        job = PrivacyJob(org_id=org_id, kind=kind, subject=norm[:320], counts={})
        s.add(job)
        s.commit()
    jobs.PRIVACY_RUN.send(job.id)
    return job.id


def _mentions(e: Email, address: str) -> bool:
    if (e.from_email_norm or "") == address:
        return True
    return any((normalize_email(a) or "") == address for _, a in getaddresses([*e.to_emails, *e.cc_emails, *e.bcc_emails]))


def emails_of_address(s: Session, org_id: str, address: str, *, after_id: str = "", limit: int = BATCH) -> list[Email]:
    """The next emails (by id, after ``after_id``) the address sent or received."""
    return _scan(s, org_id, address, after_id, limit)[0]


def _scan(s: Session, org_id: str, address: str, after_id: str, limit: int) -> tuple[list[Email], str]:
    """The next emails of the address after ``after_id``, and the last id looked at."""
    pattern = "%" + address.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    listed = select(EmailAddress.email_id).where(EmailAddress.org_id == org_id, EmailAddress.address_norm == address)
    out: list[Email] = []
    cursor = after_id
    while len(out) < limit:
        rows = list(s.execute(select(Email).where(
            Email.org_id == org_id, col(Email.id) > cursor,
            or_(col(Email.from_email_norm) == address, col(Email.id).in_(listed),
                func.lower(cast(Email.to_emails, Text)).like(pattern, escape="\\"),
                func.lower(cast(Email.cc_emails, Text)).like(pattern, escape="\\"),
                func.lower(cast(Email.bcc_emails, Text)).like(pattern, escape="\\")),
        ).order_by(col(Email.id)).limit(limit)).scalars())
        if not rows:
            break
        for e in rows:
            if len(out) >= limit:
                break
            cursor = e.id
            if _mentions(e, address):  # the LIKE also matches longer addresses
                out.append(e)
    return out, cursor


def _claim(job_id: str) -> PrivacyJob | None:
    with Session(get_engine(), expire_on_commit=False) as s:
        job = s.execute(select(PrivacyJob).where(PrivacyJob.id == job_id).with_for_update()).scalar_one_or_none()
        if job is None or job.state in ("done", "failed"):
            return None
        now = utcnow()
        if job.state == "running" and job.updated_at > now - STALL:
            return None  # another worker is on it
        job.state, job.updated_at, job.attempts = "running", now, job.attempts + 1
        s.add(job)
        s.commit()
        return job


def _progress(job_id: str, counts: dict[str, Any], **values: Any) -> None:
    with Session(get_engine()) as s:
        s.execute(update(PrivacyJob).where(col(PrivacyJob.id) == job_id).values(counts=dict(counts), updated_at=utcnow(), **values))
        s.commit()


def run_job(job_id: str) -> None:
    """Run (or resume) one privacy job to its end."""
    job = _claim(job_id)
    if job is None:
        return
    try:
        if job.kind == "erase":
            _erase(job)
        elif job.kind == "export":
            _export(job)
        else:
            raise ValueError(f"unknown privacy job kind {job.kind!r}")
    except Exception as exc:
        final = job.attempts >= MAX_ATTEMPTS
        _progress(job.id, job.counts, state="failed" if final else "pending", error=type(exc).__name__,
                  **({"subject": None, "finished_at": utcnow()} if final else {}))
        if final:
            metrics.PRIVACY_JOBS.labels(job.kind, "failed").inc()
            log.error("privacy_job_failed", job_id=job.id, kind=job.kind, error=type(exc).__name__)
            return
        raise
    metrics.PRIVACY_JOBS.labels(job.kind, "done").inc()


def _erase(job: PrivacyJob) -> None:
    address = job.subject or ""
    total = PurgeCounts()
    for name, value in (job.counts or {}).items():
        if hasattr(total, name) and isinstance(value, int):
            setattr(total, name, value)
    deadline = time.monotonic() + JOB_BUDGET_SECONDS
    after = ""  # everything up to here is purged, busy or not the address's: each batch scans on from there
    busy = 0
    while True:
        with Session(get_engine(), expire_on_commit=False) as s:
            found, after = _scan(s, job.org_id, address, after, BATCH)
            if not found:
                break
            batch = [e.id for e in found if not in_flight(e)]
            busy += len(found) - len(batch)
            # the delivery reports about mail to the address name it too
            batch += [str(b["report_email_id"]) for e in found if not in_flight(e) for b in e.bounces or [] if b.get("report_email_id")]
            if batch:
                total.add(purge_emails(s, job.org_id, batch, reason="erase"))
        _progress(job.id, total.as_dict())
        if time.monotonic() > deadline:  # the rest in a fresh message (far below any broker timeout)
            _progress(job.id, total.as_dict(), state="pending")
            jobs.PRIVACY_RUN.send(job.id)
            return
    if busy:  # mail still being ingested or sent: erased once that is over
        _progress(job.id, total.as_dict(), state="pending")
        jobs.PRIVACY_RUN.send(job.id, delay_ms=BUSY_RETRY_MS)
        return
    _progress(job.id, total.as_dict(), state="done", subject=None, finished_at=utcnow(), error=None)
    log.info("privacy_erase_done", job_id=job.id, **total.as_dict())


def _export(job: PrivacyJob) -> None:
    address = job.subject or ""
    storage = get_storage()
    counts = {"emails": 0, "attachments": 0, "tracking_events": 0, "links": 0, "notifications": 0}
    buf = io.BytesIO()
    tracking: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    index: list[dict[str, Any]] = []
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for emails in _pages(job.org_id, address):
            with Session(get_engine()) as s:
                ids = [e.id for e in emails]
                docs = list(s.execute(select(Document).where(col(Document.email_id).in_(ids))).scalars())
                for e in emails:
                    raw = _raw(storage, e.raw_key)
                    zf.writestr(f"emails/{e.id}.eml", raw if raw is not None else _fallback_eml(e))
                    index.append({"id": e.id, "direction": e.direction, "kind": e.kind, "message_id": e.message_id,
                                  "from_email": e.from_email, "to_emails": e.to_emails, "cc_emails": e.cc_emails,
                                  "subject": e.subject, "received_at": _iso(e.received_at), "sent_at": _iso(e.sent_at),
                                  "status": e.status, "bounces": e.bounces, "raw_available": raw is not None})
                    counts["emails"] += 1
                for d in docs:
                    content = _raw(storage, d.storage_key)
                    if content is not None:
                        zf.writestr(f"attachments/{d.email_id}/{d.part_index:03d}-{_name(d.document_name)}", content)
                        counts["attachments"] += 1
                events = select(TrackingEvent).where(col(TrackingEvent.email_id).in_(ids)).order_by(col(TrackingEvent.at))
                for ev in s.execute(events).scalars():
                    tracking.append({"email_id": ev.email_id, "kind": ev.kind, "at": _iso(ev.at), "url": ev.url, "ip": ev.ip,
                                     "user_agent": ev.user_agent, "machine": ev.machine, "recipient_email": ev.recipient_email})
                for lk in s.execute(select(TrackedLink).where(col(TrackedLink.email_id).in_(ids))).scalars():
                    links.append({"email_id": lk.email_id, "kind": "tracked_link", "url": lk.url})
                for ln in s.execute(select(EmailLink).where(col(EmailLink.email_id).in_(ids))).scalars():
                    links.append({"email_id": ln.email_id, "kind": "crm_link", "entity_type": ln.entity_type, "entity_id": ln.entity_id,
                                  "how": ln.how})
                for n in s.execute(select(Notification).where(col(Notification.email_id).in_(ids))).scalars():
                    notes.append({"id": n.id, "email_id": n.email_id, "kind": n.kind, "title": n.title, "body": n.body,
                                  "user_id": n.user_id, "created_at": _iso(n.created_at)})
            counts.update(tracking_events=len(tracking), links=len(links), notifications=len(notes))
            _progress(job.id, counts)
        zf.writestr("emails.json", json.dumps(index, indent=1, ensure_ascii=False))
        zf.writestr("tracking.json", json.dumps(tracking, indent=1, ensure_ascii=False))
        zf.writestr("links.json", json.dumps(links, indent=1, ensure_ascii=False))
        zf.writestr("notifications.json", json.dumps(notes, indent=1, ensure_ascii=False))
    key = export_key(job.org_id, job.id)
    storage.put(key, buf.getvalue(), "application/zip")
    counts["bytes"] = buf.tell()
    _progress(job.id, counts, state="done", subject=None, finished_at=utcnow(), result_key=key, expires_at=utcnow() + EXPORT_TTL,
              error=None)
    log.info("privacy_export_done", job_id=job.id, **counts)


def _pages(org_id: str, address: str) -> Iterator[list[Email]]:
    after = ""
    while True:
        with Session(get_engine(), expire_on_commit=False) as s:
            page = emails_of_address(s, org_id, address, after_id=after)
        if not page:
            return
        yield page
        after = page[-1].id


def _raw(storage: Any, key: str | None) -> bytes | None:
    if not key:
        return None
    try:
        return bytes(storage.get(key))
    except StorageError:
        return None


def _fallback_eml(e: Email) -> bytes:
    """The stored fields as a message when the raw copy is gone (a cache the server may no longer hold)."""
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = e.from_email or ""
    msg["To"] = ", ".join(e.to_emails)
    if e.cc_emails:
        msg["Cc"] = ", ".join(e.cc_emails)
    msg["Subject"] = e.subject
    if e.message_id:
        msg["Message-ID"] = f"<{e.message_id}>"
    msg.set_content(e.body_text or "")
    if e.body_html:
        msg.add_alternative(e.body_html, subtype="html")
    return bytes(msg)


def _name(filename: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._- " else "_" for c in filename).strip(" .")
    return cleaned[:120] or "attachment"


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


@register_sweep("privacy_jobs")
def sweep_privacy_jobs(session: Session, now: datetime) -> int:
    """Resume privacy jobs that stopped; delete export archives whose download expired."""
    stalled = list(session.execute(select(PrivacyJob.id).where(
        col(PrivacyJob.state).in_(("pending", "running")), col(PrivacyJob.updated_at) < now - STALL).limit(100)).scalars())
    expired = list(session.execute(select(PrivacyJob).where(
        col(PrivacyJob.result_key).is_not(None), col(PrivacyJob.expires_at) < now).limit(100)).scalars())
    storage = get_storage()
    for job in expired:
        try:
            storage.delete(job.result_key or "")
        except StorageError:
            continue
        job.result_key = None
        session.add(job)
    session.commit()
    for job_id in stalled:
        jobs.PRIVACY_RUN.send(job_id)
    return len(stalled) + len(expired)
