"""The ``mailpipe`` command (see API.md, "Runtime")."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from ops.settings import ConfigError, Settings, env_file_path, get_settings

__all__ = ["main"]


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"mailpipe: error: {message}", err=True)
    sys.exit(code)


def _db_error_line(exc: BaseException) -> str:
    """One line for a database failure, without the URL's password."""
    from ops.logging import _scrub_text

    text = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _scrub_text(f"cannot use the database: {text}")


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn configuration and connection failures into one clear line and a non-zero exit."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            _fail(str(exc))
        except SQLAlchemyError as exc:
            _fail(_db_error_line(exc), 1)
        except OSError as exc:
            _fail(f"{type(exc).__name__}: {exc.strerror or exc}", 1)

    return wrapper


def _settings() -> Settings:
    settings = get_settings()
    from ops.logging import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """mailpipe: the email engine behind a CRM."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@friendly
def serve(host: str, port: int) -> None:
    """Everything in one process: API, scheduler, in-process worker (SQLite + memory broker by default)."""
    from ops.keys import ensure_secret_keys
    from ops.migrate import upgrade
    from ops.serve import serve as run

    settings = _settings()
    generated = ensure_secret_keys(env_file_path())
    settings = get_settings()
    upgrade(settings.database_url)
    run(settings, host, port, generated_key=generated)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@friendly
def web(host: str, port: int) -> None:
    """The web app only (API + tracking + websocket), for uvicorn replicas."""
    from ops.keys import get_keyring
    from ops.serve import run_web

    settings = _settings()
    get_keyring()
    run_web(settings, host, port)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("-p", "--processes", type=int, default=None, help="worker processes (dramatiq -p)")
@click.option("-t", "--threads", type=int, default=None, help="threads per process (dramatiq -t)")
@click.option("-Q", "--queues", multiple=True, help="only consume these queues (dramatiq -Q)")
@click.pass_context
@friendly
def worker(ctx: click.Context, processes: int | None, threads: int | None, queues: tuple[str, ...]) -> None:
    """Dramatiq worker processes consuming from RabbitMQ (wraps the `dramatiq` CLI)."""
    settings = _settings()
    if settings.broker_url is None:
        raise ConfigError("`mailpipe worker` needs MAILPIPE_BROKER_URL=amqp://...; the in-memory broker only works inside `mailpipe serve`")
    _prepare_worker_metrics(settings)
    argv = [sys.executable, "-m", "dramatiq", "pipeline.actors"]
    if processes:
        argv += ["-p", str(processes)]
    if threads:
        argv += ["-t", str(threads)]
    if queues:
        argv += ["-Q", *queues]  # dramatiq's -Q takes the whole list once (a repeated -Q keeps only the last)
    argv += list(ctx.args)
    sys.stdout.flush()
    os.execv(sys.executable, argv)


def _prepare_worker_metrics(settings: Any) -> None:
    """Multiprocess metrics for the worker processes and Dramatiq's exposition server.

    Every process of this ``mailpipe worker`` writes its samples (Dramatiq's and mailpipe's) to
    one directory, wiped here before the processes start (stale files from a previous run would
    be summed in); Dramatiq's Prometheus middleware serves their sum on
    ``MAILPIPE_METRICS_HOST:MAILPIPE_METRICS_PORT``. Give each worker group on a host its own port:
    the directory is per port.
    """
    import shutil
    import socket
    import tempfile

    probe = socket.socket()
    busy = False
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((settings.metrics_host, settings.metrics_port))
    except OSError:  # the workers still run; only this group's metrics are not served
        busy = True
        click.echo(f"mailpipe: warning: MAILPIPE_METRICS_PORT {settings.metrics_port} is in use on this host; give each "
                   "worker group its own port (this group's metrics will not be served)", err=True)
    finally:
        probe.close()
    directory = settings.metrics_dir or os.path.join(tempfile.gettempdir(), f"mailpipe-prometheus-{settings.metrics_port}")
    if busy and not settings.metrics_dir:  # the group holding the port owns that directory: leave its files alone
        directory = tempfile.mkdtemp(prefix="mailpipe-prometheus-unserved-")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)
    os.environ.update({"PROMETHEUS_MULTIPROC_DIR": directory, "prometheus_multiproc_dir": directory, "dramatiq_prom_db": directory,
                       "dramatiq_prom_host": settings.metrics_host, "dramatiq_prom_port": str(settings.metrics_port),
                       "MAILPIPE_DRAMATIQ_PROMETHEUS": "1", "MAILPIPE_WORKER_PROCESS": "1"})


@main.command()
@friendly
def scheduler() -> None:
    """The scheduler; several may run, exactly one leads (PostgreSQL advisory lock)."""
    from ops.serve import run_scheduler

    run_scheduler(_settings())


@main.command()
@friendly
def watcher() -> None:
    """Hold IMAP IDLE connections for a share of the mailboxes; several may run (leases spread them)."""
    from ops.serve import run_watcher

    settings = _settings()
    if settings.idle_capacity <= 0:
        raise ConfigError("MAILPIPE_IDLE_CAPACITY is 0: this watcher would hold no mailbox")
    run_watcher(settings)


@main.command()
@friendly
def migrate() -> None:
    """Bring the database schema up to date (Alembic upgrade head)."""
    from ops.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    click.echo(f"database {settings.redacted_database_url()} is at the latest schema")


@main.group()
def org() -> None:
    """Organizations (tenants)."""


@org.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print {org_id, api_key} as JSON")
@friendly
def org_create(name: str, as_json: bool) -> None:
    """Create an organization and print its first API key (shown only once)."""
    from models.db import session_scope
    from ops.migrate import upgrade
    from pipeline.flows.orgs import create_org

    settings = _settings()
    upgrade(settings.database_url)
    if not name.strip():
        raise ConfigError("organization name must not be empty")
    with session_scope() as s:
        organization, api_key = create_org(s, name)
    if as_json:
        click.echo(json.dumps({"org_id": organization.id, "api_key": api_key}))
    else:
        click.echo(f"organization {organization.name!r} created: {organization.id}")
        click.echo(f"API key (store it now; it is not shown again): {api_key}")


@org.group("key")
def org_key() -> None:
    """An organization's API keys: create more, list them, revoke one."""


