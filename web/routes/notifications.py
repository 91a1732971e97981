"""In-app notifications: list (optionally unread only), mark read, and the real-time websocket."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field
from sqlalchemy import func, or_
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from models import Email, Notification, utcnow
from models.db import get_engine
from ops.keys import read_claims, sign_claims
from web.access import Actor, actor, own_user
from web.api import ApiRouter
from web.auth import WS_UNAUTHORIZED
from web.errors import ApiError, field_error
from web.params import Param
from web.present import iso
from web.schemas.notifications import NotificationOut, NotificationsOut, TokenOut
from web.validation import Body, parse_body

router = ApiRouter("notifications")


def notification_json(n: Notification) -> dict[str, Any]:
    return {"id": n.id, "user_id": n.user_id, "type": n.kind, "title": n.title, "body": n.body, "email_id": n.email_id,
            "data": n.data, "read": n.read_at is not None, "read_at": iso(n.read_at), "created_at": iso(n.created_at)}


LIST_USER = Param.text("user_id", max_length=64, description="required without X-Mailpipe-User; with it, that user")
LIST_UNREAD = Param.boolean("unread", False, description="true: unread only")
LIST_LIMIT = Param.integer("limit", 50, maximum=200)


@router.route("GET", "/api/v1/notifications", summary="A user's notifications, newest first",
              query=(LIST_USER, LIST_UNREAD, LIST_LIMIT), response=NotificationsOut)
async def list_notifications(request: Request) -> JSONResponse:
    who = actor(request)
    org_id = who.org_id
    user_id = own_user(who, LIST_USER.read(request), "notifications")
    if not user_id:
        raise field_error("user_id", "required (or send X-Mailpipe-User)", kind="missing")
    unread_only, limit = LIST_UNREAD.read(request), LIST_LIMIT.read(request)

    def run() -> dict[str, Any]:
        # Notifications about mail in mailboxes the user no longer sees (a membership removed) are left out.
        # one primary-key probe per notification, however much mail the organization has
        seen = or_(col(Notification.email_id).is_(None), select(Email.id).where(
            col(Email.id) == col(Notification.email_id), Actor(org_id, user_id).visible(Email.account_id)).exists())
        with Session(get_engine()) as s:
            base = select(Notification).where(Notification.org_id == org_id, Notification.user_id == user_id, seen)
            stmt = base.where(col(Notification.read_at).is_(None)) if unread_only else base
            items = list(s.execute(stmt.order_by(col(Notification.created_at).desc(), col(Notification.id).desc()).limit(limit)).scalars())
            unread = s.execute(select(func.count()).select_from(Notification).where(
                Notification.org_id == org_id, Notification.user_id == user_id, col(Notification.read_at).is_(None), seen)).scalar_one()
            return {"items": [notification_json(n) for n in items], "unread_count": int(unread)}

    return JSONResponse(await run_in_threadpool(run))


@router.route("POST", "/api/v1/notifications/{id}/read", summary="Mark a notification read", response=NotificationOut,
              responses={404: "not found"})
async def mark_read(request: Request) -> JSONResponse:
    who, nid = actor(request), request.path_params["id"]

    def run() -> dict[str, Any]:
        with Session(get_engine(), expire_on_commit=False) as s:
            n = s.get(Notification, nid)
            if n is None or n.org_id != who.org_id or not who.may_act_as(n.user_id):
                raise ApiError.not_found("notification")
            if n.read_at is None:
                n.read_at = utcnow()
                s.add(n)
                s.commit()
            return notification_json(n)

    return JSONResponse(await run_in_threadpool(run))


# ---- real-time pushes ---------------------------------------------------------------------------

TOKEN_TTL_SECONDS = 300


class TokenIn(Body):
    user_id: str | None = Field(default=None, min_length=1, max_length=64, description="required without X-Mailpipe-User")


def issue_token(org_id: str, user_id: str, now: float | None = None) -> str:
    """A short-lived websocket token: org, user and expiry, HMAC-signed ("ws" key purpose)."""
    return sign_claims("ws", (org_id, user_id), TOKEN_TTL_SECONDS, now)


def check_token(token: str, now: float | None = None) -> tuple[str, str] | None:
    """(org_id, user_id) of a valid, unexpired token; None otherwise."""
    claims = read_claims("ws", token, now)
    return (claims[0], claims[1]) if claims is not None and len(claims) == 2 else None


@router.route("POST", "/api/v1/notifications/token", summary="A short-lived token for the notifications websocket",
              body=TokenIn, response=TokenOut)
async def ws_token(request: Request) -> JSONResponse:
    body = await parse_body(request, TokenIn)
    who = actor(request)
    user_id = own_user(who, body.user_id, "user")
    if not user_id:
        raise field_error("user_id", "required (or send X-Mailpipe-User)", kind="missing")
    return JSONResponse({"token": issue_token(who.org_id, str(user_id)), "expires_in": TOKEN_TTL_SECONDS})


async def notifications_ws(websocket: WebSocket) -> None:
    """``WS /api/v1/notifications/ws?token=``: pushes ``{type, email_id, ...}`` as they happen."""
    from pipeline.events import HUB

    who = check_token(websocket.query_params.get("token", ""))
    if who is None:
        # Accept first: a close before the handshake completes reaches the client as HTTP 403, not 4401.
        await websocket.accept()
        await websocket.close(code=WS_UNAUTHORIZED, reason="invalid or expired token")
        return
    await websocket.accept()
    org_id, user_id = who
    HUB.add(org_id, user_id, websocket, asyncio.get_running_loop())
    try:
        await websocket.send_json({"type": "hello", "user_id": user_id})
        while True:
            await websocket.receive_text()  # clients may ping; we only need to notice the close
    except WebSocketDisconnect:
        pass
    finally:
        HUB.remove(org_id, user_id, websocket)


router.websocket("/api/v1/notifications/ws", summary="Real-time pushes {type, email_id, ...} (WebSocket)",
                 query=(Param.text("token", max_length=500, required=True, description="from POST /api/v1/notifications/token"),))(
    notifications_ws)
