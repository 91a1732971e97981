"""Operations that act for the whole organization (a person's export and erase, the suppression
list, webhook endpoints, the organization's settings) refuse a request made as a user: such a user
may see only some mailboxes, so these answer 403 ``org_key_required``, run nothing and write nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlmodel import Session, select
from starlette.testclient import TestClient

from models import PrivacyJob, Suppression, WebhookEndpoint
from models.db import get_engine
from tests.harness.flow import make_org
from web.app import create_app

CALLS = [
    ("POST", "/api/v1/privacy/export", {"email": "ada@engine.example"}),
    ("POST", "/api/v1/privacy/erase", {"email": "ada@engine.example"}),
    ("GET", "/api/v1/privacy/jobs/01a2438a0631b1f8e7c21bc0", None),
    ("GET", "/api/v1/suppressions", None),
    ("POST", "/api/v1/suppressions", {"email": "no@example.com"}),
    ("DELETE", "/api/v1/suppressions/no@example.com", None),
    ("POST", "/api/v1/webhooks", {"url": "https://93.184.216.34/hook", "events": ["*"]}),
    ("GET", "/api/v1/webhooks", None),
    ("GET", "/api/v1/webhooks/01a2438a0631b1f8e7c21bc0/deliveries", None),
    ("PATCH", "/api/v1/org", {"retention_days": 1}),
]


@pytest.fixture
def client(db: str) -> Iterator[tuple[TestClient, dict[str, str]]]:
    _, key = make_org()
    with TestClient(create_app()) as c:
        h = {"Authorization": f"Bearer {key}"}
        c.put("/api/v1/users/u1", json={"name": "u1", "email": "u1@team.example"}, headers=h)
        yield c, h


@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=[f"{m} {p}" for m, p, _ in CALLS])
def test_refused_as_a_user(client: tuple[TestClient, dict[str, str]], method: str, path: str, body: dict[str, object] | None) -> None:
    c, h = client
    r = c.request(method, path, json=body, headers={**h, "X-Mailpipe-User": "u1"})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "org_key_required"
    with Session(get_engine()) as s:
        assert s.execute(select(PrivacyJob)).first() is None
        assert s.execute(select(Suppression)).first() is None
        assert s.execute(select(WebhookEndpoint)).first() is None
    assert c.get("/api/v1/org", headers=h).json().get("retention_days") is None


def test_the_key_alone_still_acts_for_the_organization(client: tuple[TestClient, dict[str, str]]) -> None:
    c, h = client
    assert c.post("/api/v1/suppressions", json={"email": "no@example.com"}, headers=h).status_code == 201
    assert c.patch("/api/v1/org", json={"retention_days": 400}, headers=h).status_code == 200
    assert c.get("/api/v1/org", headers={**h, "X-Mailpipe-User": "u1"}).status_code == 200  # reading the settings is fine
    spec = c.get("/api/v1/openapi.json", headers=h).json()
    assert "403" in spec["paths"]["/api/v1/privacy/erase"]["post"]["responses"]
