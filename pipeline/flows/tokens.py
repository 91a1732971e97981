"""The OAuth token manager every IMAP and SMTP connection asks for its access token.

:func:`grant_token` hands out the stored access token while more than five minutes of it are
left. Otherwise it takes the grant's row lock (``SELECT ... FOR UPDATE`` on PostgreSQL, so one
refresh per account across processes; a per-account lock inside the process, which is all SQLite
needs), reads the row again (another holder may have refreshed meanwhile), and only then calls the
token endpoint. A rotated refresh token is stored. A permanent refusal (``invalid_grant``) marks
the grant revoked and the account ``reconnect_required`` with a readable reason and notifies the
owner once; from then on the manager refuses at once, without calling the provider, until the
user connects the mailbox again. Tokens never reach a log line.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import update
from sqlmodel import Session, col, select

from models import EmailAccount, utcnow
from models.db import get_engine
from models.oauth import OAuthGrant
from ops import metrics
from ops.keys import seal, unseal
from ops.settings import get_settings
from pipeline.clients.oauth import TokenEndpointError, post_form
from pipeline.flows import notifications
from pipeline.flows.events_outbox import note_sync_state
from pipeline.stages.oauth import TokenError, interpret_token_response, needs_refresh, provider_config, reconnect_reason

__all__ = ["CredentialsUnavailable", "ReconnectRequired", "TokenUnavailable", "access_token", "grant_token"]

log = structlog.get_logger("mailpipe.oauth")


class CredentialsUnavailable(Exception):
    """No OAuth token can be had now (a connection cannot be opened)."""


class ReconnectRequired(CredentialsUnavailable):
    """The provider refused the grant; only the user can fix it (``str()`` is the readable reason)."""


class TokenUnavailable(CredentialsUnavailable):
    """No token right now (the token endpoint is down or slow); try again later."""


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _local_lock(account_id: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(account_id, threading.Lock())


@dataclass(frozen=True, slots=True)
class _Stored:
    access_token: str | None
    refresh_token: str | None

    @classmethod
    def of(cls, grant: OAuthGrant) -> _Stored:
        data = json.loads(unseal("oauth_grants", "tokens_enc", grant.tokens_enc) or "{}")
        return cls(data.get("access_token"), data.get("refresh_token"))


def _usable(grant: OAuthGrant, stored: _Stored, rejected: str | None) -> bool:
    if stored.access_token is None or needs_refresh(grant.expires_at, utcnow()):
        return False
    return rejected is None or stored.access_token != rejected


def access_token(account_id: str, *, rejected: str | None = None) -> str:
    """A current access token for the account; ``rejected``: the token a server just refused
    (refreshed unless someone already replaced it). Raises ReconnectRequired / TokenUnavailable."""
    token = grant_token(account_id, rejected=rejected)
    if token is None:
        raise ReconnectRequired("this mailbox has no OAuth grant; connect it again")
    return token


def grant_token(account_id: str, *, rejected: str | None = None) -> str | None:
    """:func:`access_token`, or None when the account has no OAuth grant (a password account):
    what a connection asks, one read of the grant on the usual path."""
    with Session(get_engine()) as s:
        grant = s.get(OAuthGrant, account_id)
        if grant is None:
            return None
        if grant.revoked_at is not None:
            raise ReconnectRequired(grant.revoked_reason or "connect the mailbox again")
        stored = _Stored.of(grant)
        if _usable(grant, stored, rejected):
            return str(stored.access_token)
    with _local_lock(account_id), Session(get_engine(), expire_on_commit=False) as s:
        grant = s.execute(select(OAuthGrant).where(OAuthGrant.account_id == account_id).with_for_update()).scalar_one_or_none()
        if grant is None:  # the account was deleted meanwhile
            s.rollback()
            raise ReconnectRequired("this mailbox has no OAuth grant; connect it again")
        if grant.revoked_at is not None:
            s.rollback()
            raise ReconnectRequired(grant.revoked_reason or "connect the mailbox again")
        stored = _Stored.of(grant)
        if _usable(grant, stored, rejected):  # refreshed by another holder while this one waited
            s.rollback()
            return str(stored.access_token)
        return _refresh(s, grant, stored)


def _refresh(s: Session, grant: OAuthGrant, stored: _Stored) -> str:
    """Call the token endpoint while holding the grant's lock; commit the outcome."""
    provider = provider_config(grant.provider, get_settings())
    if stored.refresh_token is None:
        return _revoke(s, grant, TokenError("invalid_grant", "no refresh token was issued", permanent=True))
    form = {"grant_type": "refresh_token", "refresh_token": stored.refresh_token, "client_id": provider.client_id or ""}
    if provider.client_secret:
        form["client_secret"] = provider.client_secret
    if grant.provider == "microsoft":
        form["scope"] = " ".join(provider.scopes)
    try:
        reply = post_form(provider.token_url, form)
    except TokenEndpointError as exc:
        s.rollback()
        metrics.TOKEN_REFRESH.labels(grant.provider, "unavailable").inc()
        log.warning("oauth_refresh_unavailable", account_id=grant.account_id, error=str(exc))
        raise TokenUnavailable(str(exc)) from None
    result = interpret_token_response(reply.status, reply.body, now=utcnow(), previous_refresh_token=stored.refresh_token)
    if isinstance(result, TokenError):
        if result.permanent:
            return _revoke(s, grant, result)
        s.rollback()
        metrics.TOKEN_REFRESH.labels(grant.provider, "error").inc()
        log.warning("oauth_refresh_failed", account_id=grant.account_id, error=result.code)
        raise TokenUnavailable(f"{grant.provider} could not renew the token right now ({result.code})")
    grant.tokens_enc = seal("oauth_grants", "tokens_enc", json.dumps(result.as_json()))
    grant.expires_at, grant.refreshed_at, grant.updated_at = result.expires_at, utcnow(), utcnow()
    grant.refresh_count += 1
    s.add(grant)
    s.commit()
    metrics.TOKEN_REFRESH.labels(grant.provider, "ok").inc()
    log.info("oauth_refreshed", account_id=grant.account_id, rotated=result.rotated, expires_at=result.expires_at.isoformat())
    return result.access_token


def _revoke(s: Session, grant: OAuthGrant, error: TokenError) -> str:
    """The grant is gone: remember it, put the account in reconnect_required, tell its owner once."""
    reason = reconnect_reason(grant.provider, error)
    now = utcnow()
    grant.revoked_at, grant.revoked_reason, grant.updated_at = now, reason[:500], now
    s.add(grant)
    account = s.get(EmailAccount, grant.account_id)
    pushed: list[dict[str, Any]] = []
    if account is not None:
        s.execute(update(EmailAccount).where(col(EmailAccount.id) == account.id).values(
            sync_state="reconnect_required", last_error=reason[:2000], last_error_code="auth"))
        note_sync_state(s, account.id, "reconnect_required", error=reason, error_code="auth")
        pushed = notifications.insert_new(s, [{
            "org_id": account.org_id, "user_id": account.user_id, "kind": "account.reconnect_required",
            "title": f"Reconnect {account.email}"[:500], "body": reason[:2000], "email_id": None,
            "dedupe_key": f"account.reconnect:{account.id}:{grant.generation}",
            "data": {"account_id": account.id, "provider": account.provider}}])
    s.commit()
    notifications.publish(pushed)
    metrics.TOKEN_REFRESH.labels(grant.provider, "revoked").inc()
    log.warning("oauth_reconnect_required", account_id=grant.account_id, error=error.code)
    raise ReconnectRequired(reason)
