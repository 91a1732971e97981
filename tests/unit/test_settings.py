"""ops.settings: validation with one readable line per problem."""

from __future__ import annotations

import base64

import pytest

from ops.settings import ConfigError, get_settings, parse_secret_keys, reset_settings


def _load(monkeypatch: pytest.MonkeyPatch, **env: str) -> object:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    return get_settings()


class TestDatabaseUrl:
    def test_default_is_embedded_sqlite(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without MAILPIPE_DATABASE_URL the embedded SQLite file is used."""
        monkeypatch.delenv("MAILPIPE_DATABASE_URL")
        s = _load(monkeypatch)
        assert s.database_url == "sqlite:///./mailpipe.db"  # type: ignore[attr-defined]

    def test_postgres_urls_use_psycopg3(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A plain postgresql:// URL is mapped to the psycopg 3 driver."""
        s = _load(monkeypatch, MAILPIPE_DATABASE_URL="postgresql://u:pw@db:5432/mp")
        assert s.database_url == "postgresql+psycopg://u:pw@db:5432/mp"  # type: ignore[attr-defined]
        assert "pw" not in s.redacted_database_url()  # type: ignore[attr-defined]

    def test_nonsense_is_one_line(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A garbage URL raises ConfigError naming the variable, on one line."""
        with pytest.raises(ConfigError) as info:
            _load(monkeypatch, MAILPIPE_DATABASE_URL="nonsense")
        assert str(info.value).startswith("MAILPIPE_DATABASE_URL:")
        assert "\n" not in str(info.value)


class TestSecretKeys:
    def test_short_key_rejected(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A key that is not 32 bytes is refused with its length."""
        short = base64.b64encode(b"x" * 16).decode()
        with pytest.raises(ConfigError, match="16 bytes"):
            _load(monkeypatch, MAILPIPE_SECRET_KEYS=f"a:{short}")

    def test_keys_parse_newest_first(self) -> None:
        """Entries keep their order; the first is the one used to encrypt."""
        a, b = (base64.b64encode(bytes([i]) * 32).decode() for i in (1, 2))
        keys = parse_secret_keys(f"new:{a}, old:{b}")
        assert [k.kid for k in keys] == ["new", "old"]
        assert "key=" not in repr(keys[0])

    @pytest.mark.parametrize("value", ["nocolon", ":abc", "a:!!!", "a b:" + "A" * 44])
    def test_malformed_entries(self, value: str) -> None:
        """Malformed entries raise a ConfigError, never a traceback from base64."""
        with pytest.raises(ConfigError):
            parse_secret_keys(value)

    def test_duplicate_kid(self) -> None:
        """The same key id twice is ambiguous and refused."""
        k = base64.b64encode(b"k" * 32).decode()
        with pytest.raises(ConfigError, match="twice"):
            parse_secret_keys(f"a:{k},a:{k}")


class TestOtherValues:
    def test_broker_url_must_be_amqp(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Only amqp(s):// brokers are accepted."""
        with pytest.raises(ConfigError, match="MAILPIPE_BROKER_URL"):
            _load(monkeypatch, MAILPIPE_BROKER_URL="redis://localhost")

    def test_empty_broker_url_means_embedded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An empty MAILPIPE_BROKER_URL selects the in-process broker."""
        s = _load(monkeypatch, MAILPIPE_BROKER_URL="")
        assert s.embedded_broker  # type: ignore[attr-defined]

    def test_trusted_proxies_are_cidrs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bad CIDR names itself in the error."""
        with pytest.raises(ConfigError, match="not-an-ip"):
            _load(monkeypatch, MAILPIPE_TRUSTED_PROXIES="10.0.0.0/8,not-an-ip")

    def test_poll_seconds_positive(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Zero or negative poll intervals are refused."""
        with pytest.raises(ConfigError, match="MAILPIPE_POLL_SECONDS"):
            _load(monkeypatch, MAILPIPE_POLL_SECONDS="0")


class TestTrackingThrottle:
    def test_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """20 events per token per minute, 600 hits per client per minute, 50,000 keys per limiter."""
        s = _load(monkeypatch)
        assert (s.tracking_token_per_minute, s.tracking_ip_per_minute, s.tracking_throttle_keys) == (20, 600, 50_000)  # type: ignore[attr-defined]

    def test_zero_turns_a_limit_off(self, monkeypatch: pytest.MonkeyPatch) -> None:
        s = _load(monkeypatch, MAILPIPE_TRACKING_TOKEN_PER_MINUTE="0", MAILPIPE_TRACKING_IP_PER_MINUTE="0")
        assert (s.tracking_token_per_minute, s.tracking_ip_per_minute) == (0, 0)  # type: ignore[attr-defined]

    @pytest.mark.parametrize(("var", "value"), [("MAILPIPE_TRACKING_TOKEN_PER_MINUTE", "-1"), ("MAILPIPE_TRACKING_IP_PER_MINUTE", "lots"),
                                                ("MAILPIPE_TRACKING_THROTTLE_KEYS", "10")])
    def test_bad_values_name_the_variable(self, monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
        with pytest.raises(ConfigError, match=var):
            _load(monkeypatch, **{var: value})
