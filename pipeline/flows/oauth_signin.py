"""OAuth accounts: the authorize → callback sign-in flow (the token manager is :mod:`pipeline.flows.tokens`).

Flow: :func:`start` records a flow (who, which mailbox, the PKCE verifier, sealed) and returns the
provider's authorize URL with a signed, expiring ``state`` naming it. :func:`finish` takes the
flow once, exchanges the code with the verifier, tests IMAP and SMTP with XOAUTH2, and creates
the account (or updates the live one for that address, which keeps its sync cursors: reconnecting
resumes where sync stopped).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import update
from sqlmodel import Session, col, select

from models import EmailAccount, User, normalize_email, utcnow
from models.db import get_engine
from models.oauth import OAuthFlow, OAuthGrant
from ops import metrics
from ops.keys import read_claims, seal, sign_claims, unseal
from ops.settings import get_settings
from pipeline.clients.oauth import TokenEndpointError, post_form
from pipeline.flows import accounts as svc
from pipeline.flows.endpoint_guard import EndpointRefused, check_endpoints
from pipeline.flows.send_due import release_held
from pipeline.flows.sync import fetch_now
from pipeline.stages.endpoint_rules import oauth_host_rule
from pipeline.stages.oauth import OAuthProvider, TokenError, TokenSet, authorize_url, interpret_token_response, pkce_pair, provider_config
from pipeline.stages.providers import apply_preset

__all__ = ["EndpointRefused", "FlowError", "NotConfigured", "finish", "redirect_uri", "start"]

log = structlog.get_logger("mailpipe.oauth")

FLOW_TTL = timedelta(minutes=15)
_STATE_PURPOSE = "oauth_state"


class NotConfigured(Exception):
    """The provider has no client id configured."""


class FlowError(Exception):
    """A callback that cannot complete; ``code`` is the API error code, ``status`` the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


# -- flow -------------------------------------------------------------------------------------------


def redirect_uri(provider: str) -> str:
    settings = get_settings()
    base = (settings.oauth_redirect_base or settings.public_url).rstrip("/")
    return f"{base}/api/v1/oauth/{provider}/callback"


def _provider(name: str) -> OAuthProvider:
    provider = provider_config(name, get_settings())
    if not provider.configured:
        raise NotConfigured(f"set MAILPIPE_{name.upper()}_CLIENT_ID and MAILPIPE_{name.upper()}_CLIENT_SECRET to connect {name} accounts")
    return provider


def _check_state(state: str, provider: str) -> str | None:
    """The flow id a state names, if its signature verifies, it has not expired and it is this provider's."""
    claims = read_claims(_STATE_PURPOSE, state)
    if claims is None or len(claims) != 2 or claims[1] != provider:
        return None
    return claims[0]


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a grant's token would go for one protocol (what the connection guard checks)."""

    host: str
    security: str
    listed_only: str | None
    password: None = None
    oauth_token: str = "grant"  # a token will be sent: plaintext needs the host inside the allowed nets


def _targets(mail_provider: str, email: str, overrides: dict[str, Any]) -> list[tuple[str, _Target]]:
    """The hosts a grant's token will be sent to: the presets with the overrides on top."""
    targets = []
    for proto in ("imap", "smtp"):
        given = {k: overrides.get(f"{proto}_{k}") for k in ("host", "port", "security")}
        d = apply_preset(mail_provider, proto, given)
        host = str(d["host"])
        targets.append((proto, _Target(host, str(d["security"]), oauth_host_rule(mail_provider, proto, host))))
    return targets


def start(org_id: str, user_id: str, provider_name: str, email: str, overrides: dict[str, Any]) -> str:
    """Record a flow and return the provider's authorize URL.

    Host overrides go through the connection guard first (EndpointRefused): a provider's token is
    sent only to the provider's own hosts, or to hosts inside MAILPIPE_MAIL_ALLOWED_NETS (an
    Exchange on premises), and never in plaintext outside them.
    """
    provider = _provider(provider_name)
    check_endpoints(_targets(provider.mail_provider, email, overrides))
    verifier, challenge = pkce_pair()
    now = utcnow()
    flow = OAuthFlow(id=secrets.token_hex(16), org_id=org_id, user_id=user_id, provider=provider_name, email=email.strip(),
                     overrides=overrides, created_at=now, expires_at=now + FLOW_TTL)
    flow.verifier_enc = seal("oauth_flows", "verifier_enc", verifier)
    with Session(get_engine(), expire_on_commit=False) as s:
        s.add(flow)
        s.commit()
    state = sign_claims(_STATE_PURPOSE, (flow.id, provider_name), FLOW_TTL.total_seconds())
    return authorize_url(provider, redirect_uri=redirect_uri(provider_name), state=state, code_challenge=challenge, login_hint=email)


def _take_flow(provider: str, state: str) -> OAuthFlow:
    flow_id = _check_state(state, provider)
    if flow_id is None:
        raise FlowError("invalid_state", "the sign-in link is invalid or has expired; start again")
    with Session(get_engine(), expire_on_commit=False) as s:
        res = s.exec(update(OAuthFlow).where(col(OAuthFlow.id) == flow_id, col(OAuthFlow.provider) == provider,
                                                col(OAuthFlow.used_at).is_(None), col(OAuthFlow.expires_at) > utcnow())
                        .values(used_at=utcnow()))
        if res.rowcount != 1:
            s.rollback()
            raise FlowError("invalid_state", "this sign-in was already completed or has expired; start again")
        s.commit()
        flow = s.get(OAuthFlow, flow_id)
        assert flow is not None
        return flow


