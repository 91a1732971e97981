"""API keys (issue 14, "Operations"): several named keys per organization, listing without secrets,
revocation (at once in the revoking process; through the revocation count or the TTL elsewhere)
and a last_used_at that costs one write a minute, not one per request."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, update
from sqlmodel import Session
from starlette.testclient import TestClient

import ops.orgs
from models import ApiKey, utcnow
from models.db import get_engine, session_scope
from ops.key_cache import KEY_CACHE_TTL_SECONDS, REVOCATION_CHECK_SECONDS, KeyCache
from ops.orgs import InvalidKeyName, UnknownKey, UnknownOrg, create_key, hash_key, list_keys, org_for_key, revoke_key
from pipeline.flows.orgs import create_org
from web.app import create_app


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def org(db: str) -> tuple[str, str]:
    with session_scope() as s:
        o, key = create_org(s, "acme")
        return o.id, key


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """This process's key cache on a clock the test moves."""
    fake = FakeClock()
    monkeypatch.setattr(ops.orgs, "KEY_CACHE", KeyCache(clock=fake))
    return fake


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every SQL statement the engine runs while the test does."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()))

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def _revoke_elsewhere(key_id: str) -> None:
    """What another process's `mailpipe org key revoke` leaves in the database (this cache untouched)."""
    with Session(get_engine()) as s:
        s.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()))  # type: ignore[arg-type]
        s.commit()


class TestCreateAndList:
    def test_keys_have_names_and_list_without_secrets(self, org: tuple[str, str]) -> None:
        """`org create` makes a key named "default"; more keys get a given name or key-<n>; the list
        shows id, name, prefix and times, never the hash or the key itself, and each key works."""
        org_id, first = org
        named, named_key = create_key(get_engine(), org_id, "  CRM production  ")
        unnamed, unnamed_key = create_key(get_engine(), org_id)
        assert (named.name, unnamed.name) == ("CRM production", "key-3")
        assert len({first, named_key, unnamed_key}) == 3 and named_key.startswith("mp_")
        listed = list_keys(get_engine(), org_id)
        assert [k.name for k in listed] == ["default", "CRM production", "key-3"]
        assert [k.prefix for k in listed] == [first[:10], named_key[:10], unnamed_key[:10]]
        for info in listed:
            shown = info.as_json()
            assert set(shown) == {"id", "org_id", "name", "prefix", "active", "created_at", "last_used_at", "revoked_at"}
            text = repr(shown) + repr(info)
            assert hash_key(first) not in text and hash_key(named_key) not in text and named_key not in text
            assert shown["active"] is True and shown["revoked_at"] is None and shown["created_at"].endswith("Z")
        for key in (first, named_key, unnamed_key):
            assert org_for_key(get_engine(), key) == org_id

    def test_unknown_org_and_bad_names_are_refused(self, org: tuple[str, str]) -> None:
        org_id, _ = org
        with pytest.raises(UnknownOrg, match="no organization with id 'nope'"):
            create_key(get_engine(), "nope", "x")
        with pytest.raises(UnknownOrg):
            list_keys(get_engine(), "nope")
        with pytest.raises(UnknownKey, match="no API key with id 'nope'"):
            revoke_key(get_engine(), "nope")
        for bad in ("", "   ", "x" * 101, "tab\there", "new\nline"):
            with pytest.raises(InvalidKeyName):
                create_key(get_engine(), org_id, bad)
        assert [k.name for k in list_keys(get_engine(), org_id)] == ["default"]

    def test_existing_keys_are_named_default_by_the_migration(self, tmp_path: Any) -> None:
        """A database at 0005 with a key gets name "default" for it at 0006 (SQLite batch mode)."""
        from sqlalchemy import create_engine, text

        from ops.migrate import upgrade

        url = f"sqlite:///{tmp_path / 'old.db'}"
        upgrade(url, "0005")
        old = create_engine(url)
        with old.begin() as c:
            c.execute(text("INSERT INTO organizations (id, name, mark_seen, auto_create_leads, own_domains, honor_dnt, anonymize_ip,"
                           " created_at) VALUES ('o1', 'acme', 0, 0, '[]', 0, 0, '2026-01-01 00:00:00')"))
            c.execute(text("INSERT INTO api_keys (id, org_id, prefix, key_hash, created_at) "
                           "VALUES ('k1', 'o1', 'mp_abcdefg', :h, '2026-01-01 00:00:00')"), {"h": "0" * 64})
        upgrade(url)
        with old.connect() as c:
            assert c.execute(text("SELECT name FROM api_keys WHERE id = 'k1'")).scalar_one() == "default"
        old.dispose()


