"""In-app notifications."""

from __future__ import annotations

from typing import Any

from web.schemas import Out
from web.schemas.common import Ts


class NotificationOut(Out):
    id: str
    user_id: str
    type: str
    title: str
    body: str
    email_id: str | None
    data: dict[str, Any]
    read: bool
    read_at: Ts
    created_at: Ts


class NotificationsOut(Out):
    items: list[NotificationOut]
    unread_count: int


class TokenOut(Out):
    token: str
    expires_in: int
