"""Unit tests for the pure compose stage (pipeline.stages.compose)."""
from __future__ import annotations

import pickle
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.stages.compose import Draft, OutgoingAttachment, compose, envelope_recipients
from pipeline.stages.header_rules import ComposeError, check_header_value, validate_address
from pipeline.stages.html_text import html_to_text
from pipeline.stages.parse import ParsedEmail, parse_email
from pipeline.stages.quoting import forward_block, forward_subject, quote_for_reply, reply_headers, reply_subject

WHEN = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\r\n%%EOF\r\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 3
HTML = ('<html><head><style>p {color: red}</style></head><body><p>Hello <b>Jane</b>,</p>'
        '<p>See <a href="https://example.com/pricing?a=1&amp;b=2">our pricing</a>.</p></body></html>')


def make_draft(**overrides: Any) -> Draft:
    """A plain one-recipient draft from a sales rep, with some fields overridden."""
    fields: dict[str, Any] = {
        "from_email": "rep@mycorp.com",
        "from_name": "Sam Rep",
        "to": ("Jane Doe <jane@prospect.io>",),
        "subject": "Pricing",
        "text": "Hello Jane,\nsee attached.\n",
        "date": WHEN,
    }
    fields.update(overrides)
    return Draft(**fields)


def roundtrip(draft: Draft) -> tuple[bytes, str, ParsedEmail, EmailMessage]:
    """Compose ``draft``, check the bytes are wire-safe, and parse them back both ways."""
    raw, message_id = compose(draft)
    assert_wire_safe(raw)
    parsed = parse_email(raw)
    assert parsed.error is None
    assert parsed.defects == ()
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects
    return raw, message_id, parsed, msg


def assert_wire_safe(raw: bytes) -> None:
    """CRLF line ends only, 7-bit ASCII, and no line over RFC 5322's 998 octets."""
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def shape(part: EmailMessage) -> object:
    """The MIME tree as nested (multipart type, [children]) tuples with leaf content types."""
    if part.is_multipart():
        return (part.get_content_type(), [shape(child) for child in part.iter_parts()])
    return part.get_content_type()


def header_block(raw: bytes) -> str:
    """The top-level header section of ``raw`` as text."""
    return raw.split(b"\r\n\r\n", 1)[0].decode("ascii")


class TestStructure:
    """The MIME tree chosen for each combination of bodies and attachments."""

    def test_text_only_is_a_single_text_part(self) -> None:
        """A text-only draft becomes one text/plain part whose text round-trips."""
        _, _, parsed, msg = roundtrip(make_draft())
        assert shape(msg) == "text/plain"
        assert msg.get_content_charset() == "utf-8"
        assert parsed.text == "Hello Jane,\nsee attached."
        assert parsed.html is None

    def test_html_makes_alternative_with_text_first(self) -> None:
        """HTML and text become multipart/alternative with the text part before the HTML part."""
        _, _, parsed, msg = roundtrip(make_draft(html=HTML))
        assert shape(msg) == ("multipart/alternative", ["text/plain", "text/html"])
        assert parsed.text == "Hello Jane,\nsee attached."
        assert parsed.html is not None and parsed.html.rstrip("\n") == HTML

    def test_text_derived_from_html_when_missing(self) -> None:
        """Without a text body the plain part is derived from the HTML, links kept as "text (url)"."""
        _, _, parsed, msg = roundtrip(make_draft(html=HTML, text=None))
        assert shape(msg) == ("multipart/alternative", ["text/plain", "text/html"])
        plain = msg.get_body(preferencelist=("plain",))
        assert plain is not None
        assert plain.get_content().replace("\r\n", "\n").rstrip("\n") == html_to_text(HTML)
        assert parsed.text == "Hello Jane,\n\nSee our pricing (https://example.com/pricing?a=1&b=2)."

    def test_attachments_wrap_the_alternative_in_mixed(self) -> None:
        """Regular attachments make multipart/mixed around the alternative body."""
        draft = make_draft(html=HTML, attachments=(OutgoingAttachment("quote.pdf", "application/pdf", PDF),))
        _, _, _, msg = roundtrip(draft)
        assert shape(msg) == ("multipart/mixed", [("multipart/alternative", ["text/plain", "text/html"]),
                                                  "application/pdf"])

    def test_text_only_with_attachment_is_mixed(self) -> None:
        """A text body with an attachment is multipart/mixed of the text and the file."""
        draft = make_draft(attachments=(OutgoingAttachment("quote.pdf", "application/pdf", PDF),))
        _, _, parsed, msg = roundtrip(draft)
        assert shape(msg) == ("multipart/mixed", ["text/plain", "application/pdf"])
        assert parsed.text == "Hello Jane,\nsee attached."

    def test_inline_images_make_related_around_the_html(self) -> None:
        """Attachments with a content id sit in multipart/related next to the HTML they illustrate."""
        html = '<p>Logo: <img src="cid:logo@mycorp"></p>'
        atts = (OutgoingAttachment("logo.png", "image/png", PNG, content_id="logo@mycorp"),
                OutgoingAttachment("quote.pdf", "application/pdf", PDF))
        _, _, parsed, msg = roundtrip(make_draft(html=html, attachments=atts))
        assert shape(msg) == ("multipart/mixed", [
            ("multipart/alternative", ["text/plain", ("multipart/related", ["text/html", "image/png"])]),
            "application/pdf"])
        related = msg.get_payload(0).get_payload(1)
        assert related.get_param("type") == "text/html"
        logo = next(a for a in parsed.attachments if a.filename == "logo.png")
        assert logo.inline and logo.content_id == "logo@mycorp" and logo.content == PNG

    def test_inline_attachment_without_html_is_a_regular_attachment(self) -> None:
        """With no HTML to reference it, a content-id attachment is attached to the mixed part."""
        draft = make_draft(attachments=(OutgoingAttachment("logo.png", "image/png", PNG, content_id="logo1"),))
        _, _, parsed, msg = roundtrip(draft)
        assert shape(msg) == ("multipart/mixed", ["text/plain", "image/png"])
        assert parsed.attachments[0].content == PNG

    def test_no_body_gives_an_empty_text_part(self) -> None:
        """A draft without text or HTML still yields a valid text/plain message."""
        _, _, parsed, msg = roundtrip(make_draft(text=None))
        assert shape(msg) == "text/plain"
        assert parsed.text == ""

    def test_mime_version_is_set_once(self) -> None:
        """The top-level header block carries exactly one MIME-Version: 1.0."""
        raw, *_ = roundtrip(make_draft(html=HTML, attachments=(OutgoingAttachment("a.bin", "application/x", b"1"),)))
        assert re.findall(r"(?im)^MIME-Version:[^\r\n]*", header_block(raw)) == ["MIME-Version: 1.0"]


