"""A message's raw bytes: from storage, or fetched again from the server when storage lost them.

Raw messages in storage are a cache of what the server holds (written without fsync); a stage
that misses one reads it again from one of the email's locations (BODY.PEEK: nothing changes on
the server) and stores it back.
"""

from __future__ import annotations

import structlog
from sqlmodel import Session, select

from models import Email, EmailAccount, EmailLocation
from pipeline.clients.imap import ImapError
from pipeline.clients.storage import StorageError, get_storage, read_raw
from pipeline.flows.connections import open_imap
from pipeline.flows.tokens import CredentialsUnavailable

__all__ = ["raw_of", "refetch_raw"]

log = structlog.get_logger("mailpipe.raw")


def raw_of(s: Session, email: Email) -> bytes | None:
    """The email's raw bytes from storage, else from the server; None when both lost them."""
    try:
        return read_raw(email.raw_key or "")
    except StorageError:
        return refetch_raw(s, email)


def refetch_raw(s: Session, email: Email) -> bytes | None:
    """Fetch a message again from one of its server locations (BODY.PEEK) and re-store it."""
    account = s.get(EmailAccount, email.account_id)
    locations = list(s.execute(select(EmailLocation).where(EmailLocation.email_id == email.id)).scalars())
    if account is None or not locations or not email.raw_key:
        return None
    try:
        session = open_imap(account)
    except (ImapError, CredentialsUnavailable):
        return None
    try:
        for loc in locations:
            status = session.select(loc.folder, readonly=True)
            if status.uidvalidity != loc.uidvalidity:
                continue
            for m in session.fetch_peek([loc.uid]):
                get_storage().put(email.raw_key, m.raw, "message/rfc822")
                log.info("raw_refetched", email_id=email.id, folder=loc.folder, uid=loc.uid)
                return m.raw
    except ImapError:
        return None
    finally:
        session.close()
    return None
