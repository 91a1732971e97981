"""pipeline.flows.notion_connect OAuth state round trip (ids with dots included) and the save lease (SQLite,
httpx.MockTransport as Notion). The end-to-end flows are in tests/integration/test_notion.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlmodel import Session

from models import Email, NotionSave
from models.db import get_engine
from tests.harness.flow import make_account, make_org


@pytest.fixture
def notion_api(db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[httpx.Request]]:
    from ops.settings import reset_settings
    from pipeline.clients.notion import use_notion_transport

    monkeypatch.setenv("MAILPIPE_NOTION_CLIENT_ID", "cid")
    monkeypatch.setenv("MAILPIPE_NOTION_CLIENT_SECRET", "csecret")
    reset_settings()
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "ntn_new", "refresh_token": "nrt_new", "workspace_id": "ws",
                                         "workspace_name": "Acme"})

    use_notion_transport(httpx.MockTransport(handler))
    yield seen
    use_notion_transport(None)


def test_state_round_trip_with_dots_in_the_user_id(notion_api: list[httpx.Request]) -> None:
    from pipeline.clients.notion import NotionError
    from pipeline.flows import notion_connect as notion

    org_id, _ = make_org()
    url = notion.oauth_start(org_id, "jane.doe")
    state = parse_qs(urlsplit(url).query)["state"][0]
    out = notion.oauth_finish("code-1", state)
    assert out == {"connected": True, "user_id": "jane.doe", "workspace_name": "Acme"}
    (req,) = notion_api
    assert req.headers["authorization"].startswith("Basic ") and json.loads(req.content)["grant_type"] == "authorization_code"
    with Session(get_engine()) as s:
        conn = notion.connection(s, org_id, "jane.doe")
    assert conn is not None and notion.token_of(conn) == "ntn_new" and conn.notion_api_key != "ntn_new"
    for bad in (state[:-1] + ("0" if state[-1] != "0" else "1"), "x.y", "nodot", state.split(".")[0] + "=.sig"):
        with pytest.raises(NotionError) as info:
            notion.oauth_finish("code-1", bad)
        assert info.value.code == "invalid_state"


def test_one_run_at_a_time_holds_a_save(db: str) -> None:
    from models.lease import LeaseLost as _LeaseLost
    from pipeline.flows.notion_save import NotionSaveRun as _Save

    org_id, _ = make_org()
    account_id = make_account(org_id)
    with Session(get_engine()) as s:
        email = Email(org_id=org_id, account_id=account_id, dedupe_key="k1", subject="S")
        s.add(email)
        s.commit()
        save = NotionSave(org_id=org_id, email_id=email.id, user_id="u1", database_id="db", title="t")
        s.add(save)
        s.commit()
        save_id = save.id
    first, second = _Save(save_id, "msg-a:1"), _Save(save_id, "msg-b:1")
    assert first.claim() and not second.claim(), "a second message waits for the first run's lease"
    with pytest.raises(_LeaseLost):
        second._set(state="creating")
    first._set(state="creating")
    again = _Save(save_id, "msg-a:2")
    assert again.claim(), "a redelivery of the same message takes the lease over"
    with pytest.raises(_LeaseLost):
        first._set(page_id="p")
    again.release()
    assert _Save(save_id, "msg-c:1").claim()