class TestRevocation:
    def test_the_revoking_process_refuses_at_once(self, org: tuple[str, str], clock: FakeClock) -> None:
        """A cached key answers 401 on the very next request after revoke_key in this process."""
        org_id, first = org
        info, key = create_key(get_engine(), org_id, "to revoke")
        with TestClient(create_app()) as c:
            h = {"Authorization": f"Bearer {key}"}
            assert c.get("/api/v1/org", headers=h).status_code == 200
            assert c.get("/api/v1/org", headers=h).status_code == 200  # now served from the cache
            revoked, newly = revoke_key(get_engine(), info.id)
            assert newly and revoked.revoked_at is not None and not revoked.active
            r = c.get("/api/v1/org", headers=h)  # the clock has not moved: no TTL, no check involved
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            assert c.get("/api/v1/org", headers={"Authorization": f"Bearer {first}"}).status_code == 200
        again, newly = revoke_key(get_engine(), info.id)
        assert not newly and again.revoked_at == revoked.revoked_at
        assert [(k.name, k.active) for k in list_keys(get_engine(), org_id)] == [("default", True), ("to revoke", False)]

    def test_another_process_revoking_is_seen_at_the_next_revocation_check(self, org: tuple[str, str], clock: FakeClock) -> None:
        """Revoked by another process: accepted from this process's cache until its next revocation
        check (at most REVOCATION_CHECK_SECONDS later), refused from then on; other keys unaffected."""
        org_id, first = org
        info, key = create_key(get_engine(), org_id)
        assert org_for_key(get_engine(), key) == org_id and org_for_key(get_engine(), first) == org_id
        _revoke_elsewhere(info.id)
        assert org_for_key(get_engine(), key) == org_id  # the cache, within the same check interval
        clock.advance(REVOCATION_CHECK_SECONDS)
        assert org_for_key(get_engine(), key) is None
        assert org_for_key(get_engine(), first) == org_id

    def test_the_ttl_bounds_revocation_when_the_count_says_nothing(self, org: tuple[str, str], clock: FakeClock) -> None:
        """A key row deleted by hand (the revoked count does not change) is still refused once its
        entry is KEY_CACHE_TTL_SECONDS old."""
        org_id, _ = org
        info, key = create_key(get_engine(), org_id)
        assert org_for_key(get_engine(), key) == org_id
        with Session(get_engine()) as s:
            s.delete(s.get(ApiKey, info.id))
            s.commit()
        clock.advance(KEY_CACHE_TTL_SECONDS - 0.5)
        assert org_for_key(get_engine(), key) == org_id
        clock.advance(0.6)
        assert org_for_key(get_engine(), key) is None

    def test_a_lookup_racing_a_revocation_does_not_recache_the_key(self, org: tuple[str, str], clock: FakeClock) -> None:
        """A lookup that read the key before revoke_key finished must not put it back in the cache."""
        org_id, _ = org
        info, key = create_key(get_engine(), org_id)
        cache = ops.orgs.KEY_CACHE
        generation = cache.generation  # a lookup starts and reads the row (still active)...
        revoke_key(get_engine(), info.id)  # ...the revocation commits and drops the entry...
        cache.put(hash_key(key), org_id, generation)  # ...and the lookup finishes
        assert cache.get(hash_key(key)) == (False, None)
        assert org_for_key(get_engine(), key) is None


class TestKeyCache:
    def test_entries_expire_after_the_ttl(self) -> None:
        clock = FakeClock()
        cache = KeyCache(ttl=5, clock=clock)
        cache.put("h", "org", cache.generation)
        clock.advance(4.9)
        assert cache.get("h") == (True, "org")
        clock.advance(0.2)
        assert cache.get("h") == (False, None)

    def test_a_changed_revocation_count_drops_everything_once_per_interval(self) -> None:
        clock = FakeClock()
        cache = KeyCache(check_every=1, clock=clock)
        assert cache.check_due() and not cache.check_due()  # one caller per interval does the query
        assert cache.saw_revoked_count(3) is False  # the first count is the baseline
        cache.put("a", "org", cache.generation)
        cache.put("b", None, cache.generation)
        assert cache.saw_revoked_count(3) is False and cache.get("a") == (True, "org")
        clock.advance(1)
        assert cache.check_due()
        assert cache.saw_revoked_count(4) is True
        assert cache.get("a") == (False, None) and cache.get("b") == (False, None)


class TestLastUsed:
    def test_last_used_is_recorded_without_a_write_per_request(self, org: tuple[str, str], statements: list[str],
                                                               clock: FakeClock) -> None:
        """The first use sets last_used_at; 50 more lookups that all reach the database (the cache is
        dropped each time) write nothing within the minute; a use after a minute writes again."""
        org_id, key = org
        assert list_keys(get_engine(), org_id)[0].last_used_at is None
        assert org_for_key(get_engine(), key) == org_id
        first = list_keys(get_engine(), org_id)[0].last_used_at
        assert first is not None and abs((utcnow() - first).total_seconds()) < 60
        statements.clear()
        for _ in range(50):
            ops.orgs.KEY_CACHE.clear()
            assert org_for_key(get_engine(), key) == org_id
        assert sum(s.startswith("SELECT") and "FROM api_keys" in s for s in statements) >= 50
        assert not [s for s in statements if s.startswith("UPDATE")]
        with Session(get_engine()) as s:
            s.execute(update(ApiKey).values(last_used_at=utcnow() - timedelta(minutes=2)))
            s.commit()
        ops.orgs.KEY_CACHE.clear()
        statements.clear()
        assert org_for_key(get_engine(), key) == org_id
        assert len([s for s in statements if s.startswith("UPDATE api_keys SET last_used_at")]) == 1
        assert list_keys(get_engine(), org_id)[0].last_used_at > first  # type: ignore[operator]

    def test_cache_hits_cost_one_count_query_per_interval(self, org: tuple[str, str], statements: list[str],
                                                          clock: FakeClock) -> None:
        """Within one check interval, 100 requests with a cached key run no SQL at all."""
        org_id, key = org
        assert org_for_key(get_engine(), key) == org_id
        statements.clear()
        for _ in range(100):
            assert org_for_key(get_engine(), key) == org_id
        assert statements == []
        clock.advance(REVOCATION_CHECK_SECONDS)
        assert org_for_key(get_engine(), key) == org_id
        assert len(statements) == 1 and "count" in statements[0].lower() and "revoked_at IS NOT NULL" in statements[0]
