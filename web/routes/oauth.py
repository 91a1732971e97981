"""OAuth accounts (API.md "OAuth accounts"): the authorize URL and the provider's callback."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from models import User
from models.db import get_engine
from pipeline.flows import oauth_signin as oauth
from pipeline.stages.wire_text import control_character, host_problem
from web.access import actor, own_user
from web.api import ApiRouter
from web.errors import ApiError
from web.params import Param
from web.schemas.accounts import OAuthConnectedOut
from web.schemas.common import UrlOut
from web.validation import field_error

router = ApiRouter("oauth")

PROVIDERS = ("google", "microsoft")
_OVERRIDES = {"imap_host": str, "imap_port": int, "imap_security": str, "smtp_host": str, "smtp_port": int, "smtp_security": str}


def _provider(request: Request) -> str:
    name = str(request.path_params["provider"])
    if name not in PROVIDERS:
        raise ApiError(404, "not_found", f"unknown OAuth provider {name!r}; use google or microsoft")
    return name


def _overrides(request: Request) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind in _OVERRIDES.items():
        raw = request.query_params.get(key)
        if raw is None or raw == "":
            continue
        if kind is int:
            if not raw.isdigit() or not 1 <= int(raw) <= 65535:
                raise field_error(key, "must be a port number (1-65535)")
            out[key] = int(raw)
        elif key.endswith("_security"):
            if raw not in ("ssl", "starttls", "none"):
                raise field_error(key, "must be ssl, starttls or none")
            out[key] = raw
        else:
            problem = host_problem(raw)
            if problem is not None:
                raise field_error(key, problem)
            out[key] = raw
    return out


@router.route("GET", "/api/v1/oauth/{provider}/authorize", summary="Start connecting a Gmail or Outlook mailbox over OAuth",
              query=(Param.text("user_id", max_length=64, required=True), Param.text("email", max_length=320, required=True),
                     Param.text("imap_host", max_length=255), Param.integer("imap_port", None, maximum=65535),
                     Param.choice("imap_security", ("ssl", "starttls", "none")), Param.text("smtp_host", max_length=255),
                     Param.integer("smtp_port", None, maximum=65535), Param.choice("smtp_security", ("ssl", "starttls", "none"))),
              path_params={"provider": Param.choice("provider", PROVIDERS)}, response=UrlOut,
              responses={404: "unknown provider", 422: "invalid input, or an override host the connection guard refuses",
                         400: "provider not configured"})
async def authorize(request: Request) -> JSONResponse:
    provider = _provider(request)
    user_id = (request.query_params.get("user_id") or "").strip()
    email = (request.query_params.get("email") or "").strip()
    if not user_id or len(user_id) > 64:
        raise field_error("user_id", "required (the CRM user who owns the mailbox)")
    if "@" not in email or len(email) > 320 or any(c.isspace() for c in email) or control_character(email) is not None:
        raise field_error("email", "must be the mailbox's email address")
    overrides = _overrides(request)
    org_id = str(request.state.org_id)
    own_user(actor(request), user_id)

    def run() -> str:
        from sqlmodel import Session

        url = oauth.start(org_id, user_id, provider, email, overrides)  # checks the overrides first
        with Session(get_engine()) as s:
            if s.get(User, (org_id, user_id)) is None:
                s.add(User(org_id=org_id, id=user_id, name=email[:300], email=email, email_norm=email.lower()))
                s.commit()
        return url

    try:
        url = await run_in_threadpool(run)
    except oauth.NotConfigured as exc:
        raise ApiError(400, "provider_not_configured", str(exc)) from None
    except oauth.EndpointRefused as exc:  # the connection guard: the token would go where it must not
        raise ApiError(422, exc.code, exc.message,
                       {"errors": [{"field": exc.field("_"), "message": exc.message, "type": exc.code}]}) from None
    return JSONResponse({"url": url})


@router.route("GET", "/api/v1/oauth/{provider}/callback",
              summary="Where the provider sends the browser back (public: trusts its signed state)",
              public=True, query=tuple(Param.text(n, max_length=2000) for n in ("code", "state", "error", "error_description")),
              path_params={"provider": Param.choice("provider", PROVIDERS)}, response=OAuthConnectedOut,
              responses={400: "bad or expired state, or the provider refused", 404: "unknown provider"})
async def callback(request: Request) -> JSONResponse:
    provider = _provider(request)
    state = request.query_params.get("state") or ""
    if request.query_params.get("error"):
        # The user said no (access_denied) or the provider refused; the flow stays unused until it expires.
        error = request.query_params.get("error", "")[:64]
        raise ApiError(400, "oauth_denied", f"{provider} did not authorize the mailbox ({error})", {"error": error})
    code = request.query_params.get("code") or ""
    if not code or not state:
        raise ApiError(400, "invalid_state", "code and state are required")
    try:
        result = await run_in_threadpool(oauth.finish, provider, code, state)
    except oauth.NotConfigured as exc:
        raise ApiError(400, "provider_not_configured", str(exc)) from None
    except oauth.FlowError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    return JSONResponse(result)