class TestAttachments:
    """Attachment bytes, names and types survive the round trip exactly."""

    def test_binary_bytes_exact(self) -> None:
        """Every byte value of a binary attachment comes back unchanged, base64-encoded on the wire."""
        _, _, parsed, msg = roundtrip(make_draft(attachments=(OutgoingAttachment("q.pdf", "application/pdf", PDF),)))
        (att,) = parsed.attachments
        assert (att.filename, att.content_type, att.content, att.inline) == ("q.pdf", "application/pdf", PDF, False)
        part = next(msg.iter_attachments())
        assert part["Content-Transfer-Encoding"] == "base64"
        assert part.get_content() == PDF

    def test_text_attachment_keeps_its_line_ends(self) -> None:
        """A CSV attachment's bytes, CRLF and bare LF included, are not rewritten."""
        csv = b"name,amount\r\nJane,100\nBob,\xc3\xa9\r\n"
        _, _, parsed, _ = roundtrip(make_draft(attachments=(OutgoingAttachment("d.csv", "text/csv", csv),)))
        assert parsed.attachments[0].content == csv
        assert parsed.attachments[0].content_type == "text/csv"

    def test_non_ascii_filename_round_trips(self) -> None:
        """A non-ASCII filename is encoded (RFC 2231) and decoded back identically."""
        name = "Angebot für Müller – 2025.pdf"
        _, _, parsed, msg = roundtrip(make_draft(attachments=(OutgoingAttachment(name, "application/pdf", PDF),)))
        assert parsed.attachments[0].filename == name
        assert next(msg.iter_attachments()).get_filename() == name

    def test_several_attachments_keep_order_and_bytes(self) -> None:
        """Several attachments come back in order with their own bytes."""
        atts = tuple(OutgoingAttachment(f"f{i}.bin", "application/octet-stream", bytes([i]) * (i + 1) * 1000)
                     for i in range(4))
        _, _, parsed, _ = roundtrip(make_draft(attachments=atts))
        assert [(a.filename, a.content) for a in parsed.attachments] == [(a.filename, a.content) for a in atts]

    def test_ascii_message_attachment_is_embedded_unencoded(self) -> None:
        """A 7-bit message/rfc822 attachment is embedded unencoded (RFC 2046) and parses back byte-exact."""
        inner = b"From: a@b.com\r\nTo: c@d.com\r\nSubject: original\r\nMessage-ID: <o@b.com>\r\n\r\nbody\r\n"
        _, _, parsed, msg = roundtrip(make_draft(attachments=(OutgoingAttachment("o.eml", "message/rfc822", inner),)))
        part = next(msg.iter_attachments())
        assert part.get_content_type() == "message/rfc822"
        assert part["Content-Transfer-Encoding"] == "7bit"
        assert parsed.attachments[0].content == inner
        assert parsed.attachments[0].filename == "o.eml"

    def test_8bit_message_attachment_becomes_opaque_bytes(self) -> None:
        """An 8-bit embedded message is sent as base64 application/octet-stream so its bytes survive."""
        inner = "From: a@b.com\r\nSubject: héllo\r\n\r\nbödy\r\n".encode()
        _, _, parsed, _ = roundtrip(make_draft(attachments=(OutgoingAttachment("o.eml", "message/rfc822", inner),)))
        assert parsed.attachments[0].content_type == "application/octet-stream"
        assert parsed.attachments[0].content == inner

    @pytest.mark.parametrize("ctype", ["pdf", "multipart/mixed", "text/plain; charset=x", "a b/c"])
    def test_invalid_content_type_rejected(self, ctype: str) -> None:
        """A content type that is not a single type/subtype (or is multipart) is refused."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(attachments=(OutgoingAttachment("x", ctype, b"x"),)))
        assert info.value.field == "attachments[0].content_type"

    def test_duplicate_content_ids_rejected(self) -> None:
        """Two inline parts with the same content id would be ambiguous and are refused."""
        atts = (OutgoingAttachment("a.png", "image/png", PNG, content_id="x"),
                OutgoingAttachment("b.png", "image/png", PNG, content_id="<x>"))
        with pytest.raises(ComposeError) as info:
            compose(make_draft(html='<img src="cid:x">', attachments=atts))
        assert info.value.field == "attachments[1].content_id"

    def test_missing_filename_gets_a_default(self) -> None:
        """An empty filename is replaced by a generic name rather than sent blank."""
        _, _, parsed, _ = roundtrip(make_draft(attachments=(OutgoingAttachment("", "application/pdf", PDF),)))
        assert parsed.attachments[0].filename == "attachment"


class TestHeaders:
    """Identity, threading and mailpipe headers."""

    def test_generated_message_id_uses_sender_domain(self) -> None:
        """Without a caller id, a random Message-ID on the sender's domain is generated and returned."""
        raw, message_id, parsed, msg = roundtrip(make_draft())
        local, _, domain = message_id.partition("@")
        assert domain == "mycorp.com" and len(local) >= 16
        assert msg["Message-ID"] == f"<{message_id}>"
        assert parsed.message_id == message_id
        assert compose(make_draft())[1] != message_id

    def test_generated_message_id_on_idn_domain_is_punycode(self) -> None:
        """An internationalized sender domain appears in punycode in the generated Message-ID."""
        _, message_id, parsed, _ = roundtrip(make_draft(from_email="rep@bücher.de"))
        assert message_id.endswith("@xn--bcher-kva.de")
        assert parsed.from_ is not None and parsed.from_.email == "rep@xn--bcher-kva.de"

    def test_caller_message_id_is_used(self) -> None:
        """A caller-supplied Message-ID (with or without brackets) is written and returned as given."""
        for supplied in ("<abc.123@mail.mycorp.com>", "abc.123@mail.mycorp.com"):
            _, message_id, parsed, _ = roundtrip(make_draft(message_id=supplied))
            assert message_id == "abc.123@mail.mycorp.com"
            assert parsed.message_id == "abc.123@mail.mycorp.com"

    @pytest.mark.parametrize("bad", ["no-at-sign", "a b@c.com", "<>", "a<b@c.com", "é@c.com", "x" * 300 + "@c.com"])
    def test_invalid_caller_message_id_rejected(self, bad: str) -> None:
        """A Message-ID that is not printable ASCII id@domain of sane length is refused."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(message_id=bad))
        assert info.value.field == "message_id"

    def test_date_is_the_given_instant(self) -> None:
        """The Date header carries the draft's date with its offset."""
        when = datetime(2025, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
        _, _, parsed, msg = roundtrip(make_draft(date=when))
        assert msg["Date"] == "Sat, 01 Mar 2025 09:30:00 -0500"
        assert parsed.date == when

    def test_date_defaults_to_now(self) -> None:
        """Without a date the Date header is the current time in UTC."""
        before = datetime.now(UTC).replace(microsecond=0)
        _, _, parsed, _ = roundtrip(make_draft(date=None))
        after = datetime.now(UTC)
        assert parsed.date is not None and before <= parsed.date <= after

    def test_naive_date_rejected(self) -> None:
        """A naive datetime is ambiguous and refused."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(date=datetime(2025, 1, 1, 12, 0)))
        assert info.value.field == "date"

    def test_threading_headers(self) -> None:
        """In-Reply-To and References are written bracketed, deduplicated, in order."""
        draft = make_draft(in_reply_to="<parent@x.com>", references=("<root@x.com>", "mid@x.com", "root@x.com",
                                                                      "<parent@x.com>"))
        _, _, parsed, msg = roundtrip(draft)
        assert msg["In-Reply-To"] == "<parent@x.com>"
        assert msg["References"] == "<root@x.com> <mid@x.com> <parent@x.com>"
        assert parsed.in_reply_to == "parent@x.com"
        assert parsed.references == ("root@x.com", "mid@x.com", "parent@x.com")

    def test_references_default_to_in_reply_to(self) -> None:
        """A reply without References gets one naming its parent (RFC 5322 §3.6.4)."""
        _, _, parsed, _ = roundtrip(make_draft(in_reply_to="parent@x.com"))
        assert parsed.references == ("parent@x.com",)

    def test_no_threading_headers_for_a_new_message(self) -> None:
        """A fresh message has neither In-Reply-To nor References."""
        _, _, _, msg = roundtrip(make_draft())
        assert msg["In-Reply-To"] is None and msg["References"] is None

    def test_many_references_fold_within_line_limits(self) -> None:
        """A long References chain is folded between ids and parses back complete."""
        refs = tuple(f"<{i}.thread-message-id@mail.example.com>" for i in range(40))
        raw, _, parsed, _ = roundtrip(make_draft(references=refs))
        assert len(parsed.references) == 40
        assert all(len(line) <= 78 for line in header_block(raw).split("\r\n"))

    def test_mailpipe_email_id_header(self) -> None:
        """The X-Mailpipe-Email-Id header carries the email id verbatim."""
        _, _, _, msg = roundtrip(make_draft(mailpipe_email_id="01JH8Z3K9Q-em"))
        assert msg["X-Mailpipe-Email-Id"] == "01JH8Z3K9Q-em"

    @pytest.mark.parametrize("bad", ["has space", "=?utf-8?q?x?=", "é"])
    def test_odd_mailpipe_email_id_rejected(self, bad: str) -> None:
        """An email id outside the safe token alphabet is refused."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(mailpipe_email_id=bad))
        assert info.value.field == "mailpipe_email_id"

    def test_bcc_is_never_a_header(self) -> None:
        """Bcc recipients are left out of the headers but are part of the SMTP envelope."""
        draft = make_draft(cc=("cc@prospect.io",), bcc=("Boss <boss@mycorp.com>", "audit@mycorp.com"))
        raw, _, parsed, msg = roundtrip(draft)
        assert msg["Bcc"] is None and parsed.bcc == ()
        assert b"boss@mycorp.com" not in raw and b"audit@mycorp.com" not in raw
        assert envelope_recipients(draft) == ("jane@prospect.io", "cc@prospect.io", "boss@mycorp.com",
                                              "audit@mycorp.com")

    def test_bcc_only_message_has_no_to_header(self) -> None:
        """A message addressed only by Bcc is valid and has no To header."""
        _, _, parsed, msg = roundtrip(make_draft(to=(), bcc=("hidden@x.com",)))
        assert msg["To"] is None and parsed.to == ()

    def test_envelope_deduplicates_case_insensitively(self) -> None:
        """An address given twice (any case) is a single envelope recipient."""
        draft = make_draft(to=("Jane@Prospect.io", "jane@prospect.io"), cc=("JANE@PROSPECT.IO",))
        assert envelope_recipients(draft) == ("Jane@prospect.io",)

    def test_recipients_and_display_names_round_trip(self) -> None:
        """To and Cc, with commas, quotes and non-ASCII in display names, parse back exactly."""
        draft = make_draft(from_name="José Müller", to=('"Doe, Jane" <jane@prospect.io>', "bob@prospect.io"),
                           cc=('Al "The Boss" Smith <al@prospect.io>', "Zoë Łukasz <zoe@prospect.io>"))
        _, _, parsed, msg = roundtrip(draft)
        assert parsed.from_ is not None
        assert (parsed.from_.name, parsed.from_.email) == ("José Müller", "rep@mycorp.com")
        assert [(a.name, a.email) for a in parsed.to] == [("Doe, Jane", "jane@prospect.io"), ("", "bob@prospect.io")]
        assert [(a.name, a.email) for a in parsed.cc] == [('Al "The Boss" Smith', "al@prospect.io"),
                                                          ("Zoë Łukasz", "zoe@prospect.io")]
        assert msg["From"].addresses[0].display_name == "José Müller"

    def test_from_name_taken_from_from_email_when_not_given(self) -> None:
        """A "Name <addr>" from_email supplies the display name when from_name is None."""
        _, _, parsed, _ = roundtrip(make_draft(from_email="Sam Rep <rep@mycorp.com>", from_name=None))
        assert parsed.from_ is not None and (parsed.from_.name, parsed.from_.email) == ("Sam Rep", "rep@mycorp.com")

    def test_non_ascii_subject_round_trips_encoded(self) -> None:
        """A non-ASCII subject is RFC 2047 encoded on the wire and decodes to the original."""
        subject = "Angebot für Q3 — résumé 日本語 " + "long " * 30
        raw, _, parsed, msg = roundtrip(make_draft(subject=subject))
        assert "=?utf-8?" in header_block(raw)
        assert parsed.subject == subject.strip()
        assert msg["Subject"] == subject.strip()

    def test_extra_headers_written(self) -> None:
        """Caller headers are added, and Reply-To is written as a checked address."""
        draft = make_draft(extra_headers=(("X-Campaign", "spring-2025"), ("Reply-To", "Sales <sales@mycorp.com>")))
        _, _, _, msg = roundtrip(draft)
        assert msg["X-Campaign"] == "spring-2025"
        assert msg["Reply-To"].addresses[0].addr_spec == "sales@mycorp.com"

    @pytest.mark.parametrize("name", ["From", "bcc", "Message-ID", "Content-Type", "Content-Foo", "List-Unsubscribe"])
    def test_structural_extra_headers_refused(self, name: str) -> None:
        """Extra headers cannot override or duplicate headers compose sets itself."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(extra_headers=(("X-Ok", "1"), (name, "x"))))
        assert info.value.field == "extra_headers[1]"

    @pytest.mark.parametrize("name", ["X Bad", "X:Bad", "", "Ünicode"])
    def test_invalid_extra_header_names_refused(self, name: str) -> None:
        """Header names must be printable ASCII without spaces or colons."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(extra_headers=((name, "x"),)))
        assert info.value.field == "extra_headers[0]"

    def test_duplicate_unique_extra_header_refused(self) -> None:
        """A second Reply-To (a header allowed once) is refused on its own entry."""
        headers = (("Reply-To", "a@mycorp.com"), ("Reply-To", "b@mycorp.com"))
        with pytest.raises(ComposeError) as info:
            compose(make_draft(extra_headers=headers))
        assert info.value.field == "extra_headers[1]"

    def test_reply_to_extra_header_validated(self) -> None:
        """An invalid Reply-To address in the extra headers is refused."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(extra_headers=(("Reply-To", "not an address"),)))
        assert info.value.field == "extra_headers[0]"

    def test_at_least_one_recipient(self) -> None:
        """A draft with no To, Cc or Bcc is refused on the to field."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(to=()))
        assert info.value.field == "to"

    def test_single_string_recipient_accepted(self) -> None:
        """A lone string passed as ``to`` counts as one recipient, not as a sequence of characters."""
        _, _, parsed, _ = roundtrip(make_draft(to="jane@prospect.io"))  # type: ignore[arg-type]
        assert [a.email for a in parsed.to] == ["jane@prospect.io"]


class TestUnsubscribe:
    """Marketing mail: List-Unsubscribe headers (RFC 2369, RFC 8058) and a visible footer link."""

    def test_https_url_gets_one_click_post(self) -> None:
        """An https URL yields List-Unsubscribe with the URL and mailto, plus List-Unsubscribe-Post."""
        draft = make_draft(html=HTML, text=None, unsubscribe_url="https://crm.example.com/u/abc?x=1",
                           unsubscribe_mailto="unsub@mycorp.com?subject=unsubscribe")
        _, _, parsed, msg = roundtrip(draft)
        assert msg["List-Unsubscribe"] == ("<https://crm.example.com/u/abc?x=1>, "
                                           "<mailto:unsub@mycorp.com?subject=unsubscribe>")
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert parsed.bulk

    def test_footer_link_in_html_and_text(self) -> None:
        """The HTML gets a visible unsubscribe link before </body>; the text part ends with the URL."""
        url = "https://crm.example.com/u/abc?x=1&y=2"
        _, _, parsed, _ = roundtrip(make_draft(html=HTML, text=None, unsubscribe_url=url))
        assert parsed.html is not None
        assert '<a href="https://crm.example.com/u/abc?x=1&amp;y=2">unsubscribe</a>' in parsed.html
        assert parsed.html.index("unsubscribe</a>") < parsed.html.lower().rindex("</body>")
        assert parsed.html.startswith(HTML[: HTML.index("</body>")])
        assert parsed.text.endswith(f"Unsubscribe: {url}")
        assert "See our pricing (https://example.com/pricing?a=1&b=2)." in parsed.text

    def test_footer_appended_to_given_text(self) -> None:
        """A caller-supplied text body keeps its content and gains the unsubscribe line."""
        _, _, parsed, _ = roundtrip(make_draft(unsubscribe_url="https://u.example.com/x"))
        assert parsed.text == "Hello Jane,\nsee attached.\n\nUnsubscribe: https://u.example.com/x"

    def test_fragment_without_body_tag_gets_footer_appended(self) -> None:
        """HTML without </body> gets the footer at the end."""
        _, _, parsed, _ = roundtrip(make_draft(html="<p>hi</p>", unsubscribe_url="https://u.example.com/x"))
        assert parsed.html is not None and parsed.html.startswith("<p>hi</p>")
        assert "https://u.example.com/x" in parsed.html

    def test_http_url_has_no_one_click_post(self) -> None:
        """RFC 8058 one-click requires HTTPS, so a plain http URL gets no List-Unsubscribe-Post."""
        _, _, _, msg = roundtrip(make_draft(unsubscribe_url="http://crm.example.com/u/abc"))
        assert msg["List-Unsubscribe"] == "<http://crm.example.com/u/abc>"
        assert msg["List-Unsubscribe-Post"] is None

    def test_mailto_only(self) -> None:
        """A mailto-only unsubscribe has no Post header and its footer links to the mailto URI."""
        _, _, parsed, msg = roundtrip(make_draft(html=HTML, unsubscribe_mailto="mailto:unsub@mycorp.com"))
        assert msg["List-Unsubscribe"] == "<mailto:unsub@mycorp.com>"
        assert msg["List-Unsubscribe-Post"] is None
        assert parsed.html is not None and 'href="mailto:unsub@mycorp.com"' in parsed.html
        assert parsed.text.endswith("Unsubscribe: mailto:unsub@mycorp.com")

    def test_no_unsubscribe_headers_for_sales_mail(self) -> None:
        """Without unsubscribe data there are no List-* headers and no footer."""
        _, _, parsed, msg = roundtrip(make_draft(html=HTML))
        assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None
        assert "nsubscribe" not in parsed.text and not parsed.bulk

    def test_long_url_header_stays_unencoded(self) -> None:
        """A long unsubscribe URL is kept as one token (never RFC 2047 encoded) within 998 octets."""
        url = "https://crm.example.com/u/" + "a" * 700
        raw, _, parsed, _ = roundtrip(make_draft(unsubscribe_url=url))
        assert f"List-Unsubscribe: <{url}>" in header_block(raw)
        assert parsed.headers["list_unsubscribe"] == f"<{url}>"

    @pytest.mark.parametrize("url", ["javascript:alert(1)", "ftp://x.com/u", "https://", "/relative/path",
                                     'https://x.com/"><script>', "https://x.com/a b", "https://x.com/" + "a" * 900])
    def test_bad_url_rejected(self, url: str) -> None:
        """Only absolute http(s) URLs of safe printable ASCII, at most 900 characters, are accepted."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(unsubscribe_url=url))
        assert info.value.field == "unsubscribe_url"

    @pytest.mark.parametrize("mailto", ["not-an-address", "mailto:a@b.com?subject=a b", "x@y.com\r\nBcc: z@w.com"])
    def test_bad_mailto_rejected(self, mailto: str) -> None:
        """An unsubscribe mailto needs a valid address and a percent-encoded query."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(unsubscribe_mailto=mailto))
        assert info.value.field == "unsubscribe_mailto"


class TestLineSafety:
    """Bodies of any shape are encoded so that no line exceeds the SMTP limits."""

    def test_long_html_line_is_encoded(self) -> None:
        """A single 50,000-character HTML line is transfer-encoded into short lines and decodes back."""
        html = "<p>" + " ".join(f'<a href="https://example.com/{i}">link {i}</a>' for i in range(1000)) + "</p>"
        raw, _, parsed, msg = roundtrip(make_draft(html=html, text=None))
        assert max(len(line) for line in raw.split(b"\r\n")) <= 78
        html_part = msg.get_body(preferencelist=("html",))
        assert html_part is not None and html_part["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
        assert parsed.html is not None and parsed.html.rstrip("\n") == html

    def test_long_text_line_is_encoded(self) -> None:
        """A 5,000-character text line without breaks survives with its content intact."""
        text = "word" * 1250
        raw, _, parsed, _ = roundtrip(make_draft(text=text))
        assert max(len(line) for line in raw.split(b"\r\n")) <= 78
        assert parsed.text == text

    def test_non_ascii_body_is_7bit_on_the_wire(self) -> None:
        """Non-Latin text is sent 7-bit (quoted-printable or base64) and decodes to the same string."""
        text = "Здравствуйте, Жанна!\nЦена: 100 €.\n日本語のテキスト。\n"
        raw, _, parsed, msg = roundtrip(make_draft(text=text, html=f"<p>{text}</p>"))
        assert raw.isascii()
        assert parsed.text == text.strip("\n")
        plain = msg.get_body(preferencelist=("plain",))
        assert plain is not None and plain["Content-Transfer-Encoding"] in ("quoted-printable", "base64")

    def test_short_ascii_text_stays_readable(self) -> None:
        """Plain short ASCII text is sent 7bit without encoding."""
        _, _, _, msg = roundtrip(make_draft())
        assert msg["Content-Transfer-Encoding"] == "7bit"

    def test_crlf_and_cr_in_bodies_are_normalized(self) -> None:
        """Bodies with CRLF or bare CR line ends come out with CRLF only and the same lines."""
        _, _, parsed, _ = roundtrip(make_draft(text="a\r\nb\rc\n", html="<p>a</p>\r\n<p>b</p>\r"))
        assert parsed.text == "a\nb\nc"
        assert parsed.html is not None and parsed.html.split() == ["<p>a</p>", "<p>b</p>"]

    def test_lone_surrogates_rejected(self) -> None:
        """A body that is not valid Unicode is refused rather than mangled."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(html="<p>\ud800</p>"))
        assert info.value.field == "html"

    def test_dot_and_from_lines_untouched(self) -> None:
        """Lines starting with "." or "From " are not mangled by the generator (SMTP dot-stuffing is the client's)."""
        text = "From here on\n.\n..leading dots\n"
        _, _, parsed, _ = roundtrip(make_draft(text=text))
        assert parsed.text == text.strip("\n")


class TestHeaderInjection:
    """CR, LF, NUL (and other line separators) in any header input raise ComposeError naming the field."""

    @pytest.mark.parametrize(("overrides", "field"), [
        ({"subject": "Hi\r\nBcc: victim@evil.com"}, "subject"),
        ({"subject": "Hi\nX-Evil: 1"}, "subject"),
        ({"subject": "Hi\x00"}, "subject"),
        ({"subject": "Hi\u2028X-Evil: 1"}, "subject"),
        ({"subject": "Hi\x85X-Evil: 1"}, "subject"),
        ({"from_name": "Sam\r\nBcc: victim@evil.com"}, "from_name"),
        ({"from_email": "rep@mycorp.com\r\nBcc: victim@evil.com"}, "from_email"),
        ({"to": ("Jane\r\nBcc: victim@evil.com <jane@prospect.io>",)}, "to[0]"),
        ({"to": ("ok@prospect.io", "jane@prospect.io\nBcc: victim@evil.com")}, "to[1]"),
        ({"cc": ("Al <al@prospect.io>\r\n",)}, "cc[0]"),
        ({"bcc": ("x@y.com\rX-Evil: 1",)}, "bcc[0]"),
        ({"extra_headers": (("X-Note", "a\r\nBcc: victim@evil.com"),)}, "extra_headers[0]"),
        ({"extra_headers": (("X-Note\r\nBcc", "x"),)}, "extra_headers[0]"),
        ({"message_id": "a@b.com>\r\nBcc: <v@evil.com"}, "message_id"),
        ({"in_reply_to": "p@x.com\nBcc: v@evil.com"}, "in_reply_to"),
        ({"references": ("r@x.com", "s@x.com\r\nX: 1")}, "references[1]"),
        ({"mailpipe_email_id": "e1\r\nBcc: v@evil.com"}, "mailpipe_email_id"),
        ({"unsubscribe_url": "https://x.com/u\r\nBcc: v@evil.com"}, "unsubscribe_url"),
        ({"attachments": (OutgoingAttachment("a\r\nContent-Type: text/html", "application/pdf", b"x"),)},
         "attachments[0].filename"),
        ({"attachments": (OutgoingAttachment("a.pdf", "application/pdf\r\nX: 1", b"x"),)},
         "attachments[0].content_type"),
    ])
    def test_line_breaks_refused(self, overrides: dict[str, Any], field: str) -> None:
        """The offending field is named and no message is produced."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(**overrides))
        assert info.value.field == field
        assert field in str(info.value)

    def test_control_characters_in_display_name_refused(self) -> None:
        """Other C0 control characters in a display name are refused too."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(to=("Ja\x1bne <jane@prospect.io>",)))
        assert info.value.field == "to[0]"

    def test_tab_in_subject_is_allowed(self) -> None:
        """A tab is folding whitespace, not a line break, and is accepted."""
        _, _, parsed, _ = roundtrip(make_draft(subject="Q3\tplan"))
        assert parsed.subject.split() == ["Q3", "plan"]


class TestArbitraryInput:
    """Property checks: any string either composes into exactly the expected headers or is refused."""

    @settings(max_examples=300, deadline=None)
    @given(subject=st.text(), name=st.text(), note=st.text(), text=st.text())
    def test_no_input_adds_headers(self, subject: str, name: str, note: str, text: str) -> None:
        """Arbitrary subject, display name, header value and body never add or split headers."""
        draft = make_draft(subject=subject, from_name=name, text=text, extra_headers=(("X-Note", note),))
        try:
            raw, _ = compose(draft)
        except ComposeError as err:
            assert err.field in ("subject", "from_name", "extra_headers[0]")
            return
        assert_wire_safe(raw)
        msg = message_from_bytes(raw, policy=policy.default)
        assert sorted(k.lower() for k in msg.keys()) == sorted(
            ["from", "to", "subject", "date", "message-id", "x-note", "mime-version", "content-type",
             "content-transfer-encoding"])
        parsed = parse_email(raw)
        assert parsed.error is None and [a.email for a in parsed.to] == ["jane@prospect.io"]
        assert " ".join(parsed.subject.split()) == " ".join(subject.split())
        # The stdlib decoder may put a space between adjacent encoded words of a phrase; compare without spaces.
        assert parsed.from_ is not None and "".join(parsed.from_.name.split()) == "".join(name.split())
        assert parsed.text == text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip("\n")


    @settings(max_examples=300, deadline=None)
    @given(parts=st.lists(st.one_of(st.text(), st.sampled_from([
        "<p>", "</p>", "<br>", "<ul>", "<li>", "</ul>", "<ol>", "<a href='https://x.com'>", "</a>", "<blockquote>",
        "</blockquote>", "<pre>", "</pre>", "<table><tr><td>", "<!--", "-->", "<script>", "</script>", "<body>",
        "</body>", "&amp;", "&#1;", "<a href='&#2;'>", "<p onclick='x()'>"]))))
    def test_html_helpers_accept_any_markup(self, parts: list[str]) -> None:
        """The HTML helpers return strings for any markup, broken or hostile, and leak no internal markers."""
        markup = "".join(parts)
        text = html_to_text(markup)
        assert not set(text) & {"\x01", "\x02", "\x03"}
        html_quote, text_quote = quote_for_reply(markup, None, sender="a@b.com", sent_at=None)
        assert html_quote.startswith('<div class="mailpipe_quote">') and text_quote.startswith("a@b.com wrote:")
        html_block, text_block = forward_block(markup, None, from_="a@b.com", to=["c@d.com"], subject="s",
                                               sent_at=None)
        assert "Forwarded message" in html_block and "Forwarded message" in text_block


class TestComposeError:
    """The error type the API maps to 422."""

    def test_is_a_value_error_with_field(self) -> None:
        """ComposeError is a ValueError carrying the field and a message."""
        err = ComposeError("to[0]", "missing @ in the address")
        assert isinstance(err, ValueError)
        assert (err.field, err.message, str(err)) == ("to[0]", "missing @ in the address",
                                                     "to[0]: missing @ in the address")

    def test_survives_pickling(self) -> None:
        """The error pickles (workers may ship it across processes) with its field intact."""
        err = pickle.loads(pickle.dumps(ComposeError("subject", "line break")))
        assert (err.field, err.message) == ("subject", "line break")


class TestValidateAddress:
    """Single-address validation and normalization."""

    @pytest.mark.parametrize(("value", "expected"), [
        ("jane@prospect.io", "jane@prospect.io"),
        ("  Jane@Prospect.IO ", "Jane@prospect.io"),
        ("Jane Doe <jane@prospect.io>", "Jane Doe <jane@prospect.io>"),
        ("<jane@prospect.io>", "jane@prospect.io"),
        ('"Doe, Jane" <jane@prospect.io>', '"Doe, Jane" <jane@prospect.io>'),
        ("Jane   Doe<jane@prospect.io>", "Jane Doe <jane@prospect.io>"),
        ("Zoë <zoe@prospect.io>", "Zoë <zoe@prospect.io>"),
        ("jane.o'neil+crm@prospect.io", "jane.o'neil+crm@prospect.io"),
        ("jane@bücher.de", "jane@xn--bcher-kva.de"),
        ("jane@ÉCOLE.fr", "jane@xn--cole-9oa.fr"),
    ])
    def test_normalizes(self, value: str, expected: str) -> None:
        """Valid input comes back normalized: trimmed, domain lowercased and punycoded, name quoted if needed."""
        assert validate_address(value) == expected

    @pytest.mark.parametrize("value", [
        "", "   ", "jane", "jane.prospect.io", "@prospect.io", "jane@", "jane@@prospect.io", "ja ne@prospect.io",
        "jane@pro spect.io", "jane@localhost", "jane@prospect", "jane@-prospect.io", "jane@prospect-.io",
        "jane@prospect..io", "jane@123.456", ".jane@prospect.io", "jane.@prospect.io", "ja..ne@prospect.io",
        "jané@prospect.io", "jane@prospect.io>", "Jane <jane@prospect.io", "A <a@b.com>, B <b@c.com>",
        "jane@[127.0.0.1]", "jane(comment)@prospect.io", "jane@pros_pect.io",
    ])
    def test_rejects_invalid(self, value: str) -> None:
        """Malformed addresses raise ComposeError on the given field."""
        with pytest.raises(ComposeError) as info:
            validate_address(value, field="to[3]")
        assert info.value.field == "to[3]"

    def test_length_limits(self) -> None:
        """RFC 5321 limits: local part 64, domain label 63, whole address 254 octets."""
        assert validate_address("a" * 64 + "@x.com") == "a" * 64 + "@x.com"
        domain = ".".join(["d" * 63] * 3) + ".com"
        assert validate_address("a" * 10 + "@" + domain)
        for too_long in ("a" * 65 + "@x.com", "a@" + "d" * 64 + ".com",
                         "a" * 64 + "@" + ".".join(["d" * 63] * 3) + ".com"):
            with pytest.raises(ComposeError):
                validate_address(too_long)

    def test_default_field_name(self) -> None:
        """Without a field name the error names "address"."""
        with pytest.raises(ComposeError) as info:
            validate_address("nope")
        assert info.value.field == "address"

    @pytest.mark.parametrize(("value", "field"), [
        ("jane", "to[0]"), ("a b@c.com", "to[0]"), ("a@b", "to[0]")])
    def test_invalid_recipient_rejected_by_compose(self, value: str, field: str) -> None:
        """compose refuses a draft with an invalid recipient, naming its position."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(to=(value,)))
        assert info.value.field == field

    def test_invalid_sender_rejected_by_compose(self) -> None:
        """compose refuses an invalid sender address on from_email."""
        with pytest.raises(ComposeError) as info:
            compose(make_draft(from_email="rep-at-mycorp.com"))
        assert info.value.field == "from_email"


class TestCheckHeaderValue:
    """The header-injection guard used for every header value."""

    def test_strips_surrounding_whitespace(self) -> None:
        """Leading and trailing whitespace is removed, inner text kept."""
        assert check_header_value("subject", "  Hello  world \t") == "Hello  world"

    @pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\r\nb", "a\x00b", "a\x0bb", "a\x0cb", "a\u2028b",
                                       "a\u2029b", "a\x85b", "a\x1cb", "trailing\n"])
    def test_refuses_line_breaks_and_nul(self, value: str) -> None:
        """Any character that could end a header line, or NUL, is refused even at the edges."""
        with pytest.raises(ComposeError) as info:
            check_header_value("subject", value)
        assert info.value.field == "subject"

    def test_refuses_non_strings(self) -> None:
        """A non-string value is refused with the field named."""
        with pytest.raises(ComposeError) as info:
            check_header_value("subject", 42)  # type: ignore[arg-type]
        assert info.value.field == "subject"


class TestHtmlToText:
    """Plain-text rendering of HTML bodies."""

    def test_blocks_and_breaks(self) -> None:
        """Paragraphs are separated by a blank line, divs and <br> by a newline."""
        html = "<p>First para</p><p>Second<br>line</p><div>div one</div><div>div two</div>"
        assert html_to_text(html) == "First para\n\nSecond\nline\n\ndiv one\ndiv two"

    def test_links_keep_their_url(self) -> None:
        """Links read "text (url)", or just the URL when the text is the URL; anchors keep only text."""
        html = ('<p><a href="https://x.com/a?b=1&amp;c=2">Offer</a> <a href="https://x.com/">https://x.com</a> '
                '<a href="mailto:jane@x.com">jane@x.com</a> <a href="mailto:jane@x.com">Mail me</a> '
                '<a href="#top">Top</a> <a href="javascript:void(0)">JS</a> <a href="/rel">Rel</a></p>')
        assert html_to_text(html) == ("Offer (https://x.com/a?b=1&c=2) https://x.com jane@x.com "
                                      "Mail me (mailto:jane@x.com) Top JS Rel")

    def test_image_link_uses_alt_text(self) -> None:
        """An image link shows its alt text and URL, or the bare URL without alt text."""
        html = '<a href="https://x.com"><img alt="Logo" src="l.png"></a> <a href="https://y.com"><img src="y"></a>'
        assert html_to_text(html) == "Logo (https://x.com) https://y.com"

    def test_lists(self) -> None:
        """Unordered items read "- item", ordered "1. item", nested lists indented."""
        html = "<ul><li>one</li><li>two<ul><li>two-a</li></ul></li></ul><ol><li>first</li><li>second</li></ol>"
        assert html_to_text(html) == "- one\n- two\n  - two-a\n\n1. first\n2. second"

    def test_drops_head_script_style(self) -> None:
        """Head, title, script, style and comments contribute no text."""
        html = ("<html><head><title>T</title><style>p{}</style></head><body><script>x()</script>"
                "<!-- hidden --><p>Visible</p><noscript>ns</noscript></body></html>")
        assert html_to_text(html) == "Visible"

    def test_whitespace_collapsed_and_entities_decoded(self) -> None:
        """Source whitespace collapses to single spaces and entities are decoded."""
        html = "<p>  Lots\n   of \t spaces &amp; &eacute;t&eacute; &lt;tag&gt;&nbsp;end </p>"
        assert html_to_text(html) == "Lots of spaces & été <tag> end"

    def test_tables_one_row_per_line(self) -> None:
        """Table rows go on separate lines with cells separated by spaces."""
        html = "<table><tr><td>Item</td><td>Price</td></tr><tr><td>Widget</td><td>$5</td></tr></table>"
        assert html_to_text(html) == "Item Price\nWidget $5"

    def test_blockquote_prefixed(self) -> None:
        """Blockquotes become "> " lines, nested ones "> > "."""
        html = "<p>Reply</p><blockquote><p>orig</p><blockquote>older</blockquote></blockquote>"
        assert html_to_text(html) == "Reply\n\n> orig\n>\n> > older"

    def test_pre_keeps_spacing(self) -> None:
        """Preformatted text keeps its indentation and line breaks."""
        assert html_to_text("<pre>def f():\n    return 1</pre>") == "def f():\n    return 1"

    @pytest.mark.parametrize("html", ["", "   ", "<!-- only a comment -->", "<html><head></head></html>"])
    def test_empty_input(self, html: str) -> None:
        """Empty or content-free HTML yields an empty string."""
        assert html_to_text(html) == ""

    def test_control_characters_dropped(self) -> None:
        """Raw and entity-encoded control characters are removed rather than breaking the parser."""
        assert html_to_text("<p>a\x01b&#1;c\x1f</p><script>x</script>") == "abc"

    def test_plain_text_input(self) -> None:
        """Text without tags comes back as is."""
        assert html_to_text("just text") == "just text"

    def test_deep_nesting_does_not_fail(self) -> None:
        """Pathologically nested markup still yields its text."""
        html = "<div>" * 5000 + "deep" + "</div>" * 5000
        assert "deep" in html_to_text(html)


class TestReplyHeaders:
    """In-Reply-To and References for replies."""

    def test_appends_parent_to_references(self) -> None:
        """References are the parent's references followed by the parent's id."""
        assert reply_headers("<p@x.com>", ["<r1@x.com>", "<r2@x.com>"]) == ("p@x.com", ("r1@x.com", "r2@x.com",
                                                                                        "p@x.com"))

    def test_accepts_bare_and_combined_ids_and_dedupes(self) -> None:
        """Bare ids, several ids in one string, and duplicates are handled."""
        assert reply_headers("p@x.com", ["<r1@x.com> <r2@x.com>", "r2@x.com", "p@x.com"]) == (
            "p@x.com", ("r1@x.com", "r2@x.com", "p@x.com"))

    def test_caps_by_dropping_the_middle(self) -> None:
        """Over 20 ids keep the thread root and the most recent ones, ending with the parent."""
        refs = [f"<r{i}@x.com>" for i in range(30)]
        in_reply_to, references = reply_headers("<p@x.com>", refs)
        assert in_reply_to == "p@x.com"
        assert len(references) == 20
        assert references[0] == "r0@x.com"
        assert references[1:] == tuple(f"r{i}@x.com" for i in range(12, 30)) + ("p@x.com",)

    def test_parent_without_id(self) -> None:
        """A parent without a Message-ID gives no In-Reply-To and keeps its references."""
        assert reply_headers(None, ("<r1@x.com>",)) == (None, ("r1@x.com",))
        assert reply_headers(None, ()) == (None, ())

    def test_unusable_ids_skipped(self) -> None:
        """Ids compose would refuse (non-ASCII, spaces) are dropped instead of breaking the reply."""
        assert reply_headers("<é@x.com>", ["<ok@x.com>", "<bad id@x.com>"]) == (None, ("ok@x.com",))

    def test_output_composes(self) -> None:
        """The helper's output feeds compose and parses back as the same thread."""
        in_reply_to, references = reply_headers("<p@x.com>", [f"<r{i}@x.com>" for i in range(25)])
        _, _, parsed, _ = roundtrip(make_draft(in_reply_to=in_reply_to, references=references))
        assert parsed.in_reply_to == "p@x.com"
        assert parsed.references == references


class TestSubjects:
    """Reply and forward subject prefixes without stacking."""

    @pytest.mark.parametrize(("subject", "expected"), [
        ("Pricing", "Re: Pricing"), ("Re: Pricing", "Re: Pricing"), ("RE: re: Pricing", "Re: Pricing"),
        ("Re[2]: Pricing", "Re: Pricing"), ("  Re:   Pricing  ", "Re: Pricing"), ("Fwd: Pricing", "Re: Fwd: Pricing"),
        ("Re: Fwd: Pricing", "Re: Fwd: Pricing"), ("", "Re:"), ("Rebate offer", "Re: Rebate offer"),
    ])
    def test_reply_subject(self, subject: str, expected: str) -> None:
        """Leading Re prefixes collapse to one "Re: "; other prefixes and words starting with "re" stay."""
        assert reply_subject(subject) == expected

    @pytest.mark.parametrize(("subject", "expected"), [
        ("Pricing", "Fwd: Pricing"), ("Fwd: Pricing", "Fwd: Pricing"), ("FW: Fwd: Pricing", "Fwd: Pricing"),
        ("fwd:Pricing", "Fwd: Pricing"), ("Re: Pricing", "Fwd: Re: Pricing"), ("", "Fwd:"),
        ("Fwdx", "Fwd: Fwdx"),
    ])
    def test_forward_subject(self, subject: str, expected: str) -> None:
        """Leading Fwd/FW prefixes collapse to one "Fwd: "; a Re prefix is kept after it."""
        assert forward_subject(subject) == expected


class TestQuoteForReply:
    """The quoted original under a reply."""

    def test_html_original(self) -> None:
        """The HTML quote has the attribution and the original body in a blockquote, scripts removed."""
        original = ('<html><head><style>body{}</style></head><body onload="x()"><p>Hi <b>Sam</b>,</p>'
                    '<script>evil()</script><p>Price?</p></body></html>')
        html_quote, text_quote = quote_for_reply(original, None, sender="Jane Doe <jane@prospect.io>", sent_at=WHEN)
        assert "On Mon, 6 Jan 2025 at 10:00 UTC, Jane Doe &lt;jane@prospect.io&gt; wrote:" in html_quote
        assert "<blockquote" in html_quote and "<p>Hi <b>Sam</b>,</p>" in html_quote
        assert "evil" not in html_quote and "onload" not in html_quote and "body{}" not in html_quote
        assert text_quote == ("On Mon, 6 Jan 2025 at 10:00 UTC, Jane Doe <jane@prospect.io> wrote:\n"
                              "> Hi Sam,\n>\n> Price?")

    def test_text_original(self) -> None:
        """A text original is escaped into the HTML quote and prefixed line by line in the text quote."""
        html_quote, text_quote = quote_for_reply(None, "Hi <Sam> & co\n> earlier\n\nBye\n", sender="jane@x.com",
                                                 sent_at=None)
        assert "Hi &lt;Sam&gt; &amp; co<br>" in html_quote
        assert text_quote == "jane@x.com wrote:\n> Hi <Sam> & co\n>> earlier\n>\n> Bye"

    def test_text_after_body_close_is_kept_inside_the_quote(self) -> None:
        """Stray text after </body> stays within the blockquote."""
        html_quote, _ = quote_for_reply("<body><p>x</p></body>\n trailing words", None, sender="a@b.com",
                                        sent_at=None)
        assert html_quote.index("trailing words") < html_quote.index("</blockquote>")

    def test_offset_kept_in_attribution(self) -> None:
        """A non-UTC sent time is shown with its own offset."""
        when = datetime(2025, 7, 4, 18, 5, tzinfo=timezone(timedelta(hours=2)))
        _, text_quote = quote_for_reply(None, "x", sender="a@b.com", sent_at=when)
        assert text_quote.splitlines()[0] == "On Fri, 4 Jul 2025 at 18:05 +0200, a@b.com wrote:"

    def test_reply_end_to_end(self) -> None:
        """A reply built from the helpers threads, quotes, and derives its text with "> " lines."""
        in_reply_to, references = reply_headers("<orig@prospect.io>", ["<root@prospect.io>"])
        html_quote, _ = quote_for_reply("<p>What is the price?</p>", None, sender="Jane <jane@prospect.io>",
                                        sent_at=WHEN)
        draft = make_draft(subject=reply_subject("Re: Pricing"), html=f"<p>It is $5.</p>{html_quote}", text=None,
                           in_reply_to=in_reply_to, references=references)
        _, _, parsed, _ = roundtrip(draft)
        assert parsed.subject == "Re: Pricing"
        assert (parsed.in_reply_to, parsed.references) == ("orig@prospect.io", ("root@prospect.io",
                                                                                "orig@prospect.io"))
        assert parsed.text == ("It is $5.\n\nOn Mon, 6 Jan 2025 at 10:00 UTC, Jane <jane@prospect.io> wrote:\n\n"
                               "> What is the price?")


class TestForwardBlock:
    """The forwarded-message block under a forward."""

    def test_text_block(self) -> None:
        """The text block lists From, Date, Subject and To, then the original text."""
        _, text_block = forward_block("<p>ignored</p>", "Original body\nline 2", from_="Jane <jane@prospect.io>",
                                      to=["rep@mycorp.com", "Al <al@mycorp.com>"], subject="Pricing", sent_at=WHEN)
        assert text_block == ("---------- Forwarded message ---------\nFrom: Jane <jane@prospect.io>\n"
                              "Date: Mon, 6 Jan 2025 at 10:00 UTC\nSubject: Pricing\n"
                              "To: rep@mycorp.com, Al <al@mycorp.com>\n\nOriginal body\nline 2")

    def test_html_block_escapes_header_values(self) -> None:
        """Header values are HTML-escaped and the original HTML body follows."""
        html_block, _ = forward_block("<p>Body <b>bold</b></p>", None, from_="Jane <jane@prospect.io>",
                                      to=["rep@mycorp.com"], subject="<script>x</script> & co", sent_at=None)
        assert "From: Jane &lt;jane@prospect.io&gt;" in html_block
        assert "Subject: &lt;script&gt;x&lt;/script&gt; &amp; co" in html_block
        assert "<script>" not in html_block and "Date:" not in html_block
        assert "<p>Body <b>bold</b></p>" in html_block

    def test_text_derived_from_html_original(self) -> None:
        """Without an original text body the text block converts the original HTML."""
        _, text_block = forward_block('<p>See <a href="https://x.com/a">this</a></p>', None, from_="a@b.com",
                                      to=["c@d.com"], subject="s", sent_at=None)
        assert text_block.endswith("\n\nSee this (https://x.com/a)")

    def test_forward_end_to_end(self) -> None:
        """A forward with a note, the block and the original attachment parses back intact."""
        html_block, text_block = forward_block("<p>Original</p>", "Original", from_="jane@prospect.io",
                                               to=["rep@mycorp.com"], subject="Pricing", sent_at=WHEN)
        draft = make_draft(to=("boss@mycorp.com",), subject=forward_subject("Pricing"),
                           html=f"<p>FYI</p>{html_block}", text=f"FYI\n\n{text_block}",
                           attachments=(OutgoingAttachment("q.pdf", "application/pdf", PDF),))
        _, _, parsed, msg = roundtrip(draft)
        assert parsed.subject == "Fwd: Pricing"
        assert "---------- Forwarded message ---------" in parsed.text
        assert parsed.html is not None and "Forwarded message" in parsed.html
        assert parsed.attachments[0].content == PDF
        assert shape(msg)[0] == "multipart/mixed"  # type: ignore[index]


class TestDraft:
    """The Draft and OutgoingAttachment value types."""

    def test_frozen(self) -> None:
        """Drafts are immutable; changes go through dataclasses.replace."""
        draft = make_draft()
        with pytest.raises(AttributeError):
            draft.subject = "x"  # type: ignore[misc]
        assert replace(draft, subject="x").subject == "x"

    def test_attachment_repr_hides_content(self) -> None:
        """An attachment's repr does not dump its bytes."""
        assert "content=" not in repr(OutgoingAttachment("a.pdf", "application/pdf", PDF))

    def test_compose_is_deterministic_given_ids(self) -> None:
        """With message id and date fixed, composing twice gives the same headers and bodies."""
        draft = make_draft(message_id="fixed@mycorp.com", html=HTML)
        first, second = compose(draft)[0], compose(draft)[0]
        strip = re.compile(rb"=+\d+==")  # MIME boundaries are random
        assert strip.sub(b"", first) == strip.sub(b"", second)
