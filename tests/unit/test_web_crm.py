"""web: API-key auth, tenancy and the CRM record endpoints."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Email, EmailAccount, EmailLink, utcnow
from models.db import get_engine, session_scope
from pipeline.flows.orgs import create_org
from web.app import create_app


@pytest.fixture
def client(db: str) -> Iterator[TestClient]:
    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def keys(db: str) -> dict[str, tuple[str, str]]:
    out = {}
    with session_scope() as s:
        for name in ("acme", "globex"):
            org, key = create_org(s, name)
            out[name] = (org.id, key)
    return out


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class TestAuth:
    def test_missing_key_is_401_json(self, client: TestClient) -> None:
        """No Authorization header: 401 with the JSON error shape."""
        r = client.get("/api/v1/crm/search?q=x")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")

    def test_wrong_key_is_401(self, client: TestClient, keys: dict[str, tuple[str, str]]) -> None:
        """An unknown key is refused the same way."""
        r = client.get("/api/v1/crm/search?q=x", headers=auth("mp_" + "x" * 43))
        assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"

    def test_valid_key_is_200(self, client: TestClient, keys: dict[str, tuple[str, str]]) -> None:
        """A valid key authorizes the search endpoint."""
        r = client.get("/api/v1/crm/search?q=x", headers=auth(keys["acme"][1]))
        assert r.status_code == 200 and r.json() == {"results": []}

    def test_public_endpoints_need_no_key(self, client: TestClient) -> None:
        """Health, readiness, metrics and the OpenAPI document are public."""
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        assert b"mailpipe_" in client.get("/metrics").content
        spec = client.get("/api/v1/openapi.json").json()
        assert "/api/v1/crm/contacts/{id}" in spec["paths"] and "put" in spec["paths"]["/api/v1/users/{id}"]

    def test_unknown_route_is_json_404(self, client: TestClient, keys: dict[str, tuple[str, str]]) -> None:
        """Unknown paths answer with the JSON error shape too."""
        r = client.get("/api/v1/nope", headers=auth(keys["acme"][1]))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


class TestTenancy:
    def test_other_orgs_record_is_404(self, client: TestClient, keys: dict[str, tuple[str, str]]) -> None:
        """A record written by acme does not exist for globex, for reads, deletes and search."""
        acme, globex = auth(keys["acme"][1]), auth(keys["globex"][1])
        assert client.put("/api/v1/crm/contacts/c1", json={"last_name": "Doe", "email": "j@x.com"}, headers=acme).status_code == 200
        assert client.get("/api/v1/crm/contacts/c1", headers=acme).status_code == 200
        assert client.get("/api/v1/crm/contacts/c1", headers=globex).status_code == 404
        assert client.delete("/api/v1/crm/contacts/c1", headers=globex).status_code == 404
        assert client.get("/api/v1/crm/search?q=doe", headers=globex).json() == {"results": []}

    def test_same_id_in_two_orgs(self, client: TestClient, keys: dict[str, tuple[str, str]]) -> None:
        """Two tenants may use the same CRM id without seeing each other's data."""
        client.put("/api/v1/crm/leads/L1", json={"lastName": "A"}, headers=auth(keys["acme"][1]))
        client.put("/api/v1/crm/leads/L1", json={"lastName": "B"}, headers=auth(keys["globex"][1]))
        assert client.get("/api/v1/crm/leads/L1", headers=auth(keys["acme"][1])).json()["lastName"] == "A"
        assert client.get("/api/v1/crm/leads/L1", headers=auth(keys["globex"][1])).json()["lastName"] == "B"


