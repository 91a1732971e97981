"""Webhook subscriptions and their delivery log."""

from __future__ import annotations

from pydantic import Field

from web.schemas import Out
from web.schemas.common import Ts


class WebhookOut(Out):
    id: str
    url: str
    events: list[str]
    description: str | None
    disabled: bool
    disabled_reason: str | None
    failing_since: Ts = Field(description="first failed attempt since the last success (3 days of failures disable it)")
    secret_rotated_until: Ts = Field(description="until when the previous secret still signs, beside the new one")
    created_at: Ts
    updated_at: Ts


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(description="whsec_...: shown only here (and by rotate-secret)")


class WebhookRotatedOut(WebhookCreatedOut):
    old_secret_expires_at: Ts


class WebhooksOut(Out):
    items: list[WebhookOut]


class WebhookTestOut(Out):
    event_id: str | None
    endpoint_id: str
    type: str
    disabled: bool


class DeliveryOut(Out):
    id: str
    event_id: str = Field(description="the webhook-id header: the same on every attempt")
    type: str
    status: str = Field(description="pending | succeeded | failed")
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: Ts
    last_attempt_at: Ts
    delivered_at: Ts
    created_at: Ts


class DeliveriesOut(Out):
    items: list[DeliveryOut]
