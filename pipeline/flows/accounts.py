"""Mailbox accounts: connection tests, the connection guard's verdict, creation with presets and
encrypted secrets, changed endpoints, erasing a mailbox's mail.

Used by the API; no HTTP here. Secrets go from the request straight into AES-GCM and are never
returned, logged or put into error messages.
"""

from __future__ import annotations

import concurrent.futures
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from models import (
    AccountMember,
    Conversation,
    ConversationKey,
    Delivery,
    Document,
    Email,
    EmailAccount,
    EmailAddress,
    EmailLink,
    EmailLocation,
    EmailSentiment,
    FlagChange,
    FolderState,
    Outbox,
    TrackedLink,
    TrackingEvent,
    User,
    new_id,
    normalize_email,
    utcnow,
)
from models.db import get_engine
from models.oauth import OAuthGrant
from ops.keys import seal
from pipeline.clients import imap
from pipeline.clients.smtp import HOST_NOT_ALLOWED
from pipeline.flows.connections import Credentials, connect_imap, smtp_probe, stored_credentials, tls_context
from pipeline.flows.endpoint_guard import EndpointRefused, check_endpoints
from pipeline.stages.endpoint_rules import ENDPOINT_FIELDS, changed_fields, oauth_host_rule
from pipeline.stages.probe_report import failure_message, success_message
from pipeline.stages.providers import PRESETS, apply_preset

__all__ = ["ConnTest", "Endpoint", "EndpointRefused", "UnknownUsers", "access_lists", "apply_presets", "create_account",
           "erase_account_mail", "guard_endpoints", "patch_endpoints", "set_access", "test_connection"]

PROBE_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server's connection parameters as given (after presets)."""

    host: str
    port: int
    security: str
    username: str
    password: str | None = field(default=None, repr=False)
    oauth_token: str | None = field(default=None, repr=False)
    listed_only: str | None = None  # why the host must be inside MAILPIPE_MAIL_ALLOWED_NETS (an OAuth token off the provider's hosts)


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
    try:
        session = connect_imap(imap.ImapSettings(
            host=ep.host, port=ep.port, security=ep.security, username=ep.username, password=ep.password,
            oauth_token=ep.oauth_token, timeout=timeout, ssl_context=tls_context() if ep.security != "none" else None,
            listed_only=ep.listed_only))
    except imap.ImapError as err:
        return _failed("imap", ep, err.kind.value, err.message, ours=err.code == imap.HOST_NOT_ALLOWED)
    except ValueError as err:
        return {"ok": False, "error_code": "protocol", "message": str(err)}
    try:
        caps = sorted(session.capabilities)
        folders = [f.name for f in session.list_folders()]
        return {"ok": True, "error_code": None, "message": success_message("imap", ep.security, authenticated=True, folders=len(folders)),
                "capabilities": caps}
    except imap.ImapError as err:
        return _failed("imap", ep, err.kind.value, err.message)
    finally:
        session.close()


def _probe_smtp(ep: Endpoint, timeout: float) -> dict[str, Any]:
    result = smtp_probe(ep, timeout)
    if result["ok"]:
        return {"ok": True, "error_code": None, "message": success_message("smtp", ep.security, authenticated=ep.username is not None)}
    return _failed("smtp", ep, str(result["error_code"]), str(result["message"]), ours=result.get("reason") == HOST_NOT_ALLOWED)


def _failed(proto: str, ep: Endpoint, kind: str, detail: str, *, ours: bool = False) -> dict[str, Any]:
    """A failed side of the test, worded by us: the server's text (its banner, its errors) is never
    echoed to whoever aimed the test. ``ours``: detail is our own text (the guard's refusal)."""
    message = detail if ours else failure_message(proto, kind, host=ep.host, port=ep.port, security=ep.security,
                                                  oauth=ep.password is None, certificate="CERTIFICATE_VERIFY_FAILED" in detail)
    return {"ok": False, "error_code": kind, "message": message}


