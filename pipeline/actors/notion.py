"""``notion.save``: one run over a save to Notion (:func:`pipeline.flows.notion_save.run_save`)."""

from __future__ import annotations

from pipeline import jobs
from pipeline.broker import actor, current_run_owner
from pipeline.flows.notion_save import run_save

__all__ = ["save_to_notion"]


@actor(jobs.NOTION_SAVE, max_retries=5, min_backoff=5_000, max_backoff=300_000)
def save_to_notion(save_id: str) -> None:
    """Exactly one page however often it runs: the save row records the intent before each call."""
    run_save(save_id, current_run_owner())
