"""pipeline.flows.oauth_signin, pipeline.flows.tokens + web.routes.oauth on SQLite, the in-memory broker and httpx.MockTransport as the
token endpoint: input errors, state handling, one refresh under concurrency, invalid_grant.

The same flows against a real authorization server stand-in, Dovecot and aiosmtpd are in
tests/integration/test_oauth.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import update
from sqlmodel import Session, select
from starlette.testclient import TestClient

from models import EmailAccount, Notification, utcnow
from models.db import get_engine
from models.oauth import OAuthFlow, OAuthGrant
from pipeline.clients.oauth import use_token_transport
from pipeline.flows.connections import use_imap_connector, use_smtp_transport
from tests.harness.fake_imap import FakeImapServer, fake_connect
from tests.harness.fake_smtp import FakeSmtpTransport
from tests.harness.flow import count, drain, make_org

USER = "jane@gmail.test"


class TokenServer:
    """A token endpoint as an httpx.MockTransport handler: counts calls, answers as scripted."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.answer: tuple[int, Any] | None = None
        self.n = 0
        self.gate: threading.Event | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        with self.lock:
            self.calls.append(form)
            self.n += 1
            n = self.n
        if self.gate is not None:
            self.gate.wait(5)
        if self.answer is not None:
            status, body = self.answer
            return httpx.Response(status, json=body)
        return httpx.Response(200, json={"access_token": f"access-{n}", "refresh_token": f"refresh-{n}", "expires_in": 3600})


