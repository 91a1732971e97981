"""JSON errors per API.md: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from models.access import NotVisible

__all__ = ["ApiError", "error_response", "exception_handlers", "field_error"]

log = structlog.get_logger("mailpipe.web")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """An error the client should see, with a stable snake_case code."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    @classmethod
    def not_found(cls, what: str) -> ApiError:
        return cls(404, "not_found", f"{what} not found")


def field_error(field: str, message: str, *, kind: str = "value_error", text: str | None = None) -> ApiError:
    """A 422 naming one field, in the same shape as body validation errors."""
    return ApiError(422, "validation_error", text or f"{field}: {message}",
                    {"errors": [{"field": field, "message": message, "type": kind}]})


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details or {}}}, status_code=status,
                        headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message)


async def _not_visible(request: Request, exc: Exception) -> JSONResponse:
    """A row the acting user may not see answers exactly like one that does not exist."""
    assert isinstance(exc, NotVisible)
    return error_response(404, "not_found", f"{exc.what} not found")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The exception text may carry connection strings or secrets: log the type only to the client.
    log.error("unhandled_error", path=request.url.path, error_type=type(exc).__name__, exc_info=exc)
    return error_response(500, "internal_error", "internal error; see server logs")


exception_handlers: dict[Any, Any] = {ApiError: _api_error, NotVisible: _not_visible, HTTPException: _http_error,
                                      Exception: _unexpected}
