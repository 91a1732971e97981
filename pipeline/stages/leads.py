"""Decide whether an incoming email should create a NextCRM lead, and draft it.

Pure stage: the caller passes the sender, headers and organization settings; the result says yes or no
with a human-readable reason, and on yes carries a :class:`LeadDraft` under NextCRM's ``crm_Leads``
field names (``firstName``, ``lastName`` — required — ``email``, ``status``, ``lead_source``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from email.utils import parseaddr

from models.base import normalize_email

__all__ = [
    "LeadDecision",
    "LeadDraft",
    "automated_sender",
    "decide_lead",
    "is_automated",
    "lead_notification_text",
    "split_display_name",
]

_NO_REPLY_LOCAL = re.compile(
    r"^(?P<kind>no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer[-_.]?daemon|postmaster|bounces?)(?:[-_.+].*)?$"
)
_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk", "auto_reply"})
_PARENTHESIZED = re.compile(r"\([^()]*\)|\[[^\[\]]*\]")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
_HONORIFICS = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir"})
_SUFFIXES = frozenset({"jr", "sr", "ii", "iii", "iv", "phd", "md", "esq"})
_PARTICLES = frozenset(
    {"van", "von", "de", "der", "den", "da", "di", "del", "della", "la", "le", "du", "dos", "das", "ten", "ter"}
    | {"bin", "al"}
)
_LOCAL_SPLIT = re.compile(r"[._\-]+")


@dataclass(frozen=True, slots=True)
class LeadDraft:
    """A lead to create in NextCRM ``crm_Leads``."""

    email: str
    firstName: str | None
    lastName: str
    status: str = "NEW"
    lead_source: str = "Email"


@dataclass(frozen=True, slots=True)
class LeadDecision:
    """Whether to create a lead, the draft when so, and why."""

    create: bool
    draft: LeadDraft | None
    reason: str


def _clean_token(word: str) -> str:
    """Lowercase ``word`` without dots, for comparing with titles and suffixes."""
    return word.lower().rstrip(".").replace(".", "")


def _from_local_part(address: str) -> tuple[str | None, str]:
    """Guess a name from an address's local part: ``jane.doe+x`` → ("Jane", "Doe")."""
    if not address:
        raise ValueError("need a display name or an address")
    local = address.split("@", 1)[0].split("+", 1)[0]
    words = [w.capitalize() for w in _LOCAL_SPLIT.split(local) if w and not w.isdigit()]
    if not words:
        return None, address
    if len(words) == 1:
        return None, words[0]
    return " ".join(words[:-1]), words[-1]


def split_display_name(name: str | None, email: str) -> tuple[str | None, str]:
    """Split a display name into NextCRM's (``firstName``, ``lastName``); ``lastName`` is never empty.

    Rules, in order:

    * Surrounding quotes and anything in ``(...)`` or ``[...]`` are removed; whitespace is collapsed.
    * A ``Name <addr>`` value keeps just the name. An empty name, or one that is an address, is
      derived from the address's local part:
      separators ``. _ -`` split words, a ``+tag`` and all-digit words are dropped, words are
      capitalized (``jane.doe@x`` → ("Jane", "Doe")). Nothing usable → (None, the address).
    * A comma: ``"Doe, Jane"`` (one surname word, particles allowed, before it) is swapped; after a
      longer name (``"Jane Doe, ACME"``) the part after the comma is dropped, unless it is a suffix
      such as "Jr.", which is kept.
    * A leading title (Mr, Ms, Dr, Prof …) is dropped when more words follow.
    * The last word is the last name, together with the lowercase particles before it (van, de, von …)
      and trailing suffixes (Jr., III …); the words before it, if any, are the first name:
      "Jane Q. Doe" → ("Jane Q.", "Doe"), "Ludwig van Beethoven" → ("Ludwig", "van Beethoven").
      So a single word → (None, word): it goes into the required ``lastName``.
    """
    text = name or ""
    if "@" in text and text.rstrip().endswith(">"):
        text = parseaddr(text)[0] or text
    text = _PARENTHESIZED.sub(" ", text)
    text = " ".join(text.split()).strip(_QUOTES + " ")
    text = " ".join(text.split())
    if not text:
        return _from_local_part(normalize_email(email) or email.strip())
    if "@" in text:
        return _from_local_part(normalize_email(text) or normalize_email(email) or text)

    if "," in text:
        before, _, after = (part.strip() for part in text.partition(","))
        before_words, after_words = before.split(), after.replace(",", " ").split()
        if after_words and all(_clean_token(w) in _SUFFIXES for w in after_words):
            text = " ".join(before_words + after_words)
        elif len([w for w in before_words if w not in _PARTICLES]) == 1 and after_words:
            return " ".join(after_words), before
        else:
            text = before or after
    words = text.split()
    if len(words) > 1 and _clean_token(words[0]) in _HONORIFICS:
        words = words[1:]
    suffixes: list[str] = []
    while len(words) > 1 and _clean_token(words[-1]) in _SUFFIXES:
        suffixes.insert(0, words.pop())
    cut = len(words) - 1
    while cut > 0 and words[cut - 1] in _PARTICLES:
        cut -= 1
    return " ".join(words[:cut]) or None, " ".join(words[cut:] + suffixes)


