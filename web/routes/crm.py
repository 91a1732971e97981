"""CRM records pushed by NextCRM (users, contacts, leads, accounts, opportunities), typeahead search
and entity timelines. Every query is scoped to the caller's organization."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field, StringConstraints, field_validator
from sqlalchemy import delete, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from models import (
    CRM_TABLES,
    ENTITY_TYPES,
    AccountMember,
    Contact,
    CrmAccount,
    Email,
    EmailLink,
    Lead,
    RelinkRequest,
    User,
    normalize_email,
    utcnow,
)
from models.db import get_engine
from web.access import Actor, actor
from web.api import ApiRouter
from web.cursors import CURSOR, keyset_cursor, read_keyset
from web.errors import ApiError
from web.params import Param
from web.present import iso, record_json, relative_time
from web.schemas.crm import RECORD_OUT, SearchOut, TimelineOut, UserOut
from web.validation import Body, IsoDateTime, parse_body

router = ApiRouter("crm")

Name = Annotated[str, StringConstraints(max_length=200)]
LongName = Annotated[str, StringConstraints(max_length=300)]
Ref = Annotated[str, StringConstraints(max_length=64)]
Short = Annotated[str, StringConstraints(max_length=100)]
Money = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]

_ID_MAX = 64


def _email_ok(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if "@" not in value or any(c.isspace() for c in value) or len(value) > 320:
        raise ValueError("must be an email address like name@example.com")
    return value


class UserIn(Body):
    name: LongName
    email: str
    phone: Annotated[str, StringConstraints(max_length=64)] | None = None
    tracking_opt_out: bool = False  # mail this user sends carries no pixel and no rewritten links
    notify_by_email: bool = False  # opens and clicks also by email (needs MAILPIPE_NOTIFY_SMTP_URL)

    @field_validator("email")
    @classmethod
    def _check_email(cls, v: str) -> str:
        checked = _email_ok(v)
        if checked is None:
            raise ValueError("email is required")
        return checked


class ContactIn(Body):
    first_name: Name | None = None
    last_name: Name
    email: str | None = None
    personal_email: str | None = None
    account: Ref | None = None
    position: Name | None = None
    assigned_to: Ref | None = None

    @field_validator("email", "personal_email")
    @classmethod
    def _check_email(cls, v: str | None) -> str | None:
        return _email_ok(v)


class LeadIn(Body):
    firstName: Name | None = None
    lastName: Name
    email: str | None = None
    company: LongName | None = None
    jobTitle: Name | None = None
    status: Annotated[str, StringConstraints(max_length=40)] | None = None
    lead_source: Short | None = None
    assigned_to: Ref | None = None

    @field_validator("email")
    @classmethod
    def _check_email(cls, v: str | None) -> str | None:
        return _email_ok(v)


class CrmAccountIn(Body):
    name: LongName
    email: str | None = None
    industry: Name | None = None
    website: Annotated[str, StringConstraints(max_length=500)] | None = None
    annual_revenue: Short | int | float | None = None
    assigned_to: Ref | None = None

    @field_validator("email")
    @classmethod
    def _check_email(cls, v: str | None) -> str | None:
        return _email_ok(v)


class OpportunityIn(Body):
    name: LongName
    account: Ref | None = None
    contact: Ref | None = None
    expected_revenue: Money | None = None
    budget: Money | None = None
    currency: Annotated[str, StringConstraints(max_length=16)] | None = None
    close_date: IsoDateTime | None = None
    sales_stage: Short | None = None
    assigned_to: Ref | None = None


BODIES: dict[str, type[Body]] = {"contacts": ContactIn, "leads": LeadIn, "accounts": CrmAccountIn, "opportunities": OpportunityIn}

# Hooks run after a contact/lead/account is written (retroactive linking registers here).
AFTER_UPSERT: list[Callable[[str, str, str], None]] = []


def _org(request: Request) -> str:
    return str(request.state.org_id)


def _check_id(record_id: str) -> str:
    if not record_id or len(record_id) > _ID_MAX or any(c.isspace() or c == "/" for c in record_id):
        raise ApiError(422, "validation_error", f"id must be 1-{_ID_MAX} characters without spaces")
    return record_id


def _upsert(model: type[SQLModel], org_id: str, record_id: str, values: dict[str, Any],
            relink_type: str | None = None) -> tuple[SQLModel, bool]:
    for field in ("email", "personal_email"):
        if field in model.model_fields and f"{field}_norm" in model.model_fields:
            values[f"{field}_norm"] = normalize_email(values.get(field))
    if "annual_revenue" in values and values["annual_revenue"] is not None:
        values["annual_revenue"] = str(values["annual_revenue"])
    for attempt in range(2):
        with Session(get_engine(), expire_on_commit=False) as s:
            row = s.get(model, (org_id, record_id))
            created = row is None
            if row is None:
                row = model(org_id=org_id, id=record_id, **values)
            else:
                for name, value in values.items():
                    setattr(row, name, value)
                row.updatedAt = utcnow()
            s.add(row)
            if relink_type is not None:  # the retro-link intent commits with the record
                s.merge(RelinkRequest(org_id=org_id, entity_type=relink_type, entity_id=record_id, created_at=utcnow()))
            try:
                s.commit()
            except IntegrityError:
                if attempt:  # pragma: no cover - a third writer would have to win twice
                    raise
                continue  # a concurrent PUT created it first: apply ours as an update
            return row, created
    raise AssertionError("unreachable")


def _put(model: type[SQLModel], org_id: str, record_id: str, body: Body, entity_type: str | None) -> JSONResponse:
    values = body.model_dump()
    if isinstance(body, LeadIn) and values.get("status") is None:
        values["status"] = "NEW"
    relink = entity_type if entity_type in ("contact", "lead", "account") else None
    row, created = _upsert(model, org_id, record_id, values, relink)
    if relink is not None:
        for hook in AFTER_UPSERT:
            hook(org_id, relink, record_id)
    return JSONResponse({**record_json(row), "created": created}, status_code=200)


def _get(model: type[SQLModel], org_id: str, record_id: str, label: str) -> JSONResponse:
    with Session(get_engine()) as s:
        row = s.get(model, (org_id, record_id))
        if row is None:
            raise ApiError.not_found(label)
        return JSONResponse(record_json(row))


def _delete(model: type[SQLModel], org_id: str, record_id: str, label: str, entity_type: str | None) -> Response:
    with Session(get_engine()) as s:
        row = s.get(model, (org_id, record_id))
        if row is None:
            raise ApiError.not_found(label)
        s.delete(row)
        if entity_type is not None:
            _unlink_entity(s, org_id, entity_type, record_id)
        if model is User:  # a deleted user is no one's member or delegate any more
            s.execute(delete(AccountMember).where(col(AccountMember.org_id) == org_id, col(AccountMember.user_id) == record_id))
        s.commit()
    return Response(status_code=204)


def _unlink_entity(s: Session, org_id: str, entity_type: str, entity_id: str) -> None:
    """Drop a deleted record's links and recompute the affected emails' ``linked`` flag."""
    cond = (col(EmailLink.org_id) == org_id, col(EmailLink.entity_type) == entity_type, col(EmailLink.entity_id) == entity_id)
    email_ids = list(s.execute(select(EmailLink.email_id).where(*cond)).scalars())
    if not email_ids:
        return
    s.execute(delete(EmailLink).where(*cond))
    still = select(EmailLink.id).where(EmailLink.email_id == Email.id).exists()
    s.execute(update(Email).where(col(Email.id).in_(email_ids)).values(linked=still))


# ---- users -------------------------------------------------------------------------------


@router.route("PUT", "/api/v1/users/{id}", summary="Create or replace a CRM user", body=UserIn, response=UserOut)
async def put_user(request: Request) -> JSONResponse:
    record_id = _check_id(request.path_params["id"])
    body = await parse_body(request, UserIn)
    return await run_in_threadpool(_put, User, _org(request), record_id, body, None)


@router.route("GET", "/api/v1/users/{id}", summary="Get a CRM user", response=UserOut, responses={404: "not found"})
async def get_user(request: Request) -> JSONResponse:
    return await run_in_threadpool(_get, User, _org(request), request.path_params["id"], "user")


@router.route("DELETE", "/api/v1/users/{id}", summary="Delete a CRM user", status=204, responses={404: "not found"})
async def delete_user(request: Request) -> Response:
    return await run_in_threadpool(_delete, User, _org(request), request.path_params["id"], "user", None)


# ---- search ------------------------------------------------------------------------------------


def _like(value: str) -> str:
    return "%" + value.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _search(org_id: str, q: str, limit: int) -> list[dict[str, Any]]:
    pattern = _like(q)

    def match(*cols: Any) -> Any:
        return or_(*(func.lower(c).like(pattern, escape="\\") for c in cols))

    results: list[dict[str, Any]] = []
    with Session(get_engine()) as s:
        contacts = s.execute(
            select(Contact)
            .where(Contact.org_id == org_id, match(Contact.first_name, Contact.last_name, Contact.email, Contact.personal_email,
                                                   func.coalesce(Contact.first_name, "") + " " + Contact.last_name))
            .order_by(Contact.last_name)
            .limit(limit)
        ).scalars()
        for c in contacts:
            label = " ".join(p for p in (c.first_name, c.last_name) if p)
            results.append({"entity_type": "contact", "entity_id": c.id, "label": label, "email": c.email or c.personal_email})
        leads = s.execute(
            select(Lead)
            .where(Lead.org_id == org_id, match(Lead.firstName, Lead.lastName, Lead.email, Lead.company,
                                                func.coalesce(Lead.firstName, "") + " " + Lead.lastName))
            .order_by(Lead.lastName)
            .limit(limit)
        ).scalars()
        for ld in leads:
            label = " ".join(p for p in (ld.firstName, ld.lastName) if p)
            results.append({"entity_type": "lead", "entity_id": ld.id, "label": label, "email": ld.email})
        accounts = s.execute(
            select(CrmAccount).where(CrmAccount.org_id == org_id, match(CrmAccount.name, CrmAccount.email))
            .order_by(CrmAccount.name).limit(limit)
        ).scalars()
        for a in accounts:
            results.append({"entity_type": "account", "entity_id": a.id, "label": a.name, "email": a.email})
    ql = q.lower()

    def rank(r: dict[str, Any]) -> tuple[int, str]:
        label, email = (r["label"] or "").lower(), (r["email"] or "").lower()
        starts = label.startswith(ql) or email.startswith(ql) or any(w.startswith(ql) for w in label.split())
        return (0 if starts else 1, label)

    results.sort(key=rank)
    return results[:limit]


SEARCH_Q = Param.text("q", max_length=200, required=True, description="part of a name or email address")
SEARCH_LIMIT = Param.integer("limit", 20, maximum=100)


@router.route("GET", "/api/v1/crm/search", summary="Typeahead over contacts, leads and accounts", query=(SEARCH_Q, SEARCH_LIMIT),
              response=SearchOut)
async def search(request: Request) -> JSONResponse:
    q = SEARCH_Q.read(request).strip()
    if not q:
        raise ApiError(422, "validation_error", "query parameter 'q' is required",
                       {"errors": [{"field": "q", "message": "required", "type": "missing"}]})
    limit = SEARCH_LIMIT.read(request)
    return JSONResponse({"results": await run_in_threadpool(_search, _org(request), q, limit)})


# ---- contacts / leads / accounts / opportunities -----------------------------------------------


def _register(kind: str) -> None:
    """PUT, GET and DELETE of one record type, documented with that type's body and response."""
    model, entity_type, body_model, out = CRM_TABLES[kind], ENTITY_TYPES[kind], BODIES[kind], RECORD_OUT[kind]
    path = f"/api/v1/crm/{kind}/{{id}}"

    @router.route("PUT", path, summary=f"Create or replace a {entity_type}", body=body_model, response=out)
    async def put_record(request: Request) -> JSONResponse:
        record_id = _check_id(request.path_params["id"])
        body = await parse_body(request, body_model)
        return await run_in_threadpool(_put, model, _org(request), record_id, body, entity_type)

    @router.route("GET", path, summary=f"Get a {entity_type}", response=out, responses={404: "not found"})
    async def get_record(request: Request) -> JSONResponse:
        return await run_in_threadpool(_get, model, _org(request), request.path_params["id"], entity_type)

    @router.route("DELETE", path, summary=f"Delete a {entity_type} and its email links", status=204,
                  responses={404: "not found"})
    async def delete_record(request: Request) -> Response:
        return await run_in_threadpool(_delete, model, _org(request), request.path_params["id"], entity_type, entity_type)

    @router.route("GET", f"{path}/timeline", summary=f"Emails linked to a {entity_type}, newest first",
                  query=(TIMELINE_LIMIT, CURSOR), response=TimelineOut, responses={404: "not found"})
    async def timeline(request: Request) -> JSONResponse:
        limit, cursor = TIMELINE_LIMIT.read(request), read_keyset(CURSOR.read(request))
        data = await run_in_threadpool(_timeline, actor(request), model, entity_type, request.path_params["id"], limit, cursor)
        return JSONResponse(data)


