"""Turning an account row into protocol-client settings, and the swappable client factories.

Actors call :func:`open_imap`; tests swap the factory for the in-memory fake with
:func:`use_imap_connector`. Secrets are decrypted here, at the last moment, and never logged.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from functools import lru_cache

from models import EmailAccount
from ops.keys import unseal
from pipeline.clients import imap

__all__ = ["imap_settings", "open_imap", "tls_context", "use_imap_connector"]

ImapConnector = Callable[[imap.ImapSettings], imap.ImapSession]
_imap_connector: ImapConnector = imap.connect

IMAP_TIMEOUT = 30.0


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """System trust store, or ``SSL_CERT_FILE`` when set (OpenSSL reads it), hostname checked."""
    return ssl.create_default_context()


def imap_settings(account: EmailAccount, *, timeout: float = IMAP_TIMEOUT) -> imap.ImapSettings:
    """IMAP settings for an account; the password or OAuth token is decrypted here."""
    if not account.imap_host or not account.imap_port:
        raise ValueError("account has no IMAP host configured")
    password = unseal("email_accounts", "imap_password_enc", account.imap_password_enc)
    token = None
    if account.oauth_enc is not None and password is None:
        import json

        token = json.loads(unseal("email_accounts", "oauth_enc", account.oauth_enc) or "{}").get("access_token")
    return imap.ImapSettings(
        host=account.imap_host, port=account.imap_port, security=account.imap_security,
        username=account.imap_username or account.email, password=password, oauth_token=token,
        timeout=timeout, ssl_context=tls_context() if account.imap_security != "none" else None,
    )


def open_imap(account: EmailAccount) -> imap.ImapSession:
    """Connect and log in to the account's IMAP server (raises ``ImapError``)."""
    return _imap_connector(imap_settings(account))


def use_imap_connector(connector: ImapConnector | None) -> None:
    """Swap the IMAP factory (tests); None restores the real one."""
    global _imap_connector
    _imap_connector = connector or imap.connect
