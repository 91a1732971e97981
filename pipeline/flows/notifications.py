"""Writing in-app notifications once and pushing the new ones to open browsers (shared by the actors)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from models import Notification
from models.upsert import insert_ignore
from pipeline.events import publish_event

__all__ = ["insert_new", "publish"]


def insert_new(s: Session, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert the rows whose (org, dedupe key) is not stored yet; returns those (the ones to push)."""
    if not rows:
        return []
    known = {(o, k) for o, k in s.execute(select(Notification.org_id, Notification.dedupe_key).where(
        col(Notification.dedupe_key).in_([r["dedupe_key"] for r in rows]))).all()}
    new = [r for r in rows if (r["org_id"], r["dedupe_key"]) not in known]
    insert_ignore(s, Notification, new, ["org_id", "dedupe_key"])
    return new


def publish(rows: list[dict[str, Any]]) -> None:
    """Real-time copies of committed notifications (call after the commit: the browser may fetch them)."""
    for n in rows:
        publish_event({"type": n["kind"], "org_id": n["org_id"], "user_id": n["user_id"], "email_id": n["email_id"],
                       "title": n["title"], "subject": n.get("body", ""), **n.get("data", {})})
