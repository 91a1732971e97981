"""Unit tests for pipeline.stages.threads."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pipeline.stages.threads import normalize_message_id, parse_references, thread_key


class Store:
    """An in-memory message store that answers ``known_threads`` the way a SQL query would."""

    def __init__(self) -> None:
        self.thread_of: dict[str, str] = {}
        self.queries: list[list[str]] = []

    def known_threads(self, ids: Sequence[str]) -> str | None:
        """Return the thread of the first stored id, recording the query."""
        self.queries.append(list(ids))
        for message_id in ids:
            if message_id in self.thread_of:
                return self.thread_of[message_id]
        return None

    def deliver(
        self,
        message_id: str | None,
        *,
        in_reply_to: str | None = None,
        references: Sequence[str] = (),
        gm_thrid: int | None = None,
        fallback: str = "sha256:unused",
    ) -> str:
        """Thread one arriving message, store it, and return its key."""
        key = thread_key(
            message_id=message_id,
            in_reply_to=in_reply_to,
            references=references,
            gm_thrid=gm_thrid,
            known_threads=self.known_threads,
            fallback=fallback,
        )
        if message_id:
            self.thread_of[normalize_message_id(message_id)] = key
        return key


def never_called(ids: Sequence[str]) -> str | None:
    """A known_threads that fails the test if used."""
    raise AssertionError(f"known_threads called with {ids!r}")


def nothing_known(ids: Sequence[str]) -> str | None:
    """A known_threads for an empty store."""
    return None


class TestNormalizeMessageId:
    """normalize_message_id: the canonical Message-ID form."""

    def test_strips_brackets_and_space(self) -> None:
        """The canonical form has no angle brackets or whitespace."""
        assert normalize_message_id("  <abc@host.example>\r\n") == "abc@host.example"

    def test_keeps_case(self) -> None:
        """Message-IDs are compared exactly, so case is preserved."""
        assert normalize_message_id("<AbC@Host>") == "AbC@Host"

    def test_ignores_trailing_comment(self) -> None:
        """An In-Reply-To with a trailing comment yields just the id."""
        assert normalize_message_id("<a@b> (Jane's message of Monday)") == "a@b"

    def test_bare_and_empty(self) -> None:
        """A bare id is accepted and empty input gives ""."""
        assert normalize_message_id("a@b") == "a@b"
        assert normalize_message_id("") == ""
        assert normalize_message_id(None) == ""
        assert normalize_message_id("<>") == ""


class TestParseReferences:
    """parse_references: splitting the References header."""

    def test_splits_header_in_order(self) -> None:
        """Ids come out oldest first, folded whitespace ignored."""
        assert parse_references("<a@x>\r\n <b@x> <c@x>") == ["a@x", "b@x", "c@x"]

    def test_deduplicates(self) -> None:
        """A repeated id is kept once, at its first position."""
        assert parse_references("<a@x> <b@x> <a@x>") == ["a@x", "b@x"]

    def test_unbracketed_and_empty(self) -> None:
        """Unbracketed ids separated by spaces or commas still parse; nothing gives []."""
        assert parse_references("a@x, b@x") == ["a@x", "b@x"]
        assert parse_references(None) == []
        assert parse_references("  ") == []


class TestGmail:
    """Gmail's X-GM-THRID."""

    def test_gmail_thread_id_wins(self) -> None:
        """X-GM-THRID is used as is and no lookup happens."""
        key = thread_key(
            message_id="<m@x>",
            in_reply_to="<p@x>",
            references=["<r@x>", "<p@x>"],
            gm_thrid=1798346812376512,
            known_threads=never_called,
            fallback="sha256:f",
        )
        assert key == "gm:1798346812376512"

    def test_gmail_thread_id_zero_is_still_an_id(self) -> None:
        """A thread id of 0 is a value, not a missing one."""
        key = thread_key(
            message_id=None,
            in_reply_to=None,
            references=[],
            gm_thrid=0,
            known_threads=never_called,
            fallback="",
        )
        assert key == "gm:0"


class TestKnownParents:
    """Joining the thread of an already stored related message."""

    def test_lookup_order_is_nearest_parent_first(self) -> None:
        """known_threads gets References last to first, then In-Reply-To, then the own id, in one call."""
        store = Store()
        store.deliver("<m@x>", in_reply_to="<irt@x>", references=["<a@x>", "<b@x>", "<c@x>"])
        assert store.queries == [["c@x", "b@x", "a@x", "irt@x", "m@x"]]

    def test_joins_thread_of_nearest_known_parent(self) -> None:
        """The nearest known ancestor's thread is used even if it differs from the root's."""
        store = Store()
        store.thread_of.update({"a@x": "mid:a@x", "b@x": "mid:other"})
        assert store.deliver("<c@x>", references=["<a@x>", "<b@x>"]) == "mid:other"

    def test_in_reply_to_alone_finds_parent(self) -> None:
        """A reply with only In-Reply-To joins its parent's thread."""
        store = Store()
        root = store.deliver("<a@x>")
        assert store.deliver("<b@x>", in_reply_to="<a@x>") == root == "mid:a@x"

    def test_duplicate_copy_keeps_its_thread(self) -> None:
        """The same Message-ID seen again (another folder) returns its stored thread."""
        store = Store()
        store.thread_of["m@x"] = "gm:42"
        assert store.deliver("<m@x>") == "gm:42"

    def test_references_header_string_is_accepted(self) -> None:
        """Passing the raw References header instead of a list gives the same result."""
        store = Store()
        store.thread_of["b@x"] = "mid:a@x"
        assert store.deliver("<c@x>", references="<a@x> <b@x>") == "mid:a@x"
        assert store.queries[-1] == ["b@x", "a@x", "c@x"]


