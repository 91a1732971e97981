"""Unit tests for pipeline.stages.autolink."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import FrozenInstanceError

import pytest

from models.base import normalize_email
from pipeline.stages.autolink import (
    CrmMatch,
    DictDirectory,
    LinkDecision,
    LinkPlan,
    candidate_addresses,
    links_for_new_record,
    plan_links,
)

OWN = ("Sales@Mycorp.com",)


def directory() -> DictDirectory:
    """A small CRM: Alice is a contact of account A1, Bob a lead, ACME an account, Carol both."""
    return DictDirectory.from_records(
        contacts=[
            {"id": "c-alice", "email": "Alice@Example.com", "personal_email": "alice@home.net", "account": "a-1"},
            {"id": "c-carol", "email": "carol@x.com", "personal_email": None, "account": None},
        ],
        leads=[
            {"id": "l-bob", "email": "BOB@lead.io"},
            {"id": "l-carol", "email": "Carol@X.com"},
        ],
        accounts=[
            {"id": "a-acme", "email": "info@acme.com"},
            {"id": "a-1", "email": "office@example.com"},
        ],
    )


class RecordingDirectory:
    """A CrmDirectory that records its calls and returns canned, mixed-case keys."""

    def __init__(self, result: Mapping[str, Sequence[CrmMatch]]) -> None:
        self.result = result
        self.calls: list[list[str]] = []

    def lookup(self, normalized_emails: Collection[str]) -> Mapping[str, Sequence[CrmMatch]]:
        self.calls.append(list(normalized_emails))
        return self.result


class TestNormalizeEmail:
    """models.base.normalize_email: the one canonical address form, used on both sides of every match."""

    def test_lowercases_and_strips(self) -> None:
        """Surrounding whitespace goes and the whole address is lowercased."""
        assert normalize_email("  Jane.Doe@Example.COM \n") == "jane.doe@example.com"

    def test_strips_angle_brackets(self) -> None:
        """A bracketed address loses its brackets."""
        assert normalize_email("<Jane@x.com>") == "jane@x.com"

    def test_takes_address_from_name_addr(self) -> None:
        """A full ``Name <addr>`` value yields just the address."""
        assert normalize_email('"Doe, Jane" <Jane@X.com>') == "jane@x.com"

    def test_strips_mailto(self) -> None:
        """A mailto: prefix is removed."""
        assert normalize_email("mailto:Jane@x.com") == "jane@x.com"

    @pytest.mark.parametrize(
        "junk",
        ["", "   ", "jane", "@x.com", "jane@", "a@b@c.com", "jane doe@x.com", "jane@x..com", "jane@.x.com", "<>"],
    )
    def test_junk_gives_none(self, junk: str) -> None:
        """Anything that is not one local part, one @ and a sane domain is no address (None)."""
        assert normalize_email(junk) is None

    def test_none_gives_none(self) -> None:
        """A missing address is no address."""
        assert normalize_email(None) is None


class TestCandidateAddresses:
    """candidate_addresses: which of the message's addresses are matched."""

    def test_inbound_uses_only_from(self) -> None:
        """Inbound mail is matched on its sender, not on the other recipients."""
        got = candidate_addresses("inbound", "Alice@Example.com", ["bob@lead.io"], ["info@acme.com"], OWN)
        assert got == ["alice@example.com"]

    def test_outbound_uses_to_then_cc(self) -> None:
        """Outbound mail is matched on To followed by Cc, in order."""
        got = candidate_addresses("outbound", "sales@mycorp.com", ["b@x.com", "a@x.com"], ["c@x.com"], OWN)
        assert got == ["b@x.com", "a@x.com", "c@x.com"]

    def test_excludes_own_addresses_case_insensitively(self) -> None:
        """The account's own addresses never become candidates, whatever their case."""
        got = candidate_addresses("outbound", None, ["SALES@mycorp.com", "a@x.com"], ["sales@MYCORP.com"], OWN)
        assert got == ["a@x.com"]

    def test_inbound_from_own_address_gives_nothing(self) -> None:
        """Mail we sent to ourselves has no inbound candidate."""
        assert candidate_addresses("inbound", "sales@mycorp.com", [], [], OWN) == []

    def test_deduplicates_preserving_first_position(self) -> None:
        """An address repeated across To and Cc (in any case) appears once, where first seen."""
        got = candidate_addresses("outbound", None, ["a@x.com", "B@x.com"], ["b@x.com", "A@X.COM", "c@x.com"])
        assert got == ["a@x.com", "b@x.com", "c@x.com"]

    def test_drops_junk(self) -> None:
        """Unparseable recipients are skipped."""
        assert candidate_addresses("outbound", None, ["undisclosed-recipients:;", "a@x.com"], []) == ["a@x.com"]

    def test_rejects_unknown_direction(self) -> None:
        """A direction other than inbound/outbound is a programming error."""
        with pytest.raises(ValueError, match="direction"):
            candidate_addresses("sideways", "a@x.com", [], [])  # type: ignore[arg-type]


