"""Webhook subscriptions (``/api/v1/webhooks``): register, list, read, change, delete, rotate the
secret, send a test event, read the delivery log, retry one delivery (see API.md "Webhooks")."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pipeline.flows import webhook_endpoints as svc
from web.api import ApiRouter
from web.errors import ApiError
from web.params import Param
from web.schemas.webhooks import DeliveriesOut, DeliveryOut, WebhookCreatedOut, WebhookOut, WebhookRotatedOut, WebhooksOut, WebhookTestOut
from web.validation import Body, parse_body

router = ApiRouter("webhooks")


class WebhookIn(Body):
    url: str = Field(min_length=1, max_length=2000, description="http:// or https://; must resolve to public addresses")
    events: list[str] = Field(min_length=1, max_length=20, description='event types, or ["*"] for all')
    description: str | None = Field(default=None, max_length=500)


class WebhookPatch(Body):
    url: str | None = Field(default=None, min_length=1, max_length=2000)
    events: list[str] | None = Field(default=None, min_length=1, max_length=20)
    description: str | None = Field(default=None, max_length=500)
    disabled: bool | None = None


def _refused(exc: svc.TargetRefused) -> ApiError:
    field = "events" if exc.code == "invalid_events" else "url"
    return ApiError(422, exc.code, exc.message, {"errors": [{"field": field, "message": exc.message, "type": exc.code}]})


def _found(value: Any, what: str = "webhook") -> Any:
    if value is None:
        raise ApiError.not_found(what)
    return value


@router.route("POST", "/api/v1/webhooks", summary="Register a webhook endpoint (the secret is shown once)", body=WebhookIn,
              status=201, response=WebhookCreatedOut, responses={422: "invalid url or events, or a target that is not public"},
              org_only=True)
async def create(request: Request) -> JSONResponse:
    body = await parse_body(request, WebhookIn)
    try:
        data = await run_in_threadpool(svc.create_endpoint, str(request.state.org_id), body.url, body.events, body.description)
    except svc.TargetRefused as exc:
        raise _refused(exc) from None
    return JSONResponse(data, status_code=201)


@router.route("GET", "/api/v1/webhooks", summary="The organization's webhook endpoints", response=WebhooksOut, org_only=True)
async def list_all(request: Request) -> JSONResponse:
    return JSONResponse({"items": await run_in_threadpool(svc.list_endpoints, str(request.state.org_id))})


@router.route("GET", "/api/v1/webhooks/{id}", summary="One webhook endpoint (never its secret)", response=WebhookOut,
              responses={404: "not found"}, org_only=True)
async def get_one(request: Request) -> JSONResponse:
    data = await run_in_threadpool(svc.get_endpoint, str(request.state.org_id), request.path_params["id"])
    return JSONResponse(_found(data))


@router.route("PATCH", "/api/v1/webhooks/{id}", summary="Change url, events, description or disabled", body=WebhookPatch,
              response=WebhookOut, responses={404: "not found", 422: "invalid url or events, or a target that is not public"},
              org_only=True)
async def patch(request: Request) -> JSONResponse:
    body = await parse_body(request, WebhookPatch)
    changes = body.model_dump(exclude_unset=True)
    for k in ("url", "events", "disabled"):
        if k in changes and changes[k] is None:
            raise ApiError(422, "validation_error", f"{k} may not be null", {"errors": [{"field": k, "message": "may not be null",
                                                                                         "type": "value_error"}]})
    try:
        data = await run_in_threadpool(svc.update_endpoint, str(request.state.org_id), request.path_params["id"], changes)
    except svc.TargetRefused as exc:
        raise _refused(exc) from None
    return JSONResponse(_found(data))


@router.route("DELETE", "/api/v1/webhooks/{id}", summary="Delete a webhook endpoint and its delivery log", status=204,
              responses={404: "not found"}, org_only=True)
async def remove(request: Request) -> Response:
    _found(await run_in_threadpool(svc.delete_endpoint, str(request.state.org_id), request.path_params["id"]) or None)
    return Response(status_code=204)


@router.route("POST", "/api/v1/webhooks/{id}/rotate-secret",
              summary="A new secret (shown once); the previous one keeps signing beside it for 24 hours",
              response=WebhookRotatedOut, responses={404: "not found"}, org_only=True)
async def rotate(request: Request) -> JSONResponse:
    data = await run_in_threadpool(svc.rotate_secret, str(request.state.org_id), request.path_params["id"])
    return JSONResponse(_found(data))


@router.route("POST", "/api/v1/webhooks/{id}/test", summary="Send a webhook.test event to this endpoint", status=202,
              response=WebhookTestOut, responses={404: "not found"}, org_only=True)
async def test(request: Request) -> JSONResponse:
    data = await run_in_threadpool(svc.send_test, str(request.state.org_id), request.path_params["id"])
    return JSONResponse(_found(data), status_code=202)


STATUS = Param.choice("status", ("pending", "succeeded", "failed"), description="only deliveries in this status")
LIMIT = Param.integer("limit", 50, maximum=200)


@router.route("GET", "/api/v1/webhooks/{id}/deliveries", summary="The endpoint's delivery log, newest first",
              query=(STATUS, LIMIT), response=DeliveriesOut, responses={404: "not found"}, org_only=True)
async def delivery_log(request: Request) -> JSONResponse:
    items = await run_in_threadpool(svc.deliveries, str(request.state.org_id), request.path_params["id"], STATUS.read(request),
                                    LIMIT.read(request))
    return JSONResponse({"items": _found(items)})


@router.route("POST", "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry", summary="Re-send one delivery now",
              status=202, response=DeliveryOut, responses={404: "not found"}, org_only=True)
async def retry(request: Request) -> JSONResponse:
    data = await run_in_threadpool(svc.retry_delivery, str(request.state.org_id), request.path_params["id"],
                                   request.path_params["delivery_id"])
    return JSONResponse(_found(data, "delivery"), status_code=202)
