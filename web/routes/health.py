"""Liveness, readiness and Prometheus metrics (public)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from models.db import get_engine
from ops import metrics
from web.api import ApiRouter, Raw
from web.schemas.health import HealthOut, ReadyOut

router = ApiRouter("operations")

_broker_ok_until = 0.0


def _check_database() -> str | None:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # readiness reports, never raises
        return f"{type(exc).__name__}: database unreachable"


def _check_broker() -> str | None:
    """Open (and close) an AMQP connection to the first reachable broker URL; cached 5 s when ok."""
    global _broker_ok_until
    from ops.settings import get_settings

    url = get_settings().broker_url
    if url is None:
        return None  # in-process broker: always there
    if time.monotonic() < _broker_ok_until:
        return None
    import pika

    last = "no broker URL"
    for part in url.split(";"):
        try:
            params = pika.URLParameters(part.strip())
            params.socket_timeout = 2
            params.stack_timeout = 3
            params.connection_attempts = 1
            pika.BlockingConnection(params).close()
        except Exception as exc:  # readiness reports, never raises
            last = f"{type(exc).__name__}: broker unreachable"
            continue
        _broker_ok_until = time.monotonic() + 5
        return None
    return last


@router.route("GET", "/healthz", summary="Process is up", public=True, response=HealthOut)
async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.route("GET", "/readyz", summary="Database and broker reachable", public=True, response=ReadyOut,
              responses={503: ("not ready", ReadyOut)})
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, Any] = {}
    db_error = await run_in_threadpool(_check_database)
    broker_error = await run_in_threadpool(_check_broker)
    checks["database"] = {"ok": db_error is None, "error": db_error}
    checks["broker"] = {"ok": broker_error is None, "error": broker_error}
    ok = db_error is None and broker_error is None
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


@router.route("GET", "/metrics", summary="Prometheus metrics", public=True, response=Raw("text/plain"))
async def metrics_endpoint(request: Request) -> Response:
    body, ctype = await run_in_threadpool(metrics.render)
    return Response(body, media_type=ctype)
