"""Who may see which mailbox: the one authorization check every route and query goes through.

An :class:`Actor` is the caller: the organization of its API key and, when the request names one
(``X-Mailpipe-User``), the acting user. Without a user the key acts for the whole organization. A
user sees a mailbox they own, one they are a member of while it is shared, or one they are a
delegate of; everything else does not exist for them (404). Memberships are read on every query,
so adding or removing one takes effect at the next request.

Queries filter with :meth:`Actor.mailboxes` (the visible mailbox ids as a subquery) through
:meth:`Actor.visible`; single rows are loaded with :meth:`Actor.email`, :meth:`Actor.account` and
:meth:`Actor.conversation`, which raise :class:`NotVisible` for anything the actor may not see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, or_, true
from sqlmodel import Session, col, select

from models.accounts import EmailAccount
from models.conversations import AccountMember, Conversation
from models.emails import Email

__all__ = ["Actor", "NotVisible"]


class NotVisible(LookupError):
    """The row does not exist for this actor (another organization's, or a mailbox they may not see)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@dataclass(frozen=True, slots=True)
class Actor:
    """The caller: ``org_id`` always, ``user_id`` when a user acts (None: the whole organization)."""

    org_id: str
    user_id: str | None = None

    @property
    def is_org(self) -> bool:
        return self.user_id is None

    def mailboxes(self) -> Select[Any]:
        """The ids of the mailboxes (deleted ones included: their stored mail stays readable) this actor sees."""
        stmt = select(EmailAccount.id).where(EmailAccount.org_id == self.org_id)
        if self.user_id is None:
            return stmt
        granted = (
            select(AccountMember.account_id)
            .join(EmailAccount, col(EmailAccount.id) == col(AccountMember.account_id))
            .where(col(AccountMember.org_id) == self.org_id, col(AccountMember.user_id) == self.user_id,
                   or_(col(AccountMember.role) == "delegate",
                       and_(col(AccountMember.role) == "member", col(EmailAccount.shared).is_(True))))
        )
        return stmt.where(or_(col(EmailAccount.user_id) == self.user_id, col(EmailAccount.id).in_(granted)))

    def visible(self, account_column: Any) -> Any:
        """A WHERE clause: ``account_column`` names a mailbox this actor sees (always true for the org)."""
        if self.user_id is None:
            return true()
        return col(account_column).in_(self.mailboxes())

    def sees_account(self, s: Session, account_id: str) -> bool:
        return s.execute(self.mailboxes().where(col(EmailAccount.id) == account_id)).first() is not None

    def account(self, s: Session, account_id: str, *, include_deleted: bool = False) -> EmailAccount:
        a = s.get(EmailAccount, account_id)
        if a is None or a.org_id != self.org_id or (a.deleted_at is not None and not include_deleted):
            raise NotVisible("account")
        if self.user_id is not None and not self.sees_account(s, a.id):
            raise NotVisible("account")
        return a

    def email(self, s: Session, email_id: str) -> Email:
        e = s.get(Email, email_id)
        if e is None or e.org_id != self.org_id or e.deleted_at is not None:
            raise NotVisible("email")
        if self.user_id is not None and not self.sees_account(s, e.account_id):
            raise NotVisible("email")
        return e

    def conversation(self, s: Session, conversation_id: str) -> Conversation:
        c = s.get(Conversation, conversation_id)
        if c is not None and c.merged_into is not None:  # a bridged thread answers as the one it joined
            c = s.get(Conversation, c.merged_into)
        if c is None or c.org_id != self.org_id:
            raise NotVisible("conversation")
        if self.user_id is not None and not self.sees_account(s, c.account_id):
            raise NotVisible("conversation")
        return c

    def may_act_as(self, user_id: str | None) -> bool:
        """Whether this actor may read or act for ``user_id`` (their notifications, tokens, connections)."""
        return self.user_id is None or user_id == self.user_id
