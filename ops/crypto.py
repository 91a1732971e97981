"""Secrets at rest (AES-256-GCM, key-id tagged) and HMAC ids for public tracking URLs.

A stored value looks like ``v1.<kid>.<base64url(nonce || ciphertext || tag)>``. The key id says
which key decrypts it, so adding a new key (newest first in ``MAILPIPE_SECRET_KEYS``) keeps old
values readable until ``mailpipe keys rotate`` re-encrypts them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ops.settings import SecretKey

__all__ = ["DecryptError", "Keyring", "generate_key_entry"]

_PREFIX = "v1"


class DecryptError(Exception):
    """A stored secret cannot be decrypted (unknown key id, tampered or truncated)."""


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_key_entry(kid: str | None = None) -> str:
    """A fresh ``kid:base64`` entry for ``MAILPIPE_SECRET_KEYS``."""
    kid = kid or "k" + os.urandom(4).hex()
    return f"{kid}:{base64.b64encode(os.urandom(32)).decode('ascii')}"


class Keyring:
    """Encrypts under the newest key, decrypts under any known key."""

    __slots__ = ("_aead", "_keys", "_mac_keys")

    def __init__(self, keys: tuple[SecretKey, ...]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self._keys = keys
        self._aead = {k.kid: AESGCM(k.key) for k in keys}
        self._mac_keys: dict[str, bytes] = {}

    @property
    def current_kid(self) -> str:
        return self._keys[0].kid

    def encrypt(self, plaintext: str, *, context: str = "") -> str:
        """Encrypt text; ``context`` (e.g. ``email_accounts.imap_password_enc``) is bound as AAD."""
        kid = self.current_kid
        nonce = os.urandom(12)
        ct = self._aead[kid].encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return f"{_PREFIX}.{kid}.{_b64e(nonce + ct)}"

    def decrypt(self, token: str, *, context: str = "") -> str:
        """Decrypt a value produced by :meth:`encrypt` under any key still configured."""
        kid = self.kid_of(token)
        aead = self._aead.get(kid)
        if aead is None:
            raise DecryptError(f"secret was encrypted under key {kid!r}, which is not in MAILPIPE_SECRET_KEYS")
        blob = _b64d(token.split(".", 2)[2])
        try:
            return aead.decrypt(blob[:12], blob[12:], context.encode("utf-8")).decode("utf-8")
        except InvalidTag:
            raise DecryptError(f"secret under key {kid!r} failed authentication (tampered or wrong context)") from None

    @staticmethod
    def kid_of(token: str) -> str:
        """The key id a stored value was encrypted under."""
        parts = token.split(".", 2)
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise DecryptError("value is not an encrypted mailpipe secret")
        return parts[1]

    def needs_rotation(self, token: str) -> bool:
        return self.kid_of(token) != self.current_kid

    def _subkey(self, purpose: str, key: SecretKey) -> bytes:
        cache_key = f"{key.kid}:{purpose}"
        if cache_key not in self._mac_keys:
            hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"mailpipe:{purpose}".encode())
            self._mac_keys[cache_key] = hkdf.derive(key.key)
        return self._mac_keys[cache_key]

    def sign(self, purpose: str, *parts: str, length: int = 32) -> str:
        """A hex HMAC-SHA256 of ``parts`` under the newest key's subkey for ``purpose``."""
        msg = "\x1f".join(parts).encode("utf-8")
        return hmac.new(self._subkey(purpose, self._keys[0]), msg, hashlib.sha256).hexdigest()[:length]

    def sign_all(self, purpose: str, *parts: str, length: int = 32) -> list[str]:
        """:meth:`sign` under every configured key, newest first (to look up values signed before a rotation)."""
        msg = "\x1f".join(parts).encode("utf-8")
        return [hmac.new(self._subkey(purpose, k), msg, hashlib.sha256).hexdigest()[:length] for k in self._keys]

    def verify(self, purpose: str, signature: str, *parts: str, length: int = 32) -> bool:
        """Constant-time check of :meth:`sign` output under every configured key."""
        msg = "\x1f".join(parts).encode("utf-8")
        return any(
            hmac.compare_digest(hmac.new(self._subkey(purpose, k), msg, hashlib.sha256).hexdigest()[:length], signature)
            for k in self._keys
        )
