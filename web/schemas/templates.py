"""Templates."""

from __future__ import annotations

from web.schemas import Out
from web.schemas.common import Ts


class TemplateOut(Out):
    id: str
    name: str
    category: str
    subject: str
    body_html: str
    body_text: str | None
    is_public: bool
    created_by: str | None
    merge_fields: list[str]
    usage_count: int
    last_used_at: Ts
    sent_count: int
    avg_open_rate: float | None
    avg_click_rate: float | None
    created_at: Ts
    updated_at: Ts


class TemplatesPage(Out):
    items: list[TemplateOut]
    next_cursor: str | None


class PreviewOut(Out):
    subject: str
    body_html: str
    body_text: str | None
    missing: list[str]
