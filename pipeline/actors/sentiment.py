"""The sentiment stage's actor (``ingest.sentiment``): beside the ingest chain, fanned out by the link stage."""

from __future__ import annotations

from pipeline import jobs
from pipeline.broker import actor
from pipeline.flows import ingest_sentiment

__all__ = ["classify_emails"]


@actor(jobs.INGEST_SENTIMENT, max_retries=3)
def classify_emails(email_ids: list[str]) -> None:
    """Sentiment of linked inbound mail; at-risk accounts re-assessed and their owners notified."""
    ingest_sentiment.classify_batch(email_ids)
