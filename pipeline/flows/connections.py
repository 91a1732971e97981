"""Turning an account row into protocol-client settings, and the swappable client factories.

Flows call :func:`open_imap` and :func:`smtp_settings`; tests swap the factories for the in-memory
fakes (``tests/harness``) with :func:`use_imap_connector` and :func:`use_smtp_transport`. Secrets are
decrypted here, at the last moment, and never logged.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from models import EmailAccount
from ops.keys import unseal
from ops.settings import get_settings
from pipeline.clients import imap
from pipeline.clients.smtp import AiosmtplibTransport, PooledSmtpTransport, SmtpSettings, SmtpTransport
from pipeline.flows import tokens
from pipeline.stages.endpoint_rules import oauth_host_rule

__all__ = ["Credentials", "connect_imap", "imap_settings", "open_imap", "smtp_probe", "smtp_settings", "smtp_transport",
           "stored_credentials", "tls_context", "use_imap_connector", "use_smtp_transport"]

ImapConnector = Callable[[imap.ImapSettings], imap.ImapSession]
_imap_connector: ImapConnector = imap.connect

IMAP_TIMEOUT = 30.0
SMTP_TIMEOUT = 30.0


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """System trust store, or ``SSL_CERT_FILE`` when set (OpenSSL reads it), hostname checked."""
    return ssl.create_default_context()


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a connection logs in with; ``from_grant``: the token is a provider's OAuth grant's."""

    password: str | None
    token: str | None
    from_grant: bool = False

    def listed_only(self, account: EmailAccount, proto: str, host: str) -> str | None:
        """Why this connection must stay inside the allowed networks (a grant's token off the
        provider's own hosts), or None."""
        return oauth_host_rule(account.provider, proto, host) if self.from_grant else None


def stored_credentials(account: EmailAccount, proto: str, rejected: str | None = None) -> Credentials:
    """The password or OAuth access token for "imap" or "smtp", decrypted (or refreshed) at the last moment.

    An account with an OAuth grant gets its token from the token manager (which refreshes when
    under five minutes remain, or when ``rejected`` is the token a server just refused). An
    account created with a bare ``oauth.access_token`` uses that token as given.
    """
    column = f"{proto}_password_enc"
    password = unseal("email_accounts", column, getattr(account, column))
    if password is not None:
        return Credentials(password, None)
    token = tokens.grant_token(account.id, rejected=rejected)
    if token is not None:
        return Credentials(None, token, from_grant=True)
    if account.oauth_enc is not None:
        token = json.loads(unseal("email_accounts", "oauth_enc", account.oauth_enc) or "{}").get("access_token")
    return Credentials(None, token)


def imap_settings(account: EmailAccount, *, timeout: float = IMAP_TIMEOUT, rejected: str | None = None) -> imap.ImapSettings:
    """IMAP settings for an account; the password or OAuth token is decrypted here."""
    if not account.imap_host or not account.imap_port:
        raise ValueError("account has no IMAP host configured")
    creds = stored_credentials(account, "imap", rejected)
    return imap.ImapSettings(
        host=account.imap_host, port=account.imap_port, security=account.imap_security,
        username=account.imap_username or account.email, password=creds.password, oauth_token=creds.token,
        timeout=timeout, ssl_context=tls_context() if account.imap_security != "none" else None,
        listed_only=creds.listed_only(account, "imap", account.imap_host),
    )


def smtp_settings(account: EmailAccount, *, timeout: float = SMTP_TIMEOUT, rejected: str | None = None) -> SmtpSettings:
    """SMTP settings for an account; the password or OAuth token is decrypted here."""
    if not account.smtp_host or not account.smtp_port:
        raise ValueError("account has no SMTP host configured")
    creds = stored_credentials(account, "smtp", rejected)
    username = account.smtp_username or account.email
    return SmtpSettings(
        host=account.smtp_host, port=account.smtp_port, security=account.smtp_security,
        username=username if (creds.password or creds.token) else None, password=creds.password, oauth_token=creds.token,
        timeout=timeout, ssl_context=tls_context() if account.smtp_security != "none" else None,
        listed_only=creds.listed_only(account, "smtp", account.smtp_host),
    )


def connect_imap(settings: imap.ImapSettings) -> imap.ImapSession:
    """Connect with the current factory (real, or the fake in tests)."""
    return _imap_connector(settings)


def open_imap(account: EmailAccount) -> imap.ImapSession:
    """Connect and log in to the account's IMAP server (raises ``ImapError``; for OAuth accounts
    also ``tokens.ReconnectRequired`` / ``tokens.TokenUnavailable``).

    A server refusing an OAuth token (expired early, or revoked) gets one refresh and one retry.
    """
    settings = imap_settings(account)
    try:
        return _imap_connector(settings)
    except imap.ImapError as err:
        if err.kind != imap.ImapErrorKind.AUTH or settings.oauth_token is None:
            raise
        renewed = imap_settings(account, rejected=settings.oauth_token)
        if renewed.oauth_token == settings.oauth_token:  # a token given as is (no grant): nothing to renew
            raise
        return _imap_connector(renewed)


_smtp_transport: SmtpTransport | None = None


def smtp_transport() -> SmtpTransport:
    """The SMTP transport in use (aiosmtplib unless a test swapped in the fake)."""
    global _smtp_transport
    if _smtp_transport is None:
        settings = get_settings()
        _smtp_transport = (PooledSmtpTransport(idle_seconds=settings.smtp_idle_seconds) if settings.smtp_reuse
                           else AiosmtplibTransport())
    return _smtp_transport


def use_smtp_transport(transport: SmtpTransport | None) -> None:
    """Swap the SMTP transport (tests); None restores the real one."""
    global _smtp_transport
    if isinstance(_smtp_transport, PooledSmtpTransport) and _smtp_transport is not transport:
        _smtp_transport.close()
    _smtp_transport = transport


def smtp_probe(ep: Any, timeout: float) -> dict[str, Any]:
    """EHLO, STARTTLS/TLS and AUTH against an endpoint, as API.md's ``{ok, error_code, message}``."""
    try:
        settings = SmtpSettings(host=ep.host, port=ep.port, security=ep.security, username=ep.username,
                                password=ep.password, oauth_token=ep.oauth_token, timeout=timeout,
                                ssl_context=tls_context() if ep.security != "none" else None, listed_only=ep.listed_only)
    except ValueError as err:
        return {"ok": False, "error_code": "protocol", "message": str(err)}
    result = smtp_transport().probe(settings)
    return {"ok": result.ok, "error_code": result.error_code, "message": result.message, "reason": result.reason}


def use_imap_connector(connector: ImapConnector | None) -> None:
    """Swap the IMAP factory (tests); None restores the real one."""
    global _imap_connector
    _imap_connector = connector or imap.connect
