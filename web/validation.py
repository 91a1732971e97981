"""Request body and query validation with pydantic; failures become 422 JSON errors naming the field.

Bodies are read under the route's size cap (``web.body_limit``), decoded by
``web.json_limits.load_json`` (UTF-8, depth, item count, finite 64-bit numbers) and validated
*strictly*: a boolean field takes only ``true``/``false``, a number field only a JSON number
(``"yes"``, ``"1"`` or ``1`` for a bool is a 422 naming the field). Date-times are the one
legitimate coercion: :data:`IsoDateTime` takes an ISO-8601 string.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from web.errors import ApiError, field_error
from web.json_limits import load_json
from web.params import Param

__all__ = ["Body", "IsoDateTime", "field_error", "parse_body", "query_int", "query_required"]

M = TypeVar("M", bound=BaseModel)

INLINE_BODY_BYTES = 64 * 1024  # larger bodies are decoded and validated on a worker thread


class Body(BaseModel):
    """Base for request bodies: unknown fields are rejected so typos surface; types are strict."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)


def _iso_text(value: Any) -> Any:
    if not isinstance(value, (str, datetime)):
        raise ValueError("must be an ISO-8601 date-time string, e.g. 2026-12-01T09:00:00+01:00")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_text), Field(strict=False)]
"""A date-time given as an ISO-8601 string (the one coercion strict bodies allow)."""


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
    raw = await request.body()  # the route's BodyLimit stops the read at its cap
    if len(raw) > INLINE_BODY_BYTES:  # decoding megabytes would hold the event loop (and every other request)
        return await run_in_threadpool(_decode, raw, model)
    return _decode(raw, model)


def _decode(raw: bytes, model: type[M]) -> M:
    data = load_json(raw)
    if not isinstance(data, dict):
        raise ApiError(422, "validation_error", "body must be a JSON object",
                       {"errors": [{"field": "(body)", "message": "must be a JSON object", "type": "model_type"}]})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = _errors(exc)
        names = ", ".join(dict.fromkeys(e["field"] for e in errors))
        raise ApiError(422, "validation_error", f"request body is invalid: {names}", {"errors": errors}) from None


def query_int(request: Request, name: str, default: int, *, minimum: int = 1, maximum: int = 500) -> int:
    """An integer query parameter within bounds, or 422 (prefer declaring a ``web.params.Param``)."""
    value: int = Param.integer(name, default, minimum=minimum, maximum=maximum).read(request)
    return value


def query_required(request: Request, name: str, max_length: int = 64) -> str:
    """A required, non-empty query parameter (stripped), or 422 naming it."""
    value = (request.query_params.get(name) or "").strip()
    if not value or len(value) > max_length:
        raise field_error(name, "required", kind="missing", text=f"{name} is required")
    return value
