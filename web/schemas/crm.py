"""CRM records as stored (their table's columns, timestamps as ISO strings), search and timelines."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import create_model
from sqlmodel import SQLModel

from models import CRM_TABLES, User
from web.schemas import Out
from web.schemas.common import Ts

_HIDDEN = {"org_id", "email_norm", "personal_email_norm"}


def _json_type(annotation: Any) -> Any:
    if annotation is datetime:
        return str
    args = get_args(annotation)
    if datetime in args:
        return str | None
    return annotation


def record_model(table: type[SQLModel], name: str) -> type[Out]:
    """The response model of a CRM table: its visible columns (``web.present.record_json``) plus ``created``."""
    fields: dict[str, Any] = {n: (_json_type(f.annotation), ...) for n, f in table.model_fields.items() if n not in _HIDDEN}
    fields["created"] = (bool | None, None)  # PUT only: whether the record was new
    return create_model(name, __base__=Out, **fields)


UserOut = record_model(User, "UserOut")
RECORD_OUT: dict[str, type[Out]] = {kind: record_model(table, f"{table.__name__}Out") for kind, table in CRM_TABLES.items()}


class SearchResult(Out):
    entity_type: Literal["contact", "lead", "account"]
    entity_id: str
    label: str
    email: str | None


class SearchOut(Out):
    results: list[SearchResult]


class TimelineItem(Out):
    email_id: str
    subject: str
    from_email: str | None
    to_emails: list[str]
    direction: str
    at: Ts
    relative: str
    snippet: str
    attachment_count: int
    open_count: int
    click_count: int


class TimelineOut(Out):
    items: list[TimelineItem]
    next_cursor: str | None
