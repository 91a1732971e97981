"""The values of the merge fields for one send: the CRM records named in ``merge`` and the sender.

NextCRM spells fields differently per record type (contacts ``first_name``, leads ``firstName``);
this maps them onto API.md's merge field names. A contact brings its account; an opportunity
brings its account and its contact. The rendering itself is the pure ``pipeline.stages.merge``.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from models import Contact, CrmAccount, Lead, Opportunity, User

__all__ = ["MergeRecordMissing", "merge_values"]


class MergeRecordMissing(LookupError):
    """A record named in ``merge`` does not exist in the organization."""


def _get(s: Session, model: Any, org_id: str, record_id: str | None, kind: str, required: bool) -> Any:
    if not record_id:
        return None
    row = s.get(model, (org_id, record_id))
    if row is None and required:
        raise MergeRecordMissing(f"merge.{kind}_id: {kind} {record_id!r} not found")
    return row


def _money(amount: int | None, currency: str | None) -> str | None:
    if amount is None:
        return None
    return f"{amount:,} {currency}".strip() if currency else f"{amount:,}"


def merge_values(s: Session, org_id: str, merge: dict[str, Any] | None, sender: User | None,
                 sender_email: str) -> dict[str, str | None]:
    """API.md merge field → value (None when the records do not have it)."""
    merge = merge or {}
    opp = _get(s, Opportunity, org_id, merge.get("opportunity_id"), "opportunity", True)
    contact = _get(s, Contact, org_id, merge.get("contact_id"), "contact", True) or (
        _get(s, Contact, org_id, opp.contact, "contact", False) if opp else None)
    lead = _get(s, Lead, org_id, merge.get("lead_id"), "lead", True)
    account = _get(s, CrmAccount, org_id, merge.get("account_id"), "account", True) or (
        _get(s, CrmAccount, org_id, opp.account, "account", False) if opp else None) or (
        _get(s, CrmAccount, org_id, contact.account, "account", False) if contact is not None and contact.account else None)
    person = contact or lead
    return {
        "firstName": (contact.first_name if contact else None) or (lead.firstName if lead else None),
        "lastName": (contact.last_name if contact else None) or (lead.lastName if lead else None),
        "email": (person.email if person is not None else None),
        "company": (account.name if account else None) or (lead.company if lead else None),
        "position": (contact.position if contact else None) or (lead.jobTitle if lead else None),
        "accountName": account.name if account else (lead.company if lead else None),
        "industry": account.industry if account else None,
        "website": account.website if account else None,
        "annualRevenue": account.annual_revenue if account else None,
        "dealAmount": _money(opp.expected_revenue if opp.expected_revenue is not None else opp.budget, opp.currency) if opp else None,
        "closeDate": opp.close_date.date().isoformat() if opp and opp.close_date else None,
        "salesStage": opp.sales_stage if opp else None,
        "senderName": sender.name if sender else None,
        "senderEmail": (sender.email if sender else None) or sender_email,
        "senderPhone": sender.phone if sender else None,
    }