def _key_store() -> Any:
    """The migrated database's engine for the key commands."""
    from models.db import get_engine
    from ops.migrate import upgrade

    upgrade(_settings().database_url)
    return get_engine()


def _when(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


@org_key.command("create")
@click.argument("org_id")
@click.option("--name", default=None, help="what the key is for (default: key-<n>)")
@click.option("--json", "as_json", is_flag=True, help="print the key's fields and api_key as JSON")
@friendly
def org_key_create(org_id: str, name: str | None, as_json: bool) -> None:
    """Create another API key for ORG_ID and print it (shown only once)."""
    from ops.orgs import create_key

    try:
        info, api_key = create_key(_key_store(), org_id, name)
    except (LookupError, ValueError) as exc:
        _fail(str(exc), 1)
        return
    if as_json:
        click.echo(json.dumps({**info.as_json(), "key_id": info.id, "api_key": api_key}))
    else:
        click.echo(f"API key {info.name!r} ({info.id}) created for organization {info.org_id}")
        click.echo(f"API key (store it now; it is not shown again): {api_key}")


@org_key.command("list")
@click.argument("org_id")
@click.option("--json", "as_json", is_flag=True, help="print {org_id, items: [...]} as JSON")
@friendly
def org_key_list(org_id: str, as_json: bool) -> None:
    """ORG_ID's API keys (revoked ones too) with their names and last use; never the keys themselves."""
    from ops.orgs import list_keys

    try:
        keys_ = list_keys(_key_store(), org_id)
    except LookupError as exc:
        _fail(str(exc), 1)
        return
    if as_json:
        click.echo(json.dumps({"org_id": org_id, "items": [k.as_json() for k in keys_]}))
        return
    rows = [("ID", "NAME", "PREFIX", "CREATED", "LAST USED", "REVOKED")]
    rows += [(k.id, k.name, k.prefix, _when(k.created_at), _when(k.last_used_at), _when(k.revoked_at)) for k in keys_]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


@org_key.command("revoke")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="print the key's fields and already_revoked as JSON")
@friendly
def org_key_revoke(key_id: str, as_json: bool) -> None:
    """Revoke the API key KEY_ID: refused at once here, within seconds by every `mailpipe` process."""
    from ops.key_cache import KEY_CACHE_TTL_SECONDS
    from ops.orgs import list_keys, revoke_key

    engine = _key_store()
    try:
        info, newly = revoke_key(engine, key_id)
    except LookupError as exc:
        _fail(str(exc), 1)
        return
    if as_json:
        click.echo(json.dumps({**info.as_json(), "key_id": info.id, "already_revoked": not newly}))
        return
    if not newly:
        click.echo(f"API key {info.name!r} ({info.id}) was already revoked at {_when(info.revoked_at)}")
        return
    click.echo(f"API key {info.name!r} ({info.id}) of organization {info.org_id} revoked; running processes refuse it "
               f"within {KEY_CACHE_TTL_SECONDS:.0f} s")
    if not any(k.active for k in list_keys(engine, info.org_id)):
        click.echo(f"note: organization {info.org_id} has no active API key left; "
                   f"`mailpipe org key create {info.org_id}` makes one", err=True)


