"""Sentiment results and the interface every classifier backend offers. Pure: no I/O.

A result is a label (``positive``, ``neutral`` or ``negative``), a score in -1..1 (below zero:
negative), the model that produced it (recorded with every result, so a fallback is visible) and the
business cues the text showed (``churn``, ``billing``, ...), which the at-risk reasons quote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["LABELS", "Classifier", "Sentiment", "Thresholds", "clamp", "label_for"]

LABELS = ("positive", "neutral", "negative")


@dataclass(frozen=True, slots=True)
class Sentiment:
    """One message's sentiment."""

    label: str
    score: float
    model: str
    cues: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Scores at or below ``negative`` are negative, at or above ``positive`` positive, neutral between."""

    negative: float
    positive: float


class Classifier(Protocol):
    """A sentiment backend: the name recorded with its results, and one text in, one result out."""

    @property
    def name(self) -> str: ...

    def classify(self, text: str) -> Sentiment: ...


def clamp(score: float) -> float:
    """``score`` within -1..1, rounded to four places."""
    return round(max(-1.0, min(1.0, score)), 4)


def label_for(score: float, thresholds: Thresholds) -> str:
    """The label of ``score`` under ``thresholds``."""
    if score <= thresholds.negative:
        return "negative"
    if score >= thresholds.positive:
        return "positive"
    return "neutral"
