"""Server → API flags and expunges for one folder during a fetch run.

With CONDSTORE/QRESYNC the server is asked what changed since the MODSEQ stored with the folder's
cursor (``UID FETCH 1:* (FLAGS) (CHANGEDSINCE m VANISHED)``), and nothing at all when HIGHESTMODSEQ
has not moved. Without them, the flags of the most recent stored messages (a window of
:data:`pipeline.stages.mailbox_state.FLAG_WINDOW`) are listed and compared, and a stored UID the
server no longer lists is an expunge. The changes go through :func:`apply_server_changes`.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import Session, col

from models import EmailLocation
from models.db import get_engine
from pipeline.clients.imap import ImapSession
from pipeline.flows.server_state import ServerReport, apply_server_changes
from pipeline.stages.mailbox_state import FLAG_WINDOW, plan_flag_check

__all__ = ["sync_folder_flags"]


def sync_folder_flags(imap: ImapSession, account_id: str, folder: str, uidvalidity: int, *, stored_modseq: int | None,
                      server_modseq: int | None, readonly: bool = True) -> int:
    """Bring the stored flags and locations of ``folder`` up to date; returns emails changed."""
    with Session(get_engine()) as s:
        recent = list(s.execute(select(col(EmailLocation.uid)).where(
            col(EmailLocation.account_id) == account_id, col(EmailLocation.folder) == folder, col(EmailLocation.uidvalidity) == uidvalidity)
            .order_by(col(EmailLocation.uid).desc()).limit(FLAG_WINDOW)).scalars())
    check = plan_flag_check(imap.enabled, stored_modseq, server_modseq, recent)
    if check.method == "none":
        return 0
    imap.select(folder, readonly=readonly)
    flags: dict[int, frozenset[str]] = {}
    modseqs: dict[int, int] = {}
    gone: set[int] = set()
    if check.changedsince is not None:
        changes = imap.fetch_flags(changedsince=check.changedsince)
        flags.update(changes.flags)
        modseqs.update(changes.modseqs)
        gone |= changes.vanished
    if check.window_from is not None:
        window = imap.fetch_flags(uid_from=check.window_from)
        flags.update(window.flags)
        modseqs.update(window.modseqs)
        gone |= set(recent) - set(window.flags)
        gone |= window.vanished
    return apply_server_changes(account_id, folder, uidvalidity, ServerReport(flags, modseqs, gone))
