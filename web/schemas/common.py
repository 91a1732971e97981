"""Small response shapes several areas share."""

from __future__ import annotations

from pydantic import Field

from web.schemas import Out

__all__ = ["Ts", "UrlOut"]

Ts = str | None  # an ISO-8601 UTC timestamp ("...Z"), or null


class UrlOut(Out):
    url: str = Field(description="open it in the user's browser")
