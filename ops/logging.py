"""structlog setup with a processor that scrubs secrets from every event."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

__all__ = ["configure_logging", "scrub_secrets"]

_SECRET_KEYS = re.compile(r"(pass(word)?|secret|token|api_key|authorization|notion_api_key|refresh|cookie)", re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]+):[^@\s]+@", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)
_MP_KEY = re.compile(r"\bmp_[A-Za-z0-9_-]{20,}")


def _scrub_text(value: str) -> str:
    value = _URL_PASSWORD.sub(r"\g<scheme>:***@", value)
    value = _BEARER.sub(r"\1***", value)
    return _MP_KEY.sub("mp_***", value)


def scrub_secrets(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask values under secret-looking keys and secrets inside strings."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEYS.search(key) and value is not None:
            event_dict[key] = "***"
        elif isinstance(value, str):
            event_dict[key] = _scrub_text(value)
    return event_dict


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    """Route stdlib and structlog output through one scrubbing renderer on stderr."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrub_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pika", "apscheduler", "uvicorn.access", "alembic", "dramatiq"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
