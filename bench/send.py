"""Send benchmark: mailpipe's API → SMTP 250 path against a raw aiosmtplib loop, in the same run.

Starts a local aiosmtpd submission server (STARTTLS + AUTH, like a real provider's port 587), then:

1. baseline: aiosmtplib connects, STARTTLS, AUTH PLAIN, sends one composed message and QUITs —
   the same work per message mailpipe's send actor does — first one at a time (latency), then
   ``--concurrency`` at a time (throughput);
2. mailpipe: embedded, the Starlette app under uvicorn and the send actor on an in-process
   Dramatiq worker, both in this process (SQLite + in-memory broker, one GIL shared with the
   SMTP server and the load generator); ``--distributed``, ``mailpipe web`` and ``mailpipe worker``
   processes on PostgreSQL + RabbitMQ, as deployed; each message is a real ``POST /api/v1/emails/send``
   over HTTP, and its latency runs until the SMTP server has accepted it (250). Tracking is on
   (one pixel, three rewritten links), the email is stored and then linked by the ingest chain.

mailpipe keeps one authenticated SMTP session per mailbox open between sends (``PooledSmtpTransport``);
``--compare-no-reuse`` also runs it with ``MAILPIPE_SMTP_REUSE=0`` (a connection per message, the old
way) in the same run, and ``--reuse-baseline`` adds a raw aiosmtplib loop over one reused session.

Prints p50/p99 latency and sends/second for each, and the ratios to the raw per-message loop. Usage::

    .venv/bin/python bench/send.py                      # embedded, 200 latency + 1000 throughput sends
    .venv/bin/python bench/send.py --distributed --concurrency 4
    .venv/bin/python bench/send.py --latency-n 100 --n 400 --compare-no-reuse --reuse-baseline
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiosmtplib  # noqa: E402
import httpx  # noqa: E402

from tests.harness.certs import make_self_signed  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402
from tests.harness.smtp import SmtpServer  # noqa: E402

USER, PASSWORD = "bench@example.test", "benchpass"
HTML = ("<html><body><p>Hi {i},</p><p>Here is <a href=\"https://example.com/deck?id={i}\">the deck</a>, "
        "<a href=\"https://example.com/pricing\">pricing</a> and <a href=\"https://example.com/demo\">a demo slot</a>.</p>"
        "<p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20 + "</p></body></html>")
_EMAIL_ID = re.compile(rb"X-Mailpipe-Email-Id: ([A-Za-z0-9]+)")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def baseline(server: SmtpServer, cafile: Path, latency_n: int, n: int, concurrency: int) -> dict[str, float]:
    """Raw aiosmtplib: one connection per message, STARTTLS and AUTH each time."""
    from pipeline.stages.compose import Draft, compose

    ctx = ssl.create_default_context(cafile=str(cafile))
    raws = [compose(Draft(from_email=USER, from_name="Bench", to=(f"r{i}@bench.example",), subject=f"Note {i}",
                          html=HTML.format(i=i)))[0] for i in range(max(latency_n, n))]

    async def one(i: int) -> float:
        t0 = time.perf_counter()
        client = aiosmtplib.SMTP(hostname=server.host, port=server.port, start_tls=False, tls_context=ctx,
                                 local_hostname="bench.local")
        await client.connect()
        await client.starttls()
        await client.login(USER, PASSWORD)
        await client.sendmail(USER, [f"r{i}@bench.example"], raws[i])
        await client.quit()
        return time.perf_counter() - t0

    async def run() -> dict[str, float]:
        lat = [await one(i) for i in range(latency_n)]
        sem = asyncio.Semaphore(concurrency)

        async def bounded(i: int) -> None:
            async with sem:
                await one(i)

        t0 = time.perf_counter()
        await asyncio.gather(*(bounded(i) for i in range(n)))
        return {"p50_ms": pct(lat, 0.5) * 1000, "p99_ms": pct(lat, 0.99) * 1000, "sends_per_s": n / (time.perf_counter() - t0)}

    return asyncio.run(run())


def reuse_baseline(server: SmtpServer, cafile: Path, latency_n: int, n: int, concurrency: int) -> dict[str, float]:
    """Raw aiosmtplib over reused sessions: each of ``concurrency`` tasks logs in once, then RSET + send per message."""
    from pipeline.stages.compose import Draft, compose

    ctx = ssl.create_default_context(cafile=str(cafile))
    raws = [compose(Draft(from_email=USER, from_name="Bench", to=(f"r{i}@bench.example",), subject=f"Note {i}",
                          html=HTML.format(i=i)))[0] for i in range(max(latency_n, n))]

    async def session() -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(hostname=server.host, port=server.port, start_tls=False, tls_context=ctx,
                                 local_hostname="bench.local")
        await client.connect()
        await client.starttls()
        await client.login(USER, PASSWORD)
        return client

    async def run() -> dict[str, float]:
        client = await session()
        lat = []
        for i in range(latency_n):
            t0 = time.perf_counter()
            await client.rset()
            await client.sendmail(USER, [f"r{i}@bench.example"], raws[i])
            lat.append(time.perf_counter() - t0)
        await client.quit()

        async def worker(k: int) -> None:
            c = await session()
            for i in range(k, n, concurrency):
                await c.rset()
                await c.sendmail(USER, [f"r{i}@bench.example"], raws[i])
            await c.quit()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return {"p50_ms": pct(lat, 0.5) * 1000, "p99_ms": pct(lat, 0.99) * 1000, "sends_per_s": n / (time.perf_counter() - t0)}

    return asyncio.run(run())


def _serve_app(port: int) -> Any:
    import uvicorn

    from web.app import create_app

    config = uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, thread


def mailpipe(server: SmtpServer, cafile: Path, workdir: Path, latency_n: int, n: int, concurrency: int,
             distributed: bool, reuse: bool = True) -> dict[str, float]:
    from ops.crypto import generate_key_entry
    from pipeline.flows.connections import use_smtp_transport

    use_smtp_transport(None)  # the next send builds the transport the settings ask for
    workdir = workdir / ("reuse" if reuse else "no-reuse")
    env = {"MAILPIPE_SMTP_REUSE": "1" if reuse else "0",
           "MAILPIPE_SECRET_KEYS": generate_key_entry("bench"), "MAILPIPE_STORAGE_URL": f"file://{workdir / 'store'}",
           "MAILPIPE_SEND_CAP_PER_DAY": str(10 * (n + latency_n) + 100), "SSL_CERT_FILE": str(cafile),
           "MAILPIPE_LOG_LEVEL": "WARNING", "MAILPIPE_MAIL_ALLOWED_NETS": "127.0.0.0/8"}  # aiosmtpd/Dovecot on loopback
    contexts: list[Any] = []
    if distributed:
        from tests.harness.services import pg_database, rabbit_vhost

        pg, vhost = pg_database("mailpipe_bench"), rabbit_vhost("mailpipe_bench" + ("" if reuse else "_noreuse"))
        contexts += [vhost, pg]
        env["MAILPIPE_DATABASE_URL"] = pg.__enter__()
        env["MAILPIPE_BROKER_URL"] = vhost.__enter__()
    else:
        env["MAILPIPE_DATABASE_URL"] = f"sqlite:///{workdir / 'bench.db'}"
    os.environ.update(env)
    from models.db import reset_engine
    from ops.keys import reset_keyring
    from ops.settings import reset_settings

    reset_settings(), reset_engine(), reset_keyring()
    from ops.logging import configure_logging

    configure_logging("WARNING")  # as MAILPIPE_LOG_LEVEL says (the embedded worker's and app's lines are this process's)
    accepted: dict[str, float] = {}
    server.on_message = lambda _f, _r, raw: accepted.setdefault(
        (m.group(1).decode() if (m := _EMAIL_ID.search(raw)) else ""), time.perf_counter())
    procs: list[subprocess.Popen[bytes]] = []
    worker = app = None
    try:
        from sqlmodel import Session

        from models.db import get_engine
        from ops.migrate import upgrade
        from pipeline.broker import build_broker, use_broker
        from pipeline.flows import accounts as svc
        from tests.harness.flow import make_org

        upgrade(env["MAILPIPE_DATABASE_URL"])
        import pipeline.actors  # noqa: F401

        broker = use_broker(build_broker(env.get("MAILPIPE_BROKER_URL")))
        org_id, key = make_org("bench")
        with Session(get_engine()) as s:
            ep = svc.Endpoint(server.host, server.port, "starttls", USER, PASSWORD)
            acct = svc.create_account(s, org_id=org_id, user_id="u1", provider="imap", email=USER, imap_ep=ep, smtp_ep=ep)
            acct.saves_sent_copy, acct.next_fetch_at = True, None  # no IMAP server here: no Sent copy, no sync
            s.add(acct)
            s.commit()
            account_id = acct.id
        port = free_port("127.0.0.1")
        if distributed:  # as deployed: the API and the workers are processes of their own
            exe = str(Path(sys.executable).with_name("mailpipe"))
            procs.append(subprocess.Popen([exe, "worker", "-p", "1", "-t", str(concurrency), "-Q", "send", "-Q", "pipeline",
                                           "-Q", "notify"], env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            procs.append(subprocess.Popen([exe, "web", "--host", "127.0.0.1", "--port", str(port)], env={**os.environ},
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            _wait_http(port)
            time.sleep(2)
        else:
            from dramatiq import Worker

            broker.emit_after("process_boot")
            worker = Worker(broker, worker_threads=concurrency, worker_timeout=20)
            worker.start()
            app, _thread = _serve_app(port)
        headers = {"Authorization": f"Bearer {key}"}

        def body(i: int) -> dict[str, Any]:
            return {"account_id": account_id, "to": [f"r{i}@bench.example"], "subject": f"Note {i}", "body_html": HTML.format(i=i)}

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
            client.post("/api/v1/emails/send", json=body(-1)).raise_for_status()  # warm-up
            _wait(accepted, 1)
            lat = []
            for i in range(latency_n):
                t0 = time.perf_counter()
                r = client.post("/api/v1/emails/send", json=body(i))
                r.raise_for_status()
                eid = r.json()["id"]
                deadline = time.monotonic() + 60
                while eid not in accepted and time.monotonic() < deadline:
                    time.sleep(0.0005)
                lat.append(accepted[eid] - t0)
            before = len(accepted)
            t0 = time.perf_counter()
            ids = []
            lock = threading.Lock()

            def post_range(start: int) -> None:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as c:
                    for i in range(start, n, concurrency):
                        rr = c.post("/api/v1/emails/send", json=body(latency_n + i))
                        rr.raise_for_status()
                        with lock:
                            ids.append(rr.json()["id"])

            posters = [threading.Thread(target=post_range, args=(k,)) for k in range(concurrency)]
            for t in posters:
                t.start()
            for t in posters:
                t.join()
            _wait(accepted, before + n, timeout=600)
            elapsed = max(accepted[i] for i in ids) - t0
        return {"p50_ms": pct(lat, 0.5) * 1000, "p99_ms": pct(lat, 0.99) * 1000, "sends_per_s": n / elapsed}
    finally:
        server.on_message = None
        if app is not None:
            app.should_exit = True
        if worker is not None:
            worker.stop()
        for p in procs:
            p.terminate()
            p.wait(30)
        from models.db import reset_engine

        reset_engine()
        for ctx in contexts:
            ctx.__exit__(None, None, None)


def _wait_http(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError("mailpipe web did not start")


def _wait(accepted: dict[str, float], count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(accepted) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(accepted)} of {count} messages reached the SMTP server")
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency-n", type=int, default=200, help="sends measured one at a time (default 200)")
    ap.add_argument("--n", type=int, default=1000, help="sends in the throughput phase (default 1000)")
    ap.add_argument("--concurrency", type=int, default=4, help="concurrent sends: baseline tasks and worker threads (default 4)")
    ap.add_argument("--distributed", action="store_true", help="PostgreSQL + RabbitMQ + a `mailpipe worker` process")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--compare-no-reuse", action="store_true", help="also run mailpipe with MAILPIPE_SMTP_REUSE=0")
    ap.add_argument("--reuse-baseline", action="store_true", help="also run a raw aiosmtplib loop over reused sessions")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailpipe-bench-send-"))
    cert, key = make_self_signed(work / "tls")
    server = SmtpServer(users={USER: PASSWORD}, cert_path=cert, key_path=key)
    server.start()
    try:
        base = baseline(server, cert, args.latency_n, args.n, args.concurrency)
        server.messages.clear()
        raw_reuse = reuse_baseline(server, cert, args.latency_n, args.n, args.concurrency) if args.reuse_baseline else None
        server.messages.clear()
        mp = mailpipe(server, cert, work, args.latency_n, args.n, args.concurrency, args.distributed)
        no_reuse = (mailpipe(server, cert, work, args.latency_n, args.n, args.concurrency, args.distributed, reuse=False)
                    if args.compare_no_reuse else None)
    finally:
        server.close()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    result = {"mode": "distributed" if args.distributed else "embedded", "latency_n": args.latency_n, "n": args.n,
              "concurrency": args.concurrency,
              "baseline": {k: round(v, 2) for k, v in base.items()}, "mailpipe": {k: round(v, 2) for k, v in mp.items()},
              "ratio_sends_per_s": round(mp["sends_per_s"] / base["sends_per_s"], 3),
              "ratio_p50": round(mp["p50_ms"] / base["p50_ms"], 3),
              "load_average": [round(x, 2) for x in os.getloadavg()]}
    extra = {"raw aiosmtplib, reused session (RSET+send):": raw_reuse, "mailpipe without reuse (SMTP_REUSE=0):": no_reuse}
    for label, r in extra.items():
        if r is not None:
            result[label.split(" (")[0].split(",")[0].replace(" ", "_")] = {k: round(v, 2) for k, v in r.items()}
    if args.json:
        print(json.dumps(result))
        return
    print(f"mode: {result['mode']}; {args.latency_n} sends one at a time, then {args.n} with concurrency {args.concurrency}")
    print(f"load average {result['load_average']} on {os.cpu_count()} cores")
    rows = [("raw aiosmtplib (connect+STARTTLS+AUTH+send):", base), *((k, v) for k, v in extra.items() if v is not None),
            ("mailpipe API call -> SMTP 250 (reusing):", mp)]
    for label, r in rows:
        ratio = r["sends_per_s"] / base["sends_per_s"]
        print(f"{label:<46}p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  {r['sends_per_s']:7.1f} sends/s  "
              f"({ratio:.2f}x the raw per-message loop)")
    print(f"ratio mailpipe/baseline: sends/s {result['ratio_sends_per_s']:.3f}, p50 latency {result['ratio_p50']:.2f}x")


if __name__ == "__main__":
    main()
