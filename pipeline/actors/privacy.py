"""``privacy.run`` (an export or erase of one address) and ``privacy.retention`` (one organization's policy)."""

from __future__ import annotations

from pipeline import jobs
from pipeline.broker import actor
from pipeline.flows.privacy import run_job
from pipeline.flows.retention import apply_retention

__all__ = ["privacy_job", "retention"]

RETENTION_BUDGET_SECONDS = 120.0


@actor(jobs.PRIVACY_RUN, max_retries=5, min_backoff=5_000, max_backoff=300_000)
def privacy_job(job_id: str) -> None:
    """Runs or resumes the job; progress is on its row, so a retry continues where it stopped."""
    run_job(job_id)


@actor(jobs.PRIVACY_RETENTION, max_retries=5, min_backoff=5_000, max_backoff=300_000)
def retention(org_id: str) -> None:
    """Purges in small batches for a while, then hands the rest to a fresh message."""
    _, more = apply_retention(org_id, budget_seconds=RETENTION_BUDGET_SECONDS)
    if more:
        jobs.PRIVACY_RETENTION.send(org_id)
