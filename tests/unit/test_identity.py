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

    def test_stable_header_hash_without_message_id(self) -> None:
        """Without a Message-ID the stable headers decide; bodies and other headers do not."""
        one = message_identity(b"From: a@b.example\r\nSubject: Hi\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nX-Extra: 1\r\n\r\nA")
        two = message_identity(b"From: a@b.example\r\nSubject: Hi\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nB")
        other = message_identity(b"From: a@b.example\r\nSubject: Bye\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nA")
        assert one.dedupe_key == two.dedupe_key != other.dedupe_key and one.dedupe_key.startswith("hdr:")

    def test_garbage_uses_the_bytes(self) -> None:
        """Bytes with no headers at all are identified by their hash, never by an empty key."""
        key = message_identity(b"\x00\xff not mail").dedupe_key
        assert key.startswith(("raw:", "hdr:")) and len(key) > 10

    def test_huge_message_id_fits_its_column(self) -> None:
        """An absurd Message-ID is clamped to the column and hashed into a bounded key."""
        ident = message_identity(b"Message-ID: <" + b"x" * 3000 + b"@t>\r\n\r\n")
        assert ident.message_id is not None and len(ident.message_id) <= 995 and len(ident.dedupe_key) <= 600
