"""Sync benchmark: mailpipe's full inbound pipeline against a plain imap-tools fetch+parse.

Seeds N messages into a private Dovecot, then in the same run:

1. baseline (``--baseline plain``, the default, issue 21): a plain imap-tools loop over plaintext
   IMAP, ``fetch(mark_seen=False, bulk=500)``, reading ``from_``, ``to``, ``subject``, ``date``,
   ``text``, ``html`` and ``attachments`` of each message. ``--baseline reparse-tls`` is the
   earlier, slower baseline: over TLS, every message re-serialised and parsed again with stdlib
   ``email`` (``policy.default``), reading its text body;
2. mailpipe: one scheduler tick, then fetch → raw storage → parse → attachments → link → leads →
   notify until every email is ``done``, over the same kind of connection as the baseline
   (plaintext for ``plain``, TLS for ``reparse-tls``).

mailpipe's run also waits for the sentiment stage (beside the chain) to classify every email.
Prints messages/second for both, their ratio (mailpipe / baseline) and the peak RSS of the
process(es) doing mailpipe's work. ``--sentiment-compare`` runs mailpipe a second time with the
sentiment stage off (``MAILPIPE_SENTIMENT_BACKEND=off``), alternating the order over ``--rounds``,
and prints what classification adds to the pipeline's time. Usage::

    .venv/bin/python bench/sync.py --n 10000                   # embedded: SQLite + in-process worker
    .venv/bin/python bench/sync.py --n 10000 --distributed     # PostgreSQL + RabbitMQ + fetch and ingest worker groups
    .venv/bin/python bench/sync.py --n 5000 --sentiment-compare --rounds 2
"""

from __future__ import annotations

import argparse
import email
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from email import policy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imap_tools import MailBox  # noqa: E402

from tests.harness.certs import make_self_signed  # noqa: E402
from tests.harness.dovecot import Dovecot  # noqa: E402
from tests.harness.mail import make_message  # noqa: E402

USER, PASSWORD = "bench@example.test", "benchpass"


def seed(dovecot: Dovecot, n: int) -> None:
    senders = ["Ada <ada@engine.example>", "lee@prospect.example", "Someone <someone@unknown.example>"]
    batch: list[bytes] = []
    for i in range(n):
        atts = [(f"file{i}.pdf", "application/pdf", os.urandom(2048))] if i % 20 == 0 else None
        batch.append(make_message(i, from_=senders[i % 3], message_id=f"<bench{i}@t>", attachments=atts,
                                  body=("Lorem ipsum dolor sit amet. " * 40) + f"\nmessage {i}\n"))
        if len(batch) == 2000:
            dovecot.seed(USER, "INBOX", batch)
            batch = []
    if batch:
        dovecot.seed(USER, "INBOX", batch)


def plain_baseline(dovecot: Dovecot) -> tuple[int, float]:
    """The plain loop of issue 21: plaintext IMAP, imap-tools reads the fields a CRM needs."""
    from imap_tools import MailBoxUnencrypted

    start = time.perf_counter()
    count = 0
    with MailBoxUnencrypted(dovecot.host, dovecot.port).login(USER, PASSWORD, initial_folder="INBOX") as mb:
        for msg in mb.fetch(mark_seen=False, bulk=500):
            _ = (msg.from_, msg.to, msg.subject, msg.date, msg.text, msg.html, [a.filename for a in msg.attachments])
            count += 1
    return count, time.perf_counter() - start


