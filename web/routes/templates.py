"""Template library: create, list (search, category, sort by usage or rates), read, change, delete, preview.

Merge fields are checked when a template is saved: a syntax error or an unknown field is a 422
(``details.unknown`` with close-match suggestions). Rates are the share of a template's sent
emails with at least one human open (click): machine events never count (they do not move
``open_count``/``click_count``), and they are computed from those counters, so always exact.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StringConstraints
from sqlalchemy import case, func, or_
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from models import Email, Template, User, utcnow
from models.db import get_engine
from pipeline.stages.merge import FIELDS, MergeSyntaxError, parse, render_parts, suggest
from web.access import actor
from web.api import ApiRouter, Raw
from web.cursors import CURSOR, offset_cursor, read_offset
from web.errors import ApiError
from web.params import Param
from web.present import iso
from web.schemas.templates import PreviewOut, TemplateOut, TemplatesPage
from web.validation import Body, parse_body

router = ApiRouter("templates")

TEMPLATE_MAX_BODY = 8 * 1024 * 1024  # bodies up to 2,000,000 characters, JSON-escaped

SORTS = ("usage", "open_rate", "click_rate", "created")
Q = Param.text("q", max_length=200, description="part of the name")
CATEGORY = Param.text("category", max_length=100)
SORT = Param.choice("sort", SORTS, "created")
USER_ID = Param.text("user_id", max_length=64, description="that user's private templates plus all public ones")
LIMIT = Param.integer("limit", 50, maximum=200)
SAMPLE = {"firstName": "Jane", "lastName": "Doe", "email": "jane.doe@example.com", "company": "Acme Corp",
          "position": "Head of Operations", "accountName": "Acme Corp", "industry": "Manufacturing",
          "website": "https://acme.example.com", "annualRevenue": "12,000,000", "dealAmount": "25,000 USD",
          "closeDate": "2027-01-31", "salesStage": "Proposal"}


class TemplateIn(Body):
    name: str = Field(min_length=1, max_length=300)
    category: str = Field(default="sales", min_length=1, max_length=100)
    subject: str = Field(default="", max_length=998)
    body_html: str = Field(default="", max_length=2_000_000)
    body_text: str | None = Field(default=None, max_length=2_000_000)
    is_public: bool = False
    created_by: str | None = Field(default=None, max_length=64)


class TemplatePatch(Body):
    name: str | None = Field(default=None, min_length=1, max_length=300)
    category: str | None = Field(default=None, min_length=1, max_length=100)
    subject: str | None = Field(default=None, max_length=998)
    body_html: str | None = Field(default=None, max_length=2_000_000)
    body_text: str | None = Field(default=None, max_length=2_000_000)
    is_public: bool | None = None


class PreviewIn(Body):
    merge: dict[str, Annotated[str, StringConstraints(max_length=64)]] | None = Field(default=None, max_length=8)


def _org(request: Request) -> str:
    return str(request.state.org_id)


def merge_fields_of(subject: str, html: str, text: str | None) -> list[str]:
    """The fields a template uses, in order; 422 on a syntax error or an unknown field."""
    names: dict[str, None] = {}
    for part, label in ((subject, "subject"), (html, "body_html"), (text or "", "body_text")):
        try:
            tags = parse(part)
        except MergeSyntaxError as exc:
            raise ApiError(422, "merge_syntax_error", f"{label}: {exc.message}", {"field": label, "position": exc.position}) from None
        names.update(dict.fromkeys(t.name for t in tags))
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise ApiError(422, "unknown_merge_field", f"unknown merge field(s): {', '.join(unknown)}",
                       {"unknown": unknown, "suggestions": {u: suggest(u) for u in unknown}, "fields": list(FIELDS)})
    return list(names)


def _rates(s: Session, template_ids: list[str]) -> dict[str, tuple[int, float | None, float | None]]:
    """(sent, open rate, click rate) per template from its sent emails' human counters."""
    if not template_ids:
        return {}
    rows = s.execute(select(
        Email.template_id, func.count(),
        func.sum(case((col(Email.open_count) > 0, 1), else_=0)), func.sum(case((col(Email.click_count) > 0, 1), else_=0)))
        .where(col(Email.template_id).in_(template_ids), Email.direction == "outbound", Email.status == "sent")
        .group_by(Email.template_id)).all()
    return {tid: (n, (opened or 0) / n if n else None, (clicked or 0) / n if n else None) for tid, n, opened, clicked in rows}


def template_json(t: Template, rates: tuple[int, float | None, float | None] | None = None) -> dict[str, Any]:
    sent, open_rate, click_rate = rates or (0, None, None)
    return {"id": t.id, "name": t.name, "category": t.category, "subject": t.subject, "body_html": t.body_html,
            "body_text": t.body_text, "is_public": t.is_public, "created_by": t.created_by, "merge_fields": t.merge_fields,
            "usage_count": t.usage_count, "last_used_at": iso(t.last_used_at), "sent_count": sent,
            "avg_open_rate": round(open_rate, 4) if open_rate is not None else None,
            "avg_click_rate": round(click_rate, 4) if click_rate is not None else None,
            "created_at": iso(t.created_at), "updated_at": iso(t.updated_at)}


