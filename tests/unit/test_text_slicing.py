"""The GIL-friendly helpers give exactly what the one-call versions give (issue 14).

``slices.sub_in_slices`` and ``sub_by_match`` against ``pattern.sub``; ``mime_bytes.as_bytes``
against ``msg.as_bytes()``; ``html_guard.drop_elements`` against lxml's ``drop_tree``;
``html_guard.cap_attributes`` leaves ordinary markup alone. The slice size is shrunk to a few
characters so every cut is exercised on small inputs.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from email.generator import BytesGenerator

import lxml.html
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.stages import compose as compose_module
from pipeline.stages import html_text, mime_bytes, slices
from pipeline.stages.budgets import MAX_ATTRIBUTES
from pipeline.stages.compose import Draft, OutgoingAttachment, compose
from pipeline.stages.html_guard import cap_attributes, drop_elements
from pipeline.stages.html_text import html_to_text

# (pattern, replacement, cut) as the transformations use them.
CASES = [
    (re.compile(r"\s+"), " ", slices.cut_before_non_space),
    (re.compile(r"[^\S\n]{2,}|[^\S \n]"), " ", slices.cut_before_non_space),
    (re.compile(r"\n{3,}"), "\n\n", slices.cut_before_newline_run),
    (re.compile(r"(?<! ) ++$", re.M), "", slices.cut_after_non_space),
    (re.compile(r"^> (?=>|$)", re.M), ">", slices.cut_after_newline),
    (re.compile(r"(?:<[^<>]*+>)++"), " ", slices.cut_before_tag),
    (re.compile(r"<[^<>]*>"), "\n", slices.cut_before_tag),
    (re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]"), "", slices.cut_anywhere),
]
TEXT = st.text(alphabet=" \n\t\r\xa0ab<>/=\"'\x01-", max_size=120)


@pytest.fixture
def tiny_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (slices, html_text, mime_bytes):
        monkeypatch.setattr(module, "SLICE", 3)


class TestSubInSlices:
    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(text=TEXT, case=st.sampled_from(range(len(CASES))), size=st.integers(1, 9))
    def test_same_as_one_sub(self, text: str, case: int, size: int) -> None:
        """Whatever the slice size, the result is pattern.sub over the whole text."""
        pattern, repl, cut = CASES[case]
        original = slices.SLICE
        slices.SLICE = size
        try:
            assert slices.sub_in_slices(pattern, repl, text, cut) == pattern.sub(repl, text)
        finally:
            slices.SLICE = original

    @settings(max_examples=200, deadline=None)
    @given(text=st.text(alphabet="<!-->sx ", max_size=80))
    def test_sub_by_match(self, text: str) -> None:
        """One Python step per match, the same result."""
        pattern = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
        assert slices.sub_by_match(pattern, " ", text) == pattern.sub(" ", text)


class TestHtmlToTextInSlices:
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(parts=st.lists(st.sampled_from(["<p>", "</p>", "<br>", "<pre>", "</pre>", "<blockquote>", "</blockquote>",
                                           "<ul><li>", "<a href='https://x.example/'>", "</a>", " ", "  ", "\n",
                                           "\n\n\n", "x", "> y", "\t", "<!-- c -->", "&#1;"]), max_size=40),
           deep=st.booleans())
    def test_same_text_with_three_character_slices(self, parts: list[str], deep: bool, monkeypatch: pytest.MonkeyPatch) -> None:
        """html_to_text gives the same text with 3-character slices as without slicing (deep: the
        tag-stripping path libxml2's nesting limit leads to)."""
        markup = "".join(parts)
        if deep:
            markup = "<div>" * 300 + markup + "</div>" * 300
        expected = html_to_text(markup)
        with monkeypatch.context() as m:
            for module in (slices, html_text):
                m.setattr(module, "SLICE", 3)
            assert html_to_text(markup) == expected


class TestMimeBytes:
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(text=st.text(alphabet="ab \r\n=é-", max_size=300), html=st.one_of(st.none(), st.text(alphabet="<p>x \n\r-", max_size=200)),
           attach=st.booleans(), seed=st.integers(0, 2**32))
    def test_same_bytes_as_the_stdlib(self, text: str, html: str | None, attach: bool, seed: int,
                                      tiny_slices: None) -> None:
        """compose's serializer writes the bytes msg.as_bytes() writes (same random boundaries)."""
        draft = Draft(from_email="a@b.example", from_name=None, to=("c@d.example",), subject="s", text=text or None,
                      html=html, message_id="m@b.example", date=datetime(2025, 1, 1, tzinfo=UTC),
                      attachments=(OutgoingAttachment("n.txt", "text/plain", b"line\r\n" * 5),) if attach else ())
        random.seed(seed)
        sliced, _ = compose(draft)
        random.seed(seed)
        original = compose_module.as_bytes
        compose_module.as_bytes = lambda msg: msg.as_bytes()
        try:
            whole, _ = compose(draft)
        finally:
            compose_module.as_bytes = original
        assert sliced == whole

    def test_boundary_collision_is_avoided_as_the_stdlib_does(self, tiny_slices: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
        """Content holding a line equal to the drawn boundary gets the stdlib's suffixed boundary."""
        monkeypatch.setattr(random, "randrange", lambda *a: 7)
        taken = "=" * 15 + f"{7:019d}" + "=="
        content = b"x\n" * 10 + b"--" + taken.encode() + b"\n" + b"y\n" * 10
        sliced = mime_bytes._SlicedGenerator._make_boundary(content)
        assert sliced == BytesGenerator._make_boundary(content) == f"{taken}.0"


class TestHtmlGuard:
    @settings(max_examples=200, deadline=None)
    @given(parts=st.lists(st.sampled_from(["<p>", "</p>", "<script>s</script>", "<style>t</style>", "<b>", "</b>",
                                           "tail", " ", "<noscript>n</noscript>", "<i>i</i>"]), max_size=25))
    def test_drop_elements_is_drop_tree(self, parts: list[str]) -> None:
        """Dropping in one pass per parent leaves what drop_tree one element at a time leaves."""
        markup = "<div>" + "".join(parts) + "</div>"
        one, other = lxml.html.fromstring(markup), lxml.html.fromstring(markup)
        for el in list(one.iter("script", "style", "noscript")):
            el.drop_tree()
        drop_elements(other, {"script", "style", "noscript"})
        assert lxml.html.tostring(other) == lxml.html.tostring(one)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(parts=st.lists(st.sampled_from(["<a", "<b", " x", " y=1", " z='<b q'", ' w="a>b"', "<", ">", "/", "t", " ",
                                           "<1", "=", "'", '"']), max_size=300))
    def test_cap_attributes_is_one_left_to_right_pass(self, parts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
        """With a cap of 3, the result is what one substitution consuming every start tag (with all
        its attributes) from left to right gives: each tag keeps its first 3."""
        from pipeline.stages import html_guard

        tag, attr = html_guard._TAG_START, html_guard._ATTR
        monkeypatch.setattr(html_guard, "_PLAIN", re.compile(
            rf"(?:[^<]++|<(?![A-Za-z])|{tag}(?:{attr}){{0,3}}+(?!{attr})){{0,5}}+"))
        monkeypatch.setattr(html_guard, "_CROWDED_TAG", re.compile(rf"({tag}(?:{attr}){{3}})(?:{attr})++"))
        markup = "".join(parts)
        reference = re.compile(rf"({tag}(?:{attr}){{0,3}}+)(?:{attr})*+").sub(r"\1", markup)
        assert cap_attributes(markup) == reference

    def test_cap_attributes(self) -> None:
        """Ordinary markup is returned as is; a crowded tag keeps MAX_ATTRIBUTES attributes."""
        ordinary = "<p class='a' id=b data-x=\"1 2\">x</p><a href=https://x.example/>y</a>"
        assert cap_attributes(ordinary) is ordinary
        crowded = "<a href='https://x.example/' " + " ".join(f"a{i}='v'" for i in range(5_000)) + ">x</a>"
        element = lxml.html.fromstring(cap_attributes(crowded))
        assert len(element.attrib) == MAX_ATTRIBUTES and element.get("href") == "https://x.example/"
        assert element.text == "x"
