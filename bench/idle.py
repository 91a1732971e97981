"""IDLE benchmark: one `mailpipe watcher` holding N mailboxes of a local Dovecot in IDLE.

In one run, against a private Dovecot (N users), a fresh PostgreSQL database and a RabbitMQ vhost:

1. baseline: a child process that holds the same N mailboxes in IDLE with bare imaplib (one thread
   per connection, TLS, no database, no broker): its RSS per connection; and, in this process, the
   time from delivery to the ``* n EXISTS`` a bare idling connection sees;
2. mailpipe: a `mailpipe watcher` process claims all N mailboxes (RSS measured before and after, CPU
   over an idle minute), one `mailpipe worker` runs the fetches and the ingest chain, and messages
   delivered one by one into randomly chosen idling mailboxes are timed from delivery until the
   email is stored and linked to its contact (p50, p99);
3. the scheduler: one leading tick with 10,000 accounts due, against one with none.

Prints every figure and the ratios mailpipe / baseline. Usage::

    .venv/bin/python bench/idle.py --n 1000 --arrivals 100
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import random
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.certs import make_self_signed  # noqa: E402
from tests.harness.dovecot import Dovecot  # noqa: E402
from tests.harness.mail import make_message  # noqa: E402

BIN = str(Path(sys.executable).with_name("mailpipe"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def user(i: int) -> tuple[str, str]:
    return f"idle{i}@example.test", f"pw-idle-{i}"


# -- baseline: bare imaplib IDLE, one thread per connection ---------------------------------------

def baseline_child(host: str, port: int, cafile: str, n: int) -> None:
    """Hold n connections in IDLE with plain imaplib; print RSS before and after, then wait for stdin EOF."""
    context = ssl.create_default_context(cafile=cafile)
    before = rss_kib(os.getpid())
    ready = threading.Semaphore(0)
    gate = threading.Semaphore(16)

    def hold(i: int) -> None:
        with gate:
            client = imaplib.IMAP4_SSL(host, port, ssl_context=context)
            client.login(*user(i))
            client.select("INBOX", readonly=True)
            client.send(b"a1 IDLE\r\n")
            client.readline()
        ready.release()
        while True:
            if not client.readline():
                return

    for i in range(n):
        threading.Thread(target=hold, args=(i,), daemon=True).start()
    for _ in range(n):
        ready.acquire()
    time.sleep(2)
    print(json.dumps({"rss_before_kib": before, "rss_after_kib": rss_kib(os.getpid())}), flush=True)
    sys.stdin.read()


def baseline_latency(dovecot: Dovecot, cafile: str, samples: int) -> list[float]:
    """Delivery → ``* n EXISTS`` on a bare idling imaplib connection."""
    context = ssl.create_default_context(cafile=cafile)
    name, password = user(0)
    client = imaplib.IMAP4_SSL(dovecot.host, dovecot.tls_port, ssl_context=context)
    client.login(name, password)
    client.select("INBOX", readonly=True)
    out = []
    for k in range(samples):
        client.send(b"b1 IDLE\r\n")
        client.readline()
        started = time.monotonic()
        dovecot.deliver(name, make_message(k, message_id=f"<base{k}@t>"))
        while b"EXISTS" not in client.readline():
            pass
        out.append(time.monotonic() - started)
        client.send(b"DONE\r\n")
        while not client.readline().startswith(b"b1 "):
            pass
    client.logout()
    return out


# -- mailpipe --------------------------------------------------------------------------------------

def make_accounts(n: int, dovecot: Dovecot) -> str:
    from sqlmodel import Session

    from models.db import get_engine
    from pipeline.flows import accounts as svc
    from tests.harness.flow import make_org, seed_crm

    org_id, _ = make_org("bench")
    seed_crm(org_id)
    with Session(get_engine()) as s:
        for i in range(n):
            name, password = user(i)
            ep = svc.Endpoint(dovecot.host, dovecot.tls_port, "ssl", name, password)
            svc.create_account(s, org_id=org_id, user_id="u1", provider="imap", email=name, imap_ep=ep, smtp_ep=ep)
        s.commit()
    return org_id


def counts() -> tuple[int, int]:
    from sqlalchemy import func, select
    from sqlmodel import Session, col

    from models import EmailAccount
    from models.db import get_engine

    with Session(get_engine()) as s:
        idling = s.execute(select(func.count()).select_from(EmailAccount).where(col(EmailAccount.idle_since).is_not(None))).scalar_one()
        fetching = s.execute(select(func.count()).select_from(EmailAccount).where(col(EmailAccount.fetch_owner).is_not(None))).scalar_one()
    return int(idling), int(fetching)


def linked(message_id: str) -> bool:
    from sqlalchemy import select
    from sqlmodel import Session

    from models import Email
    from models.db import get_engine

    with Session(get_engine()) as s:
        row = s.execute(select(Email.linked).where(Email.message_id == message_id)).first()
    return bool(row and row[0])


def wait(predicate, timeout: float, what: str, interval: float = 0.01):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def scheduler_ticks() -> tuple[float, float, int]:
    """(seconds for a leading tick with nothing due, seconds for one with every account due, fetches sent)."""
    from datetime import timedelta

    from sqlalchemy import update
    from sqlmodel import Session

    import pipeline.actors  # noqa: F401  (registers the sweeps)
    from models import EmailAccount, utcnow
    from models.db import get_engine
    from pipeline.leader import AlwaysLeader
    from pipeline.scheduler import Scheduler

    scheduler = Scheduler(get_engine(), AlwaysLeader(), 1)

    def due_at(value: object) -> None:
        with Session(get_engine()) as s:
            s.execute(update(EmailAccount).values(next_fetch_at=value, fetch_lease_until=None, fetch_owner=None))
            s.commit()

    due_at(utcnow() + timedelta(hours=1))
    started = time.perf_counter()
    scheduler.tick()
    empty = time.perf_counter() - started
    due_at(None)
    started = time.perf_counter()
    sent = scheduler.tick().get("fetch_due_accounts", 0)
    return empty, time.perf_counter() - started, sent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="mailboxes to hold in IDLE")
    ap.add_argument("--arrivals", type=int, default=100, help="messages delivered and timed")
    ap.add_argument("--idle-seconds", type=float, default=60.0, help="how long CPU is measured while idle")
    ap.add_argument("--due", type=int, default=10_000, help="accounts due for the scheduler tick")
    ap.add_argument("--baseline-child", nargs=4, metavar=("HOST", "PORT", "CAFILE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_child:
        host, port, cafile, n = args.baseline_child
        baseline_child(host, int(port), cafile, int(n))
        return

    from ops.crypto import generate_key_entry
    from tests.harness.services import pg_database, rabbit_vhost

    work = Path(tempfile.mkdtemp(prefix="mailpipe-bench-idle-"))
    cert, key = make_self_signed(work / "tls")
    dovecot = Dovecot(cert, key, connections=2 * args.n + 100, max_userip_connections=10)
    for i in range(args.n):
        dovecot.add_user(*user(i))
    dovecot.start()
    print(f"dovecot up with {args.n} users", flush=True)
    results: dict[str, object] = {"n": args.n}
    try:
        with pg_database("mailpipe_bench") as pg_url, rabbit_vhost("mailpipe_bench") as amqp_url:
            env = {"MAILPIPE_DATABASE_URL": pg_url, "MAILPIPE_BROKER_URL": amqp_url, "MAILPIPE_SECRET_KEYS": generate_key_entry("bench"),
                   "MAILPIPE_STORAGE_URL": f"file://{work / 'store'}", "MAILPIPE_MAIL_ALLOWED_NETS": "127.0.0.0/8",
                   "MAILPIPE_POLL_SECONDS": "600", "SSL_CERT_FILE": str(cert), "MAILPIPE_LOG_LEVEL": "WARNING",
                   "MAILPIPE_WATCHER_METRICS_PORT": "0", "MAILPIPE_METRICS_PORT": "0", "MAILPIPE_SYNC_RATE_PER_HOUR": "1000000",
                   "MAILPIPE_IDLE_LEASE_SECONDS": "30"}
            os.environ.update(env)
            from ops.migrate import upgrade

            upgrade(pg_url)

            # 1. baseline: bare imaplib holding the same N connections
            child = subprocess.Popen([sys.executable, __file__, "--baseline-child", dovecot.host, str(dovecot.tls_port), str(cert),
                                      str(args.n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert child.stdout is not None and child.stdin is not None
            base = json.loads(child.stdout.readline())
            child.stdin.close()
            child.wait(30)
            base_per = (base["rss_after_kib"] - base["rss_before_kib"]) / args.n
            base_lat = baseline_latency(dovecot, str(cert), 20)
            print(f"baseline (bare imaplib): {base_per:.1f} KiB RSS per IDLE connection, "
                  f"delivery -> EXISTS p50 {statistics.median(base_lat) * 1000:.1f} ms", flush=True)

            # 2. mailpipe: watcher + worker processes
            penv = {**{k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}, **env, "PYTHONUNBUFFERED": "1"}
            logs = [open(work / f"{name}.log", "wb") for name in ("watcher", "worker")]
            watcher = subprocess.Popen([BIN, "watcher"], env=penv, cwd=work, stdout=logs[0], stderr=subprocess.STDOUT)
            worker = subprocess.Popen([BIN, "worker", "-p", "1", "-t", "8"], env=penv, cwd=work, stdout=logs[1], stderr=subprocess.STDOUT)
            try:
                time.sleep(5)
                rss_empty = rss_kib(watcher.pid)
                make_accounts(args.n, dovecot)
                started = time.monotonic()
                wait(lambda: counts()[0] >= args.n, 600, f"{args.n} mailboxes idling", 0.5)
                claimed_in = time.monotonic() - started
                wait(lambda: counts()[1] == 0, 300, "catch-up fetches done", 0.5)
                time.sleep(3)
                rss_full = rss_kib(watcher.pid)
                cpu_before = cpu_seconds(watcher.pid)
                time.sleep(args.idle_seconds)
                idle_cpu = (cpu_seconds(watcher.pid) - cpu_before) / args.idle_seconds
                per = (rss_full - rss_empty) / args.n
                print(f"mailpipe watcher: {args.n} mailboxes idling after {claimed_in:.1f}s; RSS {rss_empty / 1024:.1f} MiB empty, "
                      f"{rss_full / 1024:.1f} MiB holding them ({per:.1f} KiB per connection); CPU while idle {idle_cpu * 100:.2f}% "
                      f"of one core", flush=True)
                rng = random.Random(17)
                lat = []
                for k in range(args.arrivals):
                    name, _ = user(rng.randrange(args.n))
                    raw = make_message(k, from_="Ada <ada@engine.example>", message_id=f"<arrive{k}@t>")
                    t0 = time.monotonic()
                    dovecot.deliver(name, raw)
                    wait(lambda k=k: linked(f"arrive{k}@t"), 60, f"arrival {k} linked")
                    lat.append(time.monotonic() - t0)
                lat.sort()
                p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                print(f"arrival -> stored and linked while {args.n} idle: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
                      f"(n={len(lat)})", flush=True)
                held_ok = counts()[0]
            finally:
                for proc in (watcher, worker):
                    proc.terminate()
                for proc in (watcher, worker):
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                for log in logs:
                    log.close()
            results.update(idling=held_ok, rss_empty_mib=round(rss_empty / 1024, 1), rss_full_mib=round(rss_full / 1024, 1),
                           rss_per_connection_kib=round(per, 1), baseline_rss_per_connection_kib=round(base_per, 1),
                           rss_ratio=round(per / base_per, 2) if base_per > 0 else None, idle_cpu_percent=round(idle_cpu * 100, 2),
                           arrival_p50_ms=round(p50 * 1000), arrival_p99_ms=round(p99 * 1000),
                           baseline_exists_p50_ms=round(statistics.median(base_lat) * 1000, 1),
                           latency_ratio=round(p50 / statistics.median(base_lat), 1), claimed_in_s=round(claimed_in, 1))

            # 3. the scheduler with many accounts due
            from sqlalchemy import insert
            from sqlmodel import Session

            from models import EmailAccount, utcnow
            from models.db import get_engine
            from pipeline.broker import build_broker, use_broker

            use_broker(build_broker(amqp_url))
            with Session(get_engine()) as s:
                org = s.execute(EmailAccount.__table__.select().limit(1)).first()
                assert org is not None
                rows = [{"id": f"b{i:023d}", "org_id": org.org_id, "user_id": f"user{i}", "email": f"due{i}@example.test",
                         "email_norm": f"due{i}@example.test", "imap_host": "imap.example.test", "imap_port": 993,
                         "created_at": utcnow()}
                        for i in range(max(0, args.due - args.n))]
                for start in range(0, len(rows), 2000):
                    s.execute(insert(EmailAccount), rows[start:start + 2000])
                s.commit()
            empty, full, sent = scheduler_ticks()
            print(f"scheduler tick: {empty * 1000:.0f} ms with nothing due, {full * 1000:.0f} ms with {args.due} accounts due "
                  f"({sent} fetches handed out this tick; the rest on the next ticks)", flush=True)
            results.update(tick_empty_ms=round(empty * 1000), tick_due_ms=round(full * 1000), tick_sent=sent,
                           tick_ratio=round(full / empty, 1) if empty else None)
    finally:
        dovecot.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