def finish(provider_name: str, code: str, state: str) -> dict[str, Any]:
    """Complete a flow: exchange the code, test XOAUTH2, create or update the account."""
    provider = _provider(provider_name)
    flow = _take_flow(provider_name, state)
    verifier = unseal("oauth_flows", "verifier_enc", flow.verifier_enc) or ""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri(provider_name),
            "client_id": provider.client_id or "", "code_verifier": verifier}
    if provider.client_secret:
        form["client_secret"] = provider.client_secret
    try:
        reply = post_form(provider.token_url, form)
    except TokenEndpointError as exc:
        raise FlowError("provider_unavailable", f"could not reach {provider_name}: {exc}", 502) from None
    tokens = interpret_token_response(reply.status, reply.body, now=utcnow())
    if isinstance(tokens, TokenError):
        metrics.TOKEN_REFRESH.labels(provider_name, "exchange_failed").inc()
        log.warning("oauth_exchange_failed", provider=provider_name, error=tokens.code)
        if not tokens.permanent:
            raise FlowError("provider_unavailable", f"{provider_name} could not complete the sign-in ({tokens.code}); try again", 502)
        raise FlowError("oauth_exchange_failed", f"{provider_name} refused the sign-in ({tokens.code}); start again")
    if tokens.refresh_token is None:
        log.warning("oauth_no_refresh_token", provider=provider_name)
    metrics.TOKEN_REFRESH.labels(provider_name, "exchanged").inc()

    o = flow.overrides
    imap_in = {"host": o.get("imap_host"), "port": o.get("imap_port"), "security": o.get("imap_security"), "username": None}
    smtp_in = {"host": o.get("smtp_host"), "port": o.get("smtp_port"), "security": o.get("smtp_security"), "username": None}
    i, sm = svc.apply_presets(provider.mail_provider, flow.email, imap_in, smtp_in)
    # The token goes to the provider's own hosts, or (overrides) only inside MAILPIPE_MAIL_ALLOWED_NETS:
    # the clients enforce listed_only on this test and on every later connection.
    imap_ep = svc.Endpoint(str(i["host"]), int(i["port"]), str(i["security"]), str(i["username"]), None, tokens.access_token,
                           oauth_host_rule(provider.mail_provider, "imap", str(i["host"])))
    smtp_ep = svc.Endpoint(str(sm["host"]), int(sm["port"]), str(sm["security"]), str(sm["username"]), None, tokens.access_token,
                           oauth_host_rule(provider.mail_provider, "smtp", str(sm["host"])))
    test = svc.test_connection(imap_ep, smtp_ep)
    account_id, reconnected = _save_account(flow, provider, imap_ep, smtp_ep, tokens, test)
    log.info("oauth_connected", provider=provider_name, account_id=account_id, ok=test.ok, reconnected=reconnected)
    return {"account_id": account_id, "ok": test.ok, "provider": provider.mail_provider, "email": flow.email,
            "reconnected": reconnected, "test": test.as_json()}


def _save_account(flow: OAuthFlow, provider: OAuthProvider, imap_ep: Any, smtp_ep: Any, tokens: TokenSet,
                  test: Any) -> tuple[str, bool]:
    now = utcnow()
    state = "idle" if test.ok else "error"
    error = None if test.ok else "; ".join(f"{k}: {v['message']}" for k, v in (("imap", test.imap), ("smtp", test.smtp))
                                         if not v["ok"])[:2000]
    norm = normalize_email(flow.email) or flow.email
    with Session(get_engine(), expire_on_commit=False) as s:
        account = s.execute(select(EmailAccount).where(EmailAccount.org_id == flow.org_id, EmailAccount.email_norm == norm,
                                                       col(EmailAccount.deleted_at).is_(None))).scalar_one_or_none()
        reconnected = account is not None
        if account is not None and not test.ok:
            # Another mailbox's consent, or the server refuses it: keep what works (or the
            # reconnect_required state) rather than replace it with tokens that do not.
            log.warning("oauth_reconnect_test_failed", account_id=account.id)
            return account.id, True
        if account is None:
            account = svc.create_account(s, org_id=flow.org_id, user_id=flow.user_id, provider=provider.mail_provider,
                                         email=flow.email, imap_ep=imap_ep, smtp_ep=smtp_ep)
        else:  # the same mailbox again: new tokens, same cursors
            account.provider = provider.mail_provider
            account.imap_host, account.imap_port, account.imap_security = imap_ep.host, imap_ep.port, imap_ep.security
            account.smtp_host, account.smtp_port, account.smtp_security = smtp_ep.host, smtp_ep.port, smtp_ep.security
            account.imap_username, account.smtp_username = imap_ep.username, smtp_ep.username
            account.imap_password_enc = account.smtp_password_enc = account.oauth_enc = None
            account.consecutive_failures = 0
            account.next_fetch_at = now
        account.sync_state, account.last_error, account.last_error_code = state, error, None if test.ok else "auth"
        if s.get(User, (flow.org_id, flow.user_id)) is None:
            s.add(User(org_id=flow.org_id, id=flow.user_id, name=flow.email[:300], email=flow.email, email_norm=norm))
        s.flush()
        grant = s.get(OAuthGrant, account.id)
        if grant is None:
            grant = OAuthGrant(account_id=account.id, org_id=flow.org_id, provider=provider.name, generation=1)
            s.add(grant)
        else:
            grant.generation += 1
        grant.provider = provider.name
        grant.tokens_enc = seal("oauth_grants", "tokens_enc", json.dumps(tokens.as_json()))
        grant.expires_at, grant.refreshed_at, grant.revoked_at, grant.revoked_reason = tokens.expires_at, now, None, None
        grant.updated_at = now
        s.execute(update(OAuthFlow).where(col(OAuthFlow.id) == flow.id).values(account_id=account.id))
        s.commit()
        account_id = account.id
    release_held(account_id)
    fetch_now(account_id)
    return account_id, reconnected