def _timeline(who: Actor, model: type[SQLModel], entity_type: str, entity_id: str, limit: int,
              cursor: tuple[Any, str] | None) -> dict[str, Any]:
    """Emails linked to the record, in the mailboxes the caller sees."""
    org_id, now = who.org_id, utcnow()
    with Session(get_engine()) as s:
        if s.get(model, (org_id, entity_id)) is None:
            raise ApiError.not_found(entity_type)
        at = func.coalesce(Email.received_at, Email.sent_at, Email.created_at)
        stmt = (
            select(Email)
            .join(EmailLink, col(EmailLink.email_id) == Email.id)
            .where(EmailLink.org_id == org_id, EmailLink.entity_type == entity_type, EmailLink.entity_id == entity_id,
                   col(Email.deleted_at).is_(None), who.visible(Email.account_id))
            .order_by(at.desc(), col(Email.id).desc())
            .limit(limit + 1)
        )
        if cursor is not None:
            when, last_id = cursor
            stmt = stmt.where(or_(at < when, (at == when) & (Email.id < last_id)))
        rows = list(s.execute(stmt).scalars())
    items = []
    for e in rows[:limit]:
        when = e.received_at or e.sent_at or e.created_at
        items.append({
            "email_id": e.id, "subject": e.subject, "from_email": e.from_email, "to_emails": e.to_emails,
            "direction": e.direction, "at": iso(when), "relative": relative_time(when, now), "snippet": e.snippet[:100],
            "attachment_count": e.attachment_count, "open_count": e.open_count, "click_count": e.click_count,
        })
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = keyset_cursor(last.received_at or last.sent_at or last.created_at, last.id)
    return {"items": items, "next_cursor": next_cursor}


TIMELINE_LIMIT = Param.integer("limit", 50, maximum=200)
for _kind_name in CRM_TABLES:
    _register(_kind_name)