def automated_sender(address: str | None) -> str | None:
    """Return a reason when the address is a no-reply, bounce or daemon mailbox, else None."""
    local = (normalize_email(address) or "").split("@", 1)[0]
    match = _NO_REPLY_LOCAL.match(local) if local else None
    if match is None:
        return None
    return f"automated sender address ({local})"


def is_automated(headers: Mapping[str, str]) -> str | None:
    """Return why the headers mark the mail as bulk or machine-made, or None (names case-insensitive)."""
    lowered = {name.strip().lower(): (value or "").strip() for name, value in headers.items()}
    if "list-unsubscribe" in lowered:
        return "bulk mail (List-Unsubscribe)"
    if "list-id" in lowered:
        return "mailing list (List-Id)"
    precedence = lowered.get("precedence", "").lower()
    if precedence in _BULK_PRECEDENCE:
        return f"bulk mail (Precedence: {precedence})"
    auto_submitted = lowered.get("auto-submitted")
    if auto_submitted is not None:
        value = auto_submitted.split(";", 1)[0].strip().lower()
        if value != "no":
            return f"automatic reply (Auto-Submitted: {value or 'empty'})"
    for flag in ("x-autoreply", "x-autorespond"):
        if flag in lowered:
            return f"automatic reply ({flag.title()})"
    sender = parseaddr(lowered.get("from", ""))[1]
    return automated_sender(sender)


def _belongs_to(domain: str, org_domains: Collection[str]) -> str | None:
    """Return the organization domain that ``domain`` equals or is a subdomain of, else None."""
    for org in org_domains:
        org_domain = org.strip().lower().lstrip("@").rstrip(".")
        if org_domain and (domain == org_domain or domain.endswith("." + org_domain)):
            return org_domain
    return None


def decide_lead(
    *,
    enabled: bool,
    direction: str,
    from_email: str | None,
    from_name: str | None,
    headers: Mapping[str, str],
    already_linked: bool,
    own_addresses: Collection[str],
    org_domains: Collection[str],
) -> LeadDecision:
    """Decide whether this email creates a lead; only inbound mail from an unknown human sender does.

    Checks, first failing one wins: the setting, direction, a usable sender, the account's own
    addresses, the organization's domains (subdomains included), an existing CRM link, then bulk or
    automated mail (headers, then no-reply style sender addresses).
    """
    if not enabled:
        return LeadDecision(False, None, "auto_create_leads is off")
    if direction != "inbound":
        return LeadDecision(False, None, f"only inbound mail creates leads (this is {direction})")
    sender = normalize_email(from_email)
    if not sender:
        return LeadDecision(False, None, "no usable sender address")
    if sender in {normalize_email(a) for a in own_addresses}:
        return LeadDecision(False, None, "sender is the account's own address")
    domain = sender.split("@", 1)[1]
    if _belongs_to(domain, org_domains):
        return LeadDecision(False, None, f"sender domain {domain} belongs to the organization")
    if already_linked:
        return LeadDecision(False, None, "already linked")
    automated = is_automated(headers) or automated_sender(sender)
    if automated:
        return LeadDecision(False, None, automated)
    first_name, last_name = split_display_name(from_name, sender)
    draft = LeadDraft(email=sender, firstName=first_name, lastName=last_name)
    return LeadDecision(True, draft, f"new sender {sender}")


def lead_notification_text(draft: LeadDraft) -> str:
    """Return the notification line, e.g. "New lead created from email: Jane Doe"."""
    name = " ".join(f"{draft.firstName or ''} {draft.lastName or ''}".split())
    return f"New lead created from email: {name or draft.email}"
