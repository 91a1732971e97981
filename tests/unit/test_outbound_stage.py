"""pipeline.stages.outbound: splitting sends, reply outcomes, backoff, caps, crash reconciliation, status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.stages.outbound import (
    DEFAULT_DAILY_CAPS,
    SendWindow,
    attempt_outcome,
    backoff,
    daily_cap,
    plan_deliveries,
    reconcile,
    reserve,
    summarize,
)
from pipeline.stages.smtp_reply import SmtpOutcome

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class TestPlanDeliveries:
    def test_per_recipient_copies_dedupe_case_insensitively(self) -> None:
        """Tracking on: one transaction per distinct address, To then Cc then Bcc."""
        plans = plan_deliveries(["a@x.example", "B@x.example"], ["b@x.example", "c@x.example"], ["d@x.example"], per_recipient=True)
        assert [(p.recipients, p.tracked_for) for p in plans] == [
            (("a@x.example",), "a@x.example"), (("B@x.example",), "B@x.example"),
            (("c@x.example",), "c@x.example"), (("d@x.example",), "d@x.example")]

    def test_one_transaction_without_tracking(self) -> None:
        """Tracking off: everyone in one RCPT list, nobody's copy."""
        (only,) = plan_deliveries(["a@x.example"], ["b@x.example"], [], per_recipient=False)
        assert only.recipients == ("a@x.example", "b@x.example") and only.tracked_for is None

    def test_nobody(self) -> None:
        assert plan_deliveries([], [], [], per_recipient=True) == []


class TestOutcomes:
    @pytest.mark.parametrize(("outcome", "attempts", "expected"), [
        (SmtpOutcome.SENT, 1, "sent"), (SmtpOutcome.FAIL, 1, "failed"), (SmtpOutcome.RETRY, 1, "retry"),
        (SmtpOutcome.RETRY, 3, "retry"), (SmtpOutcome.RETRY, 4, "failed")])
    def test_reply_code_alone_decides(self, outcome: SmtpOutcome, attempts: int, expected: str) -> None:
        """2xx sent, 5xx failed at once, 4xx retried three times after the first attempt."""
        assert attempt_outcome(outcome, attempts) == expected

    def test_backoff_doubles_and_caps(self) -> None:
        assert [backoff(n, 30).total_seconds() for n in (1, 2, 3)] == [30, 60, 120]
        assert backoff(30, 30) == timedelta(hours=1)


class TestCaps:
    def test_provider_caps_and_overrides(self) -> None:
        """Gmail 500, Outlook 300, others the configured default, an account setting beats both."""
        assert DEFAULT_DAILY_CAPS == {"gmail": 500, "outlook": 300}
        assert daily_cap("gmail", None, 2000) == 500 and daily_cap("imap", None, 2000) == 2000
        assert daily_cap("gmail", 50, 2000) == 50

    def test_window_fills_then_defers_then_reopens(self) -> None:
        """The 501st message in a window waits until the window, opened by the first, has passed."""
        window = SendWindow(None, 0)
        for _ in range(500):
            decision = reserve(window, now=NOW, cap=500)
            assert decision.allowed
            window = decision.window
        assert window == SendWindow(NOW, 500)
        over = reserve(window, now=NOW + timedelta(hours=3), cap=500)
        assert not over.allowed and over.deferred_until == NOW + timedelta(hours=24)
        later = reserve(window, now=NOW + timedelta(hours=24), cap=500)
        assert later.allowed and later.window == SendWindow(NOW + timedelta(hours=24), 1)

    def test_one_slot_per_smtp_transaction(self) -> None:
        """A tracked email to three people is three messages; an oversized one still gets an empty window."""
        assert reserve(SendWindow(NOW, 498), now=NOW, cap=500, n=3).allowed is False
        assert reserve(SendWindow(NOW, 497), now=NOW, cap=500, n=3).window == SendWindow(NOW, 500)
        assert reserve(SendWindow(None, 0), now=NOW, cap=2, n=5).allowed is True


class TestReconcile:
    @pytest.mark.parametrize("state", ["pending", "sending", "retry"])
    def test_before_data_is_resent(self, state: str) -> None:
        """The server never saw DATA: sending again cannot duplicate."""
        assert reconcile(state, found_in_sent=None) == "resend"

    @pytest.mark.parametrize("found", [None, False])
    def test_after_data_is_never_blindly_resent(self, found: bool | None) -> None:
        """Absent from Sent proves nothing (not indexed yet): unconfirmed, not resent."""
        assert reconcile("data", found_in_sent=found) == "unconfirmed"

    def test_provider_sent_copy_confirms(self) -> None:
        """Gmail/Outlook file what they accepted in Sent: present → sent."""
        assert reconcile("data", found_in_sent=True) == "sent"


class TestSummarize:
    def test_open_deliveries_have_no_status_yet(self) -> None:
        assert summarize([("sent", 250, "ok", None, ["a"]), ("retry", 451, "later", "temporary_failure", ["b"])]) is None

    def test_all_sent(self) -> None:
        summary = summarize([("sent", 250, "ok", None, ["a"])])
        assert summary is not None and summary.status == "sent" and summary.error is None

    def test_all_failed_carries_the_first_failure(self) -> None:
        summary = summarize([("failed", 550, "5.1.1 no such user", "mailbox_unavailable", ["a"])])
        assert summary is not None and summary.status == "failed"
        assert summary.error == {"code": "mailbox_unavailable", "message": "5.1.1 no such user", "smtp_code": 550}

    def test_refused_inside_an_accepted_transaction_is_a_partial_failure(self) -> None:
        summary = summarize([("sent", 250, "ok", None, ["a", "b"])], refused=["b"])
        assert summary is not None and summary.status == "sent" and summary.error is not None
        assert summary.error["failed_recipients"] == ["b"]

    def test_partial_failure_names_who(self) -> None:
        summary = summarize([("sent", 250, "ok", None, ["a"]), ("failed", 550, "nope", "mailbox_unavailable", ["b"])])
        assert summary is not None and summary.status == "sent" and summary.error is not None
        assert summary.error["code"] == "partial_failure" and summary.error["failed_recipients"] == ["b"]

    def test_unconfirmed_counts_as_sent_with_a_warning(self) -> None:
        summary = summarize([("unconfirmed", None, None, None, ["a"])])
        assert summary is not None and summary.status == "sent" and summary.error is not None
        assert summary.error["code"] == "delivery_unconfirmed"

    def test_everyone_suppressed_fails(self) -> None:
        summary = summarize([("suppressed", None, None, None, ["a"])])
        assert summary is not None and summary.status == "failed" and summary.error is not None
        assert summary.error["code"] == "all_suppressed"
