"""Tracking ids: the HMACs that name a recipient's pixel and a tracked link, and the public URLs.

Pure: hashes come from a :data:`Signer` the caller builds, e.g. ``functools.partial(keyring.sign,
"click")`` (:meth:`ops.crypto.Keyring.sign`), and are checked with the matching :data:`Verifier`
(``functools.partial(keyring.verify, "click")``), which tries every configured key so mail signed
before a key rotation keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from models.base import normalize_email

__all__ = ["Signer", "Verifier", "click_url", "link_hash", "open_url", "recipient_hash", "verify_link_hash", "verify_recipient_hash"]

#: ``sign(*parts) -> hex``, e.g. ``functools.partial(keyring.sign, "click")``.
Signer = Callable[..., str]
#: ``verify(signature, *parts) -> bool``, e.g. ``functools.partial(keyring.verify, "click")``.
Verifier = Callable[..., bool]


def _recipient_key(recipient: str) -> str:
    """The form of a recipient address that is signed: unbracketed, stripped, lowercased."""
    return normalize_email(recipient) or recipient.strip().lower()


def recipient_hash(sign: Signer, email_id: str, recipient: str) -> str:
    """HMAC over the email id and the lowercased recipient address (the pixel's id)."""
    return sign(email_id, _recipient_key(recipient))


def link_hash(sign: Signer, email_id: str, url: str) -> str:
    """HMAC over the email id and a decoded target URL (what :func:`inject` stores)."""
    return sign(email_id, url)


def verify_recipient_hash(verify: Verifier, email_id: str, recipient: str, signature: str) -> bool:
    """Whether ``signature`` is :func:`recipient_hash` of this email and recipient under any key."""
    return verify(signature, email_id, _recipient_key(recipient))


def verify_link_hash(verify: Verifier, email_id: str, url: str, signature: str) -> bool:
    """Whether ``signature`` is :func:`link_hash` of this email and stored URL under any key."""
    return verify(signature, email_id, url)


def open_url(public_url: str, email_id: str, rhash: str) -> str:
    """The pixel URL ``PUBLIC_URL/track/open/{email_id}/{recipient_hash}``."""
    return f"{public_url.rstrip('/')}/track/open/{quote(email_id, safe='')}/{quote(rhash, safe='')}"


def click_url(public_url: str, email_id: str, lhash: str) -> str:
    """The click URL ``PUBLIC_URL/track/click/{email_id}/{link_hash}``."""
    return f"{public_url.rstrip('/')}/track/click/{quote(email_id, safe='')}/{quote(lhash, safe='')}"
