"""Emails: list items, the full email, links, sends and tracking."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from web.schemas import Out
from web.schemas.common import Ts


class SentimentOut(Out):
    label: Literal["positive", "neutral", "negative"]
    score: float = Field(ge=-1, le=1, description="below zero is negative")
    model: str = Field(description="the backend that produced it (vader-business-1, onnx:<model>, llm:<model>)")


class EmailFlags(Out):
    seen: bool = Field(description="\\Seen on the server (on any location)")
    flagged: bool = Field(description="\\Flagged on the server")
    answered: bool = Field(description="\\Answered on the server")


class EmailSummary(Out):
    id: str
    account_id: str
    direction: str
    status: str
    message_id: str | None
    thread_id: str | None
    from_email: str | None
    from_name: str | None
    to_emails: list[str]
    cc_emails: list[str]
    subject: str
    snippet: str
    received_at: Ts
    sent_at: Ts
    linked: bool
    needs_review: bool
    attachment_count: int
    open_count: int
    click_count: int
    pipeline_state: str
    sentiment: SentimentOut | None = Field(description="inbound mail: the sentiment of its new text (quotes and signature left out)")
    tracking_status: Literal["unopened", "opened", "clicked"] | None
    flags: EmailFlags
    deleted_on_server: bool = Field(description="no location of it is left on the server (it stays in the CRM's record)")
    kind: Literal["message", "bounce", "complaint"] = Field(
        description="bounce: a delivery report, complaint: an ARF abuse report (neither is ever linked or a lead)")
    search: SearchHit | None = Field(default=None, description="with q=: how well it matched, and where")


class SearchHit(Out):
    rank: float = Field(description="relevance of the match, higher is better (comparable within one query)")
    highlight: str = Field(description="a passage around the matched words: HTML-escaped text, matches in <mark>")


class EmailsPage(Out):
    items: list[EmailSummary]
    next_cursor: str | None


class AttachmentOut(Out):
    id: str
    filename: str
    content_type: str
    size: int
    inline: bool
    content_id: str | None
    url: str


class LinkDetail(Out):
    entity_type: str
    entity_id: str
    how: str


class LinksOut(Out):
    contact_ids: list[str]
    lead_ids: list[str]
    account_ids: list[str]
    opportunity_ids: list[str]
    needs_review: bool
    details: list[LinkDetail]


class TrackingSummary(Out):
    open_count: int
    click_count: int
    first_open_at: Ts
    last_open_at: Ts


class DeliveryOut(Out):
    recipients: list[str]
    state: str
    attempts: int
    smtp_code: int | None
    smtp_message: str | None
    error_code: str | None
    refused: dict[str, Any]
    log: list[dict[str, Any]]


class SentCopy(Out):
    state: str | None
    error: str | None


class SendState(Out):
    state: str
    kind: str
    category: str
    send_at: Ts
    deferred_until: Ts
    next_attempt_at: Ts
    track_opens: bool
    track_clicks: bool
    idempotency_key: str | None
    sent_copy: SentCopy
    attempts: int
    deliveries: list[DeliveryOut]


class BounceOut(Out):
    recipient: str
    type: Literal["hard", "soft"]
    status: str = Field(description="the enhanced status code, e.g. 5.1.1")
    diagnostic: str
    at: str
    report_email_id: str | None = Field(default=None, description="the stored delivery report (kind: bounce)")


class EmailOut(EmailSummary):
    send_at: Ts
    deferred_until: Ts
    bcc_emails: list[str]
    body_text: str
    body_html: str | None
    body_html_safe: str | None = Field(description="body_html sanitized for display: no scripts, handlers, frames, forms or "
                                       "external styles; cid: images point at their attachments; remote images are a "
                                       "placeholder unless ?remote_content=true")
    bounces: list[BounceOut]
    in_reply_to: str | None
    references: list[str]
    attachments: list[AttachmentOut]
    links: LinksOut
    tracking: TrackingSummary
    template_id: str | None
    notion_page_url: str | None
    send: SendState | None
    parse_error: str | None
    defects: list[str]
    suspicious_sender: bool = Field(description="the From display name looks like another address (never auto-linked by it)")
    error: dict[str, Any] | None


class LinkAdded(Out):
    email_id: str
    links: LinksOut


class OutreachEntry(Out):
    user_id: str
    email_id: str | None
    subject: str | None
    direction: str
    at: Ts
    account_id: str | None
    visible: bool


class SendAccepted(Out):
    id: str
    status: Literal["queued", "scheduled"]
    created: bool
    recent_outreach: list[OutreachEntry] = Field(default_factory=list,
                                                 description="teammates who mailed these recipients in the last 14 days")


class CancelOut(Out):
    id: str
    status: str


class TrackingEventOut(Out):
    at: Ts
    ip: str | None
    user_agent: str | None
    machine: bool
    reason: str | None
    recipient_email: str | None
    method: str
    counted: bool
    url: str | None = None


class TrackingTotals(Out):
    opens: int
    clicks: int


class TrackingOut(Out):
    email_id: str
    open_count: int
    click_count: int
    first_open_at: Ts
    last_open_at: Ts
    first_open_after_send_s: float | None
    opens: list[TrackingEventOut]
    clicks: list[TrackingEventOut]
    status: Literal["unopened", "opened", "clicked"]
    events_total: TrackingTotals
    next_cursor: str | None = None
