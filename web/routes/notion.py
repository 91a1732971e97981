"""Save to Notion (API.md "Notion"): connect, list databases, save an email, see how the save went."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, SecretStr, StringConstraints, field_validator
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from models import Email, NotionSave, User, utcnow
from models.db import get_engine
from pipeline import jobs
from pipeline.clients.notion import NotionError
from pipeline.flows import notion_connect as notion
from pipeline.flows.notion_save import customer_of
from pipeline.stages.notion_page import default_title
from web.access import actor, own_user
from web.api import ApiRouter
from web.errors import ApiError
from web.params import Param
from web.schemas.common import UrlOut
from web.schemas.notion import ConnectedOut, DatabasesOut, NotionCallbackOut, NotionSaveOut, NotionSavesOut
from web.validation import Body, field_error, parse_body

router = ApiRouter("notion")


# A Notion object id: 32 hex digits, bare or as a dashed UUID. It ends up in Notion API paths
# (databases/{id}), so nothing else may pass: "../../_state" would walk to another endpoint.
NOTION_ID = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
NotionId = Annotated[str, StringConstraints(pattern=NOTION_ID)]
# An integration token travels in the Authorization header: printable ASCII only.
_TOKEN = re.compile(r"[\x21-\x7e]{1,500}")


class NotionConnectIn(Body):
    notion_api_key: SecretStr | None = Field(default=None, description="internal integration token (printable ASCII); "
                                                                        "omit to keep the stored one",
                                             json_schema_extra={"pattern": r"^[\x21-\x7e]{1,500}$"})
    notion_db_id: NotionId | None = Field(default=None, description="the database's id: 32 hex digits, dashes optional")

    @field_validator("notion_api_key")
    @classmethod
    def _printable(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not _TOKEN.fullmatch(v.get_secret_value()):
            raise ValueError("must be a Notion token: 1-500 printable ASCII characters, no spaces")
        return v


class NotionSaveIn(Body):
    user_id: str = Field(min_length=1, max_length=64)
    database_id: NotionId | None = Field(default=None, description="the database's id (default: the user's)")
    title: str | None = Field(default=None, min_length=1, max_length=2000)
    tags: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(default_factory=list, max_length=100)


def _api_error(exc: NotionError) -> ApiError:
    """A Notion refusal as the caller's error (the token or database was given by them)."""
    if exc.code in ("invalid_state", "provider_not_configured", "not_connected"):
        return ApiError(400 if exc.status == 400 else 422, exc.code, exc.message)
    if exc.status == 401:
        return ApiError(422, "notion_unauthorized", "Notion rejected the token (invalid or revoked)")
    if exc.status in (403, 404):
        return ApiError(422, "notion_database_not_found",
                        "Notion cannot find that database for this token: check the id and share the database with the integration")
    if exc.status == 400:
        return ApiError(422, "notion_rejected", f"Notion refused: {exc.message[:300]}")
    return ApiError(502, "notion_unavailable", f"Notion did not answer ({exc.code}); try again")


def _org(request: Request) -> str:
    return str(request.state.org_id)


def _missing_user() -> str:
    raise field_error("user_id", "required", kind="missing", text="user_id is required")


@router.route("PUT", "/api/v1/users/{id}/notion", summary="Connect a user's Notion with an internal-integration token",
              body=NotionConnectIn, response=ConnectedOut,
              responses={404: "user not found", 422: "token or database refused by Notion", 502: "Notion did not answer"})
async def put_connection(request: Request) -> JSONResponse:
    body = await parse_body(request, NotionConnectIn)
    org_id, user_id = _org(request), request.path_params["id"]
    own_user(actor(request), user_id)
    key = body.notion_api_key.get_secret_value() if body.notion_api_key is not None else None

    def run() -> dict[str, Any]:
        with Session(get_engine()) as s:
            if s.get(User, (org_id, user_id)) is None:
                raise ApiError(404, "not_found", f"user {user_id} not found (PUT /api/v1/users/{user_id} first)")
        return notion.connect_internal(org_id, user_id, key, body.notion_db_id)

    try:
        return JSONResponse(await run_in_threadpool(run))
    except NotionError as exc:
        raise _api_error(exc) from None


USER_ID = Param.text("user_id", max_length=64, required=True, description="the CRM user")


@router.route("GET", "/api/v1/notion/authorize", summary="Start connecting Notion (public integration OAuth)", query=(USER_ID,),
              response=UrlOut, responses={400: "Notion OAuth not configured"})
async def authorize(request: Request) -> JSONResponse:
    user_id = USER_ID.read(request).strip() or _missing_user()
    own_user(actor(request), user_id)
    try:
        return JSONResponse({"url": notion.oauth_start(_org(request), user_id)})
    except NotionError as exc:
        raise _api_error(exc) from None


@router.route("GET", "/api/v1/notion/callback", summary="Where Notion sends the browser back (public: trusts its signed state)",
              public=True, query=(Param.text("code", max_length=2000), Param.text("state", max_length=2000),
                                  Param.text("error", max_length=2000)),
              response=NotionCallbackOut, responses={400: "bad or expired state, or Notion refused", 502: "Notion did not answer"})
