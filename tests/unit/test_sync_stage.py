"""pipeline.stages.sync: folder choice, per-folder plans, batches, cursors and the hourly budget."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from pipeline.stages.sync import (
    FolderCursor,
    RateWindow,
    advance,
    choose_folders,
    is_gmail,
    plan_folder,
    rate_allowance,
    select_batch,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class F:
    name: str
    special_use: frozenset[str] = frozenset()


@dataclass(frozen=True)
class S:
    uidvalidity: int
    uidnext: int
    messages: int = 0
    highestmodseq: int | None = None


class TestFolders:
    def test_inbox_and_sent_by_attribute(self) -> None:
        """INBOX plus whichever folder carries \\Sent, whatever it is called."""
        folders = [F("INBOX"), F("Gesendete Objekte", frozenset({"\\Sent"})), F("Trash", frozenset({"\\Trash"}))]
        assert [(c.name, c.role) for c in choose_folders({"IMAP4REV1"}, folders)] == [("INBOX", "inbox"), ("Gesendete Objekte", "sent")]

    def test_no_sent_attribute_means_inbox_only(self) -> None:
        """A folder merely named Sent is not assumed to be the Sent folder."""
        assert [c.name for c in choose_folders(set(), [F("INBOX"), F("Sent")])] == ["INBOX"]

    def test_gmail_syncs_all_mail_only(self) -> None:
        """X-GM-EXT-1 plus a visible \\All folder: only All Mail is synced."""
        folders = [F("INBOX"), F("[Gmail]/All Mail", frozenset({"\\All"})), F("[Gmail]/Sent Mail", frozenset({"\\Sent"}))]
        assert is_gmail({"X-GM-EXT-1"}, folders)
        assert [(c.name, c.role) for c in choose_folders({"X-GM-EXT-1"}, folders)] == [("[Gmail]/All Mail", "all")]

    def test_gmail_without_all_mail_is_generic(self) -> None:
        """If the user hid All Mail from IMAP the account is treated as generic."""
        assert not is_gmail({"X-GM-EXT-1"}, [F("INBOX")])


class TestPlan:
    def test_first_sync_backfills_below_uidnext(self) -> None:
        """No cursor: a reset plan whose new-mail cursor starts at UIDNEXT and backfills below it."""
        plan = plan_folder(None, S(7, 101), now=NOW, backfill_days=90)
        assert plan.action == "sync" and plan.reset and not plan.reindex
        assert plan.new_from == 101 and plan.backfill_below == 101 and plan.backfill_since == date(2026, 8, 26)
        assert plan.cursor.last_uid == 100 and plan.cursor.uidvalidity == 7

    def test_nothing_new_is_noop(self) -> None:
        """Same UIDVALIDITY, UIDNEXT just above the cursor, backfill done: nothing to do."""
        cur = FolderCursor(7, 101, None, 100, 1, True)
        assert plan_folder(cur, S(7, 101), now=NOW, backfill_days=90).action == "noop"

    def test_new_mail_from_last_uid(self) -> None:
        """New UIDs are fetched from last_uid + 1."""
        cur = FolderCursor(7, 101, None, 100, 1, True)
        plan = plan_folder(cur, S(7, 106), now=NOW, backfill_days=90)
        assert plan.new_from == 101 and plan.backfill_below is None and not plan.reset

    def test_uidvalidity_change_reindexes(self) -> None:
        """A new UIDVALIDITY voids the cursor: a silent re-index."""
        cur = FolderCursor(7, 101, None, 100, 1, True)
        plan = plan_folder(cur, S(8, 50), now=NOW, backfill_days=30)
        assert plan.reset and plan.reindex and plan.cursor.uidvalidity == 8 and plan.backfill_below == 50

    def test_unfinished_backfill_continues(self) -> None:
        """An interrupted backfill resumes below its low-water mark."""
        cur = FolderCursor(7, 101, None, 100, 40, False)
        plan = plan_folder(cur, S(7, 101), now=NOW, backfill_days=90)
        assert plan.action == "sync" and plan.backfill_below == 40 and plan.new_from is None


class TestBatches:
    def test_new_first_then_newest_backfill(self) -> None:
        """New mail ascending first, then backfill newest first, within the limit."""
        fresh, older = select_batch([101, 102, 100], [10, 50, 30, 99], last_uid=100, backfill_below=60, limit=4)
        assert fresh == [101, 102] and older == [50, 30]

    def test_star_range_quirk_dropped(self) -> None:
        """`UID n:*` returns the highest UID even below n; it is ignored."""
        assert select_batch([100], [], last_uid=100, backfill_below=None, limit=10) == ([], [])

    def test_advance_moves_both_marks(self) -> None:
        """High-water mark up for new mail, low-water mark down for backfill."""
        cur = advance(FolderCursor(7, 101, None, 100, 60, False), fetched_new=[101, 105], fetched_backfill=[50, 30],
                      backfill_exhausted=False)
        assert (cur.last_uid, cur.backfill_low_uid, cur.backfill_done) == (105, 30, False)
        assert advance(cur, fetched_new=[], fetched_backfill=[], backfill_exhausted=True).backfill_done


class TestBudget:
    def test_window_resets_after_an_hour(self) -> None:
        """A window older than the period starts again from zero."""
        allowance, w = rate_allowance(RateWindow(NOW - timedelta(hours=2), 999), now=NOW, limit=1000)
        assert allowance == 1000 and w == RateWindow(NOW, 0)

    def test_siblings_share_the_budget(self) -> None:
        """Other mailboxes of the same user count against the limit while their window is current."""
        allowance, _ = rate_allowance(RateWindow(NOW, 100), now=NOW, limit=1000,
                                      siblings=[RateWindow(NOW - timedelta(minutes=5), 300), RateWindow(NOW - timedelta(hours=3), 500)])
        assert allowance == 600
