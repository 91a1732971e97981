"""Sentiment of a CRM account's inbound mail: counts over a window, the trend against the window
before, whether it is at risk and why (``GET /api/v1/crm/accounts/{id}/sentiment``)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from models import AccountRisk, CrmAccount, utcnow
from models.db import get_engine
from pipeline.flows.account_risk import policy, report_for
from web.api import ApiRouter
from web.errors import ApiError
from web.params import Param
from web.present import iso
from web.schemas.sentiment import AccountSentimentOut

router = ApiRouter("sentiment")

WINDOW = Param.integer("window_days", None, minimum=1, maximum=90,
                       description="days in the window (default MAILPIPE_SENTIMENT_WINDOW_DAYS, 14); "
                                   "the trend compares it with the window before")


def _account_sentiment(org_id: str, account_id: str, window_days: int | None) -> dict[str, Any]:
    now = utcnow()
    with Session(get_engine()) as s:
        if s.get(CrmAccount, (org_id, account_id)) is None:
            raise ApiError.not_found("account")
        report = report_for(s, org_id, account_id, now, policy(window_days))
        state = s.get(AccountRisk, (org_id, account_id))
    since = state.since if state is not None and state.at_risk else None
    return {"account_id": account_id, "at_risk": report.at_risk, "counts": report.counts, "window_days": report.window_days,
            "trend": report.trend, "reasons": report.reasons, "at_risk_since": iso(since)}


@router.route("GET", "/api/v1/crm/accounts/{id}/sentiment",
              summary="Sentiment of an account's inbound mail: counts, trend, at risk and why", query=(WINDOW,),
              response=AccountSentimentOut, responses={404: "not found"})
async def account_sentiment(request: Request) -> JSONResponse:
    data = await run_in_threadpool(_account_sentiment, str(request.state.org_id), request.path_params["id"], WINDOW.read(request))
    return JSONResponse(data)