class TestNewThreads:
    """Keys for messages whose relatives are unknown."""

    def test_message_without_references_is_its_own_root(self) -> None:
        """A first message starts "mid:<its own id>"."""
        assert Store().deliver("<root@x>") == "mid:root@x"

    def test_unknown_parent_uses_first_reference(self) -> None:
        """A reply whose ancestors are unknown is keyed by the first References id."""
        assert Store().deliver("<c@x>", in_reply_to="<b@x>", references=["<a@x>", "<b@x>"]) == "mid:a@x"

    def test_unknown_parent_without_references_uses_in_reply_to(self) -> None:
        """Without References the In-Reply-To id is the root."""
        assert Store().deliver("<b@x>", in_reply_to="<a@x>") == "mid:a@x"

    def test_self_reference_is_ignored(self) -> None:
        """A message listing its own id as a reference still roots correctly."""
        store = Store()
        assert store.deliver("<m@x>", in_reply_to="<m@x>", references=["<m@x>"]) == "mid:m@x"
        assert store.queries == [["m@x"]]


class TestOutOfOrderArrival:
    """Replies arriving before their parents."""

    def test_reply_before_parent(self) -> None:
        """A reply stored before its root ends up in the same thread as the root."""
        store = Store()
        reply = store.deliver("<b@x>", in_reply_to="<a@x>", references=["<a@x>"])
        root = store.deliver("<a@x>")
        assert reply == root == "mid:a@x"

    def test_whole_conversation_in_reverse(self) -> None:
        """Three generations delivered newest first all share one key."""
        store = Store()
        keys = [
            store.deliver("<c@x>", in_reply_to="<b@x>", references=["<a@x>", "<b@x>"]),
            store.deliver("<b@x>", in_reply_to="<a@x>", references=["<a@x>"]),
            store.deliver("<a@x>"),
        ]
        assert set(keys) == {"mid:a@x"}

    def test_shuffled_conversation(self) -> None:
        """Middle first, then leaf, then root still converge."""
        store = Store()
        keys = [
            store.deliver("<b@x>", references=["<a@x>"]),
            store.deliver("<d@x>", references=["<a@x>", "<b@x>", "<c@x>"]),
            store.deliver("<a@x>"),
            store.deliver("<c@x>", references=["<a@x>", "<b@x>"]),
        ]
        assert set(keys) == {"mid:a@x"}

    def test_distinct_conversations_stay_apart(self) -> None:
        """Unrelated roots get different keys."""
        store = Store()
        assert store.deliver("<a@x>") != store.deliver("<z@x>")


class TestMissingIds:
    """Messages with missing or blank ids."""

    def test_no_ids_uses_fallback(self) -> None:
        """With no Message-ID and no references the caller's fallback is returned."""
        key = thread_key(
            message_id=None,
            in_reply_to=None,
            references=[],
            gm_thrid=None,
            known_threads=never_called,
            fallback="sha256:abc",
        )
        assert key == "sha256:abc"

    def test_blank_ids_count_as_missing(self) -> None:
        """Whitespace-only or empty headers are treated like absent ones."""
        key = thread_key(
            message_id="  ",
            in_reply_to="",
            references=["", "<>"],
            gm_thrid=None,
            known_threads=never_called,
            fallback="sha256:abc",
        )
        assert key == "sha256:abc"

    def test_reply_without_own_id_still_threads(self) -> None:
        """A reply lacking its own Message-ID joins its parent's thread."""
        store = Store()
        store.deliver("<a@x>")
        assert store.deliver(None, in_reply_to="<a@x>") == "mid:a@x"

    def test_reply_without_own_id_and_unknown_parent(self) -> None:
        """A reply lacking its own id with an unknown parent is rooted at the parent."""
        key = thread_key(
            message_id=None,
            in_reply_to="<p@x>",
            references=[],
            gm_thrid=None,
            known_threads=nothing_known,
            fallback="sha256:abc",
        )
        assert key == "mid:p@x"

    def test_empty_fallback_when_needed_is_an_error(self) -> None:
        """A message with nothing to key on and no fallback is refused."""
        with pytest.raises(ValueError, match="fallback"):
            thread_key(
                message_id=None,
                in_reply_to=None,
                references=[],
                gm_thrid=None,
                known_threads=never_called,
                fallback="",
            )
