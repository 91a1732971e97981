"""pipeline.stages.notion_blocks: HTML → blocks (fixtures), and the property that any input converts
without raising into requests that satisfy Notion's limits (the stand-in's own validator)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.stages import notion_blocks as nb
from tests.harness.notion_server import validate_children


def plain(block: dict[str, Any]) -> str:
    return "".join(r["text"]["content"] for r in block[block["type"]].get("rich_text", []))


def requests_for(blocks: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Every request the save actor would send for these blocks (appends to deferred children included)."""
    out = []
    for group in nb.batches(blocks):
        out.append([b for b, _ in group])
        for _, later in group:
            if later:
                out.extend(requests_for(later))
    return out


class TestConversion:
    def test_headings_paragraphs_and_inline_styles(self) -> None:
        b = nb.html_to_blocks('<h1>A</h1><h4>D</h4><p>x <strong>b</strong> <em>i</em> <u>u</u> <del>s</del> <code>c</code> '
                              '<a href="mailto:a@b.example">m</a> <a href="javascript:alert(1)">j</a></p>')
        assert [x["type"] for x in b] == ["heading_1", "heading_3", "paragraph"]
        runs = {r["text"]["content"]: r for r in b[2]["paragraph"]["rich_text"]}
        assert runs["b"]["annotations"]["bold"] and runs["i"]["annotations"]["italic"] and runs["u"]["annotations"]["underline"]
        assert runs["s"]["annotations"]["strikethrough"] and runs["c"]["annotations"]["code"]
        assert runs["m"]["text"]["link"] == {"url": "mailto:a@b.example"}
        assert all(r["text"]["link"] is None for r in b[2]["paragraph"]["rich_text"] if r["text"]["content"] != "m")

    def test_scripts_styles_and_pixels_are_dropped(self) -> None:
        b = nb.html_to_blocks('<head><title>T</title><style>.x{}</style></head><body><script>evil()</script><p>ok</p>'
                              '<img src="https://t.example/p.gif" width="1" height="1"><img src="https://x.example/track/open/a/b">'
                              '<div style="display:none">preheader</div><img src="https://cdn.example/logo.png" alt="Logo"></body>')
        assert [(x["type"], plain(x) if x["type"] == "paragraph" else x.get("image", {}).get("external", {}).get("url")) for x in b] == [
            ("paragraph", "ok"), ("image", "https://cdn.example/logo.png")]

    def test_nested_lists_and_br(self) -> None:
        b = nb.html_to_blocks("<ol><li>one<br>two<ul><li>a</li><li>b<ol><li>deep</li></ol></li></ul></li><li><p>three</p></li></ol>")
        assert [x["type"] for x in b] == ["numbered_list_item", "numbered_list_item"]
        assert plain(b[0]) == "one\ntwo" and plain(b[1]) == "three"
        kids = b[0]["numbered_list_item"]["children"]
        assert [plain(k) for k in kids] == ["a", "b"] and plain(kids[1]["bulleted_list_item"]["children"][0]) == "deep"

    def test_layout_tables_are_containers_data_tables_are_tables(self) -> None:
        layout = nb.html_to_blocks("<table><tr><td><p>Hello</p><table><tr><td>inner</td></tr></table></td></tr></table>")
        assert [x["type"] for x in layout] == ["paragraph", "table"]
        data = nb.html_to_blocks("<table><tr><td>a</td></tr><tr><td>b</td><td>c</td></tr></table>")
        assert data[0]["table"]["table_width"] == 2 and data[0]["table"]["has_column_header"] is False
        assert [len(r["table_row"]["cells"]) for r in data[0]["table"]["children"]] == [2, 2]

    def test_long_text_is_split_at_2000_and_100_runs(self) -> None:
        (p,) = nb.html_to_blocks("<p>" + "x" * 4500 + "</p>")
        assert [len(r["text"]["content"]) for r in p["paragraph"]["rich_text"]] == [2000, 2000, 500]
        many = nb.html_to_blocks("<p>" + "".join(f"<b>{i}</b> " for i in range(150)) + "</p>")
        assert len(many) == 3 and all(len(x["paragraph"]["rich_text"]) <= 100 for x in many)

    def test_pre_keeps_its_whitespace_and_text_bodies(self) -> None:
        (code,) = nb.html_to_blocks("<pre>  indented\n    more</pre>")
        assert code["type"] == "code" and plain(code) == "  indented\n    more"
        assert [plain(x) for x in nb.text_to_blocks("Hi,\r\nline two\n\n\nBye")] == ["Hi,\nline two", "Bye"]

    def test_garbage_never_raises(self) -> None:
        for junk in ("", "   ", "<", "<<<>>>", "<p", "\x00\x01", "<?xml version='1.0'?><x/>", "<!-- only a comment -->"):
            nb.html_to_blocks(junk)


