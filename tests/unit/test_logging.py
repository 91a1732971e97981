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

    def test_nested_secret_keys_masked(self) -> None:
        out = scrub_secrets(None, "info", {"event": "x", "data": {"refresh_token": "rt-1", "items": [{"api_key": "k"}], "n": 2}})
        assert out["data"] == {"refresh_token": "***", "items": [{"api_key": "***"}], "n": 2}


def test_json_lines_render_and_scrub_tracebacks_of_stdlib_records(capsys: object) -> None:
    """Dramatiq logs through stdlib logging with exc_info: the JSON line has the traceback as text,
    scrubbed like everything else."""
    import io
    import json
    import logging
    import sys

    from ops.logging import configure_logging

    buf = io.StringIO()
    saved = sys.stderr
    sys.stderr = buf
    try:
        configure_logging("INFO", True)
        try:
            raise ValueError("login with Bearer abcdefghijk refused")
        except ValueError:
            logging.getLogger("mailpipe.test").error("Failed to process message", exc_info=True)
    finally:
        sys.stderr = saved
        logging.getLogger().handlers.clear()
    (line,) = [ln for ln in buf.getvalue().splitlines() if "Failed to process" in ln]
    record = json.loads(line)
    assert record["exception"].startswith("Traceback") and "Bearer ***" in record["exception"]
    assert "abcdefghijk" not in line


def test_scrubbing_a_long_run_is_linear() -> None:
    """A logged value of 200,000 scheme-like characters scrubs in well under a second (each position
    of the run was rescanned to its end before: quadratic), and passwords in URLs are still masked."""
    import time

    from ops.logging import _scrub_text

    started = time.perf_counter()
    assert _scrub_text("a" * 200_000 + " smtp://u:pw@host") == "a" * 200_000 + " smtp://u:***@host"
    assert time.perf_counter() - started < 0.5