def _load(s: Session, org_id: str, template_id: str) -> Template:
    t = s.get(Template, template_id)
    if t is None or t.org_id != org_id or t.deleted_at is not None:
        raise ApiError.not_found("template")
    return t


@router.route("POST", "/api/v1/templates", summary="Create a template (merge fields checked)", body=TemplateIn, status=201,
              response=TemplateOut, max_body=TEMPLATE_MAX_BODY, responses={422: "unknown merge field (with suggestions) or syntax error"})
async def create_template(request: Request) -> JSONResponse:
    org_id, body = _org(request), await parse_body(request, TemplateIn)
    fields = merge_fields_of(body.subject, body.body_html, body.body_text)

    def run() -> dict[str, Any]:
        with Session(get_engine(), expire_on_commit=False) as s:
            t = Template(org_id=org_id, name=body.name, category=body.category, subject=body.subject, body_html=body.body_html,
                         body_text=body.body_text, is_public=body.is_public, created_by=body.created_by, merge_fields=fields)
            s.add(t)
            s.commit()
            return template_json(t)

    return JSONResponse(await run_in_threadpool(run), status_code=201)


@router.route("GET", "/api/v1/templates", summary="Templates: search, filter, sort by usage or rates",
              query=(Q, CATEGORY, SORT, USER_ID, LIMIT, CURSOR), response=TemplatesPage)
async def list_templates(request: Request) -> JSONResponse:
    org_id = _org(request)
    term, category, sort, user_id = Q.read(request), CATEGORY.read(request), SORT.read(request), USER_ID.read(request)
    limit, offset = LIMIT.read(request), read_offset(CURSOR.read(request))

    def run() -> dict[str, Any]:
        with Session(get_engine()) as s:
            stmt = select(Template).where(Template.org_id == org_id, col(Template.deleted_at).is_(None))
            if user_id:  # the user's own private templates plus everyone's public ones
                stmt = stmt.where(or_(col(Template.is_public).is_(True), Template.created_by == user_id))
            if category:
                stmt = stmt.where(Template.category == category)
            if term:
                like = "%" + term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                stmt = stmt.where(func.lower(Template.name).like(like, escape="\\"))
            if sort in ("open_rate", "click_rate"):
                # One grouped pass over the sent emails (index on emails.template_id), joined in.
                stats = (select(col(Email.template_id).label("tid"), func.count().label("sent"),
                                func.sum(case((col(Email.open_count if sort == "open_rate" else Email.click_count) > 0, 1),
                                              else_=0)).label("hit"))
                         .where(Email.org_id == org_id, col(Email.template_id).is_not(None), Email.direction == "outbound",
                                Email.status == "sent")
                         .group_by(Email.template_id).subquery())
                rate = case((stats.c.sent > 0, stats.c.hit * 1.0 / stats.c.sent), else_=-1.0)
                stmt = (stmt.outerjoin(stats, stats.c.tid == Template.id)
                        .order_by(func.coalesce(rate, -1.0).desc(), col(Template.id).desc()))
            elif sort == "usage":
                stmt = stmt.order_by(col(Template.usage_count).desc(), col(Template.id).desc())
            else:
                stmt = stmt.order_by(col(Template.created_at).desc(), col(Template.id).desc())
            rows = list(s.execute(stmt.offset(offset).limit(limit + 1)).scalars())
            page = rows[:limit]
            rates = _rates(s, [t.id for t in page])
            return {"items": [template_json(t, rates.get(t.id)) for t in page],
                    "next_cursor": offset_cursor(offset + limit) if len(rows) > limit else None}

    return JSONResponse(await run_in_threadpool(run))


