"""Notion: a user's connection (internal token or public-integration OAuth), database discovery and
the schema cache. The calls go through :mod:`pipeline.clients.notion`; tokens are decrypted here,
at the last moment, and never logged.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import structlog
from sqlmodel import Session, select

from models import NotionConnection
from models.db import get_engine
from ops.keys import get_keyring, read_claims, seal, sign_claims, unseal
from ops.settings import get_settings
from pipeline.clients.notion import NotionError, call, make_client, results
from pipeline.stages.notion_page import Columns, choose_columns

__all__ = ["Schema", "connect_internal", "connection", "forget_schemas", "list_databases", "oauth_finish", "oauth_start", "refresh",
           "schema", "token_of"]

log = structlog.get_logger("mailpipe.notion")

SCHEMA_TTL = 300.0
STATE_TTL = timedelta(minutes=15)


# -- connections ----------------------------------------------------------------------------------------


def connection(s: Session, org_id: str, user_id: str) -> NotionConnection | None:
    return s.execute(select(NotionConnection)
                     .where(NotionConnection.org_id == org_id, NotionConnection.user == user_id)).scalar_one_or_none()


def token_of(conn: NotionConnection) -> str | None:
    return unseal("secondBrain_notions", "notion_api_key", conn.notion_api_key)


def _upsert(org_id: str, user_id: str, **values: Any) -> NotionConnection:
    with Session(get_engine(), expire_on_commit=False) as s:
        conn = connection(s, org_id, user_id)
        if conn is None:
            conn = NotionConnection(org_id=org_id, user=user_id)
        for k, v in values.items():
            setattr(conn, k, v)
        s.add(conn)
        s.commit()
        return conn


def _title(obj: dict[str, Any]) -> str:
    return "".join(t.get("plain_text") or (t.get("text") or {}).get("content", "") for t in obj.get("title") or []) or "Untitled"


def _icon(obj: dict[str, Any]) -> str | None:
    icon = obj.get("icon") or {}
    return icon.get("emoji") or (icon.get("external") or {}).get("url") or (icon.get("file") or {}).get("url")


def connect_internal(org_id: str, user_id: str, api_key: str | None, database_id: str | None) -> dict[str, Any]:
    """Check an internal-integration token (and the database, when given) with Notion, then store them.

    ``api_key`` None keeps the stored token (choosing another database)."""
    with Session(get_engine()) as s:
        existing = connection(s, org_id, user_id)
        token = api_key if api_key is not None else (token_of(existing) if existing else None)
    if not token:
        raise NotionError(422, "not_connected", "give notion_api_key (no Notion connection is stored for this user)")
    client = make_client(token)
    call(client.users.me)
    database: dict[str, Any] | None = None
    ds_id = None
    if database_id:
        db = call(client.databases.retrieve, database_id=database_id)
        ds_id = (db.get("data_sources") or [{}])[0].get("id")
        database = {"id": db.get("id", database_id), "title": _title(db), "icon": _icon(db)}
    values: dict[str, Any] = {"notion_db_id": database_id, "data_source_id": ds_id}
    if api_key is not None:
        values.update(notion_api_key=seal("secondBrain_notions", "notion_api_key", api_key), refresh_token=None)
    _upsert(org_id, user_id, **values)
    return {"connected": True, "database": database}


def _redirect_uri() -> str:
    settings = get_settings()
    return f"{(settings.oauth_redirect_base or settings.public_url).rstrip('/')}/api/v1/notion/callback"


def oauth_start(org_id: str, user_id: str) -> str:
    """The public integration's authorize URL with a signed, expiring state naming the user."""
    settings = get_settings()
    if not settings.notion_client_id:
        raise NotionError(400, "provider_not_configured", "set MAILPIPE_NOTION_CLIENT_ID and MAILPIPE_NOTION_CLIENT_SECRET")
    state = sign_claims("notion_state", (org_id, user_id), STATE_TTL.total_seconds())
    q = urlencode({"client_id": settings.notion_client_id, "response_type": "code", "owner": "user",
                   "redirect_uri": _redirect_uri(), "state": state})
    return f"{settings.notion_base_url.rstrip('/')}/v1/oauth/authorize?{q}"


