"""Opens and clicks by email for users who asked for it (``notify_by_email``); run by ``notify.email``.

Sent from the service's own address (``MAILPIPE_NOTIFY_SMTP_URL``, e.g.
``smtp://user:pass@smtp.example.com:587?from=notifications@example.com``; ``smtps://`` for implicit
TLS, ``?security=none`` only for local test servers), never from the salesperson's mailbox, so
nothing lands in their Sent folder or comes back through sync. A notification email is at most
once: the row moves ``pending → sending`` before the SMTP call, and one found in ``sending`` after
a crash is not sent again (the in-app notification and the websocket push already told the user).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
from sqlalchemy import update
from sqlmodel import Session, col, select

from models import Notification, User, utcnow
from models.db import get_engine
from ops.settings import get_settings
from pipeline import jobs
from pipeline.clients.smtp import SmtpSettings
from pipeline.flows.connections import smtp_transport, tls_context
from pipeline.scheduler import register_sweep
from pipeline.stages.compose import Draft, compose
from pipeline.stages.netpolicy import ANY
from pipeline.stages.smtp_reply import SmtpOutcome

__all__ = ["mark_pending", "notify_smtp", "send_notification_email", "sweep_pending_notification_emails"]

log = structlog.get_logger("mailpipe.notify_email")

RESWEEP_AFTER = timedelta(minutes=1)


def notify_smtp(url: str) -> tuple[SmtpSettings, str]:
    """(SmtpSettings, from address) for ``MAILPIPE_NOTIFY_SMTP_URL``.

    The operator chose this relay (often a local one), so the connection guard lets it reach any
    address: MAILPIPE_MAIL_ALLOWED_NETS is about hosts a tenant names.
    """
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    security = query.get("security") or ("ssl" if parts.scheme == "smtps" else "starttls")
    port = parts.port or {"ssl": 465, "starttls": 587, "none": 25}[security]
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    settings = SmtpSettings(host=parts.hostname or "", port=port, security=security, username=user if password else None,
                            password=password if user else None, ssl_context=tls_context() if security != "none" else None,
                            allowed_nets=ANY)
    return settings, query["from"]


def mark_pending(s: Session, notifications: list[dict[str, Any]]) -> list[str]:
    """Mark the new notifications of users with ``notify_by_email`` as waiting for their email; their ids."""
    if not notifications or get_settings().notify_smtp_url is None:
        return []
    wanted = set(s.execute(select(User.id).where(
        col(User.org_id).in_({n["org_id"] for n in notifications}), col(User.id).in_({n["user_id"] for n in notifications}),
        col(User.notify_by_email).is_(True))).scalars())
    keys = [n["dedupe_key"] for n in notifications if n["user_id"] in wanted]
    if not keys:
        return []
    s.execute(update(Notification).where(col(Notification.dedupe_key).in_(keys), col(Notification.email_state).is_(None))
              .values(email_state="pending"))
    return list(s.execute(select(Notification.id).where(col(Notification.dedupe_key).in_(keys))).scalars())


def send_notification_email(notification_id: str) -> None:
    """Email one notification to its user (at most once); raises when the relay asks to try again later."""
    url = get_settings().notify_smtp_url
    if url is None:
        return
    with Session(get_engine(), expire_on_commit=False) as s:
        res = s.exec(update(Notification).where(col(Notification.id) == notification_id, col(Notification.email_state) == "pending")
                        .values(email_state="sending"))
        s.commit()
        if res.rowcount != 1:
            return
        n = s.get(Notification, notification_id)
        assert n is not None
        user = s.get(User, (n.org_id, n.user_id))
    if user is None or not user.email:
        _finish(notification_id, "failed")
        return
    settings, sender = notify_smtp(url)
    text = f"{n.title}\n\n{n.body}\n".strip() + "\n\nYou get these because email notifications are on for your account.\n"
    raw, _ = compose(Draft(from_email=sender, from_name="mailpipe", to=(user.email,), subject=n.title[:200], text=text))
    try:
        result = smtp_transport().send(settings, sender, [user.email], raw)
        outcome = result.verdict.outcome
    except Exception as exc:  # connection-level failure: nothing was delivered; try again
        log.warning("notification_email_retry", notification_id=notification_id, error=type(exc).__name__)
        _finish(notification_id, "pending")
        raise
    if outcome is SmtpOutcome.RETRY:
        _finish(notification_id, "pending")
        raise RuntimeError(f"notification email deferred: {result.verdict.reply}")
    _finish(notification_id, "sent" if outcome is SmtpOutcome.SENT else "failed")


def _finish(notification_id: str, state: str) -> None:
    with Session(get_engine()) as s:
        s.execute(update(Notification).where(col(Notification.id) == notification_id).values(
            email_state=state, emailed_at=utcnow() if state == "sent" else None))
        s.commit()


@register_sweep("notification_emails")
def sweep_pending_notification_emails(session: Session, now: datetime) -> int:
    """Hand notification emails whose message was lost to the broker again."""
    ids = list(session.execute(select(Notification.id).where(
        Notification.email_state == "pending", Notification.created_at < now - RESWEEP_AFTER).limit(500)).scalars())
    for nid in ids:
        jobs.NOTIFY_EMAIL.send(nid)
    return len(ids)
