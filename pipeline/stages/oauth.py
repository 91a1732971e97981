"""OAuth 2.0 for mail providers, as decisions: provider endpoints and scopes, PKCE, the authorize
URL, what a token endpoint's answer means, when to refresh, and what to tell a user whose grant
is gone. No sockets, no database: :mod:`pipeline.flows.oauth_signin` and :mod:`pipeline.flows.tokens` do the I/O around these.

Sources: RFC 6749 §4.1 and §5.2 (errors), RFC 7636 (PKCE S256), Google's and Microsoft's IMAP/SMTP
OAuth documentation for scopes, ../shared/notes/anchors-email-engines.md (EmailEngine's refresh
pattern and its ``invalid_grant`` explanations).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

__all__ = [
    "GOOGLE_SCOPES", "MICROSOFT_SCOPES", "REFRESH_MARGIN", "OAuthProvider", "TokenError", "TokenSet",
    "authorize_url", "interpret_token_response", "needs_refresh", "pkce_pair", "provider_config",
    "reconnect_reason",
]

GOOGLE_SCOPES = ("https://mail.google.com/",)
MICROSOFT_SCOPES = ("https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send",
                    "offline_access")
MICROSOFT_LOGIN = "https://login.microsoftonline.com"

#: Refresh when less than this is left of the access token's life.
REFRESH_MARGIN = timedelta(minutes=5)
#: When a token response gives no ``expires_in`` (RFC 6749 makes it optional).
DEFAULT_LIFETIME = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class OAuthProvider:
    """One configured authorization server; ``mail_provider`` is the account preset it leads to."""

    name: str  # "google" | "microsoft"
    mail_provider: str  # "gmail" | "outlook"
    client_id: str | None
    client_secret: str | None = field(repr=False)
    auth_url: str
    token_url: str
    scopes: tuple[str, ...]
    extra_params: tuple[tuple[str, str], ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.client_id)


def provider_config(name: str, settings: Any) -> OAuthProvider:
    """The provider ``name`` ("google" or "microsoft") from settings (ValueError for another name)."""
    if name == "google":
        # access_type=offline + prompt=consent: Google returns a refresh token only then.
        return OAuthProvider("google", "gmail", settings.google_client_id, settings.google_client_secret,
                             settings.google_auth_url, settings.google_token_url, GOOGLE_SCOPES,
                             (("access_type", "offline"), ("prompt", "consent")))
    if name == "microsoft":
        tenant = settings.microsoft_tenant or "common"
        return OAuthProvider("microsoft", "outlook", settings.microsoft_client_id, settings.microsoft_client_secret,
                             settings.microsoft_auth_url or f"{MICROSOFT_LOGIN}/{tenant}/oauth2/v2.0/authorize",
                             settings.microsoft_token_url or f"{MICROSOFT_LOGIN}/{tenant}/oauth2/v2.0/token",
                             MICROSOFT_SCOPES, (("prompt", "select_account"),))
    raise ValueError("provider must be google or microsoft")


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) per RFC 7636: 43 url-safe characters and their hash."""
    verifier = secrets.token_urlsafe(48)[:64]
    return verifier, _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def authorize_url(provider: OAuthProvider, *, redirect_uri: str, state: str, code_challenge: str,
                  login_hint: str | None = None) -> str:
    """Where to send the user's browser (authorization code flow with PKCE S256)."""
    params = [("response_type", "code"), ("client_id", provider.client_id or ""), ("redirect_uri", redirect_uri),
              ("scope", " ".join(provider.scopes)), ("state", state), ("code_challenge", code_challenge),
              ("code_challenge_method", "S256"), *provider.extra_params]
    if login_hint:
        params.append(("login_hint", login_hint))
    sep = "&" if "?" in provider.auth_url else "?"
    return provider.auth_url + sep + urlencode(params)


@dataclass(frozen=True, slots=True)
class TokenSet:
    """Tokens from a token endpoint; never printed (``repr`` shows the expiry only)."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: datetime
    scope: str | None = None
    rotated: bool = False  # the server issued a new refresh token

    def as_json(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "refresh_token": self.refresh_token,
                "expires_at": self.expires_at.isoformat(), "scope": self.scope}


@dataclass(frozen=True, slots=True)
class TokenError:
    """A token endpoint said no. ``permanent``: the grant is gone, only the user can fix it."""

    code: str  # the OAuth error code, or "http_<status>" / "bad_response"
    description: str
    permanent: bool


def interpret_token_response(status: int, body: Any, *, now: datetime,
                             previous_refresh_token: str | None = None) -> TokenSet | TokenError:
    """What a token endpoint's answer means (RFC 6749 §5.1/§5.2).

    ``invalid_grant`` (revoked, expired or already used grant) is permanent: only the user can fix
    it. Anything else is temporary for the user: 5xx, 429, an unreadable body, and also
    ``invalid_client``/``unauthorized_client`` (the operator's client id or secret, alerted on). A refresh answer that
    carries no refresh token keeps the previous one (Google does not rotate; Microsoft does).
    """
    if not isinstance(body, dict):
        body = {}
    if 200 <= status < 300:
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            return TokenError("bad_response", "the token endpoint answered without an access_token", permanent=False)
        try:
            lifetime = timedelta(seconds=int(body.get("expires_in"))) if body.get("expires_in") is not None else DEFAULT_LIFETIME
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME
        fresh = body.get("refresh_token") if isinstance(body.get("refresh_token"), str) and body.get("refresh_token") else None
        return TokenSet(access, fresh or previous_refresh_token, now + lifetime,
                        body.get("scope") if isinstance(body.get("scope"), str) else None,
                        rotated=fresh is not None and fresh != previous_refresh_token)
    code = body.get("error") if isinstance(body.get("error"), str) else f"http_{status}"
    description = body.get("error_description") if isinstance(body.get("error_description"), str) else ""
    # Only the user's grant being gone is theirs to fix. invalid_client / unauthorized_client mean
    # the app's own registration (an expired client secret, a bad deploy): revoking every user's
    # grant for that would force everyone to reconnect once the operator fixes it.
    return TokenError(code, description[:500], permanent=code == "invalid_grant")


def needs_refresh(expires_at: datetime | None, now: datetime, margin: timedelta = REFRESH_MARGIN) -> bool:
    """Whether the access token must be refreshed before use (unknown expiry: yes)."""
    return expires_at is None or expires_at - now < margin


def reconnect_reason(provider: str, error: TokenError) -> str:
    """A sentence for the account owner about why the mailbox must be connected again."""
    name = {"google": "Google", "microsoft": "Microsoft"}.get(provider, provider)
    desc = error.description.lower()
    if error.code == "invalid_grant":
        if provider == "google" and "expired" in desc:
            because = ("access was revoked, or the authorization expired (Google ends grants after 7 days for apps "
                       "in testing, and after 6 months without use)" if "revoked" in desc else
                       "the authorization expired (Google ends grants after 7 days for apps in testing, "
                       "and after 6 months without use)")
        elif "revoked" in desc or "consent" in desc:
            because = "access was revoked in the account's security settings"
        elif provider == "microsoft" and ("password" in desc or "aadsts50173" in desc):
            because = "the password was changed, which ends existing sign-ins"
        else:
            because = "the authorization was revoked or has expired"
    elif error.code in ("invalid_client", "unauthorized_client"):
        because = "mailpipe's app registration was rejected (ask your administrator to check the client id and secret)"
    else:
        because = f"the sign-in was refused ({error.code})"
    return f"{name} refused to renew access to this mailbox: {because}. Connect the mailbox again to resume syncing."
