"""Decide which CRM records an email links to, from its addresses alone.

Pure stage: the caller hands in the message's addresses and a :class:`CrmDirectory` (one SQL query in
production, :class:`DictDirectory` in tests and embedded mode) and gets back a :class:`LinkPlan`.

Matching is case-insensitive: NextCRM neither normalises nor indexes address case, so every address
goes through :func:`normalize_email` on both sides (the ``*_norm`` columns hold the same form).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from models.base import normalize_email

__all__ = [
    "CrmDirectory",
    "CrmMatch",
    "DictDirectory",
    "Direction",
    "EntityType",
    "LinkDecision",
    "LinkPlan",
    "candidate_addresses",
    "links_for_new_record",
    "plan_links",
]

EntityType = Literal["contact", "lead", "account"]
Direction = Literal["inbound", "outbound"]

#: The CRM fields an address can match, in the order their links are emitted.
VIA_ORDER: tuple[str, ...] = ("contacts.email", "contacts.personal_email", "leads.email", "accounts.email")
_VIA_RANK = {via: rank for rank, via in enumerate(VIA_ORDER)}
#: Address fields per entity type, as NextCRM names them (``crm_Contacts.personal_email`` …).
_RECORD_FIELDS: dict[str, tuple[str, ...]] = {
    "contact": ("email", "personal_email"),
    "lead": ("email",),
    "account": ("email",),
}
_TABLES: dict[str, str] = {"contact": "contacts", "lead": "leads", "account": "accounts"}


@dataclass(frozen=True, slots=True)
class CrmMatch:
    """One CRM record whose address field equals a looked-up address."""

    entity_type: EntityType
    entity_id: str
    via: str
    account_id: str | None = None


class CrmDirectory(Protocol):
    """Finds CRM records by normalized address; implemented by the caller with one query."""

    def lookup(self, normalized_emails: Collection[str]) -> Mapping[str, Sequence[CrmMatch]]:
        """Return the matches for each address that has any; absent addresses may be omitted."""
        ...


@dataclass(frozen=True, slots=True)
class LinkDecision:
    """Link the email to one CRM record, and say which address and rule caused it."""

    entity_type: EntityType
    entity_id: str
    matched_email: str
    how: str


@dataclass(frozen=True, slots=True)
class LinkPlan:
    """Everything the caller needs to store links for one email."""

    links: tuple[LinkDecision, ...]
    needs_review: bool
    unlinked: bool
    reason: str
    addresses: tuple[str, ...] = ()


class DictDirectory:
    """In-memory :class:`CrmDirectory` keyed by normalized address, for tests and embedded mode."""

    __slots__ = ("_by_email",)

    def __init__(self, matches: Mapping[str, Iterable[CrmMatch]] | None = None) -> None:
        """Index ``matches`` (address → records); addresses are normalized, junk ones dropped."""
        self._by_email: dict[str, list[CrmMatch]] = {}
        for address, records in (matches or {}).items():
            for match in records:
                self.add(address, match)

    @classmethod
    def from_records(
        cls,
        *,
        contacts: Iterable[Mapping[str, str | None]] = (),
        leads: Iterable[Mapping[str, str | None]] = (),
        accounts: Iterable[Mapping[str, str | None]] = (),
    ) -> DictDirectory:
        """Build from NextCRM-shaped rows (``id``, ``email``, ``personal_email``, ``account``)."""
        directory = cls()
        for row in contacts:
            for field in _RECORD_FIELDS["contact"]:
                directory.add(
                    row.get(field) or "",
                    CrmMatch("contact", _row_id(row), f"contacts.{field}", row.get("account") or None),
                )
        for row in leads:
            directory.add(row.get("email") or "", CrmMatch("lead", _row_id(row), "leads.email"))
        for row in accounts:
            directory.add(row.get("email") or "", CrmMatch("account", _row_id(row), "accounts.email"))
        return directory

    def add(self, address: str, match: CrmMatch) -> None:
        """Register ``match`` under ``address``; a junk address or an exact duplicate is ignored."""
        key = normalize_email(address)
        if not key:
            return
        bucket = self._by_email.setdefault(key, [])
        if match not in bucket:
            bucket.append(match)

    def lookup(self, normalized_emails: Collection[str]) -> Mapping[str, Sequence[CrmMatch]]:
        """Return the stored matches of every given address that has any."""
        found: dict[str, Sequence[CrmMatch]] = {}
        for address in normalized_emails:
            key = normalize_email(address)
            if key in self._by_email:
                found[key] = tuple(self._by_email[key])
        return found


def _row_id(row: Mapping[str, str | None]) -> str:
    """Return a row's ``id``, refusing rows without one."""
    row_id = row.get("id")
    if not row_id:
        raise ValueError(f"CRM row without an id: {dict(row)!r}")
    return row_id