@main.group()
def keys() -> None:
    """Encryption keys for stored secrets."""


@keys.command("rotate")
@friendly
def keys_rotate() -> None:
    """Re-encrypt every stored secret under the newest key in MAILPIPE_SECRET_KEYS."""
    from models.db import get_engine
    from ops.keys import get_keyring, rotate_secrets

    _settings()
    keyring = get_keyring()
    counts = rotate_secrets(get_engine())
    total = sum(counts.values())
    click.echo(f"re-encrypted {total} secret(s) under key {keyring.current_kid!r}")
    for column, n in counts.items():
        if n:
            click.echo(f"  {column}: {n}")


@keys.command("generate")
@click.option("--kid", default=None, help="key id (default: random)")
def keys_generate(kid: str | None) -> None:
    """Print a new kid:base64 entry to put first in MAILPIPE_SECRET_KEYS."""
    from ops.crypto import generate_key_entry

    click.echo(generate_key_entry(kid))


@main.command()
@click.option("--queue", "queues", multiple=True, help="only these queues (default: all)")
@click.option("--replay", is_flag=True, help="move the dead messages back onto their queues")
@click.option("--limit", type=int, default=None, help="at most this many per queue")
@friendly
def deadletters(queues: tuple[str, ...], replay: bool, limit: int | None) -> None:
    """Count (or replay) the messages Dramatiq dead-lettered on RabbitMQ (<queue>.XQ)."""
    from ops import deadletters as dl
    from pipeline.broker import QUEUES, setup_broker

    settings = _settings()
    if settings.broker_url is None:
        raise ConfigError("dead letters live in RabbitMQ: set MAILPIPE_BROKER_URL")
    chosen = tuple(queues) or QUEUES
    unknown = [q for q in chosen if q not in QUEUES]
    if unknown:
        raise ConfigError(f"unknown queue(s) {', '.join(unknown)}; queues are {', '.join(QUEUES)}")
    broker = setup_broker()
    for q, n in dl.counts(broker, chosen).items():
        if replay and n:
            click.echo(f"{q}: replayed {dl.replay(broker, q, limit)} of {n}")
        else:
            click.echo(f"{q}: {n} dead")


@main.group()
def sentiment() -> None:
    """Sentiment of inbound mail."""