def oauth_finish(code: str, state: str) -> dict[str, Any]:
    """Exchange the code (Basic auth) and store the tokens as the user's connection."""
    settings = get_settings()
    claims = read_claims("notion_state", state)
    if claims is None or len(claims) != 2:
        raise NotionError(400, "invalid_state", "the Notion sign-in link is invalid or has expired; start again")
    org_id, user_id = claims
    if not settings.notion_client_id or not settings.notion_client_secret:
        raise NotionError(400, "provider_not_configured", "set MAILPIPE_NOTION_CLIENT_ID and MAILPIPE_NOTION_CLIENT_SECRET")
    answer = call(make_client(None).oauth.token, client_id=settings.notion_client_id, client_secret=settings.notion_client_secret,
                  grant_type="authorization_code", code=code, redirect_uri=_redirect_uri())
    _upsert(org_id, user_id, notion_api_key=seal("secondBrain_notions", "notion_api_key", answer["access_token"]),
            refresh_token=seal("secondBrain_notions", "refresh_token", answer.get("refresh_token")),
            workspace_id=answer.get("workspace_id"))
    log.info("notion_connected", org_id=org_id, user_id=user_id, workspace_id=answer.get("workspace_id"))
    return {"connected": True, "user_id": user_id, "workspace_name": answer.get("workspace_name")}


_refresh_locks: dict[tuple[str, str], threading.Lock] = {}
_refresh_guard = threading.Lock()


def refresh(conn: NotionConnection) -> str | None:
    """A new access token from the stored refresh token (OAuth connections), or None.

    One refresh per connection at a time in this process; whoever waited re-reads the stored token
    and uses it if another run has already replaced the one that failed."""
    with _refresh_guard:
        lock = _refresh_locks.setdefault((conn.org_id, conn.user), threading.Lock())
    failed = token_of(conn)
    with lock:
        with Session(get_engine(), expire_on_commit=False) as s:
            current = connection(s, conn.org_id, conn.user)
        if current is None:
            return None
        if token_of(current) and token_of(current) != failed:
            return token_of(current)
        return _refresh_locked(current)


def _refresh_locked(conn: NotionConnection) -> str | None:
    settings = get_settings()
    token = unseal("secondBrain_notions", "refresh_token", conn.refresh_token)
    if not token or not settings.notion_client_id or not settings.notion_client_secret:
        return None
    try:
        answer = call(make_client(None).oauth.token, client_id=settings.notion_client_id, client_secret=settings.notion_client_secret,
                      grant_type="refresh_token", refresh_token=token)
    except NotionError as exc:
        log.warning("notion_refresh_failed", user_id=conn.user, code=exc.code)
        return None
    _upsert(conn.org_id, conn.user, notion_api_key=seal("secondBrain_notions", "notion_api_key", answer["access_token"]),
            refresh_token=seal("secondBrain_notions", "refresh_token", answer.get("refresh_token") or token))
    log.info("notion_refreshed", user_id=conn.user)
    return str(answer["access_token"])


def list_databases(token: str) -> list[dict[str, Any]]:
    """Databases the token can see: search for data sources, grouped by their database."""
    items: dict[str | None, dict[str, Any]] = {}
    for r in results(make_client(token).search, filter={"property": "object", "value": "data_source"}):
        db_id = (r.get("parent") or {}).get("database_id") or r.get("id")
        items.setdefault(db_id, {"id": db_id, "title": _title(r), "icon": _icon(r), "data_source_id": r.get("id")})
    return list(items.values())


# -- schema cache -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schema:
    data_source_id: str
    columns: Columns


_schemas: dict[tuple[str, str], tuple[float, Schema]] = {}
_schemas_lock = threading.Lock()


def schema(token: str, database_id: str) -> Schema:
    """The database's (first) data source and the columns mailpipe fills; cached for five minutes."""
    key = (get_keyring().sign("notion_cache", token, length=16), database_id)
    with _schemas_lock:
        hit = _schemas.get(key)
        if hit is not None and time.monotonic() - hit[0] < SCHEMA_TTL:
            return hit[1]
    client = make_client(token)
    db = call(client.databases.retrieve, database_id=database_id)
    sources = db.get("data_sources") or []
    if not sources:
        raise NotionError(404, "object_not_found", "the Notion database has no data source")
    ds = call(client.data_sources.retrieve, data_source_id=sources[0]["id"])
    found = Schema(sources[0]["id"], choose_columns(ds.get("properties") or {}))
    with _schemas_lock:
        _schemas[key] = (time.monotonic(), found)
    return found


def forget_schemas() -> None:
    with _schemas_lock:
        _schemas.clear()
