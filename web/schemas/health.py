"""Operations endpoints."""

from __future__ import annotations

from web.schemas import Out


class HealthOut(Out):
    status: str


class Check(Out):
    ok: bool
    error: str | None


class Checks(Out):
    database: Check
    broker: Check


class ReadyOut(Out):
    status: str
    checks: Checks
