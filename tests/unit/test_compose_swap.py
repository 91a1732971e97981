"""swap_html: a per-recipient copy is the canonical message with its HTML part swapped, every other byte kept."""

from __future__ import annotations

import email
import re
from email import policy

import pytest

from pipeline.stages.compose import Draft, OutgoingAttachment, compose, swap_html

HTML = "<html><body><p>Hi Ada \u00e9,</p><p>" + "Lorem ipsum dolor sit amet " * 40 + '<a href="https://x.io/a">x</a></p></body></html>'
TRACKED = HTML.replace("https://x.io/a", "https://t.example/track/click/e1/abc").replace(
    "</body>", '<img src="https://t.example/track/open/e1/r1" width="1" height="1"></body>')


def _draft(html: str, attachments: tuple[OutgoingAttachment, ...] = ()) -> Draft:
    return Draft(from_email="rep@acme.example", from_name="Rep", to=("ada@engine.example",), subject="Deck", html=html,
                 text="Hi Ada (https://x.io/a)", attachments=attachments, message_id="m1@acme.example",
                 mailpipe_email_id="e1")


@pytest.mark.parametrize("attachments", [
    (),
    (OutgoingAttachment("deck.pdf", "application/pdf", b"%PDF-1.4" * 200, None),),
    (OutgoingAttachment("logo.png", "image/png", b"\x89PNG" * 20, "logo@acme.example"),),
])
@pytest.mark.parametrize("html,tracked", [(HTML, TRACKED), ("<p>short</p>", "<p>short<img src=\"https://t/o\"></p>")])
def test_the_copy_differs_in_its_html_only(attachments: tuple[OutgoingAttachment, ...], html: str, tracked: str) -> None:
    raw, _ = compose(_draft(html, attachments))
    copy = swap_html(raw, html, tracked)
    assert copy is not None
    base, swapped = (email.message_from_bytes(b, policy=policy.default) for b in (raw, copy))
    assert swapped.get_body(("html",)).get_content().replace("\r\n", "\n").rstrip("\n") == tracked
    assert swapped.get_body(("plain",)).get_content() == base.get_body(("plain",)).get_content()
    assert list(swapped.items()) == list(base.items())
    assert [p.get_content_type() for p in swapped.walk()] == [p.get_content_type() for p in base.walk()]
    assert [p.get_payload(decode=True) for p in swapped.iter_attachments()] == \
        [p.get_payload(decode=True) for p in base.iter_attachments()]
    assert max(len(line) for line in copy.split(b"\r\n")) <= 998


def test_not_found_or_colliding_falls_back_to_composing() -> None:
    raw, _ = compose(_draft(HTML, (OutgoingAttachment("deck.pdf", "application/pdf", b"%PDF", None),)))
    assert swap_html(raw, "<p>another body</p>", TRACKED) is None
    boundary = re.search(rb'boundary="([^"]+)"', raw).group(1).decode()  # type: ignore[union-attr]
    assert swap_html(raw, HTML, f"<p>x</p>\n--{boundary}\n<p>y</p>") is None
    untouched, _ = compose(_draft("<p>plain</p>"))
    assert swap_html(untouched + untouched, "<p>plain</p>", "<p>new</p>") is None  # found twice: not ours to guess


def test_the_old_part_can_be_given_encoded() -> None:
    from pipeline.stages.compose import html_part_bytes

    raw, _ = compose(_draft(HTML))
    assert swap_html(raw, html_part_bytes(HTML), TRACKED) == swap_html(raw, HTML, TRACKED) is not None
