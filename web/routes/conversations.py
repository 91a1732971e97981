"""Conversations (threads with status, assignee and awaiting-reply) and who on the team mailed a CRM record.

Every query goes through the caller's :class:`models.access.Actor`: with ``X-Mailpipe-User`` only the
mailboxes that user owns, is a member of or a delegate of; a conversation elsewhere answers 404.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from sqlalchemy import func
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from models import CRM_TABLES, Contact, Conversation, CrmAccount, Email, EmailSentiment, Lead
from models.access import Actor
from models.db import get_engine
from pipeline.flows import conversations as flow
from pipeline.flows import notifications
from pipeline.flows.outreach import DEFAULT_DAYS, recent_outreach
from web.access import actor
from web.api import ApiRouter
from web.cursors import CURSOR, keyset_cursor, read_keyset
from web.errors import ApiError
from web.params import Param
from web.present import iso
from web.routes.emails import summary_json
from web.schemas.conversations import ConversationDetail, ConversationOut, ConversationsPage, OutreachOut
from web.validation import Body, parse_body

router = ApiRouter("conversations")

LIST_PARAMS = (
    Param.text("account_id", max_length=64, description="one mailbox"),
    Param.choice("status", ("open", "pending", "resolved")),
    Param.text("assignee_id", max_length=64, description="assigned to this user"),
    Param.boolean("unassigned", description="true: nobody assigned"),
    Param.boolean("awaiting_reply", description="true: the last message is inbound"),
    Param.text("contact_id", max_length=64, description="a message of it is linked to this CRM contact"),
    Param.text("q", max_length=200, description="part of the subject or a participant's address"),
    Param.integer("limit", 50, maximum=200),
    CURSOR,
)


def conversation_json(c: Conversation) -> dict[str, Any]:
    return {"id": c.id, "account_id": c.account_id, "subject": c.subject, "participants": c.participants,
            "message_count": c.message_count, "first_message_at": iso(c.first_message_at), "last_message_at": iso(c.last_message_at),
            "last_direction": c.last_direction, "status": c.status, "assignee_id": c.assignee_id,
            "awaiting_reply_since": iso(c.awaiting_reply_since), "awaiting_reply": c.awaiting_reply_since is not None,
            "assigned_by": c.assigned_by, "assigned_at": iso(c.assigned_at), "status_changed_by": c.status_changed_by,
            "status_changed_at": iso(c.status_changed_at)}


def _list(who: Actor, request: Request) -> dict[str, Any]:
    q = {p.name: p.read(request) for p in LIST_PARAMS}
    filters = flow.Filters(account_id=q["account_id"], status=q["status"], assignee_id=q["assignee_id"], unassigned=q["unassigned"],
                           awaiting_reply=q["awaiting_reply"], contact_id=q["contact_id"], q=q["q"])
    with Session(get_engine()) as s:
        rows, more = flow.list_page(s, who, filters, q["limit"], read_keyset(q["cursor"]))
    last = rows[-1] if rows and more else None
    return {"items": [conversation_json(c) for c in rows],
            "next_cursor": keyset_cursor(last.last_message_at, last.id) if last is not None and last.last_message_at else None}


@router.route("GET", "/api/v1/conversations", summary="Conversations, latest activity first, with filters",
              query=LIST_PARAMS, response=ConversationsPage)
async def list_conversations(request: Request) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(_list, actor(request), request))


def _detail(s: Session, c: Conversation) -> dict[str, Any]:
    at = func.coalesce(Email.received_at, Email.sent_at, Email.created_at)
    pairs = s.execute(select(Email, EmailSentiment).outerjoin(EmailSentiment, col(EmailSentiment.email_id) == col(Email.id))
                      .where(Email.thread_id == c.id, col(Email.deleted_at).is_(None))
                      .order_by(at, col(Email.id)).limit(1000)).all()
    return {**conversation_json(c), "messages": [summary_json(e, sentiment) for e, sentiment in pairs]}


@router.route("GET", "/api/v1/conversations/{id}", summary="One conversation with its messages, oldest first",
              response=ConversationDetail, responses={404: "not found"})
async def get_conversation(request: Request) -> JSONResponse:
    who, cid = actor(request), request.path_params["id"]

    def run() -> dict[str, Any]:
        with Session(get_engine()) as s:
            return _detail(s, who.conversation(s, cid))

    return JSONResponse(await run_in_threadpool(run))


class ConversationPatch(Body):
    status: Literal["open", "pending", "resolved"] | None = None
    assignee_id: str | None = Field(default=None, min_length=1, max_length=64, description="null unassigns")


@router.route("PATCH", "/api/v1/conversations/{id}", summary="Change status or assignee (assigning notifies the assignee)",
              body=ConversationPatch, response=ConversationOut,
              responses={404: "not found", 422: "unknown assignee, or one who cannot see the mailbox"})
async def patch_conversation(request: Request) -> JSONResponse:
    who, cid = actor(request), request.path_params["id"]
    body = await parse_body(request, ConversationPatch)
    req = flow.Change(status=body.status, assign="assignee_id" in body.model_fields_set, assignee_id=body.assignee_id)

    def run() -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
        with Session(get_engine(), expire_on_commit=False) as s:
            conv = who.conversation(s, cid)
            if req.assign and req.assignee_id is not None and not Actor(who.org_id, req.assignee_id).sees_account(s, conv.account_id):
                raise ApiError(422, "assignee_cannot_see", f"{req.assignee_id} does not see this mailbox (owner, member or delegate)",
                               {"errors": [{"field": "assignee_id", "message": "cannot see this mailbox", "type": "value_error"}]})
            try:
                conv, pushed, by_email = flow.change(s, who, conv.id, req)
            except flow.UnknownUser:
                raise ApiError(422, "unknown_user", f"{req.assignee_id} is not a user of this organization",
                               {"errors": [{"field": "assignee_id", "message": "unknown user", "type": "value_error"}]}) from None
            s.commit()
            return conversation_json(conv), pushed, by_email

    data, pushed, by_email = await run_in_threadpool(run)
    notifications.publish(pushed)  # after the commit: the browser may fetch the notification at once
    await run_in_threadpool(flow.email_notifications, by_email)
    return JSONResponse(data)


# ---- outreach ------------------------------------------------------------------------------------

DAYS = Param.integer("days", DEFAULT_DAYS, minimum=1, maximum=365, description="how far back")
_KINDS = {"contacts": ("contact", Contact), "leads": ("lead", Lead), "accounts": ("account", CrmAccount)}


def _addresses(record: Any) -> list[str]:
    return [a for a in (getattr(record, f, None) for f in ("email_norm", "personal_email_norm")) if a]


def _register(kind: str) -> None:
    entity_type, model = _KINDS[kind]
    assert model is CRM_TABLES[kind]

    @router.route("GET", f"/api/v1/crm/{kind}/{{id}}/outreach", summary=f"Who on the team mailed this {entity_type} lately",
                  query=(DAYS,), response=OutreachOut, responses={404: "not found"})
    async def outreach(request: Request) -> JSONResponse:
        who, record_id, days = actor(request), request.path_params["id"], DAYS.read(request)

        def run() -> list[dict[str, Any]]:
            with Session(get_engine()) as s:
                record = s.get(model, (who.org_id, record_id))
                if record is None:
                    raise ApiError.not_found(entity_type)
                return recent_outreach(s, who, addresses=_addresses(record), entity=(entity_type, record_id), days=days)

        return JSONResponse({"items": await run_in_threadpool(run)})


for _kind in _KINDS:
    _register(_kind)
