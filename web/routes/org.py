"""The caller's organization and its settings (lead creation, \\Seen marking, own domains)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from models import Organization
from models.db import get_engine
from web.api import ApiRouter
from web.present import iso
from web.schemas.org import OrgOut
from web.validation import Body, parse_body

router = ApiRouter("organization")


class OrgPatch(Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    auto_create_leads: bool | None = None
    mark_seen: bool | None = None
    own_domains: list[str] | None = None
    honor_dnt: bool | None = None
    anonymize_ip: bool | None = None
    sentiment_llm: bool | None = Field(default=None, description="classify this organization's mail with the LLM backend (when configured)")
    retention_days: int | None = Field(default=None, ge=1, le=36500,
                                       description="emails older than this many days are purged daily; null keeps mail forever")

    @field_validator("own_domains")
    @classmethod
    def _domains(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        out = []
        for d in v:
            d = d.strip().lower().lstrip("@")
            if not d or "." not in d or any(c.isspace() or c in "/@" for c in d):
                raise ValueError(f"{d!r} is not a domain like example.com")
            out.append(d)
        return sorted(set(out))


def org_json(o: Organization) -> dict[str, Any]:
    return {"id": o.id, "name": o.name, "auto_create_leads": o.auto_create_leads, "mark_seen": o.mark_seen,
            "own_domains": o.own_domains, "honor_dnt": o.honor_dnt, "anonymize_ip": o.anonymize_ip,
            "sentiment_llm": o.sentiment_llm, "retention_days": o.retention_days, "created_at": iso(o.created_at)}


@router.route("GET", "/api/v1/org", summary="The calling organization and its settings", response=OrgOut)
async def get_org(request: Request) -> JSONResponse:
    def run() -> dict[str, Any]:
        with Session(get_engine()) as s:
            o = s.get(Organization, str(request.state.org_id))
            assert o is not None
            return org_json(o)

    return JSONResponse(await run_in_threadpool(run))


@router.route("PATCH", "/api/v1/org", summary="Change settings: auto_create_leads, mark_seen, own_domains", body=OrgPatch,
              response=OrgOut, org_only=True)
async def patch_org(request: Request) -> JSONResponse:
    body = await parse_body(request, OrgPatch)

    def run() -> dict[str, Any]:
        with Session(get_engine(), expire_on_commit=False) as s:
            o = s.get(Organization, str(request.state.org_id))
            assert o is not None
            for k, v in body.model_dump(exclude_none=True).items():
                setattr(o, k, v)
            if "retention_days" in body.model_fields_set and body.retention_days is None:
                o.retention_days = None  # an explicit null: keep forever
            s.add(o)
            s.commit()
            return org_json(o)

    return JSONResponse(await run_in_threadpool(run))
