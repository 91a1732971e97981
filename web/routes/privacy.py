"""Privacy and deliverability (API.md "Privacy, retention and deliverability"): per-address export and
erase jobs, the export download, and the organization's suppression list."""

from __future__ import annotations

import base64
from typing import Any

from pydantic import Field, field_validator
from sqlalchemy import delete
from sqlmodel import Session, col, select
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from models import PrivacyJob, Suppression, normalize_email, utcnow
from models.db import get_engine
from ops.keys import read_claims, sign_claims
from ops.settings import get_settings
from pipeline.flows.bounces import suppress
from pipeline.flows.privacy import request_job
from web.api import ApiRouter, Raw
from web.cursors import CURSOR
from web.errors import ApiError, field_error
from web.params import Param
from web.present import iso
from web.schemas.privacy import JobAccepted, PrivacyJobOut, SuppressionOut, SuppressionsPage
from web.validation import Body, parse_body

router = ApiRouter("privacy")

_PURPOSE = "privacy-export"


def _org(request: Request) -> str:
    return str(request.state.org_id)


class AddressIn(Body):
    email: str = Field(min_length=3, max_length=320, description="the person's address")

    @field_validator("email")
    @classmethod
    def _address(cls, v: str) -> str:
        norm = normalize_email(v)
        if not norm or "@" not in norm or any(c.isspace() for c in norm):
            raise ValueError("not an email address")
        return norm


def download_url(job: PrivacyJob) -> str | None:
    """A signed URL for the export archive, valid until the job's ``expires_at``."""
    if job.kind != "export" or job.state != "done" or not job.result_key or job.expires_at is None:
        return None
    ttl = (job.expires_at - utcnow()).total_seconds()
    if ttl <= 0:
        return None
    token = sign_claims(_PURPOSE, (job.org_id, job.id), ttl)
    return f"{get_settings().public_url}/privacy/exports/{token}"


def job_json(job: PrivacyJob) -> dict[str, Any]:
    return {"id": job.id, "kind": job.kind, "state": job.state,
            "counts": {k: v for k, v in (job.counts or {}).items() if isinstance(v, int)},
            "download_url": download_url(job), "expires_at": iso(job.expires_at) if job.result_key else None,
            "created_at": iso(job.created_at), "finished_at": iso(job.finished_at), "error": job.error}


async def _start(request: Request, kind: str) -> JSONResponse:
    body = await parse_body(request, AddressIn)
    job_id = await run_in_threadpool(request_job, _org(request), kind, body.email)
    return JSONResponse({"job_id": job_id}, status_code=202)


@router.route("POST", "/api/v1/privacy/export", summary="Export everything held about an address (a zip of .eml files and tracking.json)",
              body=AddressIn, status=202, response=JobAccepted, org_only=True)
async def export(request: Request) -> JSONResponse:
    return await _start(request, "export")


@router.route("POST", "/api/v1/privacy/erase", summary="Erase everything held about an address (mail, files, events); never re-imported",
              body=AddressIn, status=202, response=JobAccepted, org_only=True)
async def erase(request: Request) -> JSONResponse:
    return await _start(request, "erase")


@router.route("GET", "/api/v1/privacy/jobs/{id}", summary="A privacy job: state, counts, and the export's download URL",
              response=PrivacyJobOut, responses={404: "not found"}, org_only=True)
async def get_job(request: Request) -> JSONResponse:
    org_id, job_id = _org(request), request.path_params["id"]

    def run() -> dict[str, Any]:
        with Session(get_engine()) as s:
            job = s.get(PrivacyJob, job_id)
            if job is None or job.org_id != org_id or job.kind not in ("export", "erase"):
                raise ApiError.not_found("privacy job")
            return job_json(job)

    return JSONResponse(await run_in_threadpool(run))


@router.route("GET", "/privacy/exports/{token}", summary="Download an export archive (the signed URL from the job)", public=True,
              response=Raw("application/zip", {"type": "string", "format": "binary"}), responses={404: "unknown, forged or expired"})
