"""Process runtimes: embedded ``serve`` (everything in one process), ``web`` and ``scheduler``."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import structlog
import uvicorn
from dramatiq import Worker

from ops.settings import Settings

__all__ = ["Embedded", "run_scheduler", "run_watcher", "run_web", "serve"]

log = structlog.get_logger("mailpipe")


class Embedded:
    """The in-process worker and scheduler that ``serve`` runs beside the web app."""

    def __init__(self, settings: Settings, worker_threads: int = 8) -> None:
        self.settings = settings
        self.worker_threads = worker_threads
        self.worker: Worker | None = None
        self.scheduler: Any = None
        self.watcher: Any = None

    def start(self) -> None:
        import pipeline.actors  # noqa: F401  (declares every actor)
        from models.db import get_engine
        from ops.pacing import WEB_LOAD, Pacer
        from pipeline.broker import MemoryBroker, get_broker
        from pipeline.leader import leader_lock_for
        from pipeline.scheduler import Scheduler

        broker = get_broker()
        if isinstance(broker, MemoryBroker):
            # Recording yields to the app in this process (ops/pacing.py): while it is busy the
            # recorder takes at most MAILPIPE_TRACKING_RECORD_SHARE of the time, and beyond
            # MAILPIPE_TRACKING_BACKLOG_BATCHES waiting batches the intake spools hits to disk.
            broker.pace("tracking", Pacer(self.settings.tracking_record_share, WEB_LOAD.busy))
            broker.cap("tracking.record", "tracking", self.settings.tracking_backlog_batches)
        broker.emit_after("process_boot")
        self.worker = Worker(broker, worker_threads=self.worker_threads, worker_timeout=250)
        self.worker.start()
        self.scheduler = Scheduler(get_engine(), leader_lock_for(self.settings.database_url), self.settings.scheduler_tick_seconds)
        self.scheduler.start_background()
        if self.settings.idle_capacity > 0:
            self.watcher = _watcher(self.settings)
            self.watcher.start()

    def stop(self, tracking_grace_ms: int = 10_000) -> None:
        """Scheduler first (no new work), then the worker (finish in-flight), then the broker.

        Everything but tracking batches is also recorded in the database and swept again at the
        next start. Tracking batches live only in the in-memory broker, so they get up to
        ``tracking_grace_ms`` to be recorded, and whatever is left is spooled for the next start.
        """
        from dramatiq.errors import QueueJoinTimeout

        from pipeline.broker import MemoryBroker, get_broker

        broker = get_broker()
        if self.watcher is not None:
            self.watcher.stop()
        if self.scheduler is not None:
            self.scheduler.shutdown()
        if self.worker is not None:
            if isinstance(broker, MemoryBroker):
                try:
                    broker.join("tracking", timeout=tracking_grace_ms, fail_fast=False)
                except QueueJoinTimeout:
                    log.warning("tracking_not_drained", grace_ms=tracking_grace_ms)
            self.worker.stop(timeout=10_000)
        if isinstance(broker, MemoryBroker):
            _spool_tracking(broker)
        broker.close()


def _spool_tracking(broker: Any) -> None:
    """Tracking batches the stopped worker never recorded → the spool (replayed at the next start)."""
    from pipeline.stages.hit_batch import decode_hits
    from web.intake import spool_for_later

    events = [ev for m in broker.unprocessed("tracking") if m.actor_name == "tracking.record" for ev in decode_hits(m.args[0])]
    if events:
        spool_for_later(events)
        log.info("tracking_spooled_at_stop", events=len(events))


def _banner(settings: Settings, url: str, mode: str, generated_key: bool) -> None:
    if settings.log_json:  # one JSON object per line, the banner included
        log.info("mailpipe_started", mode=mode, url=url, database=settings.redacted_database_url(),
                 broker=settings.redacted_broker_url(), storage=settings.storage_url, generated_key=generated_key)
        return
    lines = [
        f"mailpipe {mode} listening on {url}",
        f"  database: {settings.redacted_database_url()}",
        f"  broker:   {settings.redacted_broker_url()}",
        f"  storage:  {settings.storage_url}",
    ]
    if generated_key:
        lines.append("  secrets:  generated a new MAILPIPE_SECRET_KEYS entry and saved it to .env (back it up)")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _absorb_reraised_signals() -> None:
    """uvicorn re-raises SIGINT/SIGTERM after it stops; absorb them so our cleanup runs."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: log.info("signal_received", signal=signum))


