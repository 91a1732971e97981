"""pipeline.stages.oauth: provider settings, PKCE, the authorize URL, token answers, refresh timing, reasons."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.stages.oauth import (
    GOOGLE_SCOPES,
    MICROSOFT_SCOPES,
    TokenError,
    TokenSet,
    authorize_url,
    interpret_token_response,
    needs_refresh,
    pkce_pair,
    provider_config,
    reconnect_reason,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def settings(**kw: object) -> SimpleNamespace:
    base = dict(google_client_id="gid", google_client_secret="gsecret", google_auth_url="https://accounts.google.com/o/oauth2/v2/auth",
                google_token_url="https://oauth2.googleapis.com/token", microsoft_client_id="mid", microsoft_client_secret="msecret",
                microsoft_tenant="common", microsoft_auth_url=None, microsoft_token_url=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_providers_default_to_the_real_endpoints_and_scopes() -> None:
    g = provider_config("google", settings())
    assert g.token_url == "https://oauth2.googleapis.com/token" and g.scopes == ("https://mail.google.com/",) and g.mail_provider == "gmail"
    m = provider_config("microsoft", settings(microsoft_tenant="contoso.onmicrosoft.com"))
    assert m.auth_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"
    assert m.token_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    assert m.scopes == MICROSOFT_SCOPES and "offline_access" in m.scopes and m.mail_provider == "outlook"
    assert provider_config("microsoft", settings(microsoft_token_url="http://127.0.0.1:9/token")).token_url == "http://127.0.0.1:9/token"
    assert not provider_config("google", settings(google_client_id=None)).configured
    assert "gsecret" not in repr(g)
    with pytest.raises(ValueError):
        provider_config("yahoo", settings())


def test_pkce_s256() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128 and set(verifier) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert challenge == base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert pkce_pair()[0] != verifier


def test_authorize_url_carries_pkce_state_scope_and_offline_access() -> None:
    url = authorize_url(provider_config("google", settings()), redirect_uri="https://crm.example/cb", state="s.1.x",
                        code_challenge="abc", login_hint="jane@x.example")
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith("https://accounts.google.com/o/oauth2/v2/auth?")
    assert q == {"response_type": "code", "client_id": "gid", "redirect_uri": "https://crm.example/cb", "scope": GOOGLE_SCOPES[0],
                 "state": "s.1.x", "code_challenge": "abc", "code_challenge_method": "S256", "access_type": "offline",
                 "prompt": "consent", "login_hint": "jane@x.example"}
    m = authorize_url(provider_config("microsoft", settings()), redirect_uri="r", state="s", code_challenge="c")
    assert parse_qs(urlsplit(m).query)["scope"] == [" ".join(MICROSOFT_SCOPES)]


class TestTokenAnswers:
    def test_success_with_rotation(self) -> None:
        t = interpret_token_response(200, {"access_token": "A", "refresh_token": "R2", "expires_in": 3599, "scope": "s"},
                                     now=NOW, previous_refresh_token="R1")
        assert isinstance(t, TokenSet) and t.access_token == "A" and t.refresh_token == "R2" and t.rotated
        assert t.expires_at == NOW + timedelta(seconds=3599) and "A" not in repr(t) and "R2" not in repr(t)

    def test_success_without_a_new_refresh_token_keeps_the_old_one(self) -> None:
        t = interpret_token_response(200, {"access_token": "A"}, now=NOW, previous_refresh_token="R1")
        assert isinstance(t, TokenSet) and t.refresh_token == "R1" and not t.rotated and t.expires_at == NOW + timedelta(hours=1)

    @pytest.mark.parametrize("status,body,code,permanent", [
        (400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, "invalid_grant", True),
        (401, {"error": "invalid_client"}, "invalid_client", False),
        (400, {"error": "unauthorized_client"}, "unauthorized_client", False),
        (503, {"error": "temporarily_unavailable"}, "temporarily_unavailable", False),
        (500, None, "http_500", False),
        (429, "slow down", "http_429", False),
        (200, {"token_type": "Bearer"}, "bad_response", False),
        (200, ["not", "an", "object"], "bad_response", False),
    ])
    def test_errors(self, status: int, body: object, code: str, permanent: bool) -> None:
        e = interpret_token_response(status, body, now=NOW)
        assert isinstance(e, TokenError) and e.code == code and e.permanent is permanent


def test_refresh_five_minutes_ahead() -> None:
    assert needs_refresh(None, NOW)
    assert needs_refresh(NOW + timedelta(minutes=4, seconds=59), NOW)
    assert not needs_refresh(NOW + timedelta(minutes=5, seconds=1), NOW)
    assert needs_refresh(NOW - timedelta(seconds=1), NOW)


@pytest.mark.parametrize("provider,error,expect", [
    ("google", TokenError("invalid_grant", "Token has been expired or revoked.", True), "revoked, or the authorization expired"),
    ("google", TokenError("invalid_grant", "Token has been expired.", True), "7 days for apps in testing"),
    ("microsoft", TokenError("invalid_grant", "AADSTS50173: The provided grant has expired due to it being revoked, a fresh auth token is "
                                              "needed. The user might have changed or reset their password.", True),
     "revoked"),
    ("microsoft", TokenError("invalid_grant", "AADSTS50173: password changed", True), "password was changed"),
    ("google", TokenError("invalid_client", "", True), "app registration was rejected"),
])
def test_reconnect_reasons_are_readable(provider: str, error: TokenError, expect: str) -> None:
    text = reconnect_reason(provider, error)
    assert expect in text and text.endswith("Connect the mailbox again to resume syncing.")
