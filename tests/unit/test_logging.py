"""ops.logging: secrets never reach the log output."""

from __future__ import annotations

from ops.logging import scrub_secrets


class TestScrub:
    def test_secret_keys_masked(self) -> None:
        """Values under password/token/secret-like keys are replaced."""
        out = scrub_secrets(None, "info", {"event": "x", "password": "hunter2", "oauth_token": "ya29", "user": "bob"})
        assert out == {"event": "x", "password": "***", "oauth_token": "***", "user": "bob"}

    def test_secrets_inside_text_masked(self) -> None:
        """URL passwords, bearer tokens and API keys inside messages are masked."""
        text = "connect amqp://guest:topsecret@h/v failed; Authorization: Bearer abc.def; key mp_" + "A" * 40
        out = scrub_secrets(None, "error", {"event": text})["event"]
        assert "topsecret" not in out and "abc.def" not in out and "A" * 40 not in out
        assert "amqp://guest:***@h/v" in out