@pytest.fixture
def env(db: str, stub_broker: StubBroker, stub_worker: Worker, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from ops.settings import reset_settings
    from web.app import create_app

    monkeypatch.setenv("MAILPIPE_GOOGLE_CLIENT_ID", "gid")
    monkeypatch.setenv("MAILPIPE_GOOGLE_CLIENT_SECRET", "gsecret-value")
    monkeypatch.setenv("MAILPIPE_GOOGLE_TOKEN_URL", "https://oauth2.test/token")
    reset_settings()
    tokens = TokenServer()
    use_token_transport(httpx.MockTransport(tokens))
    imap = FakeImapServer(USER, password=None, oauth_token="access-1", gmail=True)
    use_imap_connector(fake_connect(imap))
    use_smtp_transport(FakeSmtpTransport())
    org_id, key = make_org()
    try:
        with TestClient(create_app()) as client:
            yield {"client": client, "h": {"Authorization": f"Bearer {key}"}, "tokens": tokens, "imap": imap, "org_id": org_id,
                   "broker": stub_broker, "worker": stub_worker}
    finally:
        use_token_transport(None)


def authorize(env: dict[str, Any], **params: str) -> httpx.Response:
    q = {"user_id": "u1", "email": USER, **params}
    return env["client"].get("/api/v1/oauth/google/authorize", headers=env["h"], params=q)


def connect(env: dict[str, Any]) -> dict[str, Any]:
    url = authorize(env).json()["url"]
    state = parse_qs(urlsplit(url).query)["state"][0]
    r = env["client"].get("/api/v1/oauth/google/callback", params={"code": "the-code", "state": state})
    assert r.status_code == 200, r.text
    drain(env["broker"], env["worker"])  # the first sync, whose IMAP login also asks for the token, is over
    return dict(r.json())


class TestAuthorize:
    def test_url_has_pkce_and_a_signed_state_and_the_verifier_is_sealed(self, env: dict[str, Any]) -> None:
        r = authorize(env)
        assert r.status_code == 200
        q = parse_qs(urlsplit(r.json()["url"]).query)
        assert q["code_challenge_method"] == ["S256"] and q["scope"] == ["https://mail.google.com/"]
        assert q["redirect_uri"] == ["http://127.0.0.1:8000/api/v1/oauth/google/callback"] and q["login_hint"] == [USER]
        with Session(get_engine()) as s:
            (flow,) = s.exec(select(OAuthFlow)).all()
        assert flow.verifier_enc is not None and flow.email == USER and flow.expires_at > utcnow()

    @pytest.mark.parametrize("params,field", [({"email": "nope"}, "email"), ({"user_id": ""}, "user_id"),
                                              ({"imap_port": "99999"}, "imap_port"), ({"smtp_security": "tls"}, "smtp_security"),
                                              ({"imap_host": "a b"}, "imap_host")])
    def test_bad_input_is_422_naming_the_field(self, env: dict[str, Any], params: dict[str, str], field: str) -> None:
        r = authorize(env, **params)
        assert r.status_code == 422 and r.json()["error"]["details"]["errors"][0]["field"] == field

    def test_unknown_provider_404_and_unconfigured_400(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        from ops.settings import reset_settings

        r = env["client"].get("/api/v1/oauth/yahoo/authorize", headers=env["h"], params={"user_id": "u1", "email": USER})
        assert r.status_code == 404
        r = env["client"].get("/api/v1/oauth/microsoft/authorize", headers=env["h"], params={"user_id": "u1", "email": USER})
        assert r.status_code == 400 and r.json()["error"]["code"] == "provider_not_configured"
        assert "MAILPIPE_MICROSOFT_CLIENT_ID" in r.json()["error"]["message"]
        monkeypatch.delenv("MAILPIPE_GOOGLE_CLIENT_ID")
        reset_settings()
        assert authorize(env).status_code == 400

    def test_needs_the_api_key(self, env: dict[str, Any]) -> None:
        assert env["client"].get("/api/v1/oauth/google/authorize", params={"user_id": "u1", "email": USER}).status_code == 401


class TestCallback:
    def test_creates_the_account_with_sealed_tokens(self, env: dict[str, Any]) -> None:
        result = connect(env)
        assert result["ok"] is True and result["provider"] == "gmail" and result["reconnected"] is False
        (call,) = env["tokens"].calls
        assert call["grant_type"] == "authorization_code" and call["code"] == "the-code" and len(call["code_verifier"]) >= 43
        assert call["client_secret"] == "gsecret-value"
        with Session(get_engine()) as s:
            a = s.get(EmailAccount, result["account_id"])
            g = s.get(OAuthGrant, result["account_id"])
        assert a is not None and a.imap_host == "imap.gmail.com" and a.smtp_host == "smtp.gmail.com" and a.imap_password_enc is None
        assert g is not None and "access-1" not in (g.tokens_enc or "") and g.expires_at > utcnow() + timedelta(minutes=55)
        body = env["client"].get(f"/api/v1/accounts/{result['account_id']}", headers=env["h"]).text
        assert "access-1" not in body and "refresh-1" not in body

    def test_state_is_single_use_and_checked(self, env: dict[str, Any]) -> None:
        url = authorize(env).json()["url"]
        state = parse_qs(urlsplit(url).query)["state"][0]
        c = env["client"]
        for bad in ("", "x.y.z", state[:-1] + ("0" if state[-1] != "0" else "1")):
            r = c.get("/api/v1/oauth/google/callback", params={"code": "c", "state": bad})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_state", bad
        assert c.get("/api/v1/oauth/microsoft/callback", params={"code": "c", "state": state}).status_code == 400
        assert c.get("/api/v1/oauth/google/callback", params={"code": "c", "state": state}).status_code == 200
        r = c.get("/api/v1/oauth/google/callback", params={"code": "c", "state": state})
        assert r.status_code == 400 and "already completed" in r.json()["error"]["message"]

    def test_expired_state(self, env: dict[str, Any]) -> None:
        url = authorize(env).json()["url"]
        state = parse_qs(urlsplit(url).query)["state"][0]
        with Session(get_engine()) as s:
            s.execute(update(OAuthFlow).values(expires_at=utcnow() - timedelta(seconds=1)))
            s.commit()
        assert env["client"].get("/api/v1/oauth/google/callback", params={"code": "c", "state": state}).status_code == 400

    def test_denied_and_refused_exchange(self, env: dict[str, Any]) -> None:
        r = env["client"].get("/api/v1/oauth/google/callback", params={"error": "access_denied", "state": "s"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "oauth_denied"
        env["tokens"].answer = (400, {"error": "invalid_grant", "error_description": "Bad code"})
        url = authorize(env).json()["url"]
        state = parse_qs(urlsplit(url).query)["state"][0]
        r = env["client"].get("/api/v1/oauth/google/callback", params={"code": "c", "state": state})
        assert r.status_code == 400 and r.json()["error"]["code"] == "oauth_exchange_failed"
        assert count(EmailAccount) == 0


def _grant_expires_in(account_id: str, seconds: float) -> None:
    with Session(get_engine()) as s:
        s.execute(update(OAuthGrant).where(OAuthGrant.account_id == account_id).values(expires_at=utcnow() + timedelta(seconds=seconds)))
        s.commit()


class TestTokenManager:
    def test_fresh_token_is_used_as_is(self, env: dict[str, Any]) -> None:
        from pipeline.flows import tokens as oauth

        acct = connect(env)["account_id"]
        assert oauth.access_token(acct) == "access-1" and len(env["tokens"].calls) == 1

    def test_eight_threads_one_refresh_and_the_rotated_refresh_token_is_kept(self, env: dict[str, Any]) -> None:
        from pipeline.flows import tokens as oauth

        acct = connect(env)["account_id"]
        _grant_expires_in(acct, 120)
        env["tokens"].gate = threading.Event()
        got: list[str] = []
        threads = [threading.Thread(target=lambda: got.append(oauth.access_token(acct))) for _ in range(8)]
        for t in threads:
            t.start()
        threading.Timer(0.3, env["tokens"].gate.set).start()
        for t in threads:
            t.join(10)
        refreshes = [c for c in env["tokens"].calls if c["grant_type"] == "refresh_token"]
        assert len(refreshes) == 1 and refreshes[0]["refresh_token"] == "refresh-1" and got == ["access-2"] * 8
        with Session(get_engine()) as s:
            g = s.get(OAuthGrant, acct)
        assert g is not None and json.loads(__import__("ops.keys", fromlist=["unseal"]).unseal(
            "oauth_grants", "tokens_enc", g.tokens_enc))["refresh_token"] == "refresh-2"

    def test_a_rejected_token_is_refreshed_even_before_expiry_once(self, env: dict[str, Any]) -> None:
        from pipeline.flows import tokens as oauth

        acct = connect(env)["account_id"]
        assert oauth.access_token(acct, rejected="access-1") == "access-2"
        assert oauth.access_token(acct, rejected="access-1") == "access-2", "already replaced: no second refresh"
        assert len(env["tokens"].calls) == 2

    def test_invalid_grant_means_reconnect_one_notification_no_more_calls(self, env: dict[str, Any]) -> None:
        from pipeline.flows import tokens as oauth

        acct = connect(env)["account_id"]
        _grant_expires_in(acct, -5)
        env["tokens"].answer = (400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
        for _ in range(3):
            with pytest.raises(oauth.ReconnectRequired) as info:
                oauth.access_token(acct)
        assert "Connect the mailbox again" in str(info.value)
        assert len(env["tokens"].calls) == 2, "the exchange and one refresh; then no more calls"
        with Session(get_engine()) as s:
            a = s.get(EmailAccount, acct)
        assert a is not None and a.sync_state == "reconnect_required" and "revoked" in (a.last_error or "")
        assert count(Notification, Notification.kind == "account.reconnect_required") == 1

    def test_token_endpoint_down_is_temporary(self, env: dict[str, Any]) -> None:
        from pipeline.flows import tokens as oauth

        acct = connect(env)["account_id"]
        _grant_expires_in(acct, 10)
        env["tokens"].answer = (503, {"error": "temporarily_unavailable"})
        with pytest.raises(oauth.TokenUnavailable):
            oauth.access_token(acct)
        with Session(get_engine()) as s:
            a = s.get(EmailAccount, acct)
            g = s.get(OAuthGrant, acct)
        assert a is not None and a.sync_state != "reconnect_required" and g is not None and g.revoked_at is None
        env["tokens"].answer = None
        assert oauth.access_token(acct).startswith("access-")

    def test_deleting_the_account_deletes_the_grant(self, env: dict[str, Any]) -> None:
        acct = connect(env)["account_id"]
        assert env["client"].delete(f"/api/v1/accounts/{acct}", headers=env["h"]).status_code == 204
        assert count(OAuthGrant) == 0


def test_microsoft_uses_the_tenant_endpoints_scopes_and_outlook_presets(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same flow for Microsoft: tenant URLs, the IMAP/SMTP scopes with offline_access, the
    Outlook presets, and a refresh that asks for the scopes again (as Microsoft's v2 endpoint wants)."""
    from ops.settings import reset_settings
    from pipeline.flows import tokens as oauth

    monkeypatch.setenv("MAILPIPE_MICROSOFT_CLIENT_ID", "mid")
    monkeypatch.setenv("MAILPIPE_MICROSOFT_CLIENT_SECRET", "msecret")
    monkeypatch.setenv("MAILPIPE_MICROSOFT_TENANT", "contoso.example")
    reset_settings()
    r = env["client"].get("/api/v1/oauth/microsoft/authorize", headers=env["h"], params={"user_id": "u1", "email": "sam@contoso.example"})
    assert r.status_code == 200
    url = r.json()["url"]
    assert url.startswith("https://login.microsoftonline.com/contoso.example/oauth2/v2.0/authorize?")
    q = parse_qs(urlsplit(url).query)
    assert q["scope"] == ["https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send offline_access"]
    env["imap"].username = "sam@contoso.example"
    r = env["client"].get("/api/v1/oauth/microsoft/callback", params={"code": "c", "state": q["state"][0]})
    assert r.status_code == 200 and r.json()["provider"] == "outlook", r.text
    acct = r.json()["account_id"]
    drain(env["broker"], env["worker"])
    with Session(get_engine()) as s:
        a = s.get(EmailAccount, acct)
    assert a is not None and a.imap_host == "outlook.office365.com" and a.smtp_host == "smtp.office365.com"
    _grant_expires_in(acct, 60)
    assert oauth.access_token(acct) == "access-2"
    refresh = env["tokens"].calls[-1]
    assert refresh["grant_type"] == "refresh_token" and "offline_access" in refresh["scope"] and refresh["client_id"] == "mid"


def test_invalid_client_is_the_operators_problem_not_the_users(env: dict[str, Any]) -> None:
    """An expired client secret (invalid_client) must not revoke every grant: temporary, no notification."""
    from pipeline.flows import tokens as oauth

    acct = connect(env)["account_id"]
    _grant_expires_in(acct, 10)
    env["tokens"].answer = (401, {"error": "invalid_client", "error_description": "client secret expired"})
    with pytest.raises(oauth.TokenUnavailable):
        oauth.access_token(acct)
    with Session(get_engine()) as s:
        g, a = s.get(OAuthGrant, acct), s.get(EmailAccount, acct)
    assert g is not None and g.revoked_at is None and a is not None and a.sync_state != "reconnect_required"
    assert count(Notification) == 0
    env["tokens"].answer = None  # the operator fixed the secret: it works again, nobody reconnects
    assert oauth.access_token(acct).startswith("access-")


def test_a_reconnect_whose_test_fails_keeps_the_working_grant(env: dict[str, Any]) -> None:
    """Consent for the wrong mailbox (the servers refuse its token): the stored grant stays."""
    from pipeline.flows import tokens as oauth

    acct = connect(env)["account_id"]
    url = authorize(env).json()["url"]
    state = parse_qs(urlsplit(url).query)["state"][0]
    r = env["client"].get("/api/v1/oauth/google/callback", params={"code": "other", "state": state})
    assert r.status_code == 200 and r.json()["ok"] is False and r.json()["reconnected"] is True
    assert oauth.access_token(acct) == "access-1", "the token that works is still the one in use"
