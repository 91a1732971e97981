"""pipeline.stages.merge: the {{field|fallback}} engine, its errors and its escaping (with property tests)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.stages.merge import FIELDS, MergeSyntaxError, parse, render, suggest, unknown_fields

values = st.dictionaries(st.sampled_from(FIELDS), st.one_of(st.none(), st.text(max_size=40)), max_size=len(FIELDS))
TEMPLATE = '<p>Hi {{firstName|there}}, {{ company | your team }} <a href="https://x.example/?c={{company|none}}">x</a></p>'


class TestParse:
    def test_tags_names_fallbacks_and_whitespace(self) -> None:
        tags = parse("Hi {{firstName}}, {{ lastName | dear friend }}!")
        assert [(t.name, t.fallback) for t in tags] == [("firstName", None), ("lastName", "dear friend")]

    @pytest.mark.parametrize(("text", "message", "position"), [
        ("Hi {{firstName", "unclosed '{{'", 3), ("{{ }}", "empty field name", 0), ("a {{|x}}", "empty field name", 2),
        ("{{first name}}", "invalid field name 'first name'", 0)])
    def test_syntax_errors_carry_their_position(self, text: str, message: str, position: int) -> None:
        with pytest.raises(MergeSyntaxError) as info:
            parse(text)
        assert info.value.message == message and info.value.position == position

    def test_unknown_fields_and_suggestions(self) -> None:
        assert unknown_fields(["Hi {{fistName}} {{firstName}}"]) == ["fistName"]
        assert suggest("fistName")[0] == "firstName" and suggest("companyy")[0] == "company"


class TestRender:
    def test_values_fallbacks_and_missing(self) -> None:
        out = render("Hi {{firstName|there}} from {{company}}", {"firstName": "  "}, mode="text")
        assert out.text == "Hi there from " and out.missing == ("company",)
        assert render("Hi {{firstName|there}}", {"firstName": "Jane"}, mode="text").text == "Hi Jane"

    def test_subject_and_text_lose_line_breaks(self) -> None:
        assert render("Re: {{company}}", {"company": "Evil\r\nBcc: x@y"}, mode="subject").text == "Re: Evil Bcc: x@y"

    def test_url_attributes_only_take_http_https_mailto(self) -> None:
        tpl = '<a href="{{website}}">site</a>'
        assert render(tpl, {"website": "https://acme.example"}, mode="html").text == '<a href="https://acme.example">site</a>'
        bad = render(tpl, {"website": "javascript:alert(1)"}, mode="html")
        assert bad.text == '<a href="">site</a>' and bad.unsafe == ("website",)
        assert render('<a href="https://x/?q={{company}}">', {"company": 'a"b'}, mode="html").text == '<a href="https://x/?q=a&quot;b">'

    @given(values)
    def test_never_raises_and_never_lets_markup_through(self, vals: dict[str, str | None]) -> None:
        out = render(TEMPLATE, vals, mode="html")
        # What the fields produced: the output with the template's own markup taken out.
        produced = out.text
        for literal in ('<p>Hi ', ', ', ' <a href="https://x.example/?c=', '">x</a></p>'):
            produced = produced.replace(literal, "\x00", 1)
        for v in vals.values():
            if v and any(c in v for c in '<>"'):
                assert v not in produced
        assert not any(c in produced for c in '<>"')

    @given(st.text(max_size=30).map(lambda s: f"<script>{s}</script>\"'"))
    def test_hostile_values_are_escaped(self, hostile: str) -> None:
        out = render("<p>{{firstName}}</p>", {"firstName": hostile}, mode="html").text
        assert "<script>" not in out and '"' not in out[3:-4]

    @given(st.sampled_from(FIELDS), st.one_of(st.none(), st.just(""), st.just("   "), st.text(min_size=1, max_size=20)))
    def test_fallback_applies_exactly_when_blank(self, field: str, value: str | None) -> None:
        out = render(f"{{{{{field}|FALLBACK}}}}", {field: value}, mode="text").text
        blank = value is None or not value.strip()
        assert out == ("FALLBACK" if blank else re.sub(r"[\x00-\x1f\x7f\u2028\u2029]+", " ", value or ""))

    @given(st.text(max_size=200).filter(lambda s: "{{" not in s))
    def test_text_without_tags_is_unchanged(self, text: str) -> None:
        for mode in ("html", "text", "subject"):
            assert render(text, {}, mode=mode).text == text