class TestRecords:
    def test_put_get_replace_delete(self, client: TestClient, keys: dict[str, tuple[str, str]]) -> None:
        """PUT creates then replaces; GET returns NextCRM field names; DELETE is 204 then 404."""
        h = auth(keys["acme"][1])
        r = client.put("/api/v1/crm/leads/5f1", json={"firstName": "Jo", "lastName": "Ray", "email": "JO@Ray.io"}, headers=h)
        assert r.status_code == 200 and r.json()["created"] is True
        body = client.get("/api/v1/crm/leads/5f1", headers=h).json()
        assert body["firstName"] == "Jo" and body["status"] == "NEW" and "email_norm" not in body and "org_id" not in body
        r = client.put("/api/v1/crm/leads/5f1", json={"lastName": "Ray", "status": "CONTACTED"}, headers=h)
        assert r.json()["created"] is False and r.json()["firstName"] is None and r.json()["status"] == "CONTACTED"
        assert client.delete("/api/v1/crm/leads/5f1", headers=h).status_code == 204
        assert client.get("/api/v1/crm/leads/5f1", headers=h).status_code == 404

    def test_all_record_kinds(self, client: TestClient, keys: dict[str, tuple[str, str]]) -> None:
        """Users, accounts and opportunities take their API.md fields."""
        h = auth(keys["acme"][1])
        assert client.put("/api/v1/users/u1", json={"name": "Sam", "email": "sam@acme.io"}, headers=h).status_code == 200
        assert client.get("/api/v1/users/u1", headers=h).json()["email"] == "sam@acme.io"
        put = client.put("/api/v1/crm/accounts/a1", json={"name": "Initech", "annual_revenue": 5000000}, headers=h)
        assert put.json()["annual_revenue"] == "5000000"
        opp = {"name": "Deal", "account": "a1", "expected_revenue": 1000, "close_date": "2026-12-31T00:00:00Z", "sales_stage": "Won"}
        got = client.put("/api/v1/crm/opportunities/o1", json=opp, headers=h).json()
        assert got["close_date"] == "2026-12-31T00:00:00Z" and got["expected_revenue"] == 1000

    def test_validation_errors_are_422(self, client: TestClient, keys: dict[str, tuple[str, str]]) -> None:
        """Missing required fields, bad emails, unknown fields and bad JSON give 422 with details."""
        h = auth(keys["acme"][1])
        r = client.put("/api/v1/crm/contacts/c1", json={"email": "not-an-email", "extra": 1}, headers=h)
        assert r.status_code == 422
        fields = {e["field"] for e in r.json()["error"]["details"]["errors"]}
        assert fields == {"last_name", "email", "extra"}
        r = client.put("/api/v1/crm/contacts/c1", content=b"{oops", headers={**h, "content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"
        assert client.put("/api/v1/crm/widgets/w1", json={}, headers=h).status_code == 404
        assert client.get("/api/v1/crm/search", headers=h).status_code == 422

    def test_search_matches_names_and_emails(self, client: TestClient, keys: dict[str, tuple[str, str]]) -> None:
        """Typeahead finds contacts, leads and accounts by name or email, case-insensitively."""
        h = auth(keys["acme"][1])
        client.put("/api/v1/crm/contacts/c1", json={"first_name": "Ada", "last_name": "Lovelace", "email": "ada@engine.io"}, headers=h)
        client.put("/api/v1/crm/leads/l1", json={"firstName": "Adam", "lastName": "Smith", "email": "adam@smith.co"}, headers=h)
        client.put("/api/v1/crm/accounts/a1", json={"name": "Analytical Engines", "email": "hello@ENGINE.io"}, headers=h)
        client.put("/api/v1/crm/contacts/c2", json={"last_name": "100%_real"}, headers=h)
        res = client.get("/api/v1/crm/search?q=ADA", headers=h).json()["results"]
        assert {(r["entity_type"], r["entity_id"]) for r in res} == {("contact", "c1"), ("lead", "l1")}
        res = client.get("/api/v1/crm/search?q=engine.io", headers=h).json()["results"]
        assert {r["entity_id"] for r in res} == {"c1", "a1"}
        assert res[0].keys() == {"entity_type", "entity_id", "label", "email"}
        assert [r["entity_id"] for r in client.get("/api/v1/crm/search?q=%25_", headers=h).json()["results"]] == ["c2"]


class TestTimeline:
    def test_newest_first_with_snippet_and_counts(self, client: TestClient, keys: dict[str, tuple[str, str]]) -> None:
        """A contact's timeline lists linked emails newest first, paginated by cursor."""
        org_id, key = keys["acme"]
        h = auth(key)
        client.put("/api/v1/crm/contacts/c1", json={"last_name": "Doe", "email": "d@x.com"}, headers=h)
        with Session(get_engine()) as s:
            acct = EmailAccount(org_id=org_id, user_id="u1", email="me@acme.io", email_norm="me@acme.io")
            s.add(acct)
            s.flush()
            for i in range(3):
                e = Email(org_id=org_id, account_id=acct.id, dedupe_key=f"mid:{i}", subject=f"S{i}", from_email="d@x.com",
                          to_emails=["me@acme.io"], snippet="x" * 100, received_at=utcnow().replace(microsecond=0, second=i),
                          attachment_count=i, linked=True)
                s.add(e)
                s.flush()
                s.add(EmailLink(org_id=org_id, email_id=e.id, entity_type="contact", entity_id="c1", how="auto:contacts.email"))
            s.commit()
        page = client.get("/api/v1/crm/contacts/c1/timeline?limit=2", headers=h).json()
        assert [i["subject"] for i in page["items"]] == ["S2", "S1"]
        assert page["items"][0]["attachment_count"] == 2 and len(page["items"][0]["snippet"]) <= 100
        assert set(page["items"][0]) >= {"email_id", "from_email", "to_emails", "direction", "at", "relative", "open_count", "click_count"}
        rest = client.get(f"/api/v1/crm/contacts/c1/timeline?limit=2&cursor={page['next_cursor']}", headers=h).json()
        assert [i["subject"] for i in rest["items"]] == ["S0"] and rest["next_cursor"] is None
        assert client.get("/api/v1/crm/contacts/nope/timeline", headers=h).status_code == 404

    def test_deleting_record_unlinks_mail(self, client: TestClient, keys: dict[str, tuple[str, str]]) -> None:
        """Deleting a contact removes its links and marks mail without other links as unlinked."""
        org_id, key = keys["acme"]
        h = auth(key)
        client.put("/api/v1/crm/contacts/c1", json={"last_name": "Doe"}, headers=h)
        with Session(get_engine()) as s:
            acct = EmailAccount(org_id=org_id, user_id="u1", email="me@acme.io", email_norm="me@acme.io")
            s.add(acct)
            s.flush()
            e = Email(org_id=org_id, account_id=acct.id, dedupe_key="mid:1", linked=True)
            s.add(e)
            s.flush()
            s.add(EmailLink(org_id=org_id, email_id=e.id, entity_type="contact", entity_id="c1", how="manual"))
            s.commit()
            email_id = e.id
        assert client.delete("/api/v1/crm/contacts/c1", headers=h).status_code == 204
        with Session(get_engine()) as s:
            got = s.get(Email, email_id)
            assert got is not None and got.linked is False


class TestHostileInput:
    def test_nul_and_oversized_values_are_422(self, client: TestClient, keys: dict[str, tuple[str, str]]) -> None:
        """NUL bytes anywhere, values longer than their columns and out-of-range money are 422, never 500."""
        h = auth(keys["acme"][1])
        assert client.get("/api/v1/crm/search?q=%00", headers=h).status_code == 422
        assert client.get("/api/v1/crm/contacts/a%00b", headers=h).status_code == 422
        assert client.put("/api/v1/crm/contacts/c1", json={"last_name": "x\u0000y"}, headers=h).status_code == 422
        assert client.put("/api/v1/crm/contacts/c1", json={"last_name": "x" * 201}, headers=h).status_code == 422
        assert client.put("/api/v1/crm/leads/l1", json={"lastName": "L", "status": "S" * 41}, headers=h).status_code == 422
        r = client.put("/api/v1/crm/opportunities/o1", json={"name": "Big", "expected_revenue": 3_000_000_000}, headers=h)
        assert r.status_code == 200 and r.json()["expected_revenue"] == 3_000_000_000
        assert client.put("/api/v1/crm/opportunities/o1", json={"name": "X", "budget": 2**64}, headers=h).status_code == 422