async def callback(request: Request) -> JSONResponse:
    if request.query_params.get("error"):
        raise ApiError(400, "oauth_denied", f"Notion did not authorize ({request.query_params['error'][:64]})")
    code, state = request.query_params.get("code") or "", request.query_params.get("state") or ""
    if not code or not state:
        raise ApiError(400, "invalid_state", "code and state are required")
    try:
        return JSONResponse(await run_in_threadpool(notion.oauth_finish, code, state))
    except NotionError as exc:
        if exc.status in (400, 401) and exc.code not in ("invalid_state", "provider_not_configured"):
            raise ApiError(400, "oauth_exchange_failed", f"Notion refused the sign-in ({exc.code}); start again") from None
        raise _api_error(exc) from None


def _token(org_id: str, user_id: str) -> tuple[str, Any]:
    with Session(get_engine(), expire_on_commit=False) as s:
        conn = notion.connection(s, org_id, user_id)
    token = notion.token_of(conn) if conn is not None else None
    if conn is None or not token:
        raise ApiError(409, "notion_not_connected", f"user {user_id} has not connected Notion")
    return token, conn


@router.route("GET", "/api/v1/notion/databases", summary="Databases the user's Notion connection can see", query=(USER_ID,),
              response=DatabasesOut, responses={409: "Notion not connected", 502: "Notion did not answer"})
async def databases(request: Request) -> JSONResponse:
    user_id = USER_ID.read(request).strip() or _missing_user()
    own_user(actor(request), user_id)
    token, conn = _token(_org(request), user_id)
    try:
        items = await run_in_threadpool(notion.list_databases, token)
    except NotionError as exc:
        raise _api_error(exc) from None
    return JSONResponse({"items": [{**i, "selected": i["id"] == conn.notion_db_id} for i in items]})


def _save_json(sv: NotionSave) -> dict[str, Any]:
    from web.present import iso

    return {"save_id": sv.id, "state": sv.state, "database_id": sv.database_id, "title": sv.title, "tags": sv.tags,
            "notion_page_url": sv.page_url if sv.state == "done" else None, "error": sv.error, "error_code": sv.error_code,
            "created_at": iso(sv.created_at), "done_at": iso(sv.done_at)}


@router.route("POST", "/api/v1/emails/{id}/notion", summary="Save the email to Notion (202; saving again returns the page)",
              body=NotionSaveIn, status=202, response=NotionSaveOut,
              responses={200: "already saved", 404: "email not found", 409: "Notion not connected"})
async def save(request: Request) -> JSONResponse:
    body = await parse_body(request, NotionSaveIn)
    who, email_id = actor(request), request.path_params["id"]
    org_id = who.org_id
    own_user(who, body.user_id)

    def run() -> tuple[int, dict[str, Any], bool]:
        with Session(get_engine()) as s:
            who.email(s, email_id)
        _, conn = _token(org_id, body.user_id)
        database_id = body.database_id or conn.notion_db_id
        if not database_id:
            raise field_error("database_id", "required", kind="missing",
                              text="database_id is required (the user has no default Notion database)")
        with Session(get_engine(), expire_on_commit=False) as s:
            email = s.get(Email, email_id)
            if email is None or email.org_id != org_id or email.deleted_at is not None:
                raise ApiError(404, "not_found", "email not found")
            same_save = select(NotionSave).where(NotionSave.email_id == email_id, NotionSave.database_id == database_id)
            existing = s.execute(same_save).scalar_one_or_none()
            if existing is not None:
                if existing.state == "done":
                    return 200, _save_json(existing), False
                if existing.state == "failed":  # a new try (the user fixed the connection or the database)
                    s.execute(update(NotionSave).where(col(NotionSave.id) == existing.id, col(NotionSave.state) == "failed").values(
                        state="pending", error=None, error_code=None, updated_at=utcnow(), user_id=body.user_id))
                    s.commit()
                    s.refresh(existing)
                    return 202, _save_json(existing), True
                return 202, _save_json(existing), False
            title = body.title or default_title(customer_of(s, email), email.subject)
            sv = NotionSave(org_id=org_id, email_id=email_id, user_id=body.user_id, database_id=database_id, title=title[:2000],
                            tags=list(body.tags))
            s.add(sv)
            try:
                s.commit()
            except IntegrityError:  # the same save requested twice at once: one row wins
                s.rollback()
                sv = s.execute(same_save).scalar_one()
                return (200 if sv.state == "done" else 202), _save_json(sv), False
            return 202, _save_json(sv), True

    status, out, enqueue = await run_in_threadpool(run)
    if enqueue:
        jobs.NOTION_SAVE.send(out["save_id"])
    return JSONResponse(out, status_code=status)


@router.route("GET", "/api/v1/emails/{id}/notion", summary="How the email's Notion saves went", response=NotionSavesOut,
              responses={404: "email not found"})
async def saves(request: Request) -> JSONResponse:
    who, email_id = actor(request), request.path_params["id"]

    def run() -> list[dict[str, Any]]:
        with Session(get_engine()) as s:
            email = s.get(Email, email_id)
            if email is None or email.org_id != who.org_id or not who.sees_account(s, email.account_id):
                raise ApiError(404, "not_found", "email not found")
            return [_save_json(sv) for sv in s.execute(select(NotionSave).where(NotionSave.email_id == email_id)
                                                       .order_by(col(NotionSave.created_at))).scalars()]

    return JSONResponse({"items": await run_in_threadpool(run)})
