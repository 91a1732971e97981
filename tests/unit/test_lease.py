"""models.lease: one run at a time per row; a redelivery of the same message takes over; writes are guarded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session

from models import EmailAccount, Organization, utcnow
from models.db import get_engine
from models.lease import Lease, LeaseLost, run_owner

LEASE = Lease(EmailAccount, "id", "fetch_owner", "fetch_lease_until", timedelta(minutes=5))


@pytest.fixture
def account_id(db: str) -> str:
    with Session(get_engine()) as s:
        org = Organization(name="acme")
        s.add(org)
        s.flush()
        acct = EmailAccount(org_id=org.id, user_id="u1", email="a@x.io", email_norm="a@x.io")
        s.add(acct)
        s.commit()
        return acct.id


def claim(account_id: str, owner: str, **kw: object) -> bool:
    with Session(get_engine()) as s:
        ok = LEASE.claim(s, account_id, owner, **kw)  # type: ignore[arg-type]
        s.commit()
        return ok


def test_one_holder_and_redelivery_takeover(account_id: str) -> None:
    first = run_owner("msg-1")
    assert first.startswith("msg-1:") and run_owner("msg-1") != first
    assert claim(account_id, first)
    assert not claim(account_id, run_owner("msg-2")), "another message waits for the lease"
    takeover = run_owner("msg-1")
    assert claim(account_id, takeover), "a redelivery of the same message takes over at once"
    with Session(get_engine()) as s, pytest.raises(LeaseLost):
        LEASE.renew(s, account_id, first, messages_synced=5)  # the superseded run writes nothing
    with Session(get_engine()) as s:
        LEASE.renew(s, account_id, takeover, messages_synced=5)
        s.commit()
        row = s.get(EmailAccount, account_id)
        assert row is not None and row.messages_synced == 5 and row.fetch_owner == takeover


def test_release_frees_and_an_expired_lease_is_free(account_id: str) -> None:
    owner = run_owner("msg-1")
    assert claim(account_id, owner, sync_state="syncing")
    with Session(get_engine()) as s:
        assert not LEASE.release(s, account_id, run_owner("msg-9")), "only the holder releases"
        assert LEASE.release(s, account_id, owner, sync_state="idle")
        s.commit()
    with Session(get_engine()) as s:
        row = s.get(EmailAccount, account_id)
        assert row is not None and (row.fetch_owner, row.fetch_lease_until, row.sync_state) == (None, None, "idle")
    assert claim(account_id, run_owner("msg-2"), now=utcnow() - timedelta(minutes=10))  # it ran out 5 minutes ago
    assert claim(account_id, run_owner("msg-3")), "a lease nobody renewed is free"


def test_extra_conditions_guard_the_claim(account_id: str) -> None:
    assert not claim(account_id, run_owner("m"), where=(EmailAccount.sync_state == "disabled",))
    assert claim(account_id, run_owner("m"), where=(EmailAccount.sync_state == "idle",))


def test_handing_back_in_the_last_write(account_id: str) -> None:
    owner = run_owner("m")
    assert claim(account_id, owner)
    with Session(get_engine()) as s:
        LEASE.renew(s, account_id, owner, last_error=None, **LEASE.handing_back())
        s.commit()
        row = s.get(EmailAccount, account_id)
        assert row is not None and row.fetch_owner is None and row.fetch_lease_until is None
