"""Privacy jobs and the suppression list."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from web.schemas import Out
from web.schemas.common import Ts


class JobAccepted(Out):
    job_id: str


class PrivacyJobOut(Out):
    id: str
    kind: Literal["export", "erase"]
    state: Literal["pending", "running", "done", "failed"]
    counts: dict[str, int] = Field(description="progress: emails, attachments, files, tracking_events, links, notifications...")
    download_url: str | None = Field(description="export: the archive, until expires_at (no API key needed; the URL is signed)")
    expires_at: Ts
    created_at: Ts
    finished_at: Ts
    error: str | None


class SuppressionOut(Out):
    email: str
    reason: Literal["hard_bounce", "complaint", "unsubscribe", "manual"]
    at: Ts
    email_id: str | None


class SuppressionsPage(Out):
    items: list[SuppressionOut]
    next_cursor: str | None
