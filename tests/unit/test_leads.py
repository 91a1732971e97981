"""Unit tests for pipeline.stages.leads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from pipeline.stages.leads import (
    LeadDecision,
    LeadDraft,
    automated_sender,
    decide_lead,
    is_automated,
    lead_notification_text,
    split_display_name,
)


def decide(**overrides: Any) -> LeadDecision:
    """Call decide_lead with a plain inbound human email, overriding some arguments."""
    args: dict[str, Any] = {
        "enabled": True,
        "direction": "inbound",
        "from_email": "Jane.Doe@Prospect.io",
        "from_name": "Jane Doe",
        "headers": {"From": "Jane Doe <Jane.Doe@Prospect.io>", "Subject": "Pricing?"},
        "already_linked": False,
        "own_addresses": ("sales@mycorp.com",),
        "org_domains": ("mycorp.com",),
    }
    args.update(overrides)
    return decide_lead(**args)


class TestSplitDisplayName:
    """Display name to NextCRM firstName/lastName."""

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("Jane Doe", ("Jane", "Doe")),
            ("Jane Q. Doe", ("Jane Q.", "Doe")),
            ("Mary Ann Smith", ("Mary Ann", "Smith")),
            ("Ludwig van Beethoven", ("Ludwig", "van Beethoven")),
            ("Jan van der Berg", ("Jan", "van der Berg")),
            ("John Smith Jr.", ("John", "Smith Jr.")),
        ],
    )
    def test_last_word_is_last_name(self, name: str, expected: tuple[str | None, str]) -> None:
        """The last word (with particles and suffixes) is the last name, the rest the first name."""
        assert split_display_name(name, "x@y.com") == expected

    def test_single_word_goes_to_last_name(self) -> None:
        """One word fills the required lastName and leaves firstName empty."""
        assert split_display_name("Jane", "jane@x.com") == (None, "Jane")

    def test_comma_form_is_swapped(self) -> None:
        """ "Doe, Jane" is read as last name, first name."""
        assert split_display_name("Doe, Jane", "x@y.com") == ("Jane", "Doe")
        assert split_display_name("van Beethoven, Ludwig", "x@y.com") == ("Ludwig", "van Beethoven")

    def test_comma_suffix_is_kept(self) -> None:
        """A suffix after a comma stays with the last name."""
        assert split_display_name("John Smith, Jr.", "x@y.com") == ("John", "Smith Jr.")

    def test_comma_affiliation_is_dropped(self) -> None:
        """After a full name, what follows a comma (company, role) is dropped."""
        assert split_display_name("Jane Doe, ACME Inc", "x@y.com") == ("Jane", "Doe")

    def test_quotes_and_parentheses_are_removed(self) -> None:
        """Surrounding quotes and parenthesized or bracketed titles disappear."""
        assert split_display_name('"Jane Doe (Sales)"', "x@y.com") == ("Jane", "Doe")
        assert split_display_name("'Jane Doe' [ACME]", "x@y.com") == ("Jane", "Doe")

    def test_leading_honorific_is_dropped(self) -> None:
        """A title such as Dr. is not a first name."""
        assert split_display_name("Dr. Jane Doe", "x@y.com") == ("Jane", "Doe")
        assert split_display_name("Mr Smith", "x@y.com") == (None, "Smith")

    def test_email_as_name_uses_local_part(self) -> None:
        """A display name that is an address is derived from its local part."""
        assert split_display_name("jane.doe@x.com", "jane.doe@x.com") == ("Jane", "Doe")

    def test_name_with_address_keeps_name(self) -> None:
        """A display name of the form "Name <addr>" uses only the name part."""
        assert split_display_name('"Jane Doe" <jd@x.com>', "jd@x.com") == ("Jane", "Doe")

    @pytest.mark.parametrize(
        ("email", "expected"),
        [
            ("jane.doe@x.com", ("Jane", "Doe")),
            ("jane_q_doe+news@x.com", ("Jane Q", "Doe")),
            ("jdoe42@x.com", (None, "Jdoe42")),
            ("jane.2024@x.com", (None, "Jane")),
            ("12345@x.com", (None, "12345@x.com")),
        ],
    )
    def test_empty_name_uses_local_part(self, email: str, expected: tuple[str | None, str]) -> None:
        """Without a display name the local part is split on . _ - and capitalized."""
        assert split_display_name("", email) == expected
        assert split_display_name(None, email) == expected

    def test_name_of_only_noise_falls_back_to_address(self) -> None:
        """A name that is nothing but a parenthesized title falls back to the address."""
        assert split_display_name("(Support)", "bob.smith@x.com") == ("Bob", "Smith")

    def test_nothing_usable_is_an_error(self) -> None:
        """Without a name or an address there is no lastName to give."""
        with pytest.raises(ValueError):
            split_display_name("", "")


class TestIsAutomated:
    """Recognising bulk and machine-generated mail."""

    @pytest.mark.parametrize(
        ("headers", "reason"),
        [
            ({"List-Unsubscribe": "<mailto:u@x.com>"}, "bulk mail (List-Unsubscribe)"),
            ({"list-unsubscribe": "<https://x.com/u>"}, "bulk mail (List-Unsubscribe)"),
            ({"LIST-ID": "Team <team.x.com>"}, "mailing list (List-Id)"),
            ({"Precedence": "Bulk"}, "bulk mail (Precedence: bulk)"),
            ({"precedence": "list"}, "bulk mail (Precedence: list)"),
            ({"Precedence": "junk"}, "bulk mail (Precedence: junk)"),
            ({"Auto-Submitted": "auto-replied"}, "automatic reply (Auto-Submitted: auto-replied)"),
            (
                {"auto-submitted": "auto-generated; owner-email=x@y.com"},
                "automatic reply (Auto-Submitted: auto-generated)",
            ),
        ],
    )
    def test_bulk_and_auto_headers(self, headers: Mapping[str, str], reason: str) -> None:
        """Each bulk or automation header is recognised whatever its name's case."""
        assert is_automated(headers) == reason

    def test_auto_submitted_no_is_human(self) -> None:
        """Auto-Submitted: no explicitly marks a human message."""
        assert is_automated({"Auto-Submitted": "No"}) is None

    def test_plain_mail_is_not_automated(self) -> None:
        """Ordinary headers give no reason."""
        assert is_automated({"From": "Jane <jane@x.com>", "Precedence": "normal", "Subject": "hi"}) is None

    @pytest.mark.parametrize(
        "sender",
        [
            "noreply@x.com",
            "No-Reply@x.com",
            "do_not_reply@x.com",
            "MAILER-DAEMON@x.com",
            "postmaster@x.com",
            "bounce@x.com",
            "bounces+123@x.com",
            "noreply-alerts@x.com",
        ],
    )
    def test_no_reply_from_header(self, sender: str) -> None:
        """A From address with a no-reply style local part counts as automated."""
        reason = is_automated({"from": f"Service <{sender}>"})
        assert reason is not None and reason.startswith("automated sender address")

    def test_similar_human_local_parts_pass(self) -> None:
        """Local parts that merely contain such words are not flagged."""
        assert automated_sender("bouncer.bob@x.com") is None
        assert automated_sender("replyall@x.com") is None
        assert automated_sender(None) is None


