"""ops.keys: sealing columns, generating a key on first serve, rotating every stored secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlmodel import Session

from models import EmailAccount, NotionConnection, Organization
from models.db import get_engine
from ops.crypto import Keyring, generate_key_entry
from ops.keys import ensure_secret_keys, reset_keyring, rotate_secrets, seal, unseal
from ops.settings import get_settings, reset_settings

PASSWORDS = ["imap-Pa55word-xyz", "smtp-Pa55word-xyz", "secret_notion_token_abc"]


def _store_secrets() -> tuple[str, str]:
    with Session(get_engine()) as s:
        org = Organization(name="acme")
        s.add(org)
        s.flush()
        acct = EmailAccount(org_id=org.id, user_id="u1", email="a@x.com", email_norm="a@x.com",
                            imap_password_enc=seal("email_accounts", "imap_password_enc", PASSWORDS[0]),
                            smtp_password_enc=seal("email_accounts", "smtp_password_enc", PASSWORDS[1]))
        notion = NotionConnection(org_id=org.id, user="u1", notion_api_key=seal("secondBrain_notions", "notion_api_key", PASSWORDS[2]))
        s.add(acct)
        s.add(notion)
        s.commit()
        return acct.id, notion.id


def _switch_keys(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MAILPIPE_SECRET_KEYS", value)
    reset_settings()
    reset_keyring()


class TestRotation:
    def test_add_key_then_rotate(self, db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Written under A, readable after adding B, stored under B after rotate; no plaintext on disk."""
        key_a = generate_key_entry("keyA")
        _switch_keys(monkeypatch, key_a)
        acct_id, notion_id = _store_secrets()

        _switch_keys(monkeypatch, generate_key_entry("keyB") + "," + key_a)
        with Session(get_engine()) as s:
            acct = s.get(EmailAccount, acct_id)
            assert acct is not None and Keyring.kid_of(acct.imap_password_enc or "") == "keyA"
            assert unseal("email_accounts", "imap_password_enc", acct.imap_password_enc) == PASSWORDS[0]

        counts = rotate_secrets(get_engine())
        assert counts["email_accounts.imap_password_enc"] == 1
        assert counts["secondBrain_notions.notion_api_key"] == 1
        with Session(get_engine()) as s:
            acct = s.get(EmailAccount, acct_id)
            notion = s.get(NotionConnection, notion_id)
            assert acct is not None and notion is not None
            for token in (acct.imap_password_enc, acct.smtp_password_enc, notion.notion_api_key):
                assert Keyring.kid_of(token or "") == "keyB"
            assert unseal("email_accounts", "smtp_password_enc", acct.smtp_password_enc) == PASSWORDS[1]
        assert rotate_secrets(get_engine())["email_accounts.imap_password_enc"] == 0

        get_engine().dispose()
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("mailpipe.db*"))
        assert raw, "database file is empty"
        for pw in PASSWORDS:
            assert pw.encode() not in raw


class TestGeneration:
    def test_generates_and_persists_once(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Without keys, a key is written to .env (mode 600) and used; a second call keeps it."""
        monkeypatch.delenv("MAILPIPE_SECRET_KEYS")
        reset_settings()
        env = tmp_path / ".env"
        env.write_text("OTHER=1")
        assert ensure_secret_keys(str(env)) is True
        text = env.read_text()
        assert text.startswith("OTHER=1\nMAILPIPE_SECRET_KEYS=")
        first = get_settings().secret_keys
        assert first and first in text
        assert ensure_secret_keys(str(env)) is False
        assert env.read_text() == text

    def test_new_env_file_is_private(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """A .env created to hold the key is readable by its owner only."""
        monkeypatch.delenv("MAILPIPE_SECRET_KEYS")
        reset_settings()
        env = tmp_path / "fresh.env"
        ensure_secret_keys(str(env))
        assert env.stat().st_mode & 0o077 == 0

    def test_existing_world_readable_env_becomes_private_when_the_key_is_appended(self, monkeypatch: pytest.MonkeyPatch,
                                                                                  tmp_path: Path) -> None:
        """A pre-existing 0644 .env is 0600 once it holds the generated key (its other lines kept)."""
        monkeypatch.delenv("MAILPIPE_SECRET_KEYS")
        reset_settings()
        env = tmp_path / ".env"
        env.write_text("MAILPIPE_PUBLIC_URL=https://crm.example\n")
        env.chmod(0o644)
        assert ensure_secret_keys(str(env)) is True
        assert env.stat().st_mode & 0o777 == 0o600
        assert env.read_text().startswith("MAILPIPE_PUBLIC_URL=https://crm.example\nMAILPIPE_SECRET_KEYS=")

    @pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
    def test_an_env_that_cannot_be_made_private_is_refused(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Another user's world-readable .env: no key is written into it; one clear ConfigError."""
        from ops.settings import ConfigError

        monkeypatch.delenv("MAILPIPE_SECRET_KEYS")
        reset_settings()
        env = tmp_path / ".env"
        env.write_text("OTHER=1\n")
        env.chmod(0o666)
        os.chown(env, 65534, 65534)
        with pytest.raises(ConfigError, match="cannot be made private"):
            ensure_secret_keys(str(env))
        assert env.read_text() == "OTHER=1\n" and env.stat().st_mode & 0o777 == 0o666