def baseline(dovecot: Dovecot, cafile: Path) -> tuple[int, float]:
    """The earlier baseline (``--baseline reparse-tls``): TLS, every message serialised and parsed again."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(cafile))
    start = time.perf_counter()
    count = 0
    with MailBox(dovecot.host, dovecot.tls_port, ssl_context=ctx).login(USER, PASSWORD, initial_folder="INBOX") as mb:
        for msg in mb.fetch(mark_seen=False, bulk=500):
            parsed = email.message_from_bytes(msg.obj.as_bytes(), policy=policy.default)
            body = parsed.get_body(preferencelist=("plain", "html"))
            if body is not None:
                body.get_content()
            count += 1
    return count, time.perf_counter() - start


def _peak_rss_of(pids: list[int]) -> int:
    peak = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            continue
    return peak


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in out]
    for p in list(pids):
        pids += _children(p)
    return pids


def pipeline(dovecot: Dovecot, cafile: Path, workdir: Path, n: int, distributed: bool, threads: int,
             sentiment: str = "lexicon", cpu: list[float] | None = None, plaintext: bool = False) -> tuple[int, float, int]:
    """Run mailpipe's inbound pipeline over the mailbox; returns (emails, seconds, peak worker RSS).
    Embedded, the process's CPU seconds for the run are appended to ``cpu`` (less sensitive than wall
    time to other work on a shared machine)."""
    from models.db import reset_engine
    from ops.crypto import generate_key_entry
    from ops.settings import reset_settings
    from pipeline.flows.sentiment_backends import reset_backends

    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    env = {
        "MAILPIPE_SENTIMENT_BACKEND": sentiment,
        "MAILPIPE_SECRET_KEYS": generate_key_entry("bench"),
        "MAILPIPE_STORAGE_URL": f"file://{workdir / 'store'}",
        "MAILPIPE_SYNC_RATE_PER_HOUR": str(10 * n + 1000),
        "MAILPIPE_MAIL_ALLOWED_NETS": "127.0.0.0/8",  # the bench Dovecot is on loopback
        "SSL_CERT_FILE": str(cafile),
    }
    pg_ctx = vhost_ctx = None
    if distributed:
        from tests.harness.services import pg_database, rabbit_vhost

        pg_ctx, vhost_ctx = pg_database("mailpipe_bench"), rabbit_vhost("mailpipe_bench")
        env["MAILPIPE_DATABASE_URL"] = pg_ctx.__enter__()
        env["MAILPIPE_BROKER_URL"] = vhost_ctx.__enter__()
    else:
        env["MAILPIPE_DATABASE_URL"] = f"sqlite:///{workdir / 'bench.db'}"
    os.environ.update(env)
    reset_settings()
    reset_engine()
    reset_backends()
    try:
        from sqlalchemy import func, select
        from sqlmodel import Session, col

        from models import Email, EmailSentiment
        from models.db import get_engine
        from ops.migrate import upgrade
        from pipeline.broker import build_broker, use_broker
        from tests.harness.flow import make_account, make_org, seed_crm, tick

        upgrade(env["MAILPIPE_DATABASE_URL"])
        import pipeline.actors  # noqa: F401

        broker = use_broker(build_broker(env.get("MAILPIPE_BROKER_URL")))
        org_id, _ = make_org("bench")
        seed_crm(org_id)
        if plaintext:
            make_account(org_id, host=dovecot.host, port=dovecot.port, security="none", email=USER, password=PASSWORD)
        else:
            make_account(org_id, host=dovecot.host, port=dovecot.tls_port, email=USER, password=PASSWORD)
        worker_procs: list[subprocess.Popen[bytes]] = []
        worker = None
        if distributed:
            # The deployment the README recommends: a fetch worker group apart from the ingest
            # group, so IMAP/DB round trips never queue behind CPU-bound parsing for the GIL.
            exe = str(Path(sys.executable).with_name("mailpipe"))
            for argv in (["worker", "-p", "1", "-t", "2", "-Q", "fetch"],
                         ["worker", "-p", "2", "-t", str(threads), "-Q", "pipeline", "-Q", "notify", "-Q", "ops"]):
                worker_procs.append(subprocess.Popen([exe, *argv], env={**os.environ}, stdout=subprocess.DEVNULL,
                                                     stderr=subprocess.DEVNULL))
            time.sleep(2)
        else:
            from dramatiq import Worker

            broker.emit_after("process_boot")
            worker = Worker(broker, worker_threads=threads, worker_timeout=100)
            worker.start()
        peak = [0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for proc in worker_procs:
                    peak[0] = max(peak[0], _peak_rss_of([proc.pid, *_children(proc.pid)]))
                stop.wait(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        start, cpu_start = time.perf_counter(), time.process_time()
        tick()
        while True:
            with Session(get_engine()) as s:
                finished = col(Email.pipeline_state).in_(("done", "quarantined"))
                done = s.execute(select(func.count()).select_from(Email).where(finished)).scalar_one()
                classified = s.execute(select(func.count()).select_from(EmailSentiment)).scalar_one()
            if done >= n and (sentiment == "off" or classified >= done):
                break
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
        if cpu is not None and not distributed:
            cpu.append(time.process_time() - cpu_start)
        stop.set()
        watcher.join()
        if worker is not None:
            worker.stop()
            peak[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        for proc in worker_procs:
            proc.terminate()
            proc.wait(30)
        broker.close()
        return int(done), elapsed, peak[0]
    finally:
        if vhost_ctx is not None:
            vhost_ctx.__exit__(None, None, None)
        if pg_ctx is not None:
            from models.db import reset_engine

            reset_engine()
            pg_ctx.__exit__(None, None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="messages to seed (default 2000)")
    ap.add_argument("--distributed", action="store_true",
                    help="PostgreSQL + RabbitMQ + `mailpipe worker -Q fetch` (1 process) and an ingest group (2 processes)")
    ap.add_argument("--threads", type=int, default=4, help="worker threads (per process)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--sentiment-compare", action="store_true", help="also run mailpipe with the sentiment stage off")
    ap.add_argument("--rounds", type=int, default=1, help="with --sentiment-compare: on/off pairs, order alternating")
    ap.add_argument("--baseline", choices=("plain", "reparse-tls"), default="plain",
                    help="plain: plaintext imap-tools loop reading the fields (issue 21); reparse-tls: the earlier TLS + re-parse loop")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mailpipe-bench-"))
    cert, key = make_self_signed(work / "tls")
    dovecot = Dovecot(cert, key)
    dovecot.add_user(USER, PASSWORD)
    dovecot.start()
    try:
        t0 = time.perf_counter()
        seed(dovecot, args.n)
        seeded = time.perf_counter() - t0
        plain = args.baseline == "plain"
        base_n, base_s = plain_baseline(dovecot) if plain else baseline(dovecot, cert)
        flags_before = dovecot.flags(USER, "INBOX")
        mp_n, mp_s, rss = pipeline(dovecot, cert, work, args.n, args.distributed, args.threads, plaintext=plain)
        on_s: list[float] = []
        off_s: list[float] = []
        on_cpu: list[float] = []
        off_cpu: list[float] = []
        if args.sentiment_compare:  # the run above warmed everything up; pairs in alternating order
            for r in range(args.rounds):
                order = ("off", "lexicon") if r % 2 == 0 else ("lexicon", "off")
                for mode in order:
                    _, seconds, _ = pipeline(dovecot, cert, work, args.n, args.distributed, args.threads, sentiment=mode,
                                             cpu=off_cpu if mode == "off" else on_cpu, plaintext=plain)
                    (off_s if mode == "off" else on_s).append(seconds)
        assert dovecot.flags(USER, "INBOX") == flags_before, "the benchmark changed flags on the server"
    finally:
        dovecot.close()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    base_rate, mp_rate = base_n / base_s, mp_n / mp_s
    result = {
        "n": args.n, "mode": "distributed" if args.distributed else "embedded", "seed_seconds": round(seeded, 2),
        "baseline_msgs_per_s": round(base_rate, 1), "mailpipe_msgs_per_s": round(mp_rate, 1),
        "ratio": round(mp_rate / base_rate, 3), "peak_worker_rss_mb": round(rss / 2**20, 1),
        "baseline": args.baseline, "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if off_s:
        on_median, off_median = sorted(on_s)[len(on_s) // 2], sorted(off_s)[len(off_s) // 2]
        result.update(sentiment_on_seconds=[round(x, 2) for x in on_s], sentiment_off_seconds=[round(x, 2) for x in off_s],
                      sentiment_overhead=round(on_median / off_median - 1, 4))
        if on_cpu and off_cpu:
            result.update(sentiment_on_cpu_seconds=[round(x, 2) for x in on_cpu], sentiment_off_cpu_seconds=[round(x, 2) for x in off_cpu],
                          sentiment_cpu_overhead=round(statistics.median(on_cpu) / statistics.median(off_cpu) - 1, 4))
    if args.json:
        print(json.dumps(result))
        return
    print(f"messages: {args.n} ({result['mode']}; seeded in {seeded:.1f}s)")
    print(f"load average {result['load_average']} on {os.cpu_count()} cores; baseline {args.baseline}")
    label = "plain imap-tools loop:" if args.baseline == "plain" else "baseline TLS fetch+re-parse:"
    print(f"{label:<33}{base_rate:8.1f} msg/s  ({base_s:.2f}s)")
    print(f"mailpipe full pipeline:          {mp_rate:8.1f} msg/s  ({mp_s:.2f}s)")
    print(f"ratio mailpipe/baseline:         {mp_rate / base_rate:8.3f}")
    print(f"peak worker RSS:                 {rss / 2**20:8.1f} MiB")
    if off_s:
        print(f"sentiment on  (s per run):       {', '.join(f'{x:.2f}' for x in on_s)}")
        print(f"sentiment off (s per run):       {', '.join(f'{x:.2f}' for x in off_s)}")
        print(f"sentiment stage adds (medians):  {100 * result['sentiment_overhead']:+8.1f} % wall time")
        if "sentiment_cpu_overhead" in result:
            print(f"CPU s per run, on / off:         {', '.join(f'{x:.2f}' for x in on_cpu)} / {', '.join(f'{x:.2f}' for x in off_cpu)}")
            print(f"sentiment stage adds (medians):  {100 * result['sentiment_cpu_overhead']:+8.1f} % CPU time")


if __name__ == "__main__":
    main()
