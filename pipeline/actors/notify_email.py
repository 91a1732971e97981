"""``notify.email``: one notification emailed to its user (:mod:`pipeline.flows.notify_email`)."""

from __future__ import annotations

from pipeline import jobs
from pipeline.broker import actor
from pipeline.flows.notify_email import send_notification_email

__all__ = ["email_notification"]


@actor(jobs.NOTIFY_EMAIL, max_retries=5)
def email_notification(notification_id: str) -> None:
    """At most once per notification; an exception (relay down or deferring) is retried by Dramatiq."""
    send_notification_email(notification_id)
