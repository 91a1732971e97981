"""pipeline.stages.notion_page: column choice by type, properties, title, tags, the ref header, errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.stages.notion_page import (
    Columns,
    choose_columns,
    classify_error,
    clean_tags,
    default_title,
    find_ref,
    header_block,
    page_properties,
)


def props(**kinds: str) -> dict[str, dict[str, str]]:
    return {name.replace("_", " "): {"type": kind} for name, kind in kinds.items()}


def test_columns_by_type_preferring_usual_names() -> None:
    c = choose_columns(props(Title="title", Contact_email="email", From="email", Due="date", Received="date", Topics="multi_select"))
    assert c == Columns(title="Title", sender="From", date="Received", tags="Topics")
    assert choose_columns(props(Name="title")) == Columns("Name", None, None, None)


def test_properties_only_for_existing_columns_and_within_limits() -> None:
    when = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    full = page_properties(Columns("Name", "From", "Date", "Tags"), title="T" * 2500, sender="a@b.example", date=when,
                           tags=["x, y", "X  Y", "z"])
    assert len(full["Name"]["title"][0]["text"]["content"]) == 2000 and full["From"] == {"email": "a@b.example"}
    assert full["Date"] == {"date": {"start": "2026-12-01T09:30:00+00:00"}}
    assert full["Tags"]["multi_select"] == [{"name": "x y"}, {"name": "z"}]
    assert page_properties(Columns("Name", None, None, None), title="t", sender="a@b", date=when, tags=["q"]).keys() == {"Name"}
    long_sender = "a" * 199 + "@b.example"
    assert "From" not in page_properties(Columns("Name", "From", None, None), title="t", sender=long_sender, date=None, tags=[])


def test_title_and_tags() -> None:
    assert default_title("Ada Lovelace", "Proposal") == "Ada Lovelace - Proposal"
    assert default_title(None, " ") == "(no subject)" and default_title("", "Hi") == "Hi"
    assert clean_tags(["a"] * 3 + [f"t{i}" for i in range(200)])[:2] == ["a", "t0"]
    assert len(clean_tags([f"t{i}" for i in range(200)])) == 100


def test_header_carries_the_ref() -> None:
    block = header_block("abc123", "ada@engine.example", datetime(2026, 12, 1, tzinfo=UTC), "https://crm.example/e/1")
    assert find_ref(block) == "abc123"
    assert find_ref({"type": "paragraph", "paragraph": {"rich_text": [{"plain_text": "hello"}]}}) is None
    assert find_ref({"type": "divider", "divider": {}}) is None


@pytest.mark.parametrize("status,code,retry_after,action,wait", [
    (429, "rate_limited", "2", "wait", 2.0), (529, "service_overload", None, "wait", 2.0), (429, "rate_limited", "soon", "wait", 2.0),
    (500, "internal_server_error", None, "retry", 0.0), (0, "network", None, "retry", 0.0),
    (401, "unauthorized", None, "fail", 0.0), (404, "object_not_found", None, "fail", 0.0), (400, "validation_error", None, "fail", 0.0),
])
def test_error_verdicts(status: int, code: str, retry_after: str | None, action: str, wait: float) -> None:
    v = classify_error(status, code, "m", retry_after)
    assert (v.action, v.wait_seconds) == (action, wait)
    if status == 401:
        assert "connect Notion again" in v.message
