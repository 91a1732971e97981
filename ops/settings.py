"""Settings read from the environment (and `.env`), validated once at start.

Every problem is reported as one readable line through :class:`ConfigError`; callers print it
and exit non-zero instead of showing a traceback.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from pydantic import ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["SENTIMENT_BACKENDS", "ConfigError", "SecretKey", "Settings", "get_settings", "parse_secret_keys", "reset_settings"]


#: ``MAILPIPE_SENTIMENT_BACKEND`` values: the offline lexicon (default), a local ONNX model directory, an
#: OpenAI-compatible chat endpoint (per-organization opt-in, falling back to the lexicon), or off (no stage).
SENTIMENT_BACKENDS = ("lexicon", "onnx", "llm", "off")


class ConfigError(Exception):
    """A configuration value is unusable; the message is one line meant for humans."""


@dataclass(frozen=True, slots=True)
class SecretKey:
    """One entry of ``MAILPIPE_SECRET_KEYS``: a key id and 32 raw key bytes."""

    kid: str
    key: bytes

    def __repr__(self) -> str:  # never show key material
        return f"SecretKey(kid={self.kid!r})"


def parse_secret_keys(value: str) -> tuple[SecretKey, ...]:
    """Parse ``kid:base64-32-bytes`` entries, comma-separated, newest first."""
    keys: list[SecretKey] = []
    for position, entry in enumerate(p.strip() for p in value.split(",") if p.strip()):
        kid, sep, b64 = entry.partition(":")
        if not sep or not kid or not b64:
            raise ConfigError(f"MAILPIPE_SECRET_KEYS entry {position + 1} must look like 'kid:base64-32-bytes'")
        if not kid.replace("-", "").replace("_", "").isalnum() or len(kid) > 32:
            raise ConfigError(f"MAILPIPE_SECRET_KEYS entry {position + 1}: key id must be 1-32 letters, digits, - or _")
        try:
            raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), altchars=b"-_" if ("-" in b64 or "_" in b64) else None, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"MAILPIPE_SECRET_KEYS key {kid!r} is not valid base64") from None
        if len(raw) != 32:
            raise ConfigError(f"MAILPIPE_SECRET_KEYS key {kid!r} decodes to {len(raw)} bytes; AES-256 needs exactly 32")
        if any(k.kid == kid for k in keys):
            raise ConfigError(f"MAILPIPE_SECRET_KEYS lists key id {kid!r} twice")
        keys.append(SecretKey(kid, raw))
    return tuple(keys)


class Settings(BaseSettings):
    """All of mailpipe's configuration (see API.md, "Runtime")."""

    model_config = SettingsConfigDict(env_prefix="MAILPIPE_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///./mailpipe.db"
    broker_url: str | None = None
    secret_keys: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    storage_url: str = "file://./attachments"
    raw_cache_mb: int = 64  # raw messages kept in memory between fetch and parse in one process; 0 = off
    poll_seconds: int = 60
    backfill_days: int = 90
    trusted_proxies: str = ""
    mail_allowed_nets: str = ""
    webhook_allowed_nets: str = ""
    webhook_retry_base_seconds: float = 5.0
    webhook_retry_hours: float = 24.0
    account_tests_per_minute: int = 10
    scheduler_tick_seconds: float = 5.0
    sync_rate_per_hour: int = 1000
    send_cap_per_day: int = 2000
    send_retry_base_seconds: float = 30.0
    send_data_grace_seconds: float = 180.0
    smtp_reuse: bool = True  # keep authenticated SMTP sessions per mailbox open between sends (issue 21)
    smtp_idle_seconds: float = 30.0  # a kept session idle longer than this is closed instead of reused
    spool_dir: str = "./spool"
    notify_smtp_url: str | None = None
    tracking_spool_max_mb: int = 512
    tracking_open_delay_seconds: float = 2.0
    tracking_notify_proxy_opens: bool = False
    tracking_token_per_minute: int = 20
    tracking_ip_per_minute: int = 600
    tracking_throttle_keys: int = 50_000
    # serve only: while the app is busy, the share of the time the in-process recorder may take
    # (ops/pacing.py), and how many recording batches may wait in memory before the intake spools
    tracking_record_share: float = 0.10
    tracking_backlog_batches: int = 250
    tracking_data_dir: str = ""  # refreshed range and user-agent files (mailpipe tracking update-ranges); empty: the shipped ones
    log_level: str = "INFO"
    log_json: bool = False
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9191
    metrics_dir: str | None = None
    scheduler_metrics_port: int | None = 9192
    idle_capacity: int = 2000
    idle_lease_seconds: float = 60.0
    idle_reissue_seconds: float = 1500.0
    watcher_metrics_port: int | None = 9193

    google_client_id: str | None = None
    google_client_secret: str | None = None
    google_auth_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_token_url: str = "https://oauth2.googleapis.com/token"
    microsoft_client_id: str | None = None
    microsoft_client_secret: str | None = None
    microsoft_tenant: str = "common"
    microsoft_auth_url: str | None = None
    microsoft_token_url: str | None = None
    oauth_redirect_base: str | None = None
    notion_base_url: str = "https://api.notion.com"
    notion_client_id: str | None = None
    notion_client_secret: str | None = None

    sentiment_backend: str = "lexicon"
    sentiment_model: str | None = None
    sentiment_llm_url: str | None = None
    sentiment_llm_key: str | None = None
    sentiment_llm_model: str = "gpt-4o-mini"
    sentiment_llm_timeout_seconds: float = 10.0
    sentiment_llm_per_minute: int = 60
    sentiment_window_days: int = 14
    sentiment_at_risk_negatives: int = 3

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, v: str) -> str:
        scheme = urlsplit(v).scheme
        if scheme == "sqlite" and v.startswith("sqlite://"):
            return v
        if scheme in {"postgresql", "postgresql+psycopg", "postgres"}:
            if not urlsplit(v).hostname and "host=" not in v:
                raise ValueError("a PostgreSQL URL needs a host, e.g. postgresql+psycopg://user@127.0.0.1:5432/mailpipe")
            return "postgresql+psycopg://" + v.split("://", 1)[1]
        raise ValueError("must be sqlite:///path.db or postgresql+psycopg://user@host:5432/db")

    @field_validator("idle_capacity")
    @classmethod
    def _capacity(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be a whole number of mailboxes (0: no IDLE watcher inside serve)")
        return v

    @field_validator("raw_cache_mb")
    @classmethod
    def _raw_cache(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be a whole number of MiB (0 keeps no raw messages in memory)")
        return v

    @field_validator("idle_lease_seconds")
    @classmethod
    def _lease(cls, v: float) -> float:
        if not 2 <= v <= 3600:
            raise ValueError("must be between 2 and 3600 seconds")
        return v

    @field_validator("idle_reissue_seconds")
    @classmethod
    def _reissue(cls, v: float) -> float:
        if not 1 <= v <= 1500:
            raise ValueError("must be between 1 and 1500 seconds (servers end an IDLE after 29 minutes)")
        return v

    @field_validator("scheduler_metrics_port", "watcher_metrics_port", mode="before")
    @classmethod
    def _empty_port(cls, v: object) -> object:
        return None if isinstance(v, str) and v.strip().lower() in ("", "0", "off", "none") else v

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, v: str | None) -> str | None:
        if v is None or v.strip() == "":
            return None
        for part in v.split(";"):
            parsed = urlsplit(part.strip())
            if parsed.scheme not in {"amqp", "amqps"} or not parsed.hostname:
                raise ValueError("must be unset (in-process broker) or amqp://user:pass@host:5672/vhost")
        return v

    @field_validator("secret_keys")
    @classmethod
    def _check_keys(cls, v: str | None) -> str | None:
        if v is None or v.strip() == "":
            return None
        parse_secret_keys(v)
        return v

    @field_validator("public_url", "notion_base_url", "google_auth_url", "google_token_url")
    @classmethod
    def _check_http_url(cls, v: str) -> str:
        parsed = urlsplit(v)
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            raise ValueError("must be an http(s):// URL")
        return v.rstrip("/")

    @field_validator("notify_smtp_url")
    @classmethod
    def _check_notify_smtp(cls, v: str | None) -> str | None:
        if v is None or v.strip() == "":
            return None
        parsed = urlsplit(v)
        if parsed.scheme not in {"smtp", "smtps"} or not parsed.hostname or "from=" not in (parsed.query or ""):
            raise ValueError("must look like smtp://user:pass@host:587?from=notifications@example.com (smtps:// for port 465)")
        return v

    @field_validator("storage_url")
    @classmethod
    def _check_storage(cls, v: str) -> str:
        parsed = urlsplit(v)
        if parsed.scheme == "file" or (parsed.scheme == "s3" and parsed.netloc):
            return v
        raise ValueError("must be file:///path or s3://bucket?endpoint_url=...&region=...")

    @field_validator("send_retry_base_seconds", "send_data_grace_seconds", "tracking_open_delay_seconds",
                     "webhook_retry_base_seconds", "webhook_retry_hours")
    @classmethod
    def _positive_float(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be a positive number of seconds")
        return v

    @field_validator("poll_seconds", "backfill_days", "sync_rate_per_hour", "send_cap_per_day", "tracking_spool_max_mb",
                     "account_tests_per_minute", "tracking_backlog_batches")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be a positive whole number")
        return v

    @field_validator("tracking_record_share")
    @classmethod
    def _share(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError("must be a share of the time above 0 and at most 1 (1: no pacing)")
        return v

    @field_validator("tracking_token_per_minute", "tracking_ip_per_minute")
    @classmethod
    def _rate_or_off(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be a whole number of events per minute (0 turns the limit off)")
        return v

    @field_validator("tracking_throttle_keys")
    @classmethod
    def _throttle_keys(cls, v: int) -> int:
        if v < 100:
            raise ValueError("must be at least 100 (keys each tracking limiter remembers)")
        return v

    @field_validator("trusted_proxies", "mail_allowed_nets", "webhook_allowed_nets")
    @classmethod
    def _check_cidrs(cls, v: str) -> str:
        for cidr in filter(None, (c.strip() for c in v.split(","))):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR like 10.0.0.0/8") from None
        return v

    @field_validator("sentiment_backend")
    @classmethod
    def _check_sentiment_backend(cls, v: str) -> str:
        v = v.strip().lower() or "lexicon"
        if v not in SENTIMENT_BACKENDS:
            raise ValueError(f"must be one of {', '.join(SENTIMENT_BACKENDS)}")
        return v

    @field_validator("sentiment_llm_url")
    @classmethod
    def _check_llm_url(cls, v: str | None) -> str | None:
        if v is None or v.strip() == "":
            return None
        parsed = urlsplit(v)
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            raise ValueError("must be the base URL of an OpenAI-compatible API, e.g. https://llm.internal.example/v1")
        return v.rstrip("/")

    @field_validator("sentiment_llm_timeout_seconds")
    @classmethod
    def _llm_timeout(cls, v: float) -> float:
        if not 0 < v <= 120:
            raise ValueError("must be between 0 and 120 seconds")
        return v

    @field_validator("sentiment_llm_per_minute", "sentiment_window_days", "sentiment_at_risk_negatives")
    @classmethod
    def _positive_sentiment(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be a positive whole number")
        return v

    @model_validator(mode="after")
    def _sentiment_needs(self) -> Settings:
        if self.sentiment_backend == "onnx" and not self.sentiment_model:
            raise ConfigError("MAILPIPE_SENTIMENT_BACKEND=onnx needs MAILPIPE_SENTIMENT_MODEL=/path/to/model-directory")
        if self.sentiment_backend == "llm" and not self.sentiment_llm_url:
            raise ConfigError("MAILPIPE_SENTIMENT_BACKEND=llm needs MAILPIPE_SENTIMENT_LLM_URL=https://host/v1")
        return self

    @property
    def keys(self) -> tuple[SecretKey, ...]:
        """Parsed secret keys, newest first (empty when none configured)."""
        return parse_secret_keys(self.secret_keys) if self.secret_keys else ()

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None

    def redacted_database_url(self) -> str:
        """The database URL with any password replaced, for banners and logs."""
        return _redact_url(self.database_url)

    def redacted_broker_url(self) -> str:
        return "in-process (StubBroker)" if self.broker_url is None else _redact_url(self.broker_url)


def _redact_url(url: str) -> str:
    parsed = urlsplit(url)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
        return parsed._replace(netloc=netloc).geturl()
    return url


def _first_error_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err.get("loc") else "?"
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, ConfigError):
        return str(ctx_error)
    return f"MAILPIPE_{field.upper()}: {msg}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Load and validate settings once per process; raises :class:`ConfigError`."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_first_error_line(exc)) from None
    except ConfigError:
        raise


def reset_settings() -> None:
    """Forget cached settings (tests, and `serve` after it persisted a generated key)."""
    get_settings.cache_clear()


def env_file_path() -> str:
    """Where `serve` persists generated values: `.env` in the working directory."""
    return os.path.join(os.getcwd(), ".env")