class TestPlanLinksContacts:
    """plan_links on contact matches and the accounts they imply."""

    def test_contact_links_contact_and_its_account(self) -> None:
        """A contact match links the contact and, second, the contact's account."""
        plan = plan_links("inbound", "ALICE@example.com", [], [], directory(), OWN)
        assert plan.links == (
            LinkDecision("contact", "c-alice", "alice@example.com", "auto:contacts.email"),
            LinkDecision("account", "a-1", "alice@example.com", "auto:contact_account"),
        )
        assert not plan.needs_review and not plan.unlinked

    def test_personal_email_matches(self) -> None:
        """crm_Contacts.personal_email is matched too, and says so in ``how``."""
        plan = plan_links("inbound", "Alice@Home.net", [], [], directory(), OWN)
        assert plan.links[0] == LinkDecision("contact", "c-alice", "alice@home.net", "auto:contacts.personal_email")
        assert plan.links[1].how == "auto:contact_account"

    def test_contact_without_account_links_only_contact(self) -> None:
        """No account link is invented for a contact without an account."""
        d = DictDirectory({"z@x.com": [CrmMatch("contact", "c-z", "contacts.email")]})
        plan = plan_links("inbound", "z@x.com", [], [], d)
        assert [(link.entity_type, link.entity_id) for link in plan.links] == [("contact", "c-z")]

    def test_direct_account_match_wins_over_contact_account(self) -> None:
        """An account matched directly keeps its ``auto:accounts.email`` how even if a contact also implies it."""
        plan = plan_links("outbound", None, ["alice@example.com", "office@example.com"], [], directory(), OWN)
        assert plan.links == (
            LinkDecision("contact", "c-alice", "alice@example.com", "auto:contacts.email"),
            LinkDecision("account", "a-1", "office@example.com", "auto:accounts.email"),
        )


class TestPlanLinksLeadsAndAccounts:
    """plan_links on lead and account matches."""

    def test_lead_match(self) -> None:
        """A lead's email links the lead, case-insensitively."""
        plan = plan_links("inbound", "bob@LEAD.io", [], [], directory(), OWN)
        assert plan.links == (LinkDecision("lead", "l-bob", "bob@lead.io", "auto:leads.email"),)
        assert not plan.needs_review

    def test_account_email_links_account(self) -> None:
        """A crm_Accounts.email match links the account."""
        plan = plan_links("inbound", "Info@Acme.com", [], [], directory(), OWN)
        assert plan.links == (LinkDecision("account", "a-acme", "info@acme.com", "auto:accounts.email"),)

    def test_outbound_links_every_recipient(self) -> None:
        """Each matching To/Cc recipient is linked, in address order."""
        plan = plan_links("outbound", "sales@mycorp.com", ["bob@lead.io"], ["info@acme.com"], directory(), OWN)
        assert [(link.entity_type, link.entity_id) for link in plan.links] == [("lead", "l-bob"), ("account", "a-acme")]
        assert plan.addresses == ("bob@lead.io", "info@acme.com")