#: ``serve``'s GIL switch interval (CPython's default is 5 ms): how long the event loop may wait for
#: the GIL while a worker thread computes. With the default, a pixel flood's p99 was ~15 ms while
#: the paced recorder ran; with 1 ms, ~9 ms, at the same throughput.
SERVE_SWITCH_INTERVAL_S = 0.001


def serve(settings: Settings, host: str, port: int, *, generated_key: bool) -> None:
    """API + scheduler thread + in-process worker; SIGINT/SIGTERM stop all three cleanly."""
    from web.app import create_app

    sys.setswitchinterval(SERVE_SWITCH_INTERVAL_S)

    server = uvicorn.Server(uvicorn.Config(create_app(), host=host, port=port, log_level="warning", lifespan="on",
                                           proxy_headers=False, access_log=False, log_config=None))
    _banner(settings, f"http://{host}:{port}", "serve", generated_key)
    embedded = Embedded(settings)
    embedded.start()
    _absorb_reraised_signals()
    try:
        server.run()
    finally:
        log.info("shutting_down")
        embedded.stop()
        log.info("stopped")


def run_web(settings: Settings, host: str, port: int) -> None:
    """The Starlette app alone (for several uvicorn replicas behind a load balancer)."""
    from pipeline.broker import setup_broker
    from web.app import create_app

    setup_broker()  # the API publishes jobs (sends, tracking batches, syncs)

    server = uvicorn.Server(uvicorn.Config(create_app(), host=host, port=port, log_level="warning", lifespan="on",
                                           proxy_headers=False, access_log=False, log_config=None))
    _banner(settings, f"http://{host}:{port}", "web", False)
    server.run()


def run_scheduler(settings: Settings) -> None:
    """The scheduler alone; several may run, one leads (advisory lock on PostgreSQL)."""
    from models.db import get_engine
    from pipeline.broker import setup_broker
    from pipeline.flows import sweeps  # noqa: F401  (registers every sweep)
    from pipeline.leader import leader_lock_for
    from pipeline.scheduler import Scheduler

    setup_broker()  # sweeps hand due work to the broker
    sched = Scheduler(get_engine(), leader_lock_for(settings.database_url), settings.scheduler_tick_seconds)
    # The leader's fleet gauges (mailboxes by state, queue depths), tick durations and leadership.
    _metrics_endpoint("scheduler", settings.scheduler_metrics_port, settings.metrics_host)
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        if not stop.is_set():
            stop.set()
            log.info("scheduler_stopping", signal=signum)
            threading.Thread(target=sched.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("scheduler_started", holder=sched.holder, tick_seconds=sched.tick_seconds)
    sched.run_forever()


def _metrics_endpoint(process: str, port: int | None, host: str) -> None:
    """A /metrics endpoint for a process without a web app (scheduler, watcher). Another one on this
    host holding the port is logged (``<process>_metrics_port_busy``), and the process runs anyway."""
    if not port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning(f"{process}_metrics_port_busy", port=port, error=str(exc))


def _watcher(settings: Settings) -> Any:
    from pipeline.flows.watcher import Watcher, WatcherConfig

    return Watcher(WatcherConfig(capacity=settings.idle_capacity or 2000, lease_seconds=settings.idle_lease_seconds,
                                 reissue_seconds=settings.idle_reissue_seconds))


def run_watcher(settings: Settings) -> None:
    """The IDLE watcher alone; several may run, the mailboxes are spread among them by leases."""
    from pipeline.broker import setup_broker

    setup_broker()  # new mail is handed to the workers as fetch jobs
    watcher = _watcher(settings)
    _metrics_endpoint("watcher", settings.watcher_metrics_port, settings.metrics_host)
    stopping = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        if not stopping.is_set():
            log.info("watcher_stopping", signal=signum)
            stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    watcher.start()
    while not stopping.wait(1.0):
        pass
    watcher.stop()
