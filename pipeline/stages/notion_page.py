"""What a saved email's Notion page holds: which database columns get what, the title, the tags,
the header line that also marks the page as ours, and what a Notion error means. Pure.

Columns are matched by type, preferring familiar names, and a value goes only where the data
source has a column of the right type: a missing column is skipped, never an error
(../shared/notes/nextcrm-templates-notion.md §3.2-3.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.stages.notion_blocks import MAX_TEXT

__all__ = ["Columns", "NotionVerdict", "choose_columns", "classify_error", "default_title", "header_block", "page_properties",
           "clean_tags", "find_ref"]

_EMAIL_NAMES = ("from", "sender", "email", "from email", "sender email")
_DATE_NAMES = ("received", "date", "received at", "sent", "email date")
_TAG_NAMES = ("tags", "labels", "tag", "categories")
_URL_NAMES = ("crm link", "link", "url", "source")
REF_PREFIX = "mailpipe ref "


@dataclass(frozen=True, slots=True)
class Columns:
    """The data source's columns mailpipe fills (None: the database has no such column)."""

    title: str | None
    sender: str | None
    date: str | None
    tags: str | None


def _pick(props: dict[str, Any], kind: str, names: tuple[str, ...]) -> str | None:
    of_kind = [name for name, p in props.items() if p.get("type") == kind]
    for wanted in names:
        for name in of_kind:
            if name.strip().lower() == wanted:
                return name
    return of_kind[0] if of_kind else None


def choose_columns(properties: dict[str, Any]) -> Columns:
    """Columns by type, preferring the usual names (a data source always has one title column)."""
    return Columns(title=_pick(properties, "title", ("name", "title")), sender=_pick(properties, "email", _EMAIL_NAMES),
                   date=_pick(properties, "date", _DATE_NAMES), tags=_pick(properties, "multi_select", _TAG_NAMES))


def default_title(customer: str | None, subject: str | None) -> str:
    """"[Customer Name] - [Email Subject]" (either part alone when the other is missing)."""
    subject = (subject or "").strip() or "(no subject)"
    customer = (customer or "").strip()
    return f"{customer} - {subject}" if customer else subject


def clean_tags(tags: list[str]) -> list[str]:
    """Notion multi-select names: no commas, ≤ 100 characters, unique, at most 100."""
    out: list[str] = []
    for t in tags:
        name = " ".join(t.replace(",", " ").split())[:100]
        if name and name.lower() not in {o.lower() for o in out}:
            out.append(name)
    return out[:100]


def page_properties(columns: Columns, *, title: str, sender: str | None, date: datetime | None, tags: list[str]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if columns.title:
        props[columns.title] = {"title": [{"type": "text", "text": {"content": title[:MAX_TEXT]}}]}
    if columns.sender and sender and len(sender) <= 200:
        props[columns.sender] = {"email": sender}
    if columns.date and date is not None:
        props[columns.date] = {"date": {"start": date.isoformat()}}
    if columns.tags and tags:
        props[columns.tags] = {"multi_select": [{"name": t} for t in clean_tags(tags)]}
    return props


def header_block(ref: str, sender: str | None, date: datetime | None, crm_url: str | None = None) -> dict[str, Any]:
    """The first block: who and when, and the save's reference (how a retry recognises its page)."""
    grey = {"bold": False, "italic": False, "strikethrough": False, "underline": False, "code": False, "color": "gray"}
    parts = [p for p in (f"From {sender}" if sender else None, date.strftime("%d %b %Y %H:%M UTC") if date else None) if p]
    runs: list[dict[str, Any]] = [{"type": "text", "text": {"content": " · ".join(parts) + " · " if parts else "", "link": None},
                                   "annotations": grey}]
    if crm_url:
        runs.append({"type": "text", "text": {"content": "open in the CRM", "link": {"url": crm_url}}, "annotations": grey})
        runs.append({"type": "text", "text": {"content": " · ", "link": None}, "annotations": grey})
    runs.append({"type": "text", "text": {"content": f"{REF_PREFIX}{ref}", "link": None}, "annotations": grey})
    return {"object": "block", "type": "paragraph", "paragraph": {"rich_text": [r for r in runs if r["text"]["content"]]}}


def find_ref(block: dict[str, Any]) -> str | None:
    """The save reference in a page's first block, if it is a header made by :func:`header_block`."""
    body = block.get(block.get("type", ""), {})
    for r in body.get("rich_text", []) if isinstance(body, dict) else []:
        text = ((r.get("text") or {}).get("content") or r.get("plain_text") or "")
        if text.startswith(REF_PREFIX):
            return text[len(REF_PREFIX):].strip()
    return None


@dataclass(frozen=True, slots=True)
class NotionVerdict:
    """What to do after a Notion error: ``wait`` seconds then retry, retry later, or fail for good."""

    action: str  # "wait" | "retry" | "fail"
    wait_seconds: float
    code: str
    message: str


def classify_error(status: int, code: str, message: str, retry_after: str | None) -> NotionVerdict:
    """429 rate_limited and 529 service_overload: wait as told (Retry-After, else 2 s); 5xx and timeouts:
    retry later; any other 4xx (revoked token, deleted or unshared database, bad body): fail with a reason."""
    if status in (429, 529) or code in ("rate_limited", "service_overload"):
        try:
            wait = max(0.0, float(retry_after)) if retry_after is not None else 2.0
        except ValueError:
            wait = 2.0
        return NotionVerdict("wait", wait, code or str(status), message)
    if status >= 500 or status == 0:
        return NotionVerdict("retry", 0.0, code or f"http_{status}", message)
    reasons = {
        401: "Notion rejected the connection (the token was revoked or is invalid); connect Notion again",
        403: "the Notion integration has no access to this database; share the database with it",
        404: "the Notion database was not found (deleted, or not shared with the integration)",
    }
    return NotionVerdict("fail", 0.0, code or f"http_{status}", reasons.get(status, f"Notion refused the page: {message}"))
