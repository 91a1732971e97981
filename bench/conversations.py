"""Conversations benchmark: the conversation list with each filter, over HTTP, on 50k emails in 10k conversations.

A fresh database (SQLite; ``--pg`` for PostgreSQL) holds 20 mailboxes (4 shared with 10 members,
4 delegated), 10,000 conversations (60% open, 15% pending, 25% resolved; 40% unassigned; a third
awaiting a reply; last activity spread over 90 days) and 50,000 emails (5 per conversation, the
first linked to one of 2,000 contacts). The app runs under uvicorn; for each filter of
``GET /api/v1/conversations`` (none, status, assignee_id, unassigned, awaiting_reply, contact_id, q,
account_id, and three together) it requests the first page and the page after it (``cursor``),
alternately, ``--requests`` times, once as the organization (no header) and once as a user who sees 4
of the 20 mailboxes (``X-Mailpipe-User``: owner of one, member of the shared ones). Prints p50/p95 per filter
(target: p95 < 50 ms each), and beside it the same list run in process without HTTP (the database's share).

Usage::

    .venv/bin/python bench/conversations.py
    .venv/bin/python bench/conversations.py --pg
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from benchdb import migrated_database  # noqa: E402

from tests.harness.ports import free_port  # noqa: E402

MAILBOXES = 20
CONTACTS = 2000
CUSTOMERS = 3000


def seed(n_conversations: int, per_conversation: int) -> tuple[str, dict[str, Any]]:
    from sqlalchemy import insert
    from sqlmodel import Session

    from models import AccountMember, Conversation, Email, EmailAccount, EmailLink, User, new_id, utcnow
    from models.db import get_engine
    from tests.harness.flow import make_org

    rng = random.Random(18)
    org_id, key = make_org("bench")
    now = utcnow()
    with Session(get_engine()) as s:
        users = [f"u{i}" for i in range(MAILBOXES)]
        s.execute(insert(User), [{"org_id": org_id, "id": u, "name": u, "email": f"{u}@team.example", "email_norm": f"{u}@team.example",
                                  "tracking_opt_out": False, "notify_by_email": False} for u in users])
        accounts = [new_id() for _ in range(MAILBOXES)]
        s.execute(insert(EmailAccount), [{"id": a, "org_id": org_id, "user_id": users[i], "email": f"box{i}@team.example",
                                          "email_norm": f"box{i}@team.example", "shared": i < 4, "created_at": now}
                                         for i, a in enumerate(accounts)])
        members = [{"id": new_id(), "org_id": org_id, "account_id": accounts[i], "user_id": users[m], "role": "member", "created_at": now}
                   for i in range(4) for m in range(10)]
        members += [{"id": new_id(), "org_id": org_id, "account_id": accounts[i], "user_id": users[(i + 1) % MAILBOXES],
                     "role": "delegate", "created_at": now} for i in range(4, 8)]
        s.execute(insert(AccountMember), members)
        convs, emails, links = [], [], []
        for i in range(n_conversations):
            cid, account = new_id(), accounts[i % MAILBOXES]
            last = now - timedelta(minutes=rng.randrange(90 * 24 * 60))
            first = last - timedelta(hours=rng.randrange(1, 72))
            roll = rng.random()
            status = "open" if roll < 0.6 else "pending" if roll < 0.75 else "resolved"
            customer = f"customer{rng.randrange(CUSTOMERS)}@client{i % 97}.example"
            waiting = rng.random() < 0.35 and status != "resolved"
            convs.append({"id": cid, "org_id": org_id, "account_id": account, "subject": f"Question {i} about plan {i % 13}",
                          "subject_norm": f"question {i} about plan {i % 13}", "participants": [customer],
                          "search_text": f"question {i} about plan {i % 13} {customer}",
                          "message_count": per_conversation, "first_message_at": first, "last_message_at": last,
                          "last_direction": "inbound" if waiting else "outbound", "status": status,
                          "assignee_id": None if rng.random() < 0.4 else users[rng.randrange(MAILBOXES)],
                          "awaiting_reply_since": last if waiting else None, "created_at": first, "updated_at": last})
            for k in range(per_conversation):
                eid = new_id()
                at = first + (last - first) * k / max(1, per_conversation - 1)
                inbound = k % 2 == 0 if k < per_conversation - 1 else waiting
                emails.append({"id": eid, "org_id": org_id, "account_id": account, "direction": "inbound" if inbound else "outbound",
                               "status": "received" if inbound else "sent", "dedupe_key": f"mid:{eid}@b", "message_id": f"{eid}@b",
                               "thread_id": cid, "from_email": customer if inbound else f"box{i % MAILBOXES}@team.example",
                               "subject": f"Re: Question {i}", "received_at": at, "pipeline_state": "done", "created_at": at,
                               "references": [], "to_emails": [], "cc_emails": [], "bcc_emails": [], "headers": {}, "defects": [],
                               "body_text": "", "snippet": f"message {k} of conversation {i}"})
                if k == 0:
                    links.append({"id": new_id(), "org_id": org_id, "email_id": eid, "entity_type": "contact",
                                  "entity_id": f"c{i % CONTACTS}", "how": "auto:contacts.email", "created_at": at})
        for chunk in range(0, len(convs), 2000):
            s.execute(insert(Conversation), convs[chunk : chunk + 2000])
        for chunk in range(0, len(emails), 5000):
            s.execute(insert(Email), emails[chunk : chunk + 5000])
        s.execute(insert(EmailLink), links)
        s.commit()
        with get_engine().connect() as conn:  # fresh statistics, as autovacuum / a long-lived SQLite file would have
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    # u1 owns mailbox 1 and is a member of shared mailboxes 0-3: it sees 4 of the 20 (2,000 conversations)
    return key, {"account": accounts[1], "assignee": "u3", "contact": "c1", "user": "u1"}


def filters(ctx: dict[str, Any]) -> dict[str, str]:
    return {
        "none": "", "status=open": "status=open", "status=resolved": "status=resolved", "assignee_id": f"assignee_id={ctx['assignee']}",
        "unassigned": "unassigned=true", "awaiting_reply": "awaiting_reply=true", "contact_id": f"contact_id={ctx['contact']}",
        "q": "q=customer12", "account_id": f"account_id={ctx['account']}",
        "open+unassigned+awaiting": "status=open&unassigned=true&awaiting_reply=true",
    }


def query_times(org_key: str, ctx: dict[str, Any], n_requests: int) -> dict[str, dict[str, float]]:
    """The same lists in process (``list_page`` and the JSON rows, no HTTP): the database's share."""
    from urllib.parse import parse_qsl

    from sqlmodel import Session

    from models.access import Actor
    from models.db import get_engine
    from ops.orgs import org_for_key
    from pipeline.flows.conversations import Filters, list_page
    from web.routes.conversations import conversation_json

    org_id = org_for_key(get_engine(), org_key)
    assert org_id is not None
    out: dict[str, dict[str, float]] = {}
    for who, actor in (("org", Actor(org_id)), (f"user {ctx['user']}", Actor(org_id, ctx["user"]))):
        for name, query in filters(ctx).items():
            params: dict[str, Any] = dict(parse_qsl(query))
            for flag in ("unassigned", "awaiting_reply"):
                if flag in params:
                    params[flag] = params[flag] == "true"
            lat = []
            with Session(get_engine()) as s:
                for _ in range(n_requests):
                    t0 = time.perf_counter()
                    rows, _more = list_page(s, actor, Filters(**params), 50, None)
                    [conversation_json(c) for c in rows]
                    lat.append(time.perf_counter() - t0)
            lat.sort()
            out[f"{who}|{name}"] = {"p50_ms": round(lat[len(lat) // 2] * 1000, 2), "p95_ms": round(lat[int(len(lat) * 0.95)] * 1000, 2)}
    return out


def latencies(key: str, ctx: dict[str, Any], n_requests: int) -> dict[str, dict[str, dict[str, float]]]:
    import uvicorn

    from web.app import create_app

    port = free_port("127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, proxy_headers=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    out: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for who, extra in (("org", {}), (f"user {ctx['user']}", {"X-Mailpipe-User": ctx["user"]})):
            headers = {"Authorization": f"Bearer {key}", **extra}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as c:
                c.get("/api/v1/conversations?limit=50").raise_for_status()  # warm-up
                out[who] = {}
                for name, query in filters(ctx).items():
                    lat, cursor, count = [], "", 0
                    for i in range(n_requests):
                        url = f"/api/v1/conversations?limit=50&{query}" + (f"&cursor={cursor}" if cursor and i % 2 else "")
                        t0 = time.perf_counter()
                        r = c.get(url)
                        lat.append(time.perf_counter() - t0)
                        r.raise_for_status()
                        body = r.json()
                        if not (i % 2):
                            cursor, count = body["next_cursor"] or "", len(body["items"])
                    lat.sort()
                    out[who][name] = {"p50_ms": round(lat[len(lat) // 2] * 1000, 2), "p95_ms": round(lat[int(len(lat) * 0.95)] * 1000, 2),
                                      "first_page_items": count}
    finally:
        server.should_exit = True
        thread.join(10)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pg", action="store_true", help="PostgreSQL instead of SQLite")
    ap.add_argument("--conversations", type=int, default=10_000)
    ap.add_argument("--per-conversation", type=int, default=5)
    ap.add_argument("--requests", type=int, default=100, help="per filter and caller")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with migrated_database(pg=args.pg, pg_name="mailpipe_bench_conv", prefix="mailpipe-bench-conversations-"):
        t0 = time.perf_counter()
        key, names = seed(args.conversations, args.per_conversation)
        seeded = time.perf_counter() - t0
        result = latencies(key, names, args.requests)
        in_process = query_times(key, names, args.requests)
    db = "postgresql" if args.pg else "sqlite"
    if args.json:
        print(json.dumps({"db": db, "conversations": args.conversations, "emails": args.conversations * args.per_conversation,
                          "results": result, "in_process": in_process}))
        return
    print(f"{args.conversations * args.per_conversation} emails in {args.conversations} conversations, {MAILBOXES} mailboxes ({db};"
          f" seeded in {seeded:.1f} s); {args.requests} requests per filter and caller, pages of 50:")
    worst = 0.0
    for who, rows in result.items():
        print(f"  as {who}:")
        for name, r in rows.items():
            worst = max(worst, r["p95_ms"])
            q = in_process[f"{who}|{name}"]
            print(f"    {name:<26} p50 {r['p50_ms']:6.2f} ms   p95 {r['p95_ms']:6.2f} ms   ({r['first_page_items']:>2} on the first page)"
                  f"   query alone: p50 {q['p50_ms']:5.2f} ms, p95 {q['p95_ms']:5.2f} ms")
    print(f"worst p95: {worst:.2f} ms (target < 50 ms) — {'OK' if worst < 50 else 'OVER'}")


if __name__ == "__main__":
    main()