async def download(request: Request) -> Response:
    claims = read_claims(_PURPOSE, request.path_params["token"])
    if claims is None or len(claims) != 2:
        raise ApiError.not_found("export")
    org_id, job_id = claims

    def find() -> str:
        with Session(get_engine()) as s:
            job = s.get(PrivacyJob, job_id)
            if job is None or job.org_id != org_id or not job.result_key or job.expires_at is None or job.expires_at < utcnow():
                raise ApiError.not_found("export")
            return job.result_key

    key = await run_in_threadpool(find)
    from pipeline.clients.storage import get_storage

    storage = get_storage()
    if not await run_in_threadpool(storage.exists, key):
        raise ApiError.not_found("export")
    return StreamingResponse(iterate_in_threadpool(storage.open_stream(key)), media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="export-{job_id}.zip"',
                                      "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def suppression_json(row: Suppression) -> dict[str, Any]:
    return {"email": row.address_norm, "reason": row.reason, "at": iso(row.created_at), "email_id": row.email_id}


def _cursor(address: str) -> str:
    return base64.urlsafe_b64encode(address.encode()).decode().rstrip("=")


def _uncursor(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise field_error("cursor", "not a cursor this list gave") from None


SUPPRESSION_PARAMS = (Param.choice("reason", ("hard_bounce", "complaint", "unsubscribe", "manual")),
                      Param.integer("limit", 100, maximum=500), CURSOR)


@router.route("GET", "/api/v1/suppressions", summary="The organization's suppression list", query=SUPPRESSION_PARAMS,
              response=SuppressionsPage, org_only=True)
async def list_suppressions(request: Request) -> JSONResponse:
    org_id = _org(request)
    q = {p.name: p.read(request) for p in SUPPRESSION_PARAMS}

    def run() -> dict[str, Any]:
        stmt = select(Suppression).where(Suppression.org_id == org_id)
        if q["reason"]:
            stmt = stmt.where(Suppression.reason == q["reason"])
        if q["cursor"]:
            stmt = stmt.where(col(Suppression.address_norm) > _uncursor(q["cursor"]))
        with Session(get_engine()) as s:
            rows = list(s.execute(stmt.order_by(col(Suppression.address_norm)).limit(q["limit"] + 1)).scalars())
        more = len(rows) > q["limit"]
        rows = rows[: q["limit"]]
        return {"items": [suppression_json(r) for r in rows], "next_cursor": _cursor(rows[-1].address_norm) if more and rows else None}

    return JSONResponse(await run_in_threadpool(run))


@router.route("POST", "/api/v1/suppressions", summary="Suppress an address by hand (reason: manual)", body=AddressIn,
              status=201, response=SuppressionOut, org_only=True)
async def add_suppression(request: Request) -> JSONResponse:
    org_id = _org(request)
    body = await parse_body(request, AddressIn)

    def run() -> dict[str, Any]:
        with Session(get_engine()) as s:
            suppress(s, org_id, [body.email], "manual", None)
            s.commit()
            row = s.execute(select(Suppression).where(Suppression.org_id == org_id, Suppression.address_norm == body.email)).scalar_one()
            return suppression_json(row)

    return JSONResponse(await run_in_threadpool(run), status_code=201)


@router.route("DELETE", "/api/v1/suppressions/{email}", summary="Remove an address from the suppression list", status=204,
              responses={404: "not on the list"}, org_only=True)
async def remove_suppression(request: Request) -> Response:
    org_id = _org(request)
    address = normalize_email(request.path_params["email"]) or request.path_params["email"]

    def run() -> None:
        with Session(get_engine()) as s:
            gone = s.execute(delete(Suppression).where(col(Suppression.org_id) == org_id, col(Suppression.address_norm) == address))
            s.commit()
            if not gone.rowcount:  # type: ignore[attr-defined]
                raise ApiError.not_found("suppression")

    await run_in_threadpool(run)
    return Response(status_code=204)
