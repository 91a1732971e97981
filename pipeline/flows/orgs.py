"""A new organization (tenant): the row, its first API key (named "default") and its default templates."""

from __future__ import annotations

from sqlmodel import Session

from models import Organization
from ops.orgs import issue_key
from pipeline.flows.default_templates import seed_default_templates

__all__ = ["create_org"]


def create_org(session: Session, name: str) -> tuple[Organization, str]:
    """Create an organization, its first API key (named "default") and its default templates."""
    name = name.strip()
    if not name:
        raise ValueError("organization name must not be empty")
    org = Organization(name=name)
    session.add(org)
    session.flush()
    seed_default_templates(session, org.id)
    return org, issue_key(session, org.id)
