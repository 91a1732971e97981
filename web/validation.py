"""Request body and query validation with pydantic; failures become 422 JSON errors."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request

from web.errors import ApiError

__all__ = ["Body", "parse_body", "query_int"]

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 30 * 1024 * 1024


class Body(BaseModel):
    """Base for request bodies: unknown fields are rejected so typos surface."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


async def parse_body(request: Request, model: type[M]) -> M:
    """Read and validate a JSON body (any non-multipart content type is read as JSON); 413/415/422."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype.startswith("multipart/"):
        raise ApiError(415, "unsupported_media_type", "send JSON with Content-Type: application/json")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_json", f"body is not valid JSON: {exc.msg if hasattr(exc, 'msg') else exc}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "validation_error", "body must be a JSON object")
    if _has_nul(data):
        raise ApiError(422, "validation_error", "NUL characters are not allowed in request bodies")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "validation_error", "request body is invalid", {"errors": _errors(exc)}) from None


def _has_nul(value: Any) -> bool:
    """True if any string (key or value) in decoded JSON contains U+0000."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def query_int(request: Request, name: str, default: int, *, minimum: int = 1, maximum: int = 500) -> int:
    """An integer query parameter within bounds, or 422."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "validation_error", f"query parameter {name!r} must be an integer") from None
    if not minimum <= value <= maximum:
        raise ApiError(422, "validation_error", f"query parameter {name!r} must be between {minimum} and {maximum}")
    return value


def field_error(field: str, message: str, *, kind: str = "value_error", text: str | None = None) -> ApiError:
    """A 422 naming one field, in the same shape as body validation errors."""
    return ApiError(422, "validation_error", text or f"{field}: {message}",
                    {"errors": [{"field": field, "message": message, "type": kind}]})


def query_required(request: Request, name: str, max_length: int = 64) -> str:
    """A required, non-empty query parameter (stripped), or 422 naming it."""
    value = (request.query_params.get(name) or "").strip()
    if not value or len(value) > max_length:
        raise field_error(name, "required", kind="missing", text=f"{name} is required")
    return value
