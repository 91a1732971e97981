"""ops.crypto: AES-256-GCM secrets tagged with their key id, and HMAC ids."""

from __future__ import annotations

import pytest

from ops.crypto import DecryptError, Keyring, generate_key_entry
from ops.settings import parse_secret_keys


def ring(*entries: str) -> Keyring:
    return Keyring(parse_secret_keys(",".join(entries)))


A, B = generate_key_entry("a"), generate_key_entry("b")


class TestEncryption:
    def test_round_trip_and_tag(self) -> None:
        """A value decrypts to itself and says which key encrypted it."""
        k = ring(A)
        token = k.encrypt("hunter2", context="t.c")
        assert "hunter2" not in token
        assert Keyring.kid_of(token) == "a"
        assert k.decrypt(token, context="t.c") == "hunter2"

    def test_nonce_is_fresh(self) -> None:
        """Encrypting twice gives different ciphertexts."""
        k = ring(A)
        assert k.encrypt("x") != k.encrypt("x")

    def test_old_key_still_decrypts_after_adding_new(self) -> None:
        """Adding key B in front keeps values under A readable, and marks them for rotation."""
        token = ring(A).encrypt("s3cret")
        both = ring(B, A)
        assert both.decrypt(token) == "s3cret"
        assert both.needs_rotation(token)
        assert Keyring.kid_of(both.encrypt("s3cret")) == "b"

    def test_unknown_key_is_a_clear_error(self) -> None:
        """A value under a removed key names the key id."""
        token = ring(A).encrypt("s3cret")
        with pytest.raises(DecryptError, match="'a'"):
            ring(B).decrypt(token)

    def test_context_is_bound(self) -> None:
        """A ciphertext moved to another column fails authentication."""
        k = ring(A)
        token = k.encrypt("s3cret", context="email_accounts.imap_password_enc")
        with pytest.raises(DecryptError, match="authentication"):
            k.decrypt(token, context="email_accounts.smtp_password_enc")

    def test_tampering_detected(self) -> None:
        """Flipping a character of the ciphertext is detected."""
        k = ring(A)
        token = k.encrypt("s3cret")
        bad = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
        with pytest.raises(DecryptError):
            k.decrypt(bad)

    def test_garbage_is_rejected(self) -> None:
        """Text that is not a mailpipe secret raises DecryptError."""
        with pytest.raises(DecryptError):
            ring(A).decrypt("plaintext-password")


class TestSigning:
    def test_sign_verify(self) -> None:
        """Signatures verify for the same parts only."""
        k = ring(A)
        sig = k.sign("open", "email1", "bob@x.com")
        assert k.verify("open", sig, "email1", "bob@x.com")
        assert not k.verify("open", sig, "email1", "eve@x.com")
        assert not k.verify("click", sig, "email1", "bob@x.com")

    def test_signatures_survive_key_addition(self) -> None:
        """Links sent before a new key was added keep verifying."""
        sig = ring(A).sign("open", "e", "r")
        assert ring(B, A).verify("open", sig, "e", "r")
