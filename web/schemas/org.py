"""The calling organization."""

from __future__ import annotations

from web.schemas import Out
from web.schemas.common import Ts


class OrgOut(Out):
    id: str
    name: str
    auto_create_leads: bool
    mark_seen: bool
    own_domains: list[str]
    honor_dnt: bool
    anonymize_ip: bool
    sentiment_llm: bool
    retention_days: int | None
    created_at: Ts