class TestPlanLinksReview:
    """plan_links when an address is both a contact and a lead."""

    def test_contact_and_lead_for_same_address_links_both_and_flags(self) -> None:
        """An address that is both a contact and a lead links both and asks for review."""
        plan = plan_links("inbound", "carol@x.com", [], [], directory(), OWN)
        linked = {(link.entity_type, link.entity_id) for link in plan.links}
        assert linked == {("contact", "c-carol"), ("lead", "l-carol")}
        assert plan.needs_review is True
        assert plan.unlinked is False
        assert plan.reason == "contact and lead both match carol@x.com"

    def test_contact_is_listed_before_lead(self) -> None:
        """Within one address, contacts come before leads regardless of lookup order."""
        d = DictDirectory(
            {"m@x.com": [CrmMatch("lead", "l-m", "leads.email"), CrmMatch("contact", "c-m", "contacts.email")]}
        )
        plan = plan_links("inbound", "m@x.com", [], [], d)
        assert [link.entity_type for link in plan.links] == ["contact", "lead"]

    def test_contact_and_lead_on_different_addresses_is_not_ambiguous(self) -> None:
        """A contact on one recipient and a lead on another is not a conflict."""
        plan = plan_links("outbound", None, ["alice@example.com", "bob@lead.io"], [], directory(), OWN)
        assert plan.needs_review is False
        assert len(plan.links) == 3


class TestPlanLinksUnlinked:
    """plan_links when nothing matches."""

    def test_no_match_is_unlinked(self) -> None:
        """Nothing found means unlinked with no links and the address in the reason."""
        plan = plan_links("inbound", "stranger@nowhere.org", [], [], directory(), OWN)
        assert plan == LinkPlan(
            (),
            needs_review=False,
            unlinked=True,
            reason="no CRM record matches stranger@nowhere.org",
            addresses=("stranger@nowhere.org",),
        )

    def test_no_candidates_skips_lookup(self) -> None:
        """With no usable address the directory is not queried at all."""
        d = RecordingDirectory({})
        plan = plan_links("inbound", "sales@mycorp.com", [], [], d, OWN)
        assert plan.unlinked and plan.links == ()
        assert plan.reason == "no candidate addresses"
        assert d.calls == []


class TestPlanLinksDirectoryContract:
    """How plan_links uses the directory and deduplicates."""

    def test_directory_called_once_with_all_candidates(self) -> None:
        """All candidates go to the directory in a single call."""
        d = RecordingDirectory({})
        plan_links("outbound", None, ["a@x.com", "b@x.com"], ["c@x.com"], d)
        assert d.calls == [["a@x.com", "b@x.com", "c@x.com"]]

    def test_mixed_case_keys_from_directory_still_match(self) -> None:
        """A directory returning stored (mixed-case) keys is normalized before use."""
        d = RecordingDirectory({"A@X.com": [CrmMatch("lead", "l-a", "leads.email")]})
        plan = plan_links("inbound", "a@x.com", [], [], d)
        assert plan.links == (LinkDecision("lead", "l-a", "a@x.com", "auto:leads.email"),)

    def test_same_entity_twice_is_linked_once_with_first_how(self) -> None:
        """A record matched through two addresses is linked once, with its first reason."""
        plan = plan_links("outbound", None, ["alice@home.net", "alice@example.com"], [], directory(), OWN)
        contact_links = [link for link in plan.links if link.entity_type == "contact"]
        assert contact_links == [LinkDecision("contact", "c-alice", "alice@home.net", "auto:contacts.personal_email")]
        assert [link.entity_id for link in plan.links].count("a-1") == 1

    def test_results_are_frozen(self) -> None:
        """Plans cannot be mutated after the fact."""
        plan = plan_links("inbound", "bob@lead.io", [], [], directory(), OWN)
        with pytest.raises(FrozenInstanceError):
            plan.unlinked = True  # type: ignore[misc]


class TestDictDirectory:
    """The in-memory CrmDirectory."""

    def test_lookup_returns_only_known_addresses(self) -> None:
        """Unknown addresses are absent from the result."""
        got = directory().lookup(["bob@lead.io", "nobody@x.com"])
        assert list(got) == ["bob@lead.io"]
        assert got["bob@lead.io"] == (CrmMatch("lead", "l-bob", "leads.email"),)

    def test_contact_rows_carry_their_account(self) -> None:
        """Contact rows keep NextCRM's ``account`` as the match's account_id."""
        got = directory().lookup(["alice@example.com"])
        assert got["alice@example.com"] == (CrmMatch("contact", "c-alice", "contacts.email", "a-1"),)

    def test_blank_addresses_and_duplicates_are_ignored(self) -> None:
        """Rows without an address are not indexed and an identical match is stored once."""
        d = DictDirectory.from_records(contacts=[{"id": "c1", "email": None, "personal_email": ""}])
        match = CrmMatch("lead", "l1", "leads.email")
        d.add("L@x.com", match)
        d.add("l@X.com", match)
        assert d.lookup(["l@x.com", ""]) == {"l@x.com": (match,)}

    def test_row_without_id_is_rejected(self) -> None:
        """A CRM row must carry its id."""
        with pytest.raises(ValueError, match="without an id"):
            DictDirectory.from_records(leads=[{"email": "a@x.com"}])