class TestDecideLeadCreates:
    """decide_lead when a lead is created."""

    def test_creates_draft_for_new_inbound_sender(self) -> None:
        """A new human sender becomes a NEW lead sourced from Email."""
        decision = decide()
        draft = LeadDraft(email="jane.doe@prospect.io", firstName="Jane", lastName="Doe")
        assert decision == LeadDecision(True, draft, "new sender jane.doe@prospect.io")
        assert decision.draft is not None
        assert (decision.draft.status, decision.draft.lead_source) == ("NEW", "Email")

    def test_missing_name_is_derived_from_address(self) -> None:
        """Without a display name the draft's names come from the local part."""
        decision = decide(from_name=None)
        assert decision.draft is not None
        assert (decision.draft.firstName, decision.draft.lastName) == ("Jane", "Doe")


class TestDecideLeadRefuses:
    """decide_lead when no lead is created, and the reason given."""

    @pytest.mark.parametrize(
        ("overrides", "reason"),
        [
            ({"enabled": False}, "auto_create_leads is off"),
            ({"direction": "outbound"}, "only inbound mail creates leads (this is outbound)"),
            ({"from_email": None}, "no usable sender address"),
            ({"from_email": "not-an-address"}, "no usable sender address"),
            ({"from_email": "SALES@mycorp.com"}, "sender is the account's own address"),
            ({"from_email": "boss@MyCorp.com"}, "sender domain mycorp.com belongs to the organization"),
            ({"from_email": "it@eu.mycorp.com"}, "sender domain eu.mycorp.com belongs to the organization"),
            ({"already_linked": True}, "already linked"),
            ({"headers": {"List-Unsubscribe": "<mailto:u@x>"}}, "bulk mail (List-Unsubscribe)"),
            ({"from_email": "no-reply@prospect.io", "headers": {}}, "automated sender address (no-reply)"),
        ],
    )
    def test_refusal_reasons(self, overrides: dict[str, Any], reason: str) -> None:
        """Each refusal creates nothing and says why."""
        assert decide(**overrides) == LeadDecision(False, None, reason)

    def test_lookalike_domain_is_not_the_organization(self) -> None:
        """notmycorp.com is not a subdomain of mycorp.com."""
        assert decide(from_email="x@notmycorp.com").create is True

    def test_first_failing_check_wins(self) -> None:
        """A disabled setting is reported even when other checks would also refuse."""
        assert decide(enabled=False, direction="outbound", already_linked=True).reason == "auto_create_leads is off"


class TestLeadNotificationText:
    """The notification line for a new lead."""

    def test_full_name(self) -> None:
        """First and last name are joined."""
        draft = LeadDraft(email="jane@x.com", firstName="Jane", lastName="Doe")
        assert lead_notification_text(draft) == "New lead created from email: Jane Doe"

    def test_last_name_only(self) -> None:
        """A missing first name leaves no stray space."""
        draft = LeadDraft(email="jane@x.com", firstName=None, lastName="Doe")
        assert lead_notification_text(draft) == "New lead created from email: Doe"

    def test_blank_name_uses_email(self) -> None:
        """With no name at all the email address is shown."""
        draft = LeadDraft(email="jane@x.com", firstName="  ", lastName="")
        assert lead_notification_text(draft) == "New lead created from email: jane@x.com"

    def test_line_breaks_are_flattened(self) -> None:
        """A name cannot inject extra lines into the notification."""
        draft = LeadDraft(email="jane@x.com", firstName="Jane\r\nBcc: evil", lastName="Doe")
        assert lead_notification_text(draft) == "New lead created from email: Jane Bcc: evil Doe"
