"""Response shapes for the OpenAPI document, one module per API area; :class:`Error` is shared.

They describe what the handlers return (the handlers build plain dicts); schemathesis checks
every response against them (``tests/integration/test_schemathesis.py``). Fields may be added to a
response without breaking a client, so the models leave additional properties allowed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["Error", "ErrorBody", "Out"]


class Out(BaseModel):
    """Base for response models."""


class ErrorBody(Out):
    code: str = Field(description="stable snake_case code")
    message: str
    details: dict[str, Any] = Field(description="e.g. errors: [{field, message, type}] for validation errors")


class Error(Out):
    """Every error: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody
