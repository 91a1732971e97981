"""Schemathesis over the whole API, in process (ASGI), from the app's own OpenAPI document, on
SQLite and on PostgreSQL (whose column types are stricter: lengths, 64-bit integers, NUL).

Every operation is called with a bounded number of generated requests (positive data, then
negative data), authenticated with a real key, against an organization seeded with one record of
each kind so that generated ids sometimes hit a real row. Nothing reaches the network: IMAP and
SMTP are the in-memory fakes, Notion is the local stand-in on loopback, OAuth providers are
unconfigured. Checked on every response: no 5xx, the status code is documented, the content
type is documented, and the body matches the documented schema.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Contact, Email, EmailAccount, Notification, Template, User, normalize_email
from models.db import get_engine
from ops.settings import get_settings, reset_settings
from pipeline.flows.connections import use_imap_connector, use_smtp_transport
from pipeline.flows.orgs import create_org
from tests.harness.fake_imap import FakeImapServer, fake_connect
from tests.harness.fake_smtp import FakeSmtpTransport
from tests.harness.notion_server import NotionServer
from web.app import create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
POSITIVE_EXAMPLES = 20
NEGATIVE_EXAMPLES = 10


@dataclass
class Api:
    schema: Any
    headers: dict[str, str]
    ids: dict[str, str]
    client: TestClient
    offline: Any
    notion: NotionServer


pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, stub_broker: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    request.getfixturevalue("db" if request.param == "sqlite" else "use_pg")
    notion = NotionServer().start()
    monkeypatch.setenv("MAILPIPE_NOTION_BASE_URL", notion.base)  # Notion calls stay on loopback
    reset_settings()  # the database fixture has read the settings already
    assert get_settings().notion_base_url == notion.base
    imap = FakeImapServer("sam@example.test", "pw")
    use_imap_connector(fake_connect(imap))
    use_smtp_transport(FakeSmtpTransport())
    with Session(get_engine(), expire_on_commit=False) as s:
        org, key = create_org(s, f"acme-{uuid.uuid4().hex[:8]}")
        s.commit()
        user = User(org_id=org.id, id="u1", name="Sam", email="sam@example.test", email_norm="sam@example.test")
        contact = Contact(org_id=org.id, id="c1", last_name="Doe", email="jane@client.test", email_norm="jane@client.test")
        account = EmailAccount(org_id=org.id, user_id="u1", email="sam@example.test", email_norm="sam@example.test",
                               imap_host="imap.example.test", imap_port=993, smtp_host="smtp.example.test", smtp_port=587)
        s.add_all([user, contact, account])
        s.flush()
        email = Email(org_id=org.id, account_id=account.id, dedupe_key="d1", subject="Hello", body_text="Hi there",
                      from_email="jane@client.test", from_email_norm=normalize_email("jane@client.test"), to_emails=["sam@example.test"])
        template = Template(org_id=org.id, name="Intro", subject="Hi {{firstName}}", body_html="<p>Hello</p>")
        note = Notification(org_id=org.id, user_id="u1", kind="email.received", title="New mail", dedupe_key="n1")
        s.add_all([email, template, note])
        s.commit()
        ids = {"email": email.id, "template": template.id, "account": account.id, "notification": note.id,
               "user": "u1", "contact": "c1"}
    app = create_app()
    with TestClient(app) as client:
        schema = schemathesis.openapi.from_dict(client.get("/api/v1/openapi.json").json())
        schema.app = app
        yield Api(schema, {"Authorization": f"Bearer {key}"}, ids, client, Offline(monkeypatch), notion)
    notion.stop()


class Offline:
    """Records (and refuses) every DNS lookup and connection to anything but loopback."""

    LOCAL = ("127.0.0.1", "::1", "localhost", "testserver")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[str] = []
        real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else str(host)
            if name not in self.LOCAL:
                self.attempts.append(f"resolve {name}")
                raise socket.gaierror(socket.EAI_NONAME, "offline test run")
            return real_getaddrinfo(host, *args, **kwargs)

        def connect(sock: socket.socket, address: Any) -> Any:
            host = address[0] if isinstance(address, tuple) else str(address)
            if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in self.LOCAL:
                self.attempts.append(f"connect {address}")
                raise ConnectionRefusedError("offline test run")
            return real_connect(sock, address)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket.socket, "connect", connect)


def _known_ids(path: str, ids: dict[str, str]) -> dict[str, str]:
    """Path parameters naming the seeded rows, for the operation at ``path``."""
    for prefix, kind in (("/api/v1/emails/{id}", "email"), ("/api/v1/templates/{id}", "template"),
                         ("/api/v1/accounts/{id}", "account"), ("/api/v1/notifications/{id}", "notification"),
                         ("/api/v1/users/{id}", "user"), ("/api/v1/crm/contacts/{id}", "contact")):
        if path.startswith(prefix):
            return {"id": ids[kind]}
    return {}


def _operations(api: Api) -> list[Any]:
    ops = [result.ok() for result in api.schema.get_all_operations()]
    ops.sort(key=lambda op: op.method.upper() == "DELETE")  # the seeded rows live until the deletes run, last
    return [op for op in ops if not op.definition.raw.get("x-websocket")]


def _run(api: Api, mode: schemathesis.GenerationMode, examples: int) -> list[str]:
    failures: list[str] = []
    for op in _operations(api):
        known = _known_ids(op.path, api.ids)
        strategy = op.as_strategy(generation_mode=mode)
        if known:
            strategy = st.one_of(strategy, op.as_strategy(generation_mode=mode, path_parameters=known))

        @given(case=strategy)
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(headers=api.headers, checks=CHECKS)

        try:
            check()
        except Unsatisfiable:  # nothing to make invalid: an operation without parameters or body
            continue
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{op.method.upper()} {op.path}: {str(exc)[:3000]}")
    return failures


def test_every_operation_is_documented_with_response_schemas(api: Api) -> None:
    """Every route is in the document, each status it may answer has a description, and every
    JSON response (errors included) has a schema."""
    spec = api.client.get("/api/v1/openapi.json").json()
    app_paths = {getattr(r, "path", None) for r in api.client.app.routes}  # type: ignore[attr-defined]
    assert {p for p in app_paths if p} <= set(spec["paths"]), "a route is missing from the OpenAPI document"
    assert spec["paths"]["/api/v1/notifications/ws"]["get"]["x-websocket"] is True
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if op.get("x-websocket"):
                continue
            for status, reply in op["responses"].items():
                if status not in ("204", "302"):
                    assert "content" in reply, f"{method} {path} {status} has no schema"
            for p in op.get("parameters", []):
                assert p["schema"].get("type") in ("string", "integer", "boolean"), (path, p)
    limit = spec["paths"]["/api/v1/emails"]["get"]["parameters"]
    assert {"name": "limit", "in": "query", "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}} in limit


def test_positive_data_no_server_errors_and_responses_match_the_schema(api: Api) -> None:
    """Must-show 4: valid requests to every operation → no 5xx, documented status, schema-conform bodies."""
    failures = _run(api, schemathesis.GenerationMode.POSITIVE, POSITIVE_EXAMPLES)
    assert not failures, "\n\n".join(failures)
    assert api.offline.attempts == [], "the run tried to reach the network"


def test_negative_data_no_server_errors_and_responses_match_the_schema(api: Api) -> None:
    """Must-show 4: invalid requests (wrong types, missing fields, out-of-range values) → 4xx in the
    documented error shape, never a 5xx."""
    failures = _run(api, schemathesis.GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES)
    assert not failures, "\n\n".join(failures)
    assert api.offline.attempts == [], "the run tried to reach the network"


def test_success_responses_match_the_schema(api: Api) -> None:
    """The successful answers random data rarely reaches (a created account, a queued send, a
    Notion save...), produced on purpose and each checked against its documented schema."""
    c, h, ids = api.client, api.headers, api.ids
    spec = c.get("/api/v1/openapi.json").json()

    def conform(method: str, template: str, r: Any, status: int) -> dict[str, Any]:
        assert r.status_code == status, (method, template, r.text)
        assert str(status) in spec["paths"][template][method.lower()]["responses"]
        api.schema[template][method].validate_response(r)
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else {}

    conform("GET", "/healthz", c.get("/healthz"), 200)
    conform("GET", "/readyz", c.get("/readyz"), 200)
    conform("PUT", "/api/v1/users/{id}", c.put("/api/v1/users/u2", json={"name": "Kim", "email": "kim@example.test"}, headers=h), 200)
    records = {"contacts": {"last_name": "Doe", "email": "jane@client.test"}, "leads": {"lastName": "Roe"},
               "accounts": {"name": "Initech", "annual_revenue": 1.5e6}, "opportunities": {"name": "Deal", "budget": 10,
                                                                                         "close_date": "2026-12-31T00:00:00Z"}}
    for kind, body in records.items():
        conform("PUT", f"/api/v1/crm/{kind}/{{id}}", c.put(f"/api/v1/crm/{kind}/x1", json=body, headers=h), 200)
        conform("GET", f"/api/v1/crm/{kind}/{{id}}", c.get(f"/api/v1/crm/{kind}/x1", headers=h), 200)
        conform("GET", f"/api/v1/crm/{kind}/{{id}}/timeline", c.get(f"/api/v1/crm/{kind}/x1/timeline", headers=h), 200)
    assert conform("GET", "/api/v1/crm/search", c.get("/api/v1/crm/search?q=doe", headers=h), 200)["results"]

    # Local addresses only (the test environment allows 127.0.0.0/8); the fakes answer for them.
    server = {"host": "127.0.0.1", "port": 993, "security": "ssl", "username": "sam@example.test", "password": "pw"}
    smtp = {**server, "host": "127.0.0.1", "port": 587, "security": "starttls"}
    account = {"email": "sam@example.test", "imap": server, "smtp": smtp}
    assert conform("POST", "/api/v1/accounts/test", c.post("/api/v1/accounts/test", json=account, headers=h), 200)["ok"]
    created = conform("POST", "/api/v1/accounts", c.post("/api/v1/accounts", json={**account, "email": "sam2@example.test",
                                                                                  "user_id": "u2"}, headers=h), 201)
    conform("PATCH", "/api/v1/accounts/{id}", c.patch(f"/api/v1/accounts/{created['id']}", json={"poll_seconds": 60}, headers=h), 200)
    conform("POST", "/api/v1/accounts/{id}/sync", c.post(f"/api/v1/accounts/{created['id']}/sync", headers=h), 202)
    conform("GET", "/api/v1/accounts", c.get("/api/v1/accounts", headers=h), 200)

    template = conform("POST", "/api/v1/templates", c.post("/api/v1/templates", json={"name": "T", "category": "sales",
                       "subject": "Hi {{firstName}}", "body_html": "<p>Hello {{company|there}}</p>"}, headers=h), 201)
    conform("GET", "/api/v1/templates", c.get("/api/v1/templates?sort=usage&limit=1", headers=h), 200)
    conform("POST", "/api/v1/templates/{id}/preview", c.post(f"/api/v1/templates/{template['id']}/preview",
                                                               json={"merge": {"contact_id": "x1"}}, headers=h), 200)
    sent = conform("POST", "/api/v1/emails/send", c.post("/api/v1/emails/send", json={
        "account_id": ids["account"], "to": ["jane@client.test"], "subject": "Hi", "body_html": "<p>Hi <a href='https://x.test'>x</a></p>",
        "send_at": "2030-01-01T09:00:00+01:00", "track_opens": True}, headers=h), 202)
    assert sent["status"] == "scheduled"
    conform("GET", "/api/v1/emails/{id}", c.get(f"/api/v1/emails/{sent['id']}", headers=h), 200)
    conform("POST", "/api/v1/emails/{id}/cancel", c.post(f"/api/v1/emails/{sent['id']}/cancel", headers=h), 200)
    conform("POST", "/api/v1/emails/{id}/links", c.post(f"/api/v1/emails/{ids['email']}/links",
                                                        json={"entity_type": "contact", "entity_id": "x1"}, headers=h), 200)
    page = conform("GET", "/api/v1/emails", c.get("/api/v1/emails?limit=1", headers=h), 200)
    assert page["next_cursor"]
    conform("GET", "/api/v1/emails", c.get("/api/v1/emails", params={"limit": 1, "cursor": page["next_cursor"]}, headers=h), 200)
    conform("GET", "/api/v1/emails/{id}/tracking", c.get(f"/api/v1/emails/{sent['id']}/tracking", headers=h), 200)
    conform("POST", "/api/v1/notifications/token", c.post("/api/v1/notifications/token", json={"user_id": "u1"}, headers=h), 200)
    conform("POST", "/api/v1/notifications/{id}/read", c.post(f"/api/v1/notifications/{ids['notification']}/read", headers=h), 200)

    token = "ntn_internal_" + "x" * 20
    api.notion.tokens.add(token)
    db_id = api.notion.add_database("Customer mail", {"Name": "title"})
    connected = conform("PUT", "/api/v1/users/{id}/notion", c.put("/api/v1/users/u1/notion", json={
        "notion_api_key": token, "notion_db_id": db_id}, headers=h), 200)
    assert connected["database"]["id"] == db_id
    assert conform("GET", "/api/v1/notion/databases", c.get("/api/v1/notion/databases?user_id=u1", headers=h), 200)["items"]
    conform("POST", "/api/v1/emails/{id}/notion", c.post(f"/api/v1/emails/{ids['email']}/notion", json={"user_id": "u1"}, headers=h), 202)
    conform("GET", "/api/v1/emails/{id}/notion", c.get(f"/api/v1/emails/{ids['email']}/notion", headers=h), 200)
    assert api.offline.attempts == []
