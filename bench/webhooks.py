"""Webhook benchmark: events per second from the outbox to a local receiver, and what one
subscribed endpoint adds to the inbound pipeline.

1. outbox → receiver: N events are recorded (``record_events``, 100 per transaction) for one
   organization with ``--endpoints`` endpoints subscribed to every event, each a real local HTTP
   receiver (``tests/harness/webhook_receiver.py``); an in-process Dramatiq worker dispatches and
   POSTs them (signed, through the connection guard, one run per endpoint at a time). Prints
   deliveries/second from the first record to the last delivery, and the p50/p99 from an event's
   commit to its arrival. Embedded (SQLite + in-memory broker) unless ``--distributed``
   (PostgreSQL + RabbitMQ, the worker still in this process).
2. inbound cost (``--inbound N``): ``bench/sync.py``'s embedded pipeline over N messages seeded in a
   private Dovecot, alternately without and with one endpoint subscribed to every event (each
   email then records ``email.received`` (+ ``email.linked``/``lead.created``) in its stage's
   transaction): "record" keeps the events in the outbox during the run (the outbox's own cost),
   "deliver" has the same worker dispatch and POST them meanwhile; ``--rounds`` rounds, order
   alternating; prints wall and CPU time per run and the medians' difference.

Usage::

    .venv/bin/python bench/webhooks.py --n 2000 --endpoints 1
    .venv/bin/python bench/webhooks.py --n 2000 --endpoints 4 --distributed
    .venv/bin/python bench/webhooks.py --n 0 --inbound 2000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.harness.webhook_receiver import WebhookReceiver  # noqa: E402

TRICKLE = 30


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def outbox_to_receiver(n: int, endpoints: int, threads: int, distributed: bool) -> dict[str, Any]:
    from dramatiq import Worker
    from sqlmodel import Session

    from models.db import get_engine, reset_engine
    from ops.crypto import generate_key_entry
    from ops.migrate import upgrade
    from ops.settings import reset_settings
    from pipeline.broker import build_broker, use_broker

    work = Path(tempfile.mkdtemp(prefix="mailpipe-bench-webhooks-"))
    env = {"MAILPIPE_SECRET_KEYS": generate_key_entry("bench"), "MAILPIPE_WEBHOOK_ALLOWED_NETS": "127.0.0.0/8",
           "MAILPIPE_STORAGE_URL": f"file://{work / 'store'}", "MAILPIPE_LOG_LEVEL": "WARNING"}
    pg_ctx = vhost_ctx = None
    if distributed:
        from tests.harness.services import pg_database, rabbit_vhost

        pg_ctx, vhost_ctx = pg_database("mailpipe_bench_wh"), rabbit_vhost("mailpipe_bench_wh")
        env["MAILPIPE_DATABASE_URL"] = pg_ctx.__enter__()
        env["MAILPIPE_BROKER_URL"] = vhost_ctx.__enter__()
    else:
        env["MAILPIPE_DATABASE_URL"] = f"sqlite:///{work / 'bench.db'}"
    os.environ.update(env)
    reset_settings()
    reset_engine()
    receivers = [WebhookReceiver().start() for _ in range(endpoints)]
    try:
        upgrade(env["MAILPIPE_DATABASE_URL"])
        import pipeline.actors  # noqa: F401
        from ops.logging import configure_logging
        from pipeline.flows.events_outbox import record_events
        from pipeline.flows.webhook_endpoints import create_endpoint
        from tests.harness.flow import make_org

        configure_logging("WARNING")
        broker = use_broker(build_broker(env.get("MAILPIPE_BROKER_URL")))
        org_id, _ = make_org("bench")
        for rec in receivers:
            create_endpoint(org_id, rec.url, ["*"], None)
        broker.emit_after("process_boot")
        worker = Worker(broker, worker_threads=threads, worker_timeout=100)
        worker.start()
        committed: dict[str, float] = {}
        start = time.perf_counter()
        for lo in range(0, n, 100):
            with Session(get_engine()) as s:
                ids = record_events(s, org_id, [("email.received", {"email_id": f"e{i}", "subject": f"Bench {i}",
                                                                     "from_email": "ada@engine.example", "contact_ids": ["c1"]},
                                                 f"email.received:e{i}") for i in range(lo, min(n, lo + 100))])
                s.commit()
            now = time.perf_counter()
            committed.update((i, now) for i in ids)
        recorded = time.perf_counter() - start
        deadline = time.monotonic() + max(120.0, n / 10)
        while sum(len(r.requests) for r in receivers) < n * endpoints:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {sum(len(r.requests) for r in receivers)} of {n * endpoints} deliveries arrived")
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        # Unloaded latency: one event at a time, commit → arrival at the first receiver.
        single: list[float] = []
        for i in range(TRICKLE):
            before = len(receivers[0].requests)
            with Session(get_engine()) as s:
                record_events(s, org_id, [("lead.created", {"lead_id": f"t{i}"}, None)])
                s.commit()
            t0 = time.perf_counter()
            while len(receivers[0].requests) == before and time.perf_counter() - t0 < 30:
                time.sleep(0.001)
            single.append(time.perf_counter() - t0)
        worker.stop()
        broker.close()
        offset = time.perf_counter() - time.monotonic()  # receiver times are monotonic
        lat = [r.at + offset - committed[r.headers["webhook-id"]] for rec in receivers for r in rec.requests
           if r.headers["webhook-id"] in committed]
        return {"events": n, "endpoints": endpoints, "deliveries": n * endpoints, "mode": "distributed" if distributed else "embedded",
                "record_events_per_s": round(n / recorded, 1), "deliveries_per_s": round(n * endpoints / elapsed, 1),
                "latency_p50_ms": round(1000 * pct(lat, 0.5), 1), "latency_p99_ms": round(1000 * pct(lat, 0.99), 1),
                "single_event_p50_ms": round(1000 * pct(single, 0.5), 1), "single_event_max_ms": round(1000 * max(single), 1)}
    finally:
        for rec in receivers:
            rec.stop()
        if vhost_ctx is not None:
            vhost_ctx.__exit__(None, None, None)
        if pg_ctx is not None:
            reset_engine()
            pg_ctx.__exit__(None, None, None)


def inbound_cost(n: int, rounds: int, threads: int) -> dict[str, Any]:
    import sync as sync_bench  # bench/sync.py

    import tests.harness.flow as flow
    from tests.harness.certs import make_self_signed
    from tests.harness.dovecot import Dovecot

    work = Path(tempfile.mkdtemp(prefix="mailpipe-bench-webhooks-inbound-"))
    cert, key = make_self_signed(work / "tls")
    dovecot = Dovecot(cert, key)
    dovecot.add_user(sync_bench.USER, sync_bench.PASSWORD)
    dovecot.start()
    receiver = WebhookReceiver().start()
    plain_make_org = flow.make_org
    os.environ["MAILPIPE_WEBHOOK_ALLOWED_NETS"] = "127.0.0.0/8"
    os.environ["MAILPIPE_LOG_LEVEL"] = "WARNING"

    def make_org_with_endpoint(name: str = "acme", **settings: Any) -> tuple[str, str]:
        from pipeline.flows.webhook_endpoints import create_endpoint

        org_id, key = plain_make_org(name, **settings)
        create_endpoint(org_id, receiver.url, ["*"], None)
        return org_id, key

    from pipeline import jobs

    wall: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    delivered: list[int] = []
    dispatch_send = jobs.Job.send
    try:
        sync_bench.seed(dovecot, n)
        sync_bench.pipeline(dovecot, cert, work, n, False, threads)  # warm-up
        for r in range(rounds):
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                flow.make_org = plain_make_org if mode == "off" else make_org_with_endpoint
                # "record": the events are written in each stage's transaction but not dispatched during the run
                # (the outbox alone); "deliver": the same worker also dispatches and POSTs them meanwhile.
                jobs.Job.send = _no_dispatch(dispatch_send) if mode == "record" else dispatch_send  # type: ignore[method-assign]
                before = len(receiver.requests)
                _, seconds, _ = sync_bench.pipeline(dovecot, cert, work, n, False, threads, cpu=cpu[mode])
                wall[mode].append(seconds)
                if mode == "deliver":
                    delivered.append(len(receiver.requests) - before)
    finally:
        jobs.Job.send = dispatch_send  # type: ignore[method-assign]
        flow.make_org = plain_make_org
        receiver.stop()
        dovecot.close()
    out: dict[str, Any] = {"inbound_messages": n, "rounds": rounds, "webhooks_delivered_during_runs": delivered}
    for mode in MODES:
        out[f"wall_{mode}_s"] = [round(x, 2) for x in wall[mode]]
        out[f"cpu_{mode}_s"] = [round(x, 2) for x in cpu[mode]]
    for mode in MODES[1:]:
        out[f"wall_overhead_{mode}"] = round(statistics.median(wall[mode]) / statistics.median(wall["off"]) - 1, 4)
        out[f"cpu_overhead_{mode}"] = round(statistics.median(cpu[mode]) / statistics.median(cpu["off"]) - 1, 4)
    return out


MODES = ("off", "record", "deliver")


def _no_dispatch(send: Any) -> Any:
    def send_unless_webhooks(self: Any, *args: Any, **kw: Any) -> Any:
        if self.queue == "webhooks":
            return None
        return send(self, *args, **kw)

    return send_unless_webhooks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="events for the outbox → receiver run (0 skips it)")
    ap.add_argument("--endpoints", type=int, default=1, help="receivers subscribed to every event")
    ap.add_argument("--threads", type=int, default=4, help="worker threads")
    ap.add_argument("--distributed", action="store_true", help="PostgreSQL + RabbitMQ for the outbox run")
    ap.add_argument("--inbound", type=int, default=0, help="messages for the inbound-cost comparison (0 skips it)")
    ap.add_argument("--rounds", type=int, default=2, help="off/on pairs for --inbound, order alternating")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    if args.n:
        result["outbox"] = outbox_to_receiver(args.n, args.endpoints, args.threads, args.distributed)
    if args.inbound:
        result["inbound"] = inbound_cost(args.inbound, args.rounds, args.threads)
    result["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result))
        return
    if "outbox" in result:
        o = result["outbox"]
        print(f"outbox → receiver ({o['mode']}, {o['events']} events × {o['endpoints']} endpoint(s))")
        print(f"  recorded:   {o['record_events_per_s']:10.1f} events/s (100 per transaction)")
        print(f"  delivered:  {o['deliveries_per_s']:10.1f} deliveries/s, first record to last arrival")
        print(f"  latency:    p50 {o['latency_p50_ms']} ms, p99 {o['latency_p99_ms']} ms (commit → arrival, all recorded at once)")
        print(f"  one at a time: p50 {o['single_event_p50_ms']} ms, max {o['single_event_max_ms']} ms ({TRICKLE} events)")
    if "inbound" in result:
        i = result["inbound"]
        print(f"inbound pipeline, {i['inbound_messages']} messages: no endpoint / one endpoint (all events), recorded only /"
              " recorded and delivered by the same worker meanwhile")
        for m in MODES:
            extra = "" if m == "off" else (f"  → wall {100 * i[f'wall_overhead_{m}']:+.1f} %, CPU {100 * i[f'cpu_overhead_{m}']:+.1f} %"
                                           " (medians)")
            print(f"  {m:8s} wall s {i[f'wall_{m}_s']}, CPU s {i[f'cpu_{m}_s']}{extra}")
        print(f"  webhooks delivered while the pipeline ran: {i['webhooks_delivered_during_runs']}")
    print(f"load average (1 min): {result['load_before']:.2f} before, {result['load_after']:.2f} after (2 cores, shared)")


if __name__ == "__main__":
    main()
