"""web.routes.templates: saving checks merge fields, listing sorts by usage and rates, preview, changes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import update
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Email
from models.db import get_engine
from pipeline.flows.connections import use_imap_connector, use_smtp_transport
from tests.harness.fake_imap import FakeImapServer, fake_connect
from tests.harness.fake_smtp import FakeSmtpTransport
from tests.harness.flow import CRM, drain, make_account, make_org, seed_crm
from web.app import create_app


@pytest.fixture
def env(db: str, stub_broker: StubBroker, stub_worker: Worker) -> Iterator[dict[str, Any]]:
    use_imap_connector(fake_connect(FakeImapServer("alice@example.test", "alicepass")))
    smtp = FakeSmtpTransport()
    use_smtp_transport(smtp)
    org_id, key = make_org()
    seed_crm(org_id)
    account_id = make_account(org_id)
    with TestClient(create_app()) as client:
        yield {"c": client, "h": {"Authorization": f"Bearer {key}"}, "account_id": account_id, "broker": stub_broker,
               "worker": stub_worker, "smtp": smtp}


def create(env: dict[str, Any], **body: Any) -> Any:
    payload = {"name": "Follow-up", "category": "sales", "subject": "Hi {{firstName|there}}",
               "body_html": "<p>Hi {{firstName|there}}, about {{company|your team}}</p>", "created_by": "u1", **body}
    return env["c"].post("/api/v1/templates", headers=env["h"], json=payload)


class TestSave:
    def test_unknown_field_is_422_with_suggestions(self, env: dict[str, Any]) -> None:
        r = create(env, body_html="<p>Hi {{fistName}}</p>")
        assert r.status_code == 422 and r.json()["error"]["details"]["unknown"] == ["fistName"]
        assert r.json()["error"]["details"]["suggestions"]["fistName"][0] == "firstName"
        r = create(env, subject="Hi {{firstName")
        assert r.status_code == 422 and r.json()["error"]["code"] == "merge_syntax_error"
        assert r.json()["error"]["details"] == {"field": "subject", "position": 3}

    def test_create_read_patch_delete(self, env: dict[str, Any]) -> None:
        c, h = env["c"], env["h"]
        r = create(env)
        assert r.status_code == 201 and r.json()["merge_fields"] == ["firstName", "company"]
        tid = r.json()["id"]
        assert c.get(f"/api/v1/templates/{tid}", headers=h).json()["usage_count"] == 0
        r = c.patch(f"/api/v1/templates/{tid}", headers=h, json={"body_html": "<p>{{senderName}}</p>"})
        assert r.status_code == 200 and r.json()["merge_fields"] == ["firstName", "senderName"]
        assert c.patch(f"/api/v1/templates/{tid}", headers=h, json={"subject": "{{nope}}"}).status_code == 422
        assert c.delete(f"/api/v1/templates/{tid}", headers=h).status_code == 204
        assert c.get(f"/api/v1/templates/{tid}", headers=h).status_code == 404


class TestList:
    def test_sorted_by_open_rate_with_usage(self, env: dict[str, Any]) -> None:
        """10 sends of A (5 with a human open) and 5 of B (1 opened): A 50 %, B 20 %, usage 10 and 5."""
        c, h = env["c"], env["h"]
        a = create(env, name="Alpha", body_html="<p>Hi {{firstName|there}}</p>").json()["id"]
        b = create(env, name="Beta", body_html="<p>Hello {{firstName|there}}</p>").json()["id"]
        ids = {a: [], b: []}
        for tid, n in ((a, 10), (b, 5)):
            for i in range(n):
                r = c.post("/api/v1/emails/send", headers=h, json={"account_id": env["account_id"], "to": [f"r{i}@x.example"],
                                                                  "template_id": tid, "merge": {}, "track_opens": False,
                                                                  "track_clicks": False})
                assert r.status_code == 202, r.text
                ids[tid].append(r.json()["id"])
        drain(env["broker"], env["worker"])
        with Session(get_engine()) as s:  # human opens as the tracking service counts them
            s.execute(update(Email).where(Email.id.in_(ids[a][:5] + ids[b][:1])).values(open_count=1))
            s.execute(update(Email).where(Email.id.in_(ids[a][:2])).values(click_count=1))
            s.commit()
        items = c.get("/api/v1/templates?sort=open_rate", headers=h).json()["items"]
        assert [(t["name"], t["avg_open_rate"], t["usage_count"]) for t in items[:2]] == [("Alpha", 0.5, 10), ("Beta", 0.2, 5)]
        assert items[0]["avg_click_rate"] == 0.2 and items[0]["last_used_at"] is not None
        assert all(t["avg_open_rate"] is None for t in items[2:]), "never-sent templates come after the rated ones"
        assert [t["name"] for t in c.get("/api/v1/templates?sort=usage", headers=h).json()["items"][:2]] == ["Alpha", "Beta"]

    def test_search_category_visibility_and_paging(self, env: dict[str, Any]) -> None:
        c, h = env["c"], env["h"]
        create(env, name="Q4 renewal offer", category="renewal", is_public=True, created_by="u2")
        create(env, name="Private follow-up", created_by="u1")
        create(env, name="Someone else's", created_by="u2")

        def names(q: str) -> list[str]:  # the ones this test made (every org also has the default templates)
            return [t["name"] for t in c.get(f"/api/v1/templates?{q}", headers=h).json()["items"] if t["created_by"]]

        assert names("q=q4 renew") == ["Q4 renewal offer"] and names("category=renewal") == ["Q4 renewal offer"]
        assert sorted(names("user_id=u1")) == ["Private follow-up", "Q4 renewal offer"]
        pages, cursor = [], ""
        while True:
            page = c.get(f"/api/v1/templates?limit=5&cursor={cursor}", headers=h).json()
            pages.append(len(page["items"]))
            if page["next_cursor"] is None:
                break
            cursor = page["next_cursor"]
        assert pages == [5, 5, 3]
        assert c.get("/api/v1/templates?sort=popularity", headers=h).status_code == 422


class TestPreview:
    def test_sample_data_and_named_records(self, env: dict[str, Any]) -> None:
        c, h = env["c"], env["h"]
        tid = create(env, body_html="<p>Hi {{firstName|there}} at {{company}}</p>").json()["id"]
        sample = c.post(f"/api/v1/templates/{tid}/preview", headers=h, json={}).json()
        assert sample["body_html"] == "<p>Hi Jane at Acme Corp</p>" and sample["missing"] == []
        real = c.post(f"/api/v1/templates/{tid}/preview", headers=h, json={"merge": {"lead_id": CRM["lead"][0]}}).json()
        assert real["body_html"] == "<p>Hi there at </p>" and real["missing"] == ["company"]
        assert c.post(f"/api/v1/templates/{tid}/preview", headers=h, json={"merge": {"contact_id": "nope"}}).status_code == 404


class TestExportAndFromEmail:
    def test_metrics_csv_and_as_template(self, env: dict[str, Any]) -> None:
        c, h = env["c"], env["h"]
        tid = create(env, name="=HYPERLINK(evil)").json()["id"]
        r = c.post("/api/v1/emails/send", headers=h, json={"account_id": env["account_id"], "to": ["r@x.example"],
                                                          "template_id": tid, "merge": {}, "track_opens": False,
                                                          "track_clicks": False})
        eid = r.json()["id"]
        drain(env["broker"], env["worker"])
        csv_text = c.get("/api/v1/templates/metrics.csv", headers=h)
        assert csv_text.status_code == 200 and csv_text.headers["content-type"].startswith("text/csv")
        lines = csv_text.text.splitlines()
        assert lines[0].startswith("id,name,category") and f"{tid},'=HYPERLINK(evil),sales,False,1,1" in lines[1]
        made = c.post(f"/api/v1/emails/{eid}/as-template", headers=h, json={"name": "From mail", "category": "follow-up"})
        assert made.status_code == 201 and made.json()["subject"] == "Hi there" and made.json()["merge_fields"] == []
        assert "Hi there" in made.json()["body_html"]
        assert c.post("/api/v1/emails/nope/as-template", headers=h, json={"name": "x"}).status_code == 404


class TestDefaults:
    def test_every_new_org_has_ten_valid_defaults(self, env: dict[str, Any]) -> None:
        """Ten or more public defaults, each valid under the engine, none left with an empty field."""
        from pipeline.stages.merge import render

        items = [t for t in env["c"].get("/api/v1/templates?limit=200", headers=env["h"]).json()["items"] if not t["created_by"]]
        assert len(items) >= 10 and all(t["is_public"] for t in items)
        assert {"outreach", "follow-up", "proposal", "support", "onboarding", "renewal", "meeting", "re-engagement"} <= {
            t["category"] for t in items}
        for t in items:
            for part, mode in ((t["subject"], "subject"), (t["body_html"], "html")):
                assert render(part, {"senderEmail": "sam@acme.example"}, mode=mode).missing == (), t["name"]
