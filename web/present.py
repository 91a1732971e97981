"""Turning rows into API JSON: field selection, ISO timestamps, relative times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlmodel import SQLModel

__all__ = ["iso", "record_json", "relative_time"]

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
