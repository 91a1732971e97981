"""Helpers for end-to-end inbound tests: seeding the CRM, creating accounts, draining workers."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import func, select, update
from sqlmodel import Session

from models import Contact, CrmAccount, Email, EmailAccount, EmailLink, EmailLocation, Lead, Notification, Organization, User
from models.db import get_engine
from pipeline.broker import QUEUES
from pipeline.flows import accounts as svc
from pipeline.flows.orgs import create_org
from pipeline.leader import AlwaysLeader
from pipeline.scheduler import Scheduler

__all__ = ["CRM", "count", "drain", "make_account", "make_org", "seed_crm", "sent_tracked_emails", "tick"]

# The CRM every inbound test links against (addresses used by seeded mail).
CRM = {
    "contact": ("c-ada", "ada@engine.example"),
    "contact_personal": ("c-bob", "bob.personal@home.example"),
    "lead": ("l-lee", "lee@prospect.example"),
    "account": ("a-acme", "hello@acme-corp.example"),
    "collision": ("c-sam", "l-sam", "sam@both.example"),
    "account_of_contact": "a-engine",
}


def make_org(name: str = "acme", **settings: Any) -> tuple[str, str]:
    """An organization (with settings) and its API key."""
    with Session(get_engine()) as s:
        org, key = create_org(s, name)
        for k, v in settings.items():
            setattr(org, k, v)
        s.add(org)
        s.commit()
        return org.id, key


def seed_crm(org_id: str) -> None:
    """Contacts, a lead, an account and a contact+lead collision, per :data:`CRM`."""
    with Session(get_engine()) as s:
        s.add(User(org_id=org_id, id="u1", name="Alice Seller", email="alice@example.test", email_norm="alice@example.test"))
        s.add(CrmAccount(org_id=org_id, id=CRM["account_of_contact"], name="Engine Co"))
        cid, addr = CRM["contact"]
        s.add(Contact(org_id=org_id, id=cid, first_name="Ada", last_name="Lovelace", email=addr.upper(), email_norm=addr,
                      account=CRM["account_of_contact"]))
        cid, addr = CRM["contact_personal"]
        s.add(Contact(org_id=org_id, id=cid, last_name="Bob", personal_email=addr, personal_email_norm=addr))
        lid, addr = CRM["lead"]
        s.add(Lead(org_id=org_id, id=lid, lastName="Lee", email=addr, email_norm=addr))
        aid, addr = CRM["account"]
        s.add(CrmAccount(org_id=org_id, id=aid, name="Acme Corp", email=addr, email_norm=addr))
        cid, lid, addr = CRM["collision"]
        s.add(Contact(org_id=org_id, id=cid, last_name="Sam", email=addr, email_norm=addr))
        s.add(Lead(org_id=org_id, id=lid, lastName="Sam", email=addr, email_norm=addr))
        s.commit()


def make_account(org_id: str, *, host: str = "imap.test", port: int = 993, security: str = "ssl",
                 email: str = "alice@example.test", password: str = "alicepass", user_id: str = "u1") -> str:
    """An account row (connection not tested), due for its first fetch."""
    with Session(get_engine()) as s:
        if s.get(Organization, org_id) is None:
            raise ValueError("unknown org")
        ep = svc.Endpoint(host, port, security, email, password)
        acct = svc.create_account(s, org_id=org_id, user_id=user_id, provider="imap", email=email, imap_ep=ep, smtp_ep=ep)
        s.commit()
        return acct.id


def sent_tracked_emails(org_id: str, account_id: str, n: int, *, sent_ago: timedelta = timedelta(minutes=5),
                        prefix: str = "reader") -> list[tuple[str, str]]:
    """n outbound emails, sent ``sent_ago``, with one tracked recipient each (``{prefix}{i}@customer.example``);
    returns each one's (email id, recipient hash): its pixel is ``/track/open/{id}/{hash}``."""
    from functools import partial

    from models import Delivery, new_id, utcnow
    from ops.keys import get_keyring
    from pipeline.stages.tracking_ids import recipient_hash

    out = []
    sign = partial(get_keyring().sign, "open")
    with Session(get_engine()) as s:
        for i in range(n):
            eid, rcpt = new_id(), f"{prefix}{i}@customer.example"
            s.add(Email(id=eid, org_id=org_id, account_id=account_id, direction="outbound", status="sent",
                        dedupe_key=f"mid:{eid}@t", message_id=f"{eid}@t", subject=f"Offer {i}", sent_at=utcnow() - sent_ago,
                        pipeline_state="done"))
            s.flush()
            s.add(Delivery(email_id=eid, seq=0, recipients=[rcpt], tracked_for=rcpt, state="sent"))
            out.append((eid, recipient_hash(sign, eid, rcpt)))
        s.commit()
    return out


def tick() -> dict[str, int]:
    """One scheduler tick as the (only) leader (importing the actors registers their sweeps)."""
    import pipeline.actors  # noqa: F401

    return Scheduler(get_engine(), AlwaysLeader(), 1).tick()


def drain(broker: StubBroker, worker: Worker, timeout: float = 60) -> None:
    """Run until every queue (and delay queue) is empty and the worker is idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for q in QUEUES:
            broker.join(q, timeout=int(max(1, deadline - time.monotonic()) * 1000))
        worker.join()
        if all(broker.queues[q].qsize() == 0 for q in broker.queues):
            return
    raise TimeoutError("queues did not drain")


def count(model: Any, *where: Any) -> int:
    with Session(get_engine()) as s:
        return int(s.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def account(account_id: str) -> EmailAccount:
    with Session(get_engine()) as s:
        a = s.get(EmailAccount, account_id)
        assert a is not None
        return a


def links_of(message_id: str) -> set[tuple[str, str]]:
    with Session(get_engine()) as s:
        eid = s.execute(select(Email.id).where(Email.message_id == message_id)).scalar_one()
        return {(link.entity_type, link.entity_id) for link in s.execute(select(EmailLink).where(EmailLink.email_id == eid)).scalars()}


def email_by_mid(message_id: str) -> Email:
    with Session(get_engine()) as s:
        return s.execute(select(Email).where(Email.message_id == message_id)).scalar_one()


def fetch_tick(timeout: float = 120) -> None:
    """Make every account due and run one scheduler tick whose fetches complete (for live workers)."""
    from models import utcnow
    from tests.harness.wait import wait_until

    def accounts() -> list[EmailAccount]:
        with Session(get_engine()) as s:
            return list(s.execute(select(EmailAccount)).scalars())

    wait_until(lambda: all(a.fetch_owner is None for a in accounts()), 30, what="no fetch running")
    started = utcnow()
    with Session(get_engine()) as s:
        s.execute(update(EmailAccount).values(next_fetch_at=None))
        s.commit()
    tick()
    wait_until(lambda: all(a.last_synced_at is not None and a.last_synced_at >= started and a.fetch_owner is None
                           for a in accounts()), timeout, what="the fetch this tick enqueued")


def sync_until_done(expected_total: int, timeout: float = 120) -> None:
    """:func:`fetch_tick`, then wait until ``expected_total`` emails have reached a final pipeline
    state (done or quarantined). For live workers (RabbitMQ)."""
    from tests.harness.wait import wait_until

    fetch_tick(timeout)
    final = Email.pipeline_state.in_(("done", "quarantined"))  # type: ignore[attr-defined]
    wait_until(lambda: count(Email, final) >= expected_total, timeout,
               what=f"{expected_total} emails through the pipeline")


__all__ += ["account", "email_by_mid", "fetch_tick", "links_of", "sync_until_done", "EmailLocation", "Notification"]
