"""Mailbox accounts: connection tests, creation with presets and encrypted secrets, sync requests.

Used by the API; no HTTP here. Secrets go from the request straight into AES-GCM and are never
returned, logged or put into error messages.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlmodel import Session

from models import (Delivery, Document, Email, EmailAccount, EmailAddress, EmailLink, EmailLocation, FolderState, Outbox, TrackedLink,
                    TrackingEvent, new_id, normalize_email, utcnow)
from ops.keys import seal
from pipeline.clients import imap
from pipeline.connections import smtp_probe, tls_context, use_imap_connector  # noqa: F401  (re-exported for tests)
from pipeline.stages.providers import PRESETS, apply_preset

__all__ = ["ConnTest", "Endpoint", "account_json", "apply_presets", "create_account", "erase_account_mail", "kick_fetch",
           "test_connection"]

PROBE_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server's connection parameters as given (after presets)."""

    host: str
    port: int
    security: str
    username: str
    password: str | None = None
    oauth_token: str | None = None


@dataclass(frozen=True, slots=True)
class ConnTest:
    """The outcome of testing IMAP and SMTP, in API.md's shape."""

    imap: dict[str, Any]
    smtp: dict[str, Any]

    @property
    def ok(self) -> bool:
        return bool(self.imap["ok"] and self.smtp["ok"])

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "imap": self.imap, "smtp": self.smtp}


def apply_presets(provider: str, email: str, imap_in: dict[str, Any], smtp_in: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fill hosts, ports and security from the provider preset; usernames default to the address."""
    if provider not in PRESETS:
        raise ValueError(f"provider must be one of {sorted(PRESETS)}")
    i = apply_preset(provider, "imap", imap_in)
    s = apply_preset(provider, "smtp", smtp_in)
    for d in (i, s):
        d["username"] = d.get("username") or email
    return i, s


def _probe_imap(ep: Endpoint, timeout: float) -> dict[str, Any]:
    from pipeline import connections

    try:
        session = connections.connect_imap(imap.ImapSettings(
            host=ep.host, port=ep.port, security=ep.security, username=ep.username, password=ep.password,
            oauth_token=ep.oauth_token, timeout=timeout, ssl_context=tls_context() if ep.security != "none" else None))
    except imap.ImapError as err:
        return {"ok": False, "error_code": err.kind.value, "message": err.message}
    except ValueError as err:
        return {"ok": False, "error_code": "protocol", "message": str(err)}
    try:
        caps = sorted(session.capabilities)
        folders = [f.name for f in session.list_folders()]
        return {"ok": True, "error_code": None, "message": f"logged in; {len(folders)} folders", "capabilities": caps}
    except imap.ImapError as err:
        return {"ok": False, "error_code": err.kind.value, "message": err.message}
    finally:
        session.close()


def test_connection(imap_ep: Endpoint, smtp_ep: Endpoint, timeout: float = PROBE_TIMEOUT) -> ConnTest:
    """Log in to IMAP and SMTP at the same time, each bounded by ``timeout``."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        fi = pool.submit(_probe_imap, imap_ep, timeout)
        fs = pool.submit(smtp_probe, smtp_ep, timeout)
        return ConnTest(fi.result(), fs.result())


def create_account(session: Session, *, org_id: str, user_id: str, provider: str, email: str,
                   imap_ep: Endpoint, smtp_ep: Endpoint, oauth: dict[str, Any] | None = None) -> EmailAccount:
    """Insert an account with sealed secrets, due for its first fetch now."""
    preset = PRESETS[provider]
    account = EmailAccount(
        id=new_id(), org_id=org_id, user_id=user_id, email=email, email_norm=normalize_email(email) or email,
        provider=provider,
        imap_host=imap_ep.host, imap_port=imap_ep.port, imap_security=imap_ep.security, imap_username=imap_ep.username,
        smtp_host=smtp_ep.host, smtp_port=smtp_ep.port, smtp_security=smtp_ep.security, smtp_username=smtp_ep.username,
        saves_sent_copy=preset.saves_sent_copy, next_fetch_at=utcnow() - timedelta(seconds=1),
    )
    account.imap_password_enc = seal("email_accounts", "imap_password_enc", imap_ep.password)
    account.smtp_password_enc = seal("email_accounts", "smtp_password_enc", smtp_ep.password)
    if oauth:
        import json

        account.oauth_enc = seal("email_accounts", "oauth_enc", json.dumps(oauth))
    session.add(account)
    return account


def kick_fetch(s: Session, account_id: str) -> None:
    """Make the account due and enqueue its fetch now (the scheduler would within a tick)."""
    from pipeline.actors.fetch import fetch_account

    acct = s.get(EmailAccount, account_id)
    if acct is None or acct.sync_state == "disabled":
        return
    if acct.fetch_lease_until is not None and acct.fetch_lease_until > utcnow():
        return
    token = new_id()
    acct.fetch_token = token  # a manual sync does not lift the hourly budget (deferred_until stays)
    acct.next_fetch_at = utcnow() + timedelta(seconds=acct.poll_seconds or 60)
    s.add(acct)
    s.commit()
    fetch_account.send(acct.id, token)


def account_json(a: EmailAccount) -> dict[str, Any]:
    """The API view of an account; secrets are never included."""
    from web.present import iso

    return {
        "id": a.id, "user_id": a.user_id, "email": a.email, "provider": a.provider,
        "imap": {"host": a.imap_host, "port": a.imap_port, "security": a.imap_security, "username": a.imap_username},
        "smtp": {"host": a.smtp_host, "port": a.smtp_port, "security": a.smtp_security, "username": a.smtp_username},
        "poll_seconds": a.poll_seconds, "saves_sent_copy": a.saves_sent_copy,
        "sync": {
            "state": a.sync_state, "last_synced_at": iso(a.last_synced_at), "last_error": a.last_error,
            "error_code": a.last_error_code, "reconnect_needed": a.last_error_code == "auth" or a.sync_state == "reconnect_required",
            "messages_synced": a.messages_synced, "backfill": {"done": a.backfill_done, "total": a.backfill_total},
            "next_fetch_at": iso(a.next_fetch_at), "deferred_until": iso(a.deferred_until),
        },
        "created_at": iso(a.created_at),
    }


def erase_account_mail(session: Session, account_id: str) -> list[str]:
    """Delete an account's mail rows; returns the storage keys to remove afterwards."""
    email_ids = list(session.execute(select(Email.id).where(Email.account_id == account_id)).scalars())
    keys = [k for k in session.execute(select(Email.raw_key).where(Email.account_id == account_id)).scalars() if k]
    for chunk in (email_ids[i : i + 500] for i in range(0, len(email_ids), 500)):
        keys += list(session.execute(select(Document.storage_key).where(Document.email_id.in_(chunk))).scalars())  # type: ignore[attr-defined]
        for atts in session.execute(select(Outbox.attachments).where(Outbox.email_id.in_(chunk))).scalars():  # type: ignore[attr-defined]
            keys += [a["key"] for a in atts if str(a.get("key", "")).startswith("outbox/")]  # forwarded files belong to others
        for model in (Document, EmailLink, EmailAddress, EmailLocation, Delivery, Outbox, TrackedLink, TrackingEvent):
            session.execute(delete(model).where(model.email_id.in_(chunk)))  # type: ignore[attr-defined]
        session.execute(delete(Email).where(Email.id.in_(chunk)))  # type: ignore[attr-defined]
    session.execute(delete(FolderState).where(FolderState.account_id == account_id))
    session.execute(update(EmailAccount).where(EmailAccount.id == account_id).values(messages_synced=0, backfill_done=0, backfill_total=0))
    return keys