@router.route("GET", "/api/v1/templates/metrics.csv", summary="Every template's usage and rates as CSV", response=Raw("text/csv"))
async def metrics_csv(request: Request) -> Response:
    org_id = _org(request)

    def run() -> str:
        import csv
        import io

        with Session(get_engine()) as s:
            rows = list(s.execute(select(Template).where(Template.org_id == org_id, col(Template.deleted_at).is_(None))
                                  .order_by(col(Template.usage_count).desc(), Template.name)).scalars())
            rates = _rates(s, [t.id for t in rows])
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(["id", "name", "category", "is_public", "usage_count", "sent_count", "avg_open_rate", "avg_click_rate",
                    "last_used_at", "created_at"])
        for t in rows:
            j = template_json(t, rates.get(t.id))
            w.writerow([t.id, _cell(t.name), _cell(t.category), t.is_public, t.usage_count, j["sent_count"],
                        "" if j["avg_open_rate"] is None else j["avg_open_rate"],
                        "" if j["avg_click_rate"] is None else j["avg_click_rate"], j["last_used_at"] or "", j["created_at"]])
        return buf.getvalue()

    return Response(await run_in_threadpool(run), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="template-metrics.csv"'})


def _cell(value: str) -> str:
    """A text cell that a spreadsheet will not run as a formula (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


@router.route("GET", "/api/v1/templates/{id}", summary="One template with its metrics", response=TemplateOut,
              responses={404: "not found"})
async def get_template(request: Request) -> JSONResponse:
    org_id, tid = _org(request), request.path_params["id"]

    def run() -> dict[str, Any]:
        with Session(get_engine()) as s:
            t = _load(s, org_id, tid)
            return template_json(t, _rates(s, [t.id]).get(t.id))

    return JSONResponse(await run_in_threadpool(run))


@router.route("PATCH", "/api/v1/templates/{id}", summary="Change a template (merge fields checked again)", body=TemplatePatch,
              response=TemplateOut, max_body=TEMPLATE_MAX_BODY, responses={404: "not found", 422: "unknown merge field or syntax error"})
async def patch_template(request: Request) -> JSONResponse:
    org_id, tid = _org(request), request.path_params["id"]
    body = await parse_body(request, TemplatePatch)

    def run() -> dict[str, Any]:
        with Session(get_engine(), expire_on_commit=False) as s:
            t = _load(s, org_id, tid)
            for k, v in body.model_dump(exclude_none=True).items():
                setattr(t, k, v)
            t.merge_fields = merge_fields_of(t.subject, t.body_html, t.body_text)
            t.updated_at = utcnow()
            s.add(t)
            s.commit()
            return template_json(t, _rates(s, [t.id]).get(t.id))

    return JSONResponse(await run_in_threadpool(run))


@router.route("DELETE", "/api/v1/templates/{id}", summary="Delete a template (sent mail keeps its template_id)", status=204,
              responses={404: "not found"})
async def delete_template(request: Request) -> Response:
    org_id, tid = _org(request), request.path_params["id"]

    def run() -> None:
        with Session(get_engine()) as s:
            t = _load(s, org_id, tid)
            t.deleted_at = utcnow()
            s.add(t)
            s.commit()

    await run_in_threadpool(run)
    return Response(status_code=204)


@router.route("POST", "/api/v1/templates/{id}/preview", summary="Render with sample data or named records", body=PreviewIn,
              response=PreviewOut, responses={404: "template or record not found"})
async def preview_template(request: Request) -> JSONResponse:
    org_id, tid = _org(request), request.path_params["id"]
    body = await parse_body(request, PreviewIn)

    def run() -> dict[str, Any]:
        from pipeline.flows.merge_fields import MergeRecordMissing, merge_values

        with Session(get_engine()) as s:
            t = _load(s, org_id, tid)
            sender = s.get(User, (org_id, t.created_by)) if t.created_by else None
            if body.merge:
                try:
                    values: dict[str, Any] = merge_values(s, org_id, body.merge, sender, sender.email if sender else "")
                except MergeRecordMissing as exc:
                    raise ApiError(404, "not_found", str(exc)) from None
            else:
                values = {**SAMPLE, "senderName": sender.name if sender else "Sam Seller",
                          "senderEmail": sender.email if sender else "sam@yourcompany.example",
                          "senderPhone": (sender.phone if sender else None) or "+1 555 0100"}
        out, missing, _ = render_parts({"subject": (t.subject, "subject"), "body_html": (t.body_html, "html"),
                                        "body_text": (t.body_text, "text")}, values)
        return {**out, "missing": list(missing)}

    return JSONResponse(await run_in_threadpool(run))


class AsTemplateIn(Body):
    name: str = Field(min_length=1, max_length=300)
    category: str = Field(default="sales", min_length=1, max_length=100)
    is_public: bool = False
    created_by: str | None = Field(default=None, max_length=64)


@router.route("POST", "/api/v1/emails/{id}/as-template", summary="Create a template from an email", body=AsTemplateIn,
              status=201, response=TemplateOut, responses={404: "email not found", 422: "the email's text is not a valid template"})
async def email_as_template(request: Request) -> JSONResponse:
    org_id, email_id = _org(request), request.path_params["id"]
    body = await parse_body(request, AsTemplateIn)

    who = actor(request)

    def load() -> Email:
        with Session(get_engine()) as s:
            return who.email(s, email_id)

    e = await run_in_threadpool(load)
    html = e.body_html if e.body_html is not None else "".join(f"<p>{line}</p>" for line in
                                                               __import__("html").escape(e.body_text).split("\n") if line)
    fields = merge_fields_of(e.subject, html, e.body_text or None)

    def run() -> dict[str, Any]:
        with Session(get_engine(), expire_on_commit=False) as s:
            t = Template(org_id=org_id, name=body.name, category=body.category, subject=e.subject, body_html=html,
                         body_text=e.body_text or None, is_public=body.is_public, created_by=body.created_by, merge_fields=fields)
            s.add(t)
            s.commit()
            return template_json(t)

    return JSONResponse(await run_in_threadpool(run), status_code=201)
