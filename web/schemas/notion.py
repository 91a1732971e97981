"""Notion connections and saves."""

from __future__ import annotations

from web.schemas import Out
from web.schemas.common import Ts


class DatabaseOut(Out):
    id: str
    title: str
    icon: str | None


class ConnectedOut(Out):
    connected: bool
    database: DatabaseOut | None


class NotionCallbackOut(Out):
    connected: bool
    user_id: str
    workspace_name: str | None


class DatabaseItem(DatabaseOut):
    data_source_id: str | None = None
    selected: bool


class DatabasesOut(Out):
    items: list[DatabaseItem]


class NotionSaveOut(Out):
    save_id: str
    state: str
    database_id: str
    title: str
    tags: list[str]
    notion_page_url: str | None
    error: str | None
    error_code: str | None
    created_at: Ts
    done_at: Ts


class NotionSavesOut(Out):
    items: list[NotionSaveOut]
