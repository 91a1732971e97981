"""pipeline.stages.identity: the dedupe key of a raw message."""

from __future__ import annotations

from pipeline.stages.identity import message_identity


class TestIdentity:
    def test_message_id_normalized(self) -> None:
        """Brackets dropped and the domain lowercased, so two spellings are one email."""
        a = message_identity(b"Message-ID: <AbC@EXAMPLE.com>\r\nSubject: x\r\n\r\nbody")
        b = message_identity(b"Message-Id:   <AbC@example.COM> \r\n\r\nother body")
        assert a.dedupe_key == b.dedupe_key == "mid:AbC@example.com" and a.message_id == "AbC@example.com"

    def test_gmail_id_wins(self) -> None:
        """X-GM-MSGID is the identity on Gmail, whatever the Message-ID says."""
        assert message_identity(b"Message-ID: <a@b>\r\n\r\n", gm_msgid=42).dedupe_key == "gm:42"

    def test_without_message_id_headers_and_body_decide(self) -> None:
        """Without a Message-ID the stable headers and the body decide; other headers do not. (This
        test used to assert that bodies did not count: distinct messages with the same Date/From/
        Subject collapsed into one and the others were lost.)"""
        head = b"From: a@b.example\r\nSubject: Hi\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        one = message_identity(head + b"X-Extra: 1\r\n\r\nA\r\n")
        same = message_identity(head + b"\r\nA\r\n")
        lf = message_identity(head.replace(b"\r\n", b"\n") + b"\nA\n")
        other_body = message_identity(head + b"\r\nB\r\n")
        other_subject = message_identity(head.replace(b"Hi", b"Bye") + b"\r\nA\r\n")
        assert one.dedupe_key == same.dedupe_key == lf.dedupe_key and one.dedupe_key.startswith("hb:")
        assert len({one.dedupe_key, other_body.dedupe_key, other_subject.dedupe_key}) == 3
        assert one.message_id is None

    def test_legacy_key_is_the_header_only_hash(self) -> None:
        """Mail without a Message-ID carries the key earlier releases stored (headers only), so the fetch
        step can find rows stored before the change; two bodies share it, which is why it is not the key."""
        head = b"From: a@b.example\r\nSubject: Hi\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"
        a, b = message_identity(head + b"A"), message_identity(head + b"B")
        assert a.legacy_key == b.legacy_key and a.legacy_key.startswith("hdr:") and a.legacy_key != a.dedupe_key
        assert message_identity(b"Message-ID: <x@y>\r\n\r\nbody").legacy_key is None

    def test_every_to_and_cc_header_counts(self) -> None:
        """A second To: header is part of the identity (it was ignored before)."""
        head = b"From: a@b.example\r\nSubject: Hi\r\nTo: one@x.example\r\n"
        assert message_identity(head + b"\r\nA").dedupe_key != message_identity(head + b"To: two@x.example\r\n\r\nA").dedupe_key

    def test_obsolete_header_syntax(self) -> None:
        """'Message-ID  :' (whitespace before the colon, RFC 5322 §4.5) is read; the old key is kept as legacy."""
        ident = message_identity(b"From  : a@b.example\r\nMessage-ID  : <obs@Example.org>\r\n\r\nbody")
        assert ident.dedupe_key == "mid:obs@example.org" and ident.message_id == "obs@example.org"
        assert ident.legacy_key is not None and not ident.legacy_key.startswith("mid:")

    def test_garbage_uses_the_bytes(self) -> None:
        """Bytes with no headers at all are identified by their hash, never by an empty key."""
        key = message_identity(b"\x00\xff not mail").dedupe_key
        assert key.startswith(("raw:", "hdr:")) and len(key) > 10

    def test_huge_message_id_fits_its_column(self) -> None:
        """An absurd Message-ID is clamped to the column and hashed into a bounded key."""
        ident = message_identity(b"Message-ID: <" + b"x" * 3000 + b"@t>\r\n\r\n")
        assert ident.message_id is not None and len(ident.message_id) <= 995 and len(ident.dedupe_key) <= 600
