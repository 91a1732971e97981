"""Search benchmark: full-text ``GET /api/v1/emails?q=`` against the substring ``q`` it replaces, same data, same run.

Fills a database with synthetic mail (``--n`` emails, Zipf-distributed vocabulary, ~150-word
bodies, names, addresses, attachment names; the search rows written by ``models.search.write_docs``
as the parse stage writes them, so the database computes the index as in production), then times
each query kind through the API (Starlette TestClient, one request at a time):

* ``rare``: a word in ~0.1% of the bodies; ``common``: a word in ~30%; ``two_words``: two mid-frequency
  words; ``phrase``: a quoted phrase; ``sender``: an address; ``name``: a person's name; ``negation``:
  ``word -other``; ``attachment``: a file name word; ``none``: a word no email has.

The baseline is the substring search (``lower(subject|from_email|snippet) LIKE '%q%'``) the old
``q`` ran, timed on the same rows for the same words. Prints p50/p95 per kind for both and the goal
(p95 < 50 ms on PostgreSQL at 100k, < 100 ms on SQLite at 5k). Usage::

    .venv/bin/python bench/search.py --db sqlite --n 5000
    .venv/bin/python bench/search.py --db postgresql --n 100000      # reuses the filled database on a second run
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_BENCH_DB = "mailpipe_bench_search"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        n = rng.randint(2, 4)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(n)))
    return sorted(words)


def fill(n: int, seed: int = 21) -> dict[str, Any]:
    """n emails in one org (two mailboxes); returns the org's key and the words each query kind uses."""
    from sqlalchemy import insert
    from sqlmodel import Session

    from models import Email
    from models.db import get_engine
    from models.search import write_docs
    from pipeline.flows.search_index import search_row
    from tests.harness.flow import make_account, make_org

    rng = random.Random(seed)
    vocab = vocabulary(rng)
    weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf
    firsts = ["Ada", "Grace", "Alan", "Linus", "Barbara", "Edsger", "Donald", "Frances", "Ken", "Radia"]
    lasts = ["Lovelace", "Hopper", "Turing", "Torvalds", "Liskov", "Dijkstra", "Knuth", "Allen", "Thompson", "Perlman"]
    org_id, key = make_org("bench-search")
    accounts = [make_account(org_id), make_account(org_id, email="bob@example.test")]
    rare = vocab[4000]
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    engine = get_engine()
    for start in range(0, n, 1000):
        emails: list[dict[str, Any]] = []
        docs: list[dict[str, Any]] = []
        for i in range(start, min(n, start + 1000)):
            body_words = rng.choices(vocab, weights, k=150)
            if i % 1000 == 7:
                body_words[10] = rare
            subject = " ".join(rng.choices(vocab[:3000], k=5))
            f, la = rng.choice(firsts), rng.choice(lasts)
            sender = f"{f.lower()}.{la.lower()}{i % 50}@{rng.choice(vocab[:200])}.example"
            html = "<html><body><p>" + " ".join(body_words[:75]) + "</p><p>" + " ".join(body_words[75:]) + "</p></body></html>"
            text = " ".join(body_words)
            e = Email(org_id=org_id, account_id=accounts[i % 2], dedupe_key=f"bench-{i}", subject=subject, body_text=text,
                      body_html=html, snippet=text[:100], from_email=sender, from_email_norm=sender, from_name=f"{f} {la}",
                      to_emails=["alice@example.test"], received_at=now - timedelta(minutes=i), pipeline_state="done")
            emails.append(e.model_dump())
            docs.append(search_row(e, names=["Alice Seller"],
                                   attachment_names=[f"{rng.choice(vocab[:500])}-report.pdf"] if i % 10 == 0 else []))
        with Session(engine) as s:
            s.execute(insert(Email), emails)
            write_docs(s, docs)
            s.commit()
        if start and start % 20_000 == 0:
            print(f"  filled {start} in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"filled {n} emails in {time.perf_counter() - t0:.1f} s", flush=True)
    return {"org_id": org_id, "key": key}


def kinds(sender: str, seed: int = 21) -> dict[str, str]:
    vocab = vocabulary(random.Random(seed))
    return {
        "rare": vocab[4000], "common": vocab[2], "two_words": f"{vocab[40]} {vocab[41]}",
        "phrase": f'"{vocab[0]} {vocab[1]}"', "sender": sender, "name": "Lovelace",
        "negation": f"{vocab[30]} -{vocab[31]}", "attachment": "report", "none": "xyzzyplugh",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--n", type=int, default=None, help="emails (default 5000 on SQLite, 100000 on PostgreSQL)")
    ap.add_argument("--rounds", type=int, default=40, help="requests per query kind")
    ap.add_argument("--refill", action="store_true", help="PostgreSQL: drop and refill the bench database")
    ap.add_argument("--pg-db", default=PG_BENCH_DB, help=f"PostgreSQL: the bench database's name (default {PG_BENCH_DB}; "
                    "another name keeps a second copy, e.g. one per branch being compared)")
    args = ap.parse_args()
    pg_db = args.pg_db
    if not pg_db.replace("_", "").isalnum():
        ap.error("--pg-db: letters, digits and _ only")
    n = args.n or (5000 if args.db == "sqlite" else 100_000)
    from ops.crypto import generate_key_entry

    tmp = Path(tempfile.mkdtemp(prefix="mailpipe-bench-search-"))
    os.environ.setdefault("MAILPIPE_SECRET_KEYS", generate_key_entry("bench"))
    os.environ["MAILPIPE_STORAGE_URL"] = f"file://{tmp / 'store'}"
    import sqlalchemy as sa

    from ops.migrate import upgrade

    state_file = tmp / "none"
    if args.db == "sqlite":
        url = f"sqlite:///{tmp / 'bench.db'}"
    else:
        admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            exists = c.exec_driver_sql(f"SELECT 1 FROM pg_database WHERE datname = '{pg_db}'").first() is not None
            if exists and args.refill:
                c.exec_driver_sql(f"DROP DATABASE {pg_db} WITH (FORCE)")
                exists = False
            if not exists:
                c.exec_driver_sql(f"CREATE DATABASE {pg_db}")
        admin.dispose()
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_db}"
        state_file = Path(tempfile.gettempdir()) / f"{pg_db}-{n}.key"
        if not exists:  # a new (or refilled) database: whatever was noted about the old one is gone
            state_file.unlink(missing_ok=True)
    os.environ["MAILPIPE_DATABASE_URL"] = url
    upgrade(url)
    if state_file.exists():
        org_id, key = state_file.read_text().split()
        print(f"reusing the filled PostgreSQL database {pg_db} ({n} emails; --refill to rebuild)")
    else:
        filled = fill(n)
        org_id, key = filled["org_id"], filled["key"]
        if args.db == "postgresql":
            with sa.create_engine(url, isolation_level="AUTOCOMMIT").connect() as c:
                c.exec_driver_sql("ANALYZE")  # outside a transaction, so the statistics stay
            state_file.write_text(f"{org_id} {key}")

    from sqlalchemy import func, or_, select
    from sqlmodel import Session
    from starlette.testclient import TestClient

    from models import Email
    from models.db import get_engine
    from web.app import create_app

    headers = {"Authorization": f"Bearer {key}"}
    load = os.getloadavg()
    print(f"\n{args.db}, {n} emails, {args.rounds} requests per kind; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} cores")
    print(f"{'kind':<11} {'query':<32} {'hits':>6} | {'full-text p50':>13} {'p95 ms':>7} | {'substring p50':>13} {'p95 ms':>7}")
    worst = 0.0
    with TestClient(create_app()) as client:
        engine = get_engine()
        with Session(engine) as s:
            sender = s.execute(select(Email.from_email).where(Email.dedupe_key == "bench-123")).scalar_one()
        for kind, q in kinds(sender or "").items():
            times: list[float] = []
            hits = 0
            for _ in range(args.rounds):
                t = time.perf_counter()
                r = client.get("/api/v1/emails", params={"q": q, "limit": 50}, headers=headers)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
                hits = len(r.json()["items"])
            base: list[float] = []
            term = "%" + q.strip('"').lower() + "%"
            stmt = (select(Email).where(Email.org_id == org_id, or_(
                func.lower(Email.subject).like(term), func.lower(Email.from_email).like(term), func.lower(Email.snippet).like(term)))
                .order_by(Email.received_at.desc()).limit(51))
            for _ in range(max(5, args.rounds // 4)):
                t = time.perf_counter()
                with Session(engine) as s:
                    list(s.execute(stmt).scalars())
                base.append((time.perf_counter() - t) * 1000)
            worst = max(worst, pct(times, 0.95))
            print(f"{kind:<11} {q[:32]:<32} {hits:>6} | {pct(times, 0.5):>13.1f} {pct(times, 0.95):>7.1f} | "
                  f"{pct(base, 0.5):>13.1f} {pct(base, 0.95):>7.1f}", flush=True)
    goal = 50.0 if args.db == "postgresql" else 100.0
    print(f"\nworst full-text p95 {worst:.1f} ms; goal < {goal:.0f} ms: {'met' if worst < goal else 'NOT met'} "
          f"(the substring baseline searched subject, sender and snippet only, finding no body-only word)")


if __name__ == "__main__":
    main()