@sentiment.command("backfill")
@click.option("--org", "org_id", default=None, help="only this organization's mail")
@click.option("--days", type=click.IntRange(min=1), default=None, help="only mail received in the last N days")
@click.option("--redo", is_flag=True, help="classify again mail that already has a sentiment (after changing the backend)")
@click.option("--batch", type=click.IntRange(1, 5000), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print {seen, classified, failed, notified, seconds} as JSON")
@friendly
def sentiment_backfill(org_id: str | None, days: int | None, redo: bool, batch: int, as_json: bool) -> None:
    """Classify existing inbound mail with the configured backend, in this process (re-runnable)."""
    import time

    from pipeline.flows.sentiment_backfill import BackfillResult, backfill

    settings = _settings()
    started = time.monotonic()

    def report(r: BackfillResult) -> None:
        if not as_json:
            click.echo(f"  {r.seen} emails: {r.classified} classified, {r.failed} failed", err=True)

    result = backfill(org_id=org_id, days=days, redo=redo, batch=batch, progress=report)
    seconds = time.monotonic() - started
    if as_json:
        click.echo(json.dumps({"seen": result.seen, "classified": result.classified, "failed": result.failed,
                               "notified": result.notified, "seconds": round(seconds, 3)}))
        return
    rate = result.classified / seconds if seconds > 0 else 0.0
    click.echo(f"classified {result.classified} of {result.seen} emails with backend {settings.sentiment_backend!r} "
               f"({result.failed} failed, {result.notified} at-risk notification(s)) in {seconds:.1f}s ({rate:.0f}/s)")


@main.group()
def retention() -> None:
    """The organizations' retention policies (retention_days)."""


@retention.command("run")
@click.option("--json", "as_json", is_flag=True, help="print {org_id: counts} as JSON")
@friendly
def retention_run(as_json: bool) -> None:
    """Apply every organization's retention policy now, in this process (the scheduler also does it daily)."""
    from pipeline.flows.retention import retention_all

    _settings()
    result = retention_all()
    if as_json:
        click.echo(json.dumps(result))
        return
    for org_id, counts in result.items():
        click.echo(f"{org_id}: {counts['emails']} emails purged ({counts['attachments']} attachments, {counts['files']} files, "
                   f"{counts['tracking_events']} tracking events)")
    if not result:
        click.echo("no organization has a retention policy (PATCH /api/v1/org {\"retention_days\": N})")


@main.command()
@click.option("--timeout", default=30.0, show_default=True, help="seconds to wait for the round trip")
@friendly
def selftest(timeout: float) -> None:
    """Send a two-stage pipeline through the broker and wait until workers finish it."""
    from pipeline.flows import selftest as st

    settings = _settings()
    if settings.broker_url is None:
        raise ConfigError("selftest checks external workers: set MAILPIPE_BROKER_URL (inside `serve` the worker is built in)")
    run_id = st.start_run()
    run = st.wait_for_run(run_id, timeout)
    if run is None:
        _fail(f"run {run_id} did not complete within {timeout:.0f}s: are `mailpipe worker` processes running?", 1)
        return
    assert run.first_at is not None and run.second_at is not None
    click.echo(f"ok: run {run_id} went through {run.first_worker} then {run.second_worker} "
               f"in {(run.second_at - run.created_at).total_seconds():.3f}s")


@main.group()
def tracking() -> None:
    """Open/click tracking data."""


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint=what)
        out[name.strip()] = value.strip()
    return out


@tracking.command("update-ranges")
@click.argument("sources", nargs=-1, required=True)
@click.option("--origin", "origins", multiple=True, help="NAME=TEXT recorded as the file's origin (e.g. the provider's URL)")
@click.option("--service", "services", multiple=True, help="NAME=TAG[,TAG]: keep only these Azure service tags or Microsoft 365 areas/ids")
@click.option("--out", "out_dir", default=None, help="directory to write (default: MAILPIPE_TRACKING_DATA_DIR, else the shipped data)")
@friendly
def tracking_update_ranges(sources: tuple[str, ...], origins: tuple[str, ...], services: tuple[str, ...], out_dir: str | None) -> None:
    """Refresh network ranges and the crawler list from files or URLs you give, as NAME=PATH_OR_URL.

    NAME is one of aws, gcp, google, azure, microsoft365, gateways, apple (ranges) or crawlers
    (crawler-user-agents.json). Nothing is fetched at run time; restart workers to load new files.
    """
    from importlib import resources

    from pipeline.flows.tracking_data_update import KNOWN, Source, update_tracking_data

    where = _pairs(sources, "SOURCES")
    origin = _pairs(origins, "--origin")
    tags = _pairs(services, "--service")
    unknown = sorted(set(where) - set(KNOWN))
    if unknown:
        raise click.BadParameter(f"unknown: {', '.join(unknown)} (known: {', '.join(KNOWN)})", param_hint="SOURCES")
    target = out_dir or _settings().tracking_data_dir or str(resources.files("pipeline.data.tracking"))
    chosen = [Source(name, loc, origin.get(name, ""), frozenset(t.strip() for t in tags.get(name, "").split(",") if t.strip()))
              for name, loc in where.items()]
    try:
        written = update_tracking_data(chosen, target)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"nothing was written: {exc}") from exc
    for w in written:
        click.echo(f"{w.name}: {w.entries} entries ({w.format}) -> {w.path}")


if __name__ == "__main__":
    main()
