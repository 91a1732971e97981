"""The templates every new organization starts with (valid under the merge engine, with fallbacks
wherever a record may lack the field; sender fields come from the sending user)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from models import Template
from pipeline.stages.merge import parse

__all__ = ["DEFAULT_TEMPLATES", "seed_default_templates"]

_SIGN = "<p>Best regards,<br>{{senderName|The team}}<br>{{senderEmail}}</p>"

DEFAULT_TEMPLATES: list[dict[str, str]] = [
    {"name": "Cold outreach", "category": "outreach", "subject": "A quick idea for {{company|your team}}",
     "body_html": "<p>Hi {{firstName|there}},</p><p>I work with teams like {{company|yours}} in {{industry|your industry}} "
                  "and noticed a few ways we could save you time. Would a 15-minute call next week be useful?</p>" + _SIGN},
    {"name": "Follow-up", "category": "follow-up", "subject": "Following up, {{firstName|there}}",
     "body_html": "<p>Hi {{firstName|there}},</p><p>I wanted to follow up on my last note. Is this still a priority "
                  "for {{company|your team}}? Happy to share more details whenever it suits you.</p>" + _SIGN},
    {"name": "Demo follow-up", "category": "follow-up", "subject": "Thanks for your time today, {{firstName|there}}",
     "body_html": "<p>Hi {{firstName|there}},</p><p>Thank you for joining the demo. As promised, here is a summary of what "
                  "we covered and the next steps for {{company|your team}}. Let me know what questions come up.</p>" + _SIGN},
    {"name": "Proposal", "category": "proposal", "subject": "Proposal for {{accountName|your team}}",
     "body_html": "<p>Hi {{firstName|there}},</p><p>Please find our proposal for {{accountName|your team}} attached. "
                  "The total comes to {{dealAmount|the amount we discussed}}, and we can start as soon as "
                  "{{closeDate|you are ready}}.</p>" + _SIGN},
    {"name": "Support reply", "category": "support", "subject": "Re: your request",
     "body_html": "<p>Hi {{firstName|there}},</p><p>Thanks for getting in touch. We are looking into this and will get "
                  "back to you shortly. In the meantime, reply to this email with any details that might help.</p>" + _SIGN},
    {"name": "Onboarding welcome", "category": "onboarding", "subject": "Welcome aboard, {{firstName|there}}",
     "body_html": "<p>Hi {{firstName|there}},</p><p>Welcome! I will be your point of contact while {{company|your team}} "
                  "gets started. Here is what the first two weeks look like, and how to reach me.</p>" + _SIGN},
    {"name": "Renewal reminder", "category": "renewal", "subject": "Your renewal for {{accountName|your account}}",
     "body_html": "<p>Hi {{firstName|there}},</p><p>Your subscription for {{accountName|your account}} renews on "
                  "{{closeDate|its renewal date}}. Shall we review your plan together before then?</p>" + _SIGN},
    {"name": "Meeting request", "category": "meeting", "subject": "Time for a quick call?",
     "body_html": "<p>Hi {{firstName|there}},</p><p>Could we find 30 minutes this week to talk about "
                  "{{company|your goals}}? Reply with a time that works, or call me at {{senderPhone|any time}}.</p>" + _SIGN},
    {"name": "Thank you", "category": "relationship", "subject": "Thank you, {{firstName|there}}",
     "body_html": "<p>Hi {{firstName|there}},</p><p>Thank you for choosing us. We are glad to be working with "
                  "{{company|you}} and are here whenever you need anything.</p>" + _SIGN},
    {"name": "Re-engagement", "category": "re-engagement", "subject": "Still interested, {{firstName|there}}?",
     "body_html": "<p>Hi {{firstName|there}},</p><p>It has been a while since we last spoke. A lot has changed on our "
                  "side — would it be worth a fresh look for {{company|your team}}?</p>" + _SIGN},
]


def seed_default_templates(session: Session, org_id: str) -> int:
    """Add the default templates (public, created by nobody) to a new organization."""
    rows: list[Any] = []
    for spec in DEFAULT_TEMPLATES:
        fields = list(dict.fromkeys(t.name for part in (spec["subject"], spec["body_html"]) for t in parse(part)))
        rows.append(Template(org_id=org_id, name=spec["name"], category=spec["category"], subject=spec["subject"],
                             body_html=spec["body_html"], is_public=True, merge_fields=fields))
    session.add_all(rows)
    return len(rows)
