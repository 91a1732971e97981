"""Sentiment of a CRM account's inbound mail."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from web.schemas import Out
from web.schemas.common import Ts


class SentimentCounts(Out):
    positive: int
    neutral: int
    negative: int


class Trend(Out):
    direction: Literal["worsening", "improving", "steady", "insufficient_data"] = Field(
        description="mean score of this window against the previous one (a change under 0.15 is steady)")
    score: float | None = Field(description="mean sentiment score in this window")
    previous_score: float | None = Field(description="mean sentiment score in the previous window")
    previous_counts: SentimentCounts


class AccountSentimentOut(Out):
    account_id: str
    at_risk: bool
    counts: SentimentCounts = Field(description="classified inbound emails linked to the account in the window")
    window_days: int
    trend: Trend
    reasons: list[str] = Field(description='e.g. "3 negative emails from 2 contacts in 14 days"')
    at_risk_since: Ts = Field(description="when the current at-risk episode started (the owner was notified then)")
