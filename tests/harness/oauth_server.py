"""A local OAuth 2.0 authorization server that speaks the real protocol (RFC 6749 + RFC 7636).

Endpoints, as Google's and Microsoft's are called:

* ``GET /authorize`` — checks client id, redirect URI, scope and an S256 ``code_challenge``; the
  user "consents" at once (as ``login_hint``) and is redirected back with ``code`` and ``state``.
* ``POST /token`` — ``authorization_code`` (verifies ``code_verifier`` against the challenge, the
  redirect URI and the client secret; a code works once) and ``refresh_token`` (rotating refresh
  tokens when ``rotate``; a revoked or superseded refresh token → ``400 invalid_grant``).
* ``POST /introspect`` — RFC 7662-style, for Dovecot's ``passdb oauth2``: ``{"active", "username"}``.

Tests steer it: :meth:`revoke` a user's grant, :meth:`expire_access_tokens`, a ``token_delay``,
and read ``refresh_calls`` / ``issued`` (every token it ever handed out, for log searches).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.harness.asgi_server import AsgiServer

__all__ = ["OAuthServer"]


@dataclass
class _Code:
    user: str
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    used: bool = False


@dataclass
class _Access:
    user: str
    expires: float


@dataclass
class OAuthServer:
    client_id: str = "mailpipe-test-client"
    client_secret: str = field(default_factory=lambda: "cs-" + secrets.token_hex(12))
    required_scope: str = "https://mail.google.com/"
    access_ttl: int = 3600
    rotate: bool = True
    token_delay: float = 0.0
    refresh_calls: int = 0
    token_calls: int = 0
    issued: list[str] = field(default_factory=list)
    codes_issued: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, str] = {}  # live refresh token → user
        self._revoked: set[str] = set()
        app = Starlette(routes=[Route("/authorize", self._authorize), Route("/token", self._token, methods=["POST"]),
                                Route("/introspect", self._introspect, methods=["POST"])])
        self._http = AsgiServer(app, "the OAuth stand-in")

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return self._http.base

    def start(self) -> OAuthServer:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    # -- test controls --------------------------------------------------------------------------------

    def revoke(self, user: str) -> None:
        """The user revoked the app: every refresh and access token of theirs stops working."""
        with self._lock:
            self._revoked.add(user)
            for token in [t for t, u in self._refresh.items() if u == user]:
                del self._refresh[token]
            for token in [t for t, a in self._access.items() if a.user == user]:
                del self._access[token]

    def expire_access_tokens(self, user: str) -> None:
        with self._lock:
            for a in self._access.values():
                if a.user == user:
                    a.expires = 0.0

    def valid(self, user: str, token: str) -> bool:
        """Whether ``token`` is a live access token of ``user`` (the SMTP stand-in's XOAUTH2 check)."""
        with self._lock:
            a = self._access.get(token)
            return a is not None and a.user == user and a.expires > time.time()

    def secrets_seen(self) -> list[str]:
        """Everything secret this server handed out or holds (for searching logs)."""
        with self._lock:
            return [self.client_secret, *self.issued, *self.codes_issued]

    # -- endpoints --------------------------------------------------------------------------------------

    async def _authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != self.client_id:
            return JSONResponse({"error": "invalid_client"}, status_code=400)
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return JSONResponse({"error": "invalid_request", "error_description": "PKCE S256 required"}, status_code=400)
        scopes = (q.get("scope") or "").split()
        if self.required_scope not in scopes:
            return JSONResponse({"error": "invalid_scope"}, status_code=400)
        user = q.get("login_hint") or "someone@example.test"
        code = "code-" + secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = _Code(user, self.client_id, q.get("redirect_uri") or "", q["code_challenge"], " ".join(scopes))
            self.codes_issued.append(code)
            self._revoked.discard(user)  # consenting again is a new grant
        redirect = q.get("redirect_uri") or ""
        return RedirectResponse(redirect + ("&" if "?" in redirect else "?") + urlencode({"code": code, "state": q.get("state", "")}),
                                status_code=302)

    def _issue(self, user: str, scope: str, refresh: str | None) -> dict[str, Any]:
        access = "at-" + secrets.token_urlsafe(24)
        self._access[access] = _Access(user, time.time() + self.access_ttl)
        self.issued.append(access)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": self.access_ttl, "scope": scope}
        if refresh is None or self.rotate:
            new_refresh = "rt-" + secrets.token_urlsafe(24)
            if refresh is not None:
                self._refresh.pop(refresh, None)
            self._refresh[new_refresh] = user
            self.issued.append(new_refresh)
            body["refresh_token"] = new_refresh
        return body

    async def _token(self, request: Request) -> Response:
        form = await _form(request)
        if self.token_delay:
            time.sleep(self.token_delay)  # blocks this server's loop on purpose: a slow provider
        with self._lock:
            self.token_calls += 1
            if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            grant = form.get("grant_type")
            if grant == "authorization_code":
                c = self._codes.get(str(form.get("code")))
                if c is None or c.used or c.redirect_uri != form.get("redirect_uri"):
                    return JSONResponse({"error": "invalid_grant", "error_description": "Bad code"}, status_code=400)
                verifier = str(form.get("code_verifier") or "")
                digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                if digest != c.challenge:
                    return JSONResponse({"error": "invalid_grant", "error_description": "PKCE verification failed"},
                                        status_code=400)
                c.used = True
                return JSONResponse(self._issue(c.user, c.scope, None))
            if grant == "refresh_token":
                self.refresh_calls += 1
                token = str(form.get("refresh_token"))
                user = self._refresh.get(token)
                if user is None or user in self._revoked:
                    return JSONResponse({"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
                                        status_code=400)
                return JSONResponse(self._issue(user, self.required_scope, token))
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)

    async def _introspect(self, request: Request) -> Response:
        form = await _form(request)
        token = str(form.get("token") or "")
        if not token:  # Dovecot may send it as a bearer header instead
            token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        with self._lock:
            a = self._access.get(token)
            if a is None or a.expires <= time.time():
                return JSONResponse({"active": False})
            return JSONResponse({"active": True, "username": a.user})


async def _form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (what token clients and Dovecot send)."""
    return dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))
