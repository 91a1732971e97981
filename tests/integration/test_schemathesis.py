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

from collections.abc import Iterator
import uuid
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
from ops.orgs import create_org
from pipeline.clients.fake_imap import FakeImapServer, fake_connect
from pipeline.clients.fake_smtp import FakeSmtpTransport
from pipeline.connections import use_imap_connector, use_smtp_transport
from tests.harness.notion_server import NotionServer
from web.app import create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
POSITIVE_EXAMPLES = 25
NEGATIVE_EXAMPLES = 15


@dataclass
class Api:
    schema: Any
    headers: dict[str, str]
    ids: dict[str, str]
    client: TestClient


pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, stub_broker: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    request.getfixturevalue("db" if request.param == "sqlite" else "use_pg")
    notion = NotionServer().start()
    monkeypatch.setenv("MAILPIPE_NOTION_BASE_URL", notion.base)  # Notion calls stay on loopback
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
        yield Api(schema, {"Authorization": f"Bearer {key}"}, ids, client)
    notion.stop()


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


def test_negative_data_no_server_errors_and_responses_match_the_schema(api: Api) -> None:
    """Must-show 4: invalid requests (wrong types, missing fields, out-of-range values) → 4xx in the
    documented error shape, never a 5xx."""
    failures = _run(api, schemathesis.GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES)
    assert not failures, "\n\n".join(failures)