def candidate_addresses(
    direction: Direction,
    from_email: str | None,
    to_emails: Iterable[str],
    cc_emails: Iterable[str],
    own_addresses: Collection[str] = (),
) -> list[str]:
    """Return the normalized addresses to match: inbound → From, outbound → To + Cc, minus our own."""
    if direction == "inbound":
        raw: list[str | None] = [from_email]
    elif direction == "outbound":
        raw = [*to_emails, *cc_emails]
    else:
        raise ValueError(f"direction must be 'inbound' or 'outbound', not {direction!r}")
    own = {normalize_email(a) for a in own_addresses}
    seen: set[str] = set()
    result: list[str] = []
    for address in raw:
        key = normalize_email(address)
        if key and key not in own and key not in seen:
            seen.add(key)
            result.append(key)
    return result


def plan_links(
    direction: Direction,
    from_email: str | None,
    to_emails: Iterable[str],
    cc_emails: Iterable[str],
    directory: CrmDirectory,
    own_addresses: Collection[str] = (),
    *,
    suspicious_sender: bool = False,
) -> LinkPlan:
    """Match the email's candidate addresses against the CRM and decide its links.

    Direct matches come first, in address order and then ``contacts.email``, ``contacts.personal_email``,
    ``leads.email``, ``accounts.email``; then each matched contact's account (``auto:contact_account``).
    A record is linked once, with the ``how`` of its first decision. An address matching both a
    contact and a lead links both and sets ``needs_review``.

    Only addresses are matched, never display names. ``suspicious_sender`` (the parse stage found
    another address in the From display name, as in ``"ceo@client.example" <x@elsewhere.example>``)
    still links by the real address, but always with ``needs_review``.
    """
    addresses = candidate_addresses(direction, from_email, to_emails, cc_emails, own_addresses)
    if not addresses:
        return LinkPlan((), needs_review=False, unlinked=True, reason="no candidate addresses", addresses=())
    found: dict[str, list[CrmMatch]] = {}
    for key, matches in directory.lookup(addresses).items():
        found.setdefault(normalize_email(key) or key, []).extend(matches)

    links: dict[tuple[str, str], LinkDecision] = {}
    derived: list[LinkDecision] = []
    ambiguous: list[str] = []
    for address in addresses:
        matches = sorted(found.get(address, ()), key=lambda m: _VIA_RANK.get(m.via, len(VIA_ORDER)))
        kinds = {m.entity_type for m in matches}
        if {"contact", "lead"} <= kinds:
            ambiguous.append(address)
        for match in matches:
            _keep_first(links, LinkDecision(match.entity_type, match.entity_id, address, f"auto:{match.via}"))
            if match.entity_type == "contact" and match.account_id:
                derived.append(LinkDecision("account", match.account_id, address, "auto:contact_account"))
    for decision in derived:
        _keep_first(links, decision)

    if not links:
        return LinkPlan(
            (),
            needs_review=False,
            unlinked=True,
            reason=f"no CRM record matches {', '.join(addresses)}",
            addresses=tuple(addresses),
        )
    if ambiguous:
        reason = f"contact and lead both match {', '.join(ambiguous)}"
    else:
        reason = "linked " + ", ".join(f"{d.entity_type} {d.entity_id} ({d.how})" for d in links.values())
    if suspicious_sender and direction == "inbound":
        reason += "; the sender's display name holds a different address"
    return LinkPlan(
        tuple(links.values()),
        needs_review=bool(ambiguous) or (suspicious_sender and direction == "inbound"),
        unlinked=False,
        reason=reason,
        addresses=tuple(addresses),
    )


def _keep_first(links: dict[tuple[str, str], LinkDecision], decision: LinkDecision) -> None:
    """Add ``decision`` unless its record is already linked."""
    links.setdefault((decision.entity_type, decision.entity_id), decision)


def links_for_new_record(
    entity_type: EntityType,
    entity_id: str,
    emails: Mapping[str, str | None],
    account_id: str | None = None,
) -> tuple[LinkDecision, ...]:
    """Return the links to add to earlier unlinked mail when the CRM creates or updates a record.

    ``emails`` maps the record's NextCRM address fields (``email``, and ``personal_email`` for a
    contact) to their values. For each distinct usable address, in field order, the result holds the
    record's link (``how="retro:<table>.<field>"``, ``matched_email`` = that address) and, for a contact
    with an account, the account's link (``how="retro:contact_account"``). The caller applies to each
    stored unlinked email the decisions whose ``matched_email`` is one of that email's addresses.
    """
    fields = _RECORD_FIELDS.get(entity_type)
    if fields is None:
        raise ValueError(f"entity_type must be one of {sorted(_RECORD_FIELDS)}, not {entity_type!r}")
    unknown = set(emails) - set(fields)
    if unknown:
        raise ValueError(f"{entity_type} records have no address field(s) {sorted(unknown)}")
    if not entity_id:
        raise ValueError("entity_id must be non-empty")
    decisions: list[LinkDecision] = []
    seen: set[str] = set()
    for field in fields:
        address = normalize_email(emails.get(field))
        if not address or address in seen:
            continue
        seen.add(address)
        how = f"retro:{_TABLES[entity_type]}.{field}"
        decisions.append(LinkDecision(entity_type, entity_id, address, how))
        if entity_type == "contact" and account_id:
            decisions.append(LinkDecision("account", account_id, address, "retro:contact_account"))
    return tuple(decisions)