class TestRequests:
    def test_wide_and_deep_trees_are_split(self) -> None:
        deep = "<ul><li>1<ul><li>2<ul><li>3<ul><li>4</li></ul></li></ul></li></ul></li></ul>"
        wide = "<ul><li>top<ul>" + "".join(f"<li>{i}</li>" for i in range(150)) + "</ul></li></ul>"
        rows = "<table>" + "".join(f"<tr><td>{i}</td></tr>" for i in range(130)) + "</table>"
        for html in (deep, wide, rows, "<p>x</p>" * 250):
            reqs = requests_for(nb.html_to_blocks(html))
            for r in reqs:
                validate_children(r)
        assert len(requests_for(nb.html_to_blocks("<p>x</p>" * 250))) == 3

    def test_a_block_that_fits_goes_whole(self) -> None:
        (item,) = nb.html_to_blocks("<ul><li>a<ul><li>b<ul><li>c</li></ul></li></ul></li></ul>")
        sent, later = nb.split_for_request(item)
        assert sent == item and later == [] and nb.depth(item) == 2


_TAGS = ["p", "div", "span", "b", "i", "u", "s", "code", "a", "h1", "h2", "h3", "h5", "ul", "ol", "li", "blockquote", "pre",
         "table", "tr", "td", "th", "thead", "br", "hr", "img", "script", "style", "font", "center", "em", "strong"]
_ATTRS = st.sampled_from(['', ' href="https://x.example/a"', ' href="javascript:x"', ' href="' + "https://l.example/" + "y" * 2100 + '"',
                          ' style="font-weight:bold"', ' style="display:none"', ' width="1" height="1"', ' src="https://i.example/a.png"',
                          ' href="mailto:a@b.example"'])
_TEXT = st.one_of(st.text(max_size=30), st.text(alphabet="ab <>&;\n\t", max_size=3000), st.just("z" * 2500))


@st.composite
def _html(draw: Any, depth: int = 0) -> str:
    if depth > 6 or draw(st.integers(0, 3)) == 0:
        return str(draw(_TEXT))
    tag = draw(st.sampled_from(_TAGS))
    inner = "".join(draw(st.lists(_html(depth=depth + 1), max_size=4 if depth < 3 else 2)))
    closing = draw(st.booleans())  # sometimes unclosed, like real mail
    return f"<{tag}{draw(_ATTRS)}>{inner}" + (f"</{tag}>" if closing else "")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_html())
def test_any_html_converts_into_requests_notion_accepts(html: str) -> None:
    blocks = nb.html_to_blocks(html)
    for request in requests_for(blocks):
        validate_children(request)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=6000))
def test_any_text_converts_into_requests_notion_accepts(text: str) -> None:
    for request in requests_for(nb.text_to_blocks(text)):
        validate_children(request)
    for request in requests_for(nb.html_to_blocks(text)):
        validate_children(request)


def test_many_list_items_nested_widely_stay_within_the_element_cap() -> None:
    item = "<li>x<ul>" + "".join("<li>y<ul><li>z</li></ul></li>" for _ in range(60)) + "</ul></li>"
    html = "<ul>" + item * 30 + "</ul>"
    reqs = requests_for(nb.html_to_blocks(html))
    for r in reqs:
        assert validate_children(r) <= 1000
