"""Unit tests for the tracking stages: pixel and link injection (link_rewrite), hashes (tracking_ids),
machine opens and clicks (hit_classify)."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import pytest
from lxml import etree

from ops.crypto import Keyring, generate_key_entry
from ops.settings import parse_secret_keys
from pipeline.stages import link_rewrite as tracking
from pipeline.stages.hit_classify import APPLE_NETWORKS, Verdict, classify_click, classify_open, is_machine_click, is_machine_open
from pipeline.stages.link_rewrite import Injected, TrackedLinkSpec, inject
from pipeline.stages.tracking_ids import click_url, link_hash, open_url, recipient_hash, verify_link_hash, verify_recipient_hash

PUBLIC = "https://crm.example.com"
EMAIL_ID = "em_01HX"
JANE = "Jane.Doe@Prospect.io"

KEYRING = Keyring(parse_secret_keys(generate_key_entry("k1")))
OPEN_SIGN = partial(KEYRING.sign, "open")
CLICK_SIGN = partial(KEYRING.sign, "click")
OPEN_VERIFY = partial(KEYRING.verify, "open")
CLICK_VERIFY = partial(KEYRING.verify, "click")

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
APPLE_MAIL = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"


def track(html: str, **overrides: Any) -> Injected:
    """Run inject with both signers and the standard ids, overriding some arguments."""
    args: dict[str, Any] = {
        "email_id": EMAIL_ID,
        "recipient": JANE,
        "public_url": PUBLIC,
        "open_signer": OPEN_SIGN,
        "click_signer": CLICK_SIGN,
    }
    args.update(overrides)
    return inject(html, **args)


def tracked(url: str, email_id: str = EMAIL_ID) -> str:
    """The click URL inject writes for ``url`` (a decoded target)."""
    return click_url(PUBLIC, email_id, link_hash(CLICK_SIGN, email_id, url))


def undo(result: Injected, raw: Mapping[str, str] | None = None) -> str:
    """Reverse inject's splices: drop the pixel, put back each link's original href spelling."""
    text = result.html
    if result.pixel_url is not None:
        text, count = re.subn(rf'<img src="{re.escape(result.pixel_url)}"[^>]*>', "", text)
        assert count == 1
    for spec in result.links:
        text = text.replace(tracked(spec.url), (raw or {}).get(spec.url, spec.url))
    return text


def lxml_hrefs(html: str) -> list[str | None]:
    """Every ``<a>``/``<area>`` href lxml sees, in document order."""
    root = etree.fromstring(html.encode(), etree.HTMLParser(encoding="utf-8"))
    return [] if root is None else [e.get("href") for e in root.iter("a", "area")]


def fill(template: str, values: Mapping[str, str]) -> str:
    """Replace ``@@NAME@@`` markers in ``template``."""
    return re.sub(r"@@(\w+)@@", lambda m: values[m.group(1)], template)


# A realistic marketing email: Outlook conditional comments with a VML button, odd spacing and quoting,
# entities, hrefs inside text, CSS, alt text and JSON-LD. @@X@@ marks the only bytes inject may change.
EMAIL = """<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:v="urn:schemas-microsoft-com:vml" xmlns:o="urn:schemas-microsoft-com:office:office">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<!--[if gte mso 9]><xml><o:OfficeDocumentSettings><o:PixelsPerInch>96</o:PixelsPerInch></o:OfficeDocumentSettings></xml><![endif]-->
<title>Proposal &amp; pricing <a href="https://in-title.example/">x</a></title>
<style type="text/css">
  a[href^="https://"] { color: #0a66c2; }  /* <a href="https://in-css.example/"> */
  @media (max-width: 600px) { .btn { width: 100% !important; } }
</style>
</head>
<BODY style="margin:0;padding:0">
<table role="presentation" width="100%"><tr><td align="center">
<p>Hi Jane,&nbsp;here&#8217;s the proposal &copy; 2026 &mdash; see href="https://in-text.example/x" or &lt;a href="https://escaped.example/"&gt;</p>
<!--[if mso]>
<v:roundrect xmlns:v="urn:schemas-microsoft-com:vml" href="https://vml.example/demo" style="height:40px;v-text-anchor:middle;width:200px;" arcsize="10%" fillcolor="#0a66c2">
<center><a href="https://in-mso-comment.example/">Schedule Demo</a></center></v:roundrect>
<![endif]-->
<!--[if !mso]><!-->
<a class="btn" href="@@DEMO@@" target="_blank" style="background:#0a66c2">Schedule&nbsp;Demo</a>
<!--<![endif]-->
<A HREF='@@PRICING@@'>Pricing</A> |
<a\ttitle="multi
line >"
   href  =  @@DOCS@@ >Docs</a>
<a href="mailto:sales@mycorp.com?subject=Hi&amp;body=x">Email us</a> <a href="tel:+1-555-0100">Call</a> <a href="#top">Top</a>
<a href="/relative/path">Relative</a> <a href="//cdn.example/proto-relative">Proto</a> <a href="javascript:void(0)">JS</a>
<a href="data:text/html,hi">Data</a> <a href="ftp://files.example/x">FTP</a> <a name="anchor">No href</a>
<a href="https://crm.example.com/unsubscribe/abc">Unsubscribe</a> <a href="HTTPS://CRM.EXAMPLE.COM/prefs">Prefs</a>
<a href="https://prefs.example/optout?u=1&amp;t=2">Opt out</a>
<img src="https://cdn.example/logo.png" alt="<a href='https://in-alt.example/'>">
<link rel="stylesheet" href="https://fonts.example/css">
<map name="m"><area shape="rect" coords="0,0,10,10" href="@@AREA@@" alt="Map link"></map>
<script type="application/ld+json">{"url": "<a href='https://in-script.example/'>"}</script>
<textarea><a href="https://in-textarea.example/">x</a></textarea>
</td></tr></table>
@@PIXEL@@</BODY>
</html>
"""  # noqa: E501  # a real marketing email's long lines, kept as they are
ORIGINAL = {
    "DEMO": "https://demo.example/book?utm_source=crm&amp;utm_medium=email",
    "PRICING": "  HTTPS://Pricing.Example/Plans\t",
    "DOCS": "https://docs.example/guide?a=1&amp;b=2",
    "AREA": "https://map.example/region",
    "PIXEL": "",
}
DECODED = {
    "DEMO": "https://demo.example/book?utm_source=crm&utm_medium=email",
    "PRICING": "HTTPS://Pricing.Example/Plans",
    "DOCS": "https://docs.example/guide?a=1&b=2",
    "AREA": "https://map.example/region",
}
SKIP = ("https://prefs.example/optout?u=1&t=2",)


class TestHashes:
    """HMAC ids for recipients and links, checked with the Keyring."""

    def test_recipient_hash_verifies_with_the_keyring(self) -> None:
        """A recipient hash verifies for its email and recipient, and not for another recipient."""
        rhash = recipient_hash(OPEN_SIGN, EMAIL_ID, JANE)
        assert verify_recipient_hash(OPEN_VERIFY, EMAIL_ID, JANE, rhash)
        assert not verify_recipient_hash(OPEN_VERIFY, EMAIL_ID, "bob@prospect.io", rhash)
        assert not verify_recipient_hash(OPEN_VERIFY, "em_other", JANE, rhash)

    def test_recipient_address_is_normalised(self) -> None:
        """Case, surrounding spaces and angle brackets do not change the recipient hash."""
        expected = recipient_hash(OPEN_SIGN, EMAIL_ID, "jane.doe@prospect.io")
        assert recipient_hash(OPEN_SIGN, EMAIL_ID, " JANE.DOE@Prospect.IO ") == expected
        assert recipient_hash(OPEN_SIGN, EMAIL_ID, "<Jane.Doe@prospect.io>") == expected

    def test_link_hash_is_per_email_and_url(self) -> None:
        """The same URL hashes alike within one email and differently in another email or for another URL."""
        first = link_hash(CLICK_SIGN, EMAIL_ID, "https://a.example/")
        assert first == link_hash(CLICK_SIGN, EMAIL_ID, "https://a.example/")
        assert first != link_hash(CLICK_SIGN, "em_other", "https://a.example/")
        assert first != link_hash(CLICK_SIGN, EMAIL_ID, "https://b.example/")
        assert verify_link_hash(CLICK_VERIFY, EMAIL_ID, "https://a.example/", first)

    def test_purposes_do_not_mix(self) -> None:
        """An open signature is not a valid click signature over the same parts."""
        rhash = recipient_hash(OPEN_SIGN, EMAIL_ID, JANE)
        assert not verify_link_hash(CLICK_VERIFY, EMAIL_ID, JANE.lower(), rhash)

    def test_hashes_survive_a_key_rotation(self) -> None:
        """Hashes signed under an old key still verify once a newer key is put in front."""
        old_entry, new_entry = generate_key_entry("old"), generate_key_entry("new")
        old = Keyring(parse_secret_keys(old_entry))
        rotated = Keyring(parse_secret_keys(f"{new_entry},{old_entry}"))
        lhash = link_hash(partial(old.sign, "click"), EMAIL_ID, "https://a.example/")
        assert verify_link_hash(partial(rotated.verify, "click"), EMAIL_ID, "https://a.example/", lhash)
        assert link_hash(partial(rotated.sign, "click"), EMAIL_ID, "https://a.example/") != lhash


class TestPixel:
    """The per-recipient open pixel."""

    def test_pixel_url_and_tag(self) -> None:
        """The pixel points at /track/open/{email_id}/{recipient_hash} and is a 1x1 image with empty alt."""
        result = track("<html><body><p>Hi</p></body></html>")
        rhash = recipient_hash(OPEN_SIGN, EMAIL_ID, JANE)
        assert result.pixel_url == f"{PUBLIC}/track/open/{EMAIL_ID}/{rhash}" == open_url(PUBLIC, EMAIL_ID, rhash)
        tag = re.search(r"<img [^>]*>", result.html)
        assert tag is not None
        assert f'src="{result.pixel_url}"' in tag.group()
        assert all(attr in tag.group() for attr in ('width="1"', 'height="1"', 'alt=""'))
        assert "display:none" not in tag.group()

    def test_each_recipient_gets_a_pixel_that_verifies_for_them_only(self) -> None:
        """Two recipients get different pixel hashes, each verifying for its own address."""
        html = "<html><body><p>Hi</p></body></html>"
        jane, bob = track(html, recipient=JANE), track(html, recipient="bob@prospect.io")
        assert jane.pixel_url is not None and bob.pixel_url is not None
        assert jane.pixel_url != bob.pixel_url
        jane_hash, bob_hash = jane.pixel_url.rsplit("/", 1)[1], bob.pixel_url.rsplit("/", 1)[1]
        assert verify_recipient_hash(OPEN_VERIFY, EMAIL_ID, JANE, jane_hash)
        assert verify_recipient_hash(OPEN_VERIFY, EMAIL_ID, "bob@prospect.io", bob_hash)
        assert not verify_recipient_hash(OPEN_VERIFY, EMAIL_ID, JANE, bob_hash)

    def test_inserted_right_before_body_end_tag_in_any_case(self) -> None:
        """The pixel lands immediately before ``</BODY>``, everything else unchanged."""
        result = track("<HTML><BODY>\n<p>Hi</p>\n</BODY>\n</HTML>\n")
        assert result.pixel_url is not None
        before, _, after = result.html.partition("<img ")
        assert before == "<HTML><BODY>\n<p>Hi</p>\n"
        assert after.endswith("></BODY>\n</HTML>\n")
        assert after.count(">") == 3

    def test_body_end_tags_in_comments_and_scripts_do_not_count(self) -> None:
        """A ``</body>`` inside a comment, script or attribute value is not where the pixel goes."""
        html = '<body><!-- </body> --><script>"</body>"</script><p title="</body>">x</p></body><!-- end -->'
        result = track(html)
        assert result.html.startswith(html[: html.rindex("</body>")] + "<img ")
        assert result.html.endswith("></body><!-- end -->")

    def test_no_body_tag_appends_at_the_end(self) -> None:
        """Without ``</body>`` the pixel is appended after the last byte."""
        result = track("<p>Just a fragment</p>\n")
        assert result.html.startswith("<p>Just a fragment</p>\n<img ")
        assert result.html.endswith(">")

    def test_unterminated_comment_does_not_swallow_the_pixel(self) -> None:
        """When the input ends inside a comment the pixel goes before the comment, where it still renders."""
        result = track("<p>Hi</p><!-- forgot to close")
        assert result.html.startswith("<p>Hi</p><img ")
        assert result.html.endswith("><!-- forgot to close")
        assert any(e.tag == "img" for e in etree.fromstring(result.html.encode(), etree.HTMLParser()).iter())

    def test_pixel_is_an_image_to_a_parser(self) -> None:
        """lxml sees the inserted pixel as an img element with the pixel URL."""
        result = track(fill(EMAIL, ORIGINAL), skip_urls=SKIP)
        root = etree.fromstring(result.html.encode(), etree.HTMLParser(encoding="utf-8"))
        assert result.pixel_url in [img.get("src") for img in root.iter("img")]

    def test_no_open_signer_no_pixel(self) -> None:
        """Opens not tracked: no pixel and no pixel URL, links still rewritten."""
        result = track('<body><a href="https://a.example/">a</a></body>', open_signer=None)
        assert result.pixel_url is None
        assert result.html == f'<body><a href="{tracked("https://a.example/")}">a</a></body>'


class TestLinkRewriting:
    """Which hrefs are replaced by click-tracking URLs."""

    @pytest.mark.parametrize(
        "url",
        ["http://a.example/", "https://a.example/x?y=1#frag", "HTTPS://A.EXAMPLE/", "Http://a.example/p"],
    )
    def test_absolute_http_links_are_rewritten(self, url: str) -> None:
        """An absolute http(s) href, whatever the scheme's case, becomes a click URL for that URL."""
        result = track(f'<a href="{url}">x</a>', open_signer=None)
        assert result.html == f'<a href="{tracked(url)}">x</a>'
        assert result.links == (TrackedLinkSpec(link_hash(CLICK_SIGN, EMAIL_ID, url), url, 0, "x"),)

    def test_rewritten_link_resolves_to_its_url(self) -> None:
        """The hash in each click URL verifies against the stored URL with the Keyring."""
        result = track('<a href="https://a.example/1">1</a><a href="https://b.example/2">2</a>')
        assert [spec.url for spec in result.links] == ["https://a.example/1", "https://b.example/2"]
        for spec in result.links:
            assert tracked(spec.url) in result.html
            assert verify_link_hash(CLICK_VERIFY, EMAIL_ID, spec.url, spec.link_hash)

    @pytest.mark.parametrize(
        "href",
        [
            "mailto:jane@prospect.io",
            "MAILTO:jane@prospect.io",
            "tel:+15550100",
            "#section-2",
            "#",
            "/relative/page",
            "relative/page.html",
            "//cdn.example/proto-relative",
            "javascript:alert(1)",
            " javascript:alert(1)",
            "data:text/html;base64,PGI+aGk8L2I+",
            "ftp://files.example/x",
            "https:no-slashes.example",
            "{{ unsubscribe_url }}",
            "",
        ],
    )
    def test_other_links_are_untouched(self, href: str) -> None:
        """Non-http(s), fragment, relative and template hrefs are left exactly as written."""
        html = f'<p><a href="{href}">x</a></p>'
        result = track(html, open_signer=None)
        assert result.html == html
        assert result.links == ()

    @pytest.mark.parametrize(
        "href",
        [
            "https://crm.example.com/unsubscribe/abc",
            "https://crm.example.com/track/click/em_1/abc",
            "HTTPS://CRM.Example.com/prefs?x=1",
            "https://crm.example.com",
            "https://crm.example.com?u=1",
        ],
    )
    def test_our_own_links_are_untouched(self, href: str) -> None:
        """Links under public_url (tracking, unsubscribe, preferences) are not tracked again."""
        html = f'<a href="{href}">x</a>'
        assert track(html, open_signer=None).html == html

    def test_a_lookalike_host_is_not_our_own(self) -> None:
        """A host that merely starts with our public host is someone else's link and is tracked."""
        url = "https://crm.example.com.evil.example/x"
        assert track(f'<a href="{url}">x</a>', open_signer=None).html == f'<a href="{tracked(url)}">x</a>'

    def test_public_url_trailing_slash_is_ignored(self) -> None:
        """A public_url given with a trailing slash builds the same URLs and own-link check."""
        html = '<a href="https://a.example/">a</a><a href="https://crm.example.com/u">u</a>'
        assert track(html, public_url=PUBLIC + "/").html == track(html).html

    def test_skip_urls_are_untouched(self) -> None:
        """A URL in skip_urls (the unsubscribe link) is left alone, matched after entity decoding."""
        html = '<a href="https://esp.example/unsub?u=1&amp;t=2">Unsubscribe</a><a href="https://a.example/">a</a>'
        result = track(html, open_signer=None, skip_urls=["https://esp.example/unsub?u=1&t=2"])
        assert result.html == (
            '<a href="https://esp.example/unsub?u=1&amp;t=2">Unsubscribe</a>'
            f'<a href="{tracked("https://a.example/")}">a</a>'
        )
        assert [spec.url for spec in result.links] == ["https://a.example/"]

    def test_area_links_are_rewritten(self) -> None:
        """``<area href>`` in an image map is tracked, with its alt text as the link text."""
        html = '<map name="m"><AREA shape=rect coords="0,0,9,9" HREF="https://map.example/" alt="Region"></map>'
        result = track(html, open_signer=None)
        assert result.html == html.replace("https://map.example/", tracked("https://map.example/"))
        assert result.links[0].text == "Region"

    def test_anchor_without_href_and_other_tags_with_href_are_untouched(self) -> None:
        """``<a name>``, ``<link href>``, ``<base href>`` and ``<abbr href>`` are not links to track."""
        html = (
            '<head><base href="https://base.example/"><link rel="stylesheet" href="https://fonts.example/css"></head>'
            '<a name="top">Top</a><abbr href="https://abbr.example/">x</abbr><area shape="default">'
        )
        assert track(html, open_signer=None).html == html

    @pytest.mark.parametrize(
        ("template", "expected_quote"),
        [
            ('<a href="{}">x</a>', '"'),
            ("<a href='{}'>x</a>", "'"),
            ("<a href={}>x</a>", ""),
            ("<a href = \n\t'{}'\n>x</a>", "'"),
            ('<A HREF="{}">x</A>', '"'),
            ('<a\nclass="c"\nhref="{}"\n>x</a>', '"'),
            ('<a data-x="a > b" href="{}">x</a>', '"'),
            ('<a/href="{}">x</a>', '"'),
        ],
    )
    def test_attribute_spellings(self, template: str, expected_quote: str) -> None:
        """Double, single and unquoted values, spaces around "=", newlines and uppercase all work, quoting kept."""
        url = "https://a.example/p?q=1"
        result = track(template.format(url), open_signer=None)
        assert result.html == template.format(tracked(url))
        assert [spec.url for spec in result.links] == [url]

    def test_only_the_first_href_attribute_counts(self) -> None:
        """With a duplicated href attribute the browser uses the first, so only that one is rewritten."""
        html = '<a href="https://first.example/" href="https://second.example/">x</a>'
        result = track(html, open_signer=None)
        assert result.html == f'<a href="{tracked("https://first.example/")}" href="https://second.example/">x</a>'

    def test_surrounding_whitespace_is_trimmed(self) -> None:
        """Spaces, tabs and newlines around the URL are dropped from the stored URL, as a browser does."""
        result = track('<a href="\n  https://a.example/x \t">x</a>', open_signer=None)
        assert [spec.url for spec in result.links] == ["https://a.example/x"]
        assert result.html == f'<a href="{tracked("https://a.example/x")}">x</a>'

    def test_no_click_signer_no_rewriting(self) -> None:
        """Clicks not tracked: every href kept, only the pixel added."""
        html = '<body><a href="https://a.example/">a</a></body>'
        result = track(html, click_signer=None)
        assert result.links == ()
        assert undo(result) == html
        assert "https://a.example/" in result.html


class TestEntities:
    """Character references in hrefs are decoded before hashing and storing."""

    def test_amp_is_decoded_before_hashing_and_stored_decoded(self) -> None:
        """``&amp;`` in the href: the stored URL and its hash use ``&``."""
        result = track('<a href="https://a.example/?x=1&amp;y=2">x</a>', open_signer=None)
        (spec,) = result.links
        assert spec.url == "https://a.example/?x=1&y=2"
        assert spec.link_hash == link_hash(CLICK_SIGN, EMAIL_ID, "https://a.example/?x=1&y=2")
        assert result.html == f'<a href="{tracked("https://a.example/?x=1&y=2")}">x</a>'

    def test_spellings_of_one_url_share_a_hash(self) -> None:
        """``&amp;``, ``&#38;``, ``&#x26;`` and a bare ``&`` spell the same URL, so one link is stored."""
        spellings = ["&amp;", "&#38;", "&#x26;", "&", "&AMP;"]
        html = "".join(f'<a href="https://a.example/?x=1{s}y=2">{i}</a>' for i, s in enumerate(spellings))
        result = track(html, open_signer=None)
        assert [(spec.url, spec.position) for spec in result.links] == [("https://a.example/?x=1&y=2", 0)]
        assert result.html.count(tracked("https://a.example/?x=1&y=2")) == len(spellings)

    def test_legacy_entity_names_before_equals_stay_literal(self) -> None:
        """``&not=`` and ``&copy=`` in a query string are not references inside an attribute (HTML5 rule)."""
        result = track('<a href="https://a.example/?a=1&not=2&copy=3&lang=en">x</a>', open_signer=None)
        assert [spec.url for spec in result.links] == ["https://a.example/?a=1&not=2&copy=3&lang=en"]

    def test_encoded_scheme_is_still_a_web_link(self) -> None:
        """A scheme spelled with numeric references decodes to https and is tracked."""
        result = track('<a href="&#104;ttps&#x3a;//a.example/">x</a>', open_signer=None)
        assert [spec.url for spec in result.links] == ["https://a.example/"]

    def test_non_ascii_urls_are_kept_as_written(self) -> None:
        """Non-ASCII and spaces inside the URL are stored as written, not percent-encoded."""
        result = track('<a href="https://café.example/menü?q=a b">x</a>', open_signer=None)
        assert [spec.url for spec in result.links] == ["https://café.example/menü?q=a b"]

    def test_newlines_inside_a_url_are_removed(self) -> None:
        """A URL broken across lines is stored without the line breaks, as browsers read it."""
        result = track('<a href="https://a.example/long\r\n/path">x</a>', open_signer=None)
        assert [spec.url for spec in result.links] == ["https://a.example/long/path"]

    def test_tracking_url_is_escaped_for_its_attribute(self) -> None:
        """An email id needing escapes is percent-encoded in the path, so the attribute stays intact."""
        result = track("<a href='https://a.example/'>x</a>", email_id="id with 'quote'&amp", open_signer=None)
        (spec,) = result.links
        assert result.html == f"<a href='{PUBLIC}/track/click/id%20with%20%27quote%27%26amp/{spec.link_hash}'>x</a>"
        assert etree.fromstring(result.html.encode(), etree.HTMLParser()).find(".//a").get("href").startswith(PUBLIC)


class TestPreservation:
    """Nothing but the replaced href values and the pixel changes, byte for byte."""

    @pytest.mark.parametrize("newline", ["\n", "\r\n"])
    def test_realistic_email_changes_only_the_marked_bytes(self, newline: str) -> None:
        """MSO conditional comments, odd whitespace, uppercase, quoting and entities elsewhere survive exactly."""
        template = EMAIL.replace("\n", newline)
        result = track(fill(template, ORIGINAL), skip_urls=SKIP)
        assert result.pixel_url is not None
        pixel = re.search(rf'<img src="{re.escape(result.pixel_url)}"[^>]*>', result.html)
        assert pixel is not None
        expected = fill(template, {**{k: tracked(v) for k, v in DECODED.items()}, "PIXEL": pixel.group()})
        assert result.html == expected

    def test_realistic_email_links(self) -> None:
        """The realistic email tracks exactly its four web links, in order, with their visible text."""
        result = track(fill(EMAIL, ORIGINAL), skip_urls=SKIP)
        assert [(s.url, s.position, s.text) for s in result.links] == [
            (DECODED["DEMO"], 0, "Schedule Demo"),
            (DECODED["PRICING"], 1, "Pricing"),
            (DECODED["DOCS"], 2, "Docs"),
            (DECODED["AREA"], 3, "Map link"),
        ]

    def test_undoing_the_splices_gives_the_input_back(self) -> None:
        """Removing the pixel and restoring the original href spellings reproduces the input exactly."""
        html = fill(EMAIL, ORIGINAL)
        raw = {DECODED[k]: ORIGINAL[k] for k in DECODED}
        assert undo(track(html, skip_urls=SKIP), raw) == html

    @pytest.mark.parametrize(
        "html",
        [
            '<p>Use href="https://a.example/" in your markup</p>',
            '<!-- <a href="https://a.example/">old</a> -->',
            '<!--[if mso]><a href="https://a.example/">mso only</a><![endif]-->',
            '<script>document.write(\'<a href="https://a.example/">x</a>\')</script>',
            '<script><!-- <script> </script> <a href="https://a.example/">x</a> --></script>',
            '<style>/* <a href="https://a.example/"> */ a{color:red}</style>',
            '<textarea><a href="https://a.example/">x</a></textarea>',
            '<title><a href="https://a.example/">x</a></title>',
            '<img alt=\'<a href="https://a.example/">\'>',
            '<p data-html="<a href=https://a.example/>">x</p>',
            '<?xml-stylesheet <a href="https://a.example/"> ?>',
            '<![CDATA[ <a href="https://a.example/"> ]]>',
            '&lt;a href="https://a.example/"&gt;',
        ],
    )
    def test_href_outside_real_link_tags_is_untouched(self, html: str) -> None:
        """Link markup in text, comments, conditional comments, scripts, styles, RCDATA and attributes is left alone."""
        result = track(html, open_signer=None)
        assert result.html == html
        assert result.links == ()

    def test_double_escaped_script_hides_its_links(self) -> None:
        """A ``<script>`` opened inside ``<!--`` within a script does not end the outer script early."""
        html = "<script><!--<script></script><a href=https://a.example/>--></script><a href=https://a.example/>real</a>"
        result = track(html, open_signer=None)
        assert result.html == html[: html.rindex("https://")] + tracked("https://a.example/") + ">real</a>"

    def test_links_lxml_does_not_confirm_are_left_alone(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A located link lxml does not have (the parsers disagree) stays untracked; later links still pair."""
        real = tracking._lxml_links
        monkeypatch.setattr(
            tracking, "_lxml_links", lambda text: [item for item in real(text) if item[1] != "https://b.example/"]
        )
        html = '<a href="https://a.example/">a</a><a href="https://b.example/">b</a><a href="https://c.example/">c</a>'
        result = track(html, open_signer=None)
        assert [spec.url for spec in result.links] == ["https://a.example/", "https://c.example/"]
        assert result.html == (
            f'<a href="{tracked("https://a.example/")}">a</a><a href="https://b.example/">b</a>'
            f'<a href="{tracked("https://c.example/")}">c</a>'
        )

    def test_downlevel_revealed_content_is_tracked(self) -> None:
        """Content between ``<!--[if !mso]><!-->`` and ``<!--<![endif]-->`` is real markup and is tracked."""
        html = '<!--[if !mso]><!--><a href="https://a.example/">x</a><!--<![endif]-->'
        result = track(html, open_signer=None)
        assert result.html == html.replace("https://a.example/", tracked("https://a.example/"))

    def test_random_markup_soup_is_preserved_and_fully_tracked(self) -> None:
        """On 1,500 seeded random documents, every web link lxml sees is rewritten and nothing else changes."""
        links = {
            '<a href="https://x.example/?a=1&amp;b=2">': ("https://x.example/?a=1&b=2", "https://x.example/?a=1&amp;b=2"),
            "<A HREF='https://y.example/&not=1&copy'>": ("https://y.example/&not=1\u00a9", "https://y.example/&not=1&copy"),
            "<a href=https://z.example/u>": ("https://z.example/u", "https://z.example/u"),
            '<area href="https://ar.example/">': ("https://ar.example/", "https://ar.example/"),
        }
        pieces = [*links, "</a>", "<!--", "-->", "--!>", "<!-->", "<!", "<?", "</", ">", '"', "'", "=", " ", "\n",
                  "\r", "\t", "href=", "<script>", "</script>", "<style>", "</style >", "<title>", "</title>", "<textarea>",
                  "</textarea>", "<p class=", '<img alt="', "<![CDATA[", "]]>", "<svg>", "</svg>", "&amp;", "&", ";",
                  "<a", "<a/", "x", "/", "<br/>", "<xmp>", "</xmp>", "<table>", "<td>", "<select>", "<option>",
                  "<noscript>", "</noscript>", "<iframe>", "</iframe>", "<body>", "</body>", "</BODY >", "<frameset>"]
        raw = dict(links.values())
        rng = random.Random(20260715)
        for _ in range(1500):
            html = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 40)))
            result = track(html)
            assert undo(result, raw) == html, html
            web = [h for h in lxml_hrefs(html) if h and h.strip().lower().startswith(("http://", "https://"))]
            assert result.html.count(f"{PUBLIC}/track/click/") == len(web), html


class TestMalformedHtml:
    """Broken markup is handled the way a browser would read it."""

    def test_unclosed_anchors(self) -> None:
        """Anchors never closed, and a missing ``</body>``, still get tracked and a pixel."""
        html = "<p><a href=https://a.example/>one<a href=https://b.example/>two<p>three"
        result = track(html)
        assert result.html.startswith(
            f"<p><a href={tracked('https://a.example/')}>one<a href={tracked('https://b.example/')}>two<p>three<img "
        )
        assert [spec.url for spec in result.links] == ["https://a.example/", "https://b.example/"]

    def test_tag_cut_off_at_the_end_is_untouched(self) -> None:
        """A start tag with no closing ``>`` is not a tag; its href is not rewritten."""
        html = '<p>x</p><a href="https://a.example/"'
        result = track(html)
        assert result.links == ()
        assert result.html.startswith('<p>x</p><img ') and result.html.endswith('><a href="https://a.example/"')

    def test_unterminated_quote_swallows_the_rest(self) -> None:
        """An attribute quote never closed turns the rest of the input into that attribute, as in a browser."""
        html = '<img alt="oops><a href="https://a.example/">x</a>'
        assert track(html, open_signer=None).html == html

    def test_nested_and_stray_end_tags(self) -> None:
        """Stray end tags and anchors in odd places do not stop later links from being tracked."""
        html = "</a></p></div><table><a href='https://a.example/'>in table</a><tr><td>x</td></tr></table></a>"
        result = track(html, open_signer=None)
        assert result.html == html.replace("https://a.example/", tracked("https://a.example/"))

    @pytest.mark.parametrize("html", ["", "   \n", "<!-- only a comment -->", "plain text, no markup"])
    def test_documents_without_elements(self, html: str) -> None:
        """Empty and element-less inputs get only the pixel at the end."""
        result = track(html)
        assert result.links == ()
        assert result.html.startswith(html) and result.html[len(html) :].startswith("<img ")

    def test_xml_declaration_and_meta_charset(self) -> None:
        """An XML declaration or a legacy charset declaration does not stop lxml from confirming links."""
        html = (
            '<?xml version="1.0" encoding="iso-8859-1"?><html><head><meta charset="iso-8859-1"></head>'
            '<body><a href="https://é.example/">é</a></body></html>'
        )
        result = track(html, open_signer=None)
        assert [spec.url for spec in result.links] == ["https://é.example/"]


class TestDuplicates:
    """One stored link per distinct URL."""

    def test_repeated_url_shares_one_hash_and_first_position(self) -> None:
        """The same URL three times is one TrackedLinkSpec at its first position, with every href rewritten."""
        html = (
            '<a href="https://a.example/">A1</a><a href="https://b.example/">B</a>'
            "<a href='https://a.example/'>A2</a><a href=https://a.example/>A3</a>"
        )
        result = track(html, open_signer=None)
        assert [(s.url, s.position, s.text) for s in result.links] == [
            ("https://a.example/", 0, "A1"),
            ("https://b.example/", 1, "B"),
        ]
        assert result.html.count(tracked("https://a.example/")) == 3

    def test_urls_differing_in_case_or_trailing_slash_are_distinct(self) -> None:
        """Only an identical decoded URL is a duplicate; paths are case-sensitive."""
        urls = ["https://a.example/X", "https://a.example/x", "https://a.example/x/"]
        html = "".join(f'<a href="{url}">{i}</a>' for i, url in enumerate(urls))
        result = track(html, open_signer=None)
        assert len({spec.link_hash for spec in result.links}) == 3


class TestLargeDocuments:
    """Big inputs are handled in linear time (hang guards, not timings)."""

    @pytest.mark.timeout(60)  # a hang guard for pathological input, not a timing
    def test_many_links(self) -> None:
        """A 20,000-link document is fully tracked and otherwise unchanged."""
        rows = [
            f'<tr><td class="c{i % 7}">Row {i} <a href="https://a.example/{i % 500}?r=1&amp;s=2">link</a></td></tr>\n'
            for i in range(20_000)
        ]
        html = "<html><body><table>\n" + "".join(rows) + "</table></body></html>"
        result = track(html)
        assert len(result.links) == 500
        assert result.html.count(f"{PUBLIC}/track/click/") == 20_000
        assert undo(result, {spec.url: spec.url.replace("&", "&amp;") for spec in result.links}) == html

    @pytest.mark.timeout(60)  # a hang guard for pathological input, not a timing
    @pytest.mark.parametrize(
        "html",
        [
            '<a href="' + "x" * 3_000_000,
            "<a " * 300_000,
            "<p " + "a=b " * 300_000,
            "<!--" + "-" * 1_000_000 + "<a href=https://a.example/>",
            "<script>" + "<!--<script>" * 100_000,
            "<" * 1_000_000,
            "&" * 1_000_000,
            "<a href='" + "&amp;" * 300_000 + "'>x</a>",
            "".join(f"<a href=https://a.example/{i}><div>text {i} " for i in range(20_000)),
        ],
    )
    def test_pathological_inputs_finish(self, html: str) -> None:
        """Unterminated tags, comments and scripts and long runs of markup characters do not blow up."""
        result = track(html)
        assert result.pixel_url is not None
        assert len(result.html) > len(html)


class TestNoSigners:
    """Tracking fully off."""

    @pytest.mark.parametrize("html", [fill(EMAIL, ORIGINAL), "<a href=https://a.example/>", "", "<p"])
    def test_html_is_returned_unchanged(self, html: str) -> None:
        """With neither signer the HTML comes back as given, with no links and no pixel."""
        assert track(html, open_signer=None, click_signer=None) == Injected(html, (), None)


class TestValidation:
    """Bad arguments fail loudly."""

    def test_empty_email_id_is_refused(self) -> None:
        """An empty email id would make unverifiable URLs."""
        with pytest.raises(ValueError, match="email id"):
            track("<p>x</p>", email_id="")

    @pytest.mark.parametrize("public_url", ["", "crm.example.com", "ftp://crm.example.com"])
    def test_public_url_must_be_absolute_http(self, public_url: str) -> None:
        """A public URL that is not absolute http(s) would produce dead tracking links."""
        with pytest.raises(ValueError, match="public_url"):
            track("<p>x</p>", public_url=public_url)


class TestMachineOpens:
    """Classifying pixel fetches (../shared/notes/anchors-tracking.md §4)."""

    @pytest.mark.parametrize(
        ("user_agent", "ip", "reason"),
        [
            (None, "203.0.113.5", "empty_ua"),
            ("", None, "empty_ua"),
            ("   ", None, "empty_ua"),
            ("Mozilla/5.0", "17.58.101.4", "apple_mpp"),
            ("Mozilla/5.0", "::ffff:17.58.101.4", "apple_mpp"),
            ("Mozilla/5.0", "104.28.40.17", "generic_ua"),
            ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", None, "bot_ua"),
            ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", None, "bot_ua"),
            ("Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) BingPreview/1.0b", None, "bot_ua"),
            ("facebookexternalhit/1.1", None, "bot_ua"),
            ("Some Link Crawler 1.0", None, "bot_ua"),
            ("Barracuda Sentinel (EE)", None, "security_gateway"),
            ("Mozilla/5.0 (compatible; Mimecast URL Protect)", None, "security_gateway"),
            ("Proofpoint URL Defense", None, "security_gateway"),
            ("Microsoft Office SafeLinks", None, "security_gateway"),
            ("curl/8.5.0", None, "http_tool"),
            ("python-requests/2.32.3", None, "http_tool"),
            ("Go-http-client/1.1", None, "http_tool"),
        ],
    )
    def test_machine_opens(self, user_agent: str | None, ip: str | None, reason: str) -> None:
        """Prefetchers, proxies without a person, scanners, robots and tools are flagged with a reason."""
        assert classify_open(user_agent, ip) == Verdict(True, reason)
        assert is_machine_open(user_agent, ip)

    @pytest.mark.parametrize(
        ("user_agent", "ip"),
        [
            (CHROME, "198.51.100.7"),
            (APPLE_MAIL, "198.51.100.7"),
            (APPLE_MAIL, "17.58.101.4"),
            ("Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36", None),
            ("Microsoft Outlook 16.0.17328; Pro", None),
            (CHROME, "not-an-ip"),
        ],
    )
    def test_human_opens(self, user_agent: str, ip: str | None) -> None:
        """Real mail clients and browsers are human, including a full UA from Apple's own network."""
        assert classify_open(user_agent, ip) == Verdict(False, None)
        assert not is_machine_open(user_agent, ip)

    def test_gmail_image_proxy_is_a_flagged_but_counted_open(self) -> None:
        """Gmail's proxy is flagged machine (gmail_proxy) but marked proxied: a real open, counted, not notified."""
        assert classify_open(GMAIL_PROXY, "66.249.84.1") == Verdict(True, "gmail_proxy", proxied=True)
        assert is_machine_open(GMAIL_PROXY, "66.249.84.1")

    def test_open_seconds_after_send_is_a_prefetch(self) -> None:
        """An open faster than the configured delay after sending is flagged too_soon, even via Gmail."""
        assert classify_open(CHROME, None, seconds_after_send=0.8) == Verdict(True, "too_soon")
        assert classify_open(GMAIL_PROXY, None, seconds_after_send=1.0) == Verdict(True, "too_soon")
        assert classify_open(CHROME, None, seconds_after_send=45.0) == Verdict(False, None)
        assert classify_open(CHROME, None, seconds_after_send=20.0, min_delay_s=30.0) == Verdict(True, "too_soon")

    def test_apple_networks_cover_17_slash_8(self) -> None:
        """The Apple range is 17.0.0.0/8, as the notes record."""
        assert [str(net) for net in APPLE_NETWORKS] == ["17.0.0.0/8"]


class TestMachineClicks:
    """Classifying clicks (../shared/notes/anchors-tracking.md §4)."""

    @pytest.mark.parametrize(
        ("user_agent", "ip", "seconds", "reason"),
        [
            (None, None, 3600.0, "empty_ua"),
            ("Mozilla/5.0 (compatible; Mimecast URL Protect)", None, 3600.0, "security_gateway"),
            ("Barracuda Sentinel (EE)", None, None, "security_gateway"),
            ("curl/8.5.0", None, 3600.0, "http_tool"),
            ("Mozilla/5.0", "17.1.2.3", 3600.0, "apple_mpp"),
            (GMAIL_PROXY, None, 3600.0, "image_proxy"),
            (CHROME, "198.51.100.7", 1.5, "too_soon"),
            (CHROME, "198.51.100.7", 0.0, "too_soon"),
        ],
    )
    def test_machine_clicks(self, user_agent: str | None, ip: str | None, seconds: float | None, reason: str) -> None:
        """Scanner and robot UAs, image proxies and clicks within seconds of sending are flagged."""
        assert classify_click(user_agent, ip, seconds) == Verdict(True, reason)
        assert is_machine_click(user_agent, ip, seconds)

    @pytest.mark.parametrize("seconds", [None, 6.0, 3600.0])
    def test_human_clicks(self, seconds: float | None) -> None:
        """A browser click some time after sending, or at an unknown time, is human."""
        assert classify_click(CHROME, "198.51.100.7", seconds) == Verdict(False, None)
        assert not is_machine_click(CHROME, "198.51.100.7", seconds)

    def test_click_delay_is_configurable(self) -> None:
        """A longer minimum delay flags a click a human could not plausibly have made that fast."""
        assert classify_click(CHROME, None, 20.0, min_delay_s=30.0) == Verdict(True, "too_soon")
