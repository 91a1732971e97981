"""structlog setup with a processor that scrubs secrets from every event."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from dramatiq import Middleware
from structlog.typing import EventDict, Processor

__all__ = ["LogContext", "configure_logging", "scrub_secrets"]

_SECRET_KEYS = re.compile(r"(pass(word)?|secret|token|api_key|authorization|notion_api_key|refresh|cookie)", re.I)
# A scheme is only tried where a run of scheme characters begins (the lookbehind): otherwise every
# position of a long run would be scanned to its end again (quadratic in a logged value).
_URL_PASSWORD = re.compile(r"(?<![a-z0-9+.-])(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]+):[^@\s]+@", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)
_MP_KEY = re.compile(r"\bmp_[A-Za-z0-9_-]{20,}")


def _scrub_text(value: str) -> str:
    value = _URL_PASSWORD.sub(r"\g<scheme>:***@", value)
    value = _BEARER.sub(r"\1***", value)
    return _MP_KEY.sub("mp_***", value)


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return _scrub_text(value)
    if depth > 5:
        return value
    if isinstance(value, dict):
        return {k: ("***" if isinstance(k, str) and _SECRET_KEYS.search(k) and v is not None else _scrub(v, depth + 1))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v, depth + 1) for v in value)
    return value


def scrub_secrets(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask values under secret-looking keys (nested ones too) and secrets
    inside strings, exception text included (it runs after the traceback is rendered)."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEYS.search(key) and value is not None:
            event_dict[key] = "***"
        else:
            event_dict[key] = _scrub(value)
    return event_dict


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    """Route stdlib and structlog output through one scrubbing renderer on stderr."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks become text first (for stdlib records too), then everything is scrubbed.
    tail: list[Processor] = [structlog.processors.format_exc_info, scrub_secrets]
    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer], foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pika", "apscheduler", "uvicorn.access", "alembic", "dramatiq"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


# The id each actor's first argument is, so every line an actor logs says which mailbox, email or save.
_FIRST_ARG = {"fetch.account": "account_id", "send.email": "email_id", "notion.save": "save_id",
              "notify.email": "notification_id"}


class LogContext(Middleware):
    """Dramatiq middleware: every log line of a message carries ``actor`` and ``message_id`` (and the
    account, email or save id its first argument names); worker processes log like the CLI does."""

    def after_process_boot(self, broker: Any) -> None:
        import os

        if os.environ.get("MAILPIPE_WORKER_PROCESS") == "1":  # set by `mailpipe worker` for its processes
            from ops.settings import get_settings

            settings = get_settings()
            configure_logging(settings.log_level, settings.log_json)

    def before_process_message(self, broker: Any, message: Any) -> None:
        values: dict[str, Any] = {"actor": message.actor_name, "message_id": message.message_id}
        name = _FIRST_ARG.get(message.actor_name)
        if name is not None and message.args and isinstance(message.args[0], str):
            values[name] = message.args[0]
        elif message.args and isinstance(message.args[0], list) and message.args[0] and isinstance(message.args[0][0], str):
            values["email_ids"] = message.args[0][:20]  # the ingest chain passes batches of email ids
        structlog.contextvars.bind_contextvars(**values)

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: Any = None) -> None:
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: Any, message: Any) -> None:
        structlog.contextvars.clear_contextvars()
