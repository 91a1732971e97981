"""Turning rows into API JSON: field selection, ISO timestamps, relative times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlmodel import SQLModel

from models import EmailAccount

__all__ = ["account_json", "iso", "realtime", "record_json", "relative_time"]

_HIDDEN = {"org_id", "email_norm", "personal_email_norm"}


def iso(value: datetime | None) -> str | None:
    """ISO-8601 in UTC with a Z suffix."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def record_json(row: SQLModel, *, hide: set[str] | None = None) -> dict[str, Any]:
    """A row as JSON-safe dict without internal columns."""
    hidden = _HIDDEN | (hide or set())
    out: dict[str, Any] = {}
    for name, value in row.model_dump().items():
        if name in hidden:
            continue
        out[name] = iso(value) if isinstance(value, datetime) else value
    return out


def relative_time(at: datetime | None, now: datetime | None = None) -> str:
    """'just now', '5 minutes ago', 'yesterday', '3 days ago', 'in 2 hours', or a date."""
    if at is None:
        return ""
    now = now or datetime.now(UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    seconds = int((now - at).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 45:
        return "just now"
    for limit, unit, size in ((3600, "minute", 60), (86400, "hour", 3600), (86400 * 30, "day", 86400)):
        if seconds < limit:
            n = max(1, round(seconds / size))
            if unit == "day" and n == 1 and not future:
                return "yesterday"
            text = f"{n} {unit}{'s' if n != 1 else ''}"
            return f"in {text}" if future else f"{text} ago"
    return at.astimezone(UTC).strftime("%b %d, %Y").replace(" 0", " ")


def realtime(a: EmailAccount, now: datetime | None = None) -> str:
    """"idle" while a watcher holds the mailbox's INBOX in IDLE under a live lease, else "poll"."""
    until = a.idle_lease_until
    if a.idle_since is None or until is None:
        return "poll"
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    return "idle" if until > (now or datetime.now(UTC)) else "poll"


def account_json(a: EmailAccount) -> dict[str, Any]:
    """The API view of an account; secrets are never included."""
    return {
        "id": a.id, "user_id": a.user_id, "email": a.email, "provider": a.provider,
        "imap": {"host": a.imap_host, "port": a.imap_port, "security": a.imap_security, "username": a.imap_username},
        "smtp": {"host": a.smtp_host, "port": a.smtp_port, "security": a.smtp_security, "username": a.smtp_username},
        "poll_seconds": a.poll_seconds, "saves_sent_copy": a.saves_sent_copy,
        "sync": {
            "state": a.sync_state, "last_synced_at": iso(a.last_synced_at), "last_error": a.last_error,
            "error_code": a.last_error_code, "reconnect_needed": a.last_error_code == "auth" or a.sync_state == "reconnect_required",
            "messages_synced": a.messages_synced, "backfill": {"done": a.backfill_done, "total": a.backfill_total},
            "next_fetch_at": iso(a.next_fetch_at), "deferred_until": iso(a.deferred_until),
            "realtime": realtime(a), "idle_since": iso(a.idle_since) if realtime(a) == "idle" else None,
        },
        "created_at": iso(a.created_at),
    }