def test_connection(imap_ep: Endpoint, smtp_ep: Endpoint, timeout: float = PROBE_TIMEOUT) -> ConnTest:
    """Log in to IMAP and SMTP at the same time, each bounded by ``timeout``."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        fi = pool.submit(_probe_imap, imap_ep, timeout)
        fs = pool.submit(_probe_smtp, smtp_ep, timeout)
        return ConnTest(fi.result(), fs.result())


def guard_endpoints(imap_ep: Endpoint, smtp_ep: Endpoint) -> None:
    """Refuse (EndpointRefused) hosts and plaintext the connection guard would refuse, before any connection."""
    check_endpoints((("imap", imap_ep), ("smtp", smtp_ep)))


def patch_endpoints(account: EmailAccount, given: dict[str, dict[str, Any] | None]) -> tuple[Endpoint, Endpoint]:
    """The endpoints a PATCH asks for: the stored settings with the given ones on top.

    A stored secret never follows a changed endpoint: changing host, port, security or username
    needs the password again (EndpointRefused ``password_required``). The one exception is an
    OAuth grant's token, which goes only to the provider's own hosts or hosts inside
    MAILPIPE_MAIL_ALLOWED_NETS (``listed_only``, enforced by the guard). For an account with an
    OAuth grant that holds for every host it is given, password or not.
    May raise ``tokens.ReconnectRequired`` / ``tokens.TokenUnavailable`` while fetching the token.
    """
    with Session(get_engine()) as s:
        has_grant = s.get(OAuthGrant, account.id) is not None
    endpoints = []
    for proto in ("imap", "smtp"):
        wanted = dict(given.get(proto) or {})
        password = wanted.pop("password", None)
        stored = {name: getattr(account, f"{proto}_{name}") for name in ENDPOINT_FIELDS}
        merged: dict[str, Any] = {name: wanted.get(name) if wanted.get(name) is not None else stored[name] for name in ENDPOINT_FIELDS}
        changed = changed_fields(stored, wanted)
        creds = Credentials(password, None) if password is not None else stored_credentials(account, proto)
        if password is None and creds.password is None and creds.token is None:
            raise EndpointRefused("password_required", proto, "password",
                                  f"{proto}.password: required (this mailbox has no stored {proto} password)")
        if password is None and changed and not creds.from_grant:
            raise EndpointRefused("password_required", proto, "password",
                                  f"{proto}.password: changing {', '.join(changed)} needs the password again; a stored "
                                  "password or token never follows a changed server")
        host = str(merged["host"])
        endpoints.append(Endpoint(host, int(merged["port"]), str(merged["security"]), str(merged["username"] or account.email),
                                  creds.password, creds.token,
                                  oauth_host_rule(account.provider, proto, host) if has_grant else None))
    return endpoints[0], endpoints[1]


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
        account.oauth_enc = seal("email_accounts", "oauth_enc", json.dumps(oauth))
    session.add(account)
    return account


def erase_account_mail(session: Session, account_id: str) -> list[str]:
    """Delete an account's mail rows; returns the storage keys to remove afterwards."""
    email_ids = list(session.execute(select(Email.id).where(Email.account_id == account_id)).scalars())
    keys = [k for k in session.execute(select(Email.raw_key).where(Email.account_id == account_id)).scalars() if k]
    for chunk in (email_ids[i : i + 500] for i in range(0, len(email_ids), 500)):
        keys += list(session.execute(select(Document.storage_key).where(col(Document.email_id).in_(chunk))).scalars())
        for atts in session.execute(select(Outbox.attachments).where(col(Outbox.email_id).in_(chunk))).scalars():
            keys += [a["key"] for a in atts if str(a.get("key", "")).startswith("outbox/")]  # forwarded files belong to others
        for model in (Document, EmailLink, EmailAddress, EmailLocation, Delivery, Outbox, TrackedLink, TrackingEvent,
                      EmailSentiment, FlagChange):
            session.execute(delete(model).where(col(model.email_id).in_(chunk)))
        session.execute(delete(Email).where(col(Email.id).in_(chunk)))
    session.execute(delete(FolderState).where(col(FolderState.account_id) == account_id))
    session.execute(delete(ConversationKey).where(col(ConversationKey.account_id) == account_id))
    session.execute(delete(Conversation).where(col(Conversation.account_id) == account_id))
    session.execute(update(EmailAccount).where(col(EmailAccount.id) == account_id)
                    .values(messages_synced=0, backfill_done=0, backfill_total=0))
    return keys


class UnknownUsers(ValueError):
    """Members or delegates named that are not users of the organization."""

    def __init__(self, unknown: list[str]) -> None:
        super().__init__(", ".join(unknown))
        self.unknown = unknown


def access_lists(s: Session, account_ids: list[str]) -> dict[str, dict[str, list[str]]]:
    """{account id: {"members": [...], "delegates": [...]}} (sorted user ids)."""
    out: dict[str, dict[str, list[str]]] = {a: {"members": [], "delegates": []} for a in account_ids}
    if account_ids:
        for account_id, user_id, role in s.execute(select(AccountMember.account_id, AccountMember.user_id, AccountMember.role)
                                                   .where(col(AccountMember.account_id).in_(account_ids))
                                                   .order_by(col(AccountMember.user_id))).all():
            out[account_id]["members" if role == "member" else "delegates"].append(user_id)
    return out


def set_access(s: Session, account: EmailAccount, *, shared: bool | None, members: list[str] | None,
               delegates: list[str] | None, by: str | None) -> None:
    """Make the mailbox shared or private and replace its members and/or delegates (each list given
    replaces the stored one; None keeps it). Effective at the commit: access is read per request."""
    named = sorted({u for u in (*(members or ()), *(delegates or ())) if u})
    if named:
        known = set(s.execute(select(User.id).where(User.org_id == account.org_id, col(User.id).in_(named))).scalars())
        unknown = [u for u in named if u not in known]
        if unknown:
            raise UnknownUsers(unknown)
    if shared is not None:
        account.shared = shared
        s.add(account)
    for role, wanted in (("member", members), ("delegate", delegates)):
        if wanted is None:
            continue
        keep = {u for u in wanted if u and u != account.user_id}
        s.execute(delete(AccountMember).where(col(AccountMember.account_id) == account.id, col(AccountMember.role) == role,
                                              col(AccountMember.user_id).not_in(keep or {""})))
        have = set(s.execute(select(AccountMember.user_id).where(AccountMember.account_id == account.id,
                                                                 AccountMember.role == role)).scalars())
        for user_id in sorted(keep - have):
            s.add(AccountMember(org_id=account.org_id, account_id=account.id, user_id=user_id, role=role, added_by=by))
    s.flush()
