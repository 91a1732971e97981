"""Templates benchmark: listing a 1,000-template library with metrics through the API, and merge speed.

1. A fresh embedded database (SQLite; ``--pg`` for PostgreSQL) with 1,000 templates and 5,000 sent
   emails spread over them (a fifth opened, a tenth clicked); the app under uvicorn; every page of
   ``GET /api/v1/templates?sort=open_rate&limit=50`` (and of the other sorts) requested over HTTP,
   200 requests in all. Prints p50/p95 latency (target p95 < 50 ms).
2. The merge engine rendering a typical template (subject + HTML with six fields and fallbacks)
   for 2 s: merges/second (target ≥ 10,000).

Usage::

    .venv/bin/python bench/templates.py
    .venv/bin/python bench/templates.py --pg
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from benchdb import migrated_database  # noqa: E402

from tests.harness.ports import free_port  # noqa: E402

HTML = ("<p>Hi {{firstName|there}},</p><p>I noticed {{company|your team}} works in {{industry|your industry}}. "
        "Our customers in {{industry|your field}} save hours a week.</p><p>{{senderName}}<br>{{senderEmail}}</p>")


def seed(n_templates: int, n_emails: int) -> tuple[str, str]:
    from sqlmodel import Session

    from models import Email, Template, new_id, utcnow
    from models.db import get_engine
    from tests.harness.flow import make_account, make_org

    org_id, key = make_org("bench")
    account_id = make_account(org_id)
    with Session(get_engine()) as s:
        ids = []
        for i in range(n_templates):
            t = Template(org_id=org_id, name=f"Template {i:04d}", category=("sales", "follow-up", "renewal")[i % 3],
                         subject="Hi {{firstName|there}}", body_html=HTML, usage_count=i % 37,
                         merge_fields=["firstName", "company", "industry", "senderName", "senderEmail"])
            s.add(t)
            ids.append(t.id)
        s.flush()
        now = utcnow()
        for i in range(n_emails):
            s.add(Email(id=new_id(), org_id=org_id, account_id=account_id, direction="outbound", status="sent",
                        dedupe_key=f"mid:b{i}@t", message_id=f"b{i}@t", template_id=ids[i % n_templates], sent_at=now,
                        open_count=1 if i % 5 == 0 else 0, click_count=1 if i % 10 == 0 else 0, pipeline_state="done"))
        s.commit()
    return org_id, key


def list_latency(key: str, n_requests: int) -> tuple[float, float]:
    import uvicorn

    from web.app import create_app

    port = free_port("127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, proxy_headers=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    lat: list[float] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            sorts = ("open_rate", "usage", "click_rate", "created")
            c.get("/api/v1/templates?limit=50")  # warm-up
            while len(lat) < n_requests:
                for sort in sorts:
                    cursor = ""
                    while len(lat) < n_requests:
                        t0 = time.perf_counter()
                        r = c.get(f"/api/v1/templates?sort={sort}&limit=50&cursor={cursor}")
                        lat.append(time.perf_counter() - t0)
                        r.raise_for_status()
                        cursor = r.json()["next_cursor"] or ""
                        if not cursor:
                            break
    finally:
        server.should_exit = True
        thread.join(10)
    lat.sort()
    return lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.95)] * 1000


def merge_rate(seconds: float = 2.0) -> float:
    from pipeline.stages.merge import render

    values = {"firstName": "Jane", "company": "Acme", "industry": None, "senderName": "Sam", "senderEmail": "sam@acme.example"}
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        render("Hi {{firstName|there}}", values, mode="subject")
        render(HTML, values, mode="html")
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pg", action="store_true", help="PostgreSQL instead of SQLite")
    ap.add_argument("--templates", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with migrated_database(pg=args.pg, pg_name="mailpipe_bench_tpl", prefix="mailpipe-bench-templates-"):
        _, key = seed(args.templates, args.templates * 5)
        p50, p95 = list_latency(key, args.requests)
        rate = merge_rate()
    result = {"db": "postgresql" if args.pg else "sqlite", "templates": args.templates, "list_p50_ms": round(p50, 2),
              "list_p95_ms": round(p95, 2), "merges_per_s": round(rate)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.templates} templates ({result['db']}), {args.requests} list requests of 50 with metrics:"
          f" p50 {p50:.2f} ms, p95 {p95:.2f} ms")
    print(f"merge engine: {rate:,.0f} merges/s (subject + HTML with 6 tags)")


if __name__ == "__main__":
    main()