class TestLinksForNewRecord:
    """Retro-links for a record the CRM creates after the mail arrived."""

    def test_contact_with_two_addresses_and_account(self) -> None:
        """Each contact address yields the contact link and the account link, tagged retro."""
        got = links_for_new_record("contact", "c9", {"email": "New@X.com", "personal_email": "new@home.net"}, "a9")
        assert got == (
            LinkDecision("contact", "c9", "new@x.com", "retro:contacts.email"),
            LinkDecision("account", "a9", "new@x.com", "retro:contact_account"),
            LinkDecision("contact", "c9", "new@home.net", "retro:contacts.personal_email"),
            LinkDecision("account", "a9", "new@home.net", "retro:contact_account"),
        )

    def test_lead(self) -> None:
        """A lead yields one retro link for its address."""
        assert links_for_new_record("lead", "l9", {"email": "Lead@X.com"}) == (
            LinkDecision("lead", "l9", "lead@x.com", "retro:leads.email"),
        )

    def test_account_ignores_account_id(self) -> None:
        """An account record links only itself."""
        assert links_for_new_record("account", "a9", {"email": "hq@x.com"}, "other") == (
            LinkDecision("account", "a9", "hq@x.com", "retro:accounts.email"),
        )

    def test_duplicate_and_blank_addresses_are_skipped(self) -> None:
        """The same address in both fields counts once, and blank or junk values none."""
        got = links_for_new_record("contact", "c9", {"email": "A@x.com", "personal_email": "a@X.com"})
        assert got == (LinkDecision("contact", "c9", "a@x.com", "retro:contacts.email"),)
        assert links_for_new_record("lead", "l9", {"email": None}) == ()
        assert links_for_new_record("lead", "l9", {"email": "not an address"}) == ()

    def test_unknown_field_is_rejected(self) -> None:
        """A field the entity type does not have is a programming error."""
        with pytest.raises(ValueError, match="personal_email"):
            links_for_new_record("lead", "l9", {"personal_email": "a@x.com"})

    def test_unknown_entity_type_is_rejected(self) -> None:
        """Only contacts, leads and accounts have addresses to link on."""
        with pytest.raises(ValueError, match="entity_type"):
            links_for_new_record("opportunity", "o1", {"email": "a@x.com"})  # type: ignore[arg-type]


class TestSuspiciousSender:
    """plan_links with ``suspicious_sender``: the display name claimed another address (issue 14)."""

    def test_spoofed_name_links_nothing_by_the_name(self) -> None:
        """Mail from an unknown address whose display name is Alice's address is not linked to Alice."""
        from pipeline.stages.parse import parse_email

        parsed = parse_email(b"From: Alice@Example.com <mallory@evil.example>\r\n\r\npay now\r\n")
        assert parsed.suspicious_sender and parsed.from_ is not None
        plan = plan_links("inbound", parsed.from_.email, [], [], directory(), OWN, suspicious_sender=True)
        assert plan.links == () and plan.unlinked and plan.addresses == ("mallory@evil.example",)

    def test_real_address_still_links_but_needs_review(self) -> None:
        """When the real address is a CRM record it links, flagged for review with the reason."""
        plan = plan_links("inbound", "bob@lead.io", [], [], directory(), OWN, suspicious_sender=True)
        assert [(d.entity_type, d.entity_id) for d in plan.links] == [("lead", "l-bob")]
        assert plan.needs_review and "display name holds a different address" in plan.reason

    def test_not_suspicious_is_unchanged(self) -> None:
        """Without the flag the plan is as before (no review)."""
        plan = plan_links("inbound", "bob@lead.io", [], [], directory(), OWN)
        assert not plan.needs_review and plan.reason.startswith("linked lead l-bob")
