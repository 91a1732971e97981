"""The process keyring: load from settings, generate on first `serve`, rotate stored secrets."""

from __future__ import annotations

import base64
import os
import stat
import time
from collections.abc import Sequence
from functools import lru_cache

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from ops.crypto import Keyring, generate_key_entry
from ops.private_files import PRIVATE_FILE, open_private
from ops.settings import ConfigError, get_settings, reset_settings

__all__ = ["ensure_secret_keys", "get_keyring", "read_claims", "reset_keyring", "rotate_secrets", "seal", "sign_claims", "unseal"]


@lru_cache(maxsize=1)
def get_keyring() -> Keyring:
    """The keyring from ``MAILPIPE_SECRET_KEYS``; a clear error when none is configured."""
    keys = get_settings().keys
    if not keys:
        raise ConfigError("MAILPIPE_SECRET_KEYS is not set: run `mailpipe serve` once to generate one, or set kid:base64-32-bytes")
    return Keyring(keys)


def reset_keyring() -> None:
    get_keyring.cache_clear()


def seal(table: str, column: str, plaintext: str | None) -> str | None:
    """Encrypt a value for ``table.column`` (the column name is bound as associated data)."""
    if plaintext is None:
        return None
    return get_keyring().encrypt(plaintext, context=f"{table}.{column}")


def unseal(table: str, column: str, token: str | None) -> str | None:
    """Decrypt a value stored in ``table.column``."""
    if token is None:
        return None
    return get_keyring().decrypt(token, context=f"{table}.{column}")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


def sign_claims(purpose: str, claims: Sequence[str], ttl_seconds: float, now: float | None = None) -> str:
    """A URL-safe token carrying ``claims`` and an expiry, HMAC-signed under ``purpose``
    (``b64(claim)...expiry.signature``): websocket tokens and OAuth ``state`` values."""
    exp = str(int((now if now is not None else time.time()) + ttl_seconds))
    body = ".".join([*(_b64(c) for c in claims), exp])
    return f"{body}.{get_keyring().sign(purpose, body)}"


def read_claims(purpose: str, token: str, now: float | None = None) -> tuple[str, ...] | None:
    """The claims of a :func:`sign_claims` token whose signature verifies and which has not expired."""
    body, _, sig = token.rpartition(".")
    head, _, exp = body.rpartition(".")
    if not head or not exp.isdigit() or not get_keyring().verify(purpose, sig, body):
        return None
    if int(exp) < (now if now is not None else time.time()):
        return None
    try:
        return tuple(_unb64(c) for c in head.split("."))
    except (ValueError, UnicodeDecodeError):
        return None


def ensure_secret_keys(env_path: str) -> bool:
    """Generate and persist a key in ``env_path`` when none is configured; True if generated.

    ``env_path`` is made 0600 before the key is written (created so, or tightened when it already
    existed); a file that cannot be made private (another user's) is refused with a ConfigError.
    """
    if get_settings().secret_keys:
        return False
    entry = generate_key_entry()
    existing = ""
    if os.path.exists(env_path):
        with open(env_path, encoding="utf-8") as fh:
            existing = fh.read()
    fd = open_private(env_path, os.O_WRONLY | os.O_APPEND)
    if stat.S_IMODE(os.fstat(fd).st_mode) & ~PRIVATE_FILE:
        os.close(fd)
        raise ConfigError(f"{env_path} belongs to another user and cannot be made private (0600); set MAILPIPE_SECRET_KEYS "
                          "yourself (`mailpipe keys generate`) instead of letting serve write it there")
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        if existing and not existing.endswith("\n"):
            fh.write("\n")
        fh.write(f"MAILPIPE_SECRET_KEYS={entry}\n")
    os.environ["MAILPIPE_SECRET_KEYS"] = entry
    reset_settings()
    reset_keyring()
    return True


def rotate_secrets(engine: Engine) -> dict[str, int]:
    """Re-encrypt every stored secret under the newest key; returns counts per column."""
    from models import ENCRYPTED_COLUMNS, metadata

    keyring = get_keyring()
    counts: dict[str, int] = {}
    for table_name, column in ENCRYPTED_COLUMNS:
        table = metadata.tables[table_name]
        pk = list(table.primary_key.columns)
        col = table.c[column]
        done = 0
        with engine.begin() as conn:
            rows = conn.execute(select(*pk, col).where(col.is_not(None))).all()
            for row in rows:
                token = row[-1]
                if not keyring.needs_rotation(token):
                    continue
                context = f"{table_name}.{column}"
                fresh = keyring.encrypt(keyring.decrypt(token, context=context), context=context)
                cond = [c == row[i] for i, c in enumerate(pk)]
                # Only if unchanged since read: a secret updated meanwhile is already under the new key.
                res = conn.execute(update(table).where(*cond, col == token).values({column: fresh}))
                done += res.rowcount
        counts[f"{table_name}.{column}"] = done
    return counts
