"""Whether a CRM account is at risk, from the sentiment of its inbound mail. Pure: rows in, a report out.

The window is the last ``window_days`` days; the trend compares it with the window before. An
account is at risk when, in the window:

* at least ``negatives`` emails (default 3) are negative; or
* at least two are, and they are half or more of the account's classified mail; or
* at least two are, and one of them talks about leaving (a ``churn`` cue: "cancel our subscription",
  "not renewing", "switching to another provider").

The reasons say it in words a customer-success manager reads before a quarterly review.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pipeline.stages.sentiment import LABELS

__all__ = ["CUE_WORDS", "Mail", "Policy", "RiskReport", "assess"]

#: How a negative cue reads in a reason.
CUE_WORDS = {"churn": "talk of cancelling or leaving", "escalation": "escalation or repeated follow-ups",
             "billing": "billing problems", "outage": "outages or things not working", "persisting": "problems that persist"}
TREND_STEP = 0.15  # a change of mean score smaller than this is "steady"


@dataclass(frozen=True, slots=True)
class Mail:
    """One classified inbound email of the account."""

    at: datetime
    label: str
    score: float
    sender: str | None
    cues: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    window_days: int = 14
    negatives: int = 3


@dataclass(frozen=True, slots=True)
class RiskReport:
    at_risk: bool
    counts: dict[str, int]
    window_days: int
    trend: dict[str, object]
    reasons: list[str] = field(default_factory=list)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _counts(mails: Iterable[Mail]) -> dict[str, int]:
    c = Counter(m.label for m in mails)
    return {label: c.get(label, 0) for label in LABELS}


def _mean(mails: list[Mail]) -> float | None:
    return round(sum(m.score for m in mails) / len(mails), 3) if mails else None


def assess(mails: Iterable[Mail], now: datetime, policy: Policy) -> RiskReport:
    """The report for an account whose classified inbound mail of the last two windows is ``mails``."""
    window = timedelta(days=policy.window_days)
    current = [m for m in mails if now - window < m.at <= now]
    previous = [m for m in mails if now - 2 * window < m.at <= now - window]
    counts, before = _counts(current), _counts(previous)
    negative = [m for m in current if m.label == "negative"]
    n = len(negative)
    churn = any("churn" in m.cues for m in negative)
    at_risk = n >= policy.negatives or (n >= 2 and 2 * n >= len(current)) or (n >= 2 and churn)
    reasons: list[str] = []
    if n:
        senders = {m.sender for m in negative if m.sender}
        reasons.append(f"{_plural(n, 'negative email')} from {_plural(max(len(senders), 1), 'contact')} "
                       f"in {policy.window_days} days")
        cue_counts = Counter(c for m in negative for c in set(m.cues))
        for cue, words in CUE_WORDS.items():
            if cue_counts.get(cue):
                reasons.append(f"{words} in {_plural(cue_counts[cue], 'email')}")
    score, previous_score = _mean(current), _mean(previous)
    direction = "insufficient_data"
    if score is not None and previous_score is not None:
        delta = score - previous_score
        direction = "worsening" if delta <= -TREND_STEP else "improving" if delta >= TREND_STEP else "steady"
        share, share_before = n / len(current), before["negative"] / len(previous)
        if direction == "worsening" and share > share_before:
            reasons.append(f"negative share up from {share_before:.0%} to {share:.0%} "
                           f"against the previous {policy.window_days} days")
    trend: dict[str, object] = {"direction": direction, "score": score, "previous_score": previous_score, "previous_counts": before}
    return RiskReport(at_risk, counts, policy.window_days, trend, reasons)
