"""Operations (issue: operations, must-show 1-4): multiprocess metrics of `mailpipe worker -p 2`, the
alert rules and dashboard against what a running instance exports, JSON logs of a full flow, and
SIGTERM to a worker in the middle of a sync. Real processes on PostgreSQL, RabbitMQ and Dovecot.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlmodel import Session

from models import Email, EmailLocation, SelfTestRun
from models.db import get_engine
from pipeline.flows import accounts as svc
from tests.harness.dovecot import Dovecot
from tests.harness.flow import make_org, tick
from tests.harness.mail import make_message
from tests.harness.ports import free_port, wait_port
from tests.harness.proc import MailpipeProcess, mailpipe_env, run_mailpipe
from tests.harness.wait import wait_until
from tests.integration.conftest import process_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ops_env(fresh_pg_url: str, amqp_url: str, dovecot: Dovecot, dovecot_user: tuple[str, str], test_certs: tuple[Path, Path],
            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """PostgreSQL + RabbitMQ settings shared with worker processes, and one mailbox due for sync."""
    env, broker = process_env(fresh_pg_url, amqp_url, tmp_path, test_certs[0], monkeypatch, MAILPIPE_SYNC_RATE_PER_HOUR="1000000",
                              MAILPIPE_METRICS_PORT=str(free_port("127.0.0.1")), MAILPIPE_METRICS_HOST="127.0.0.1",
                              MAILPIPE_METRICS_DIR=str(tmp_path / "prom"), MAILPIPE_LOG_JSON="true")
    user, password = dovecot_user
    org_id, _ = make_org()
    with Session(get_engine()) as s:
        acct = svc.create_account(s, org_id=org_id, user_id="u1", provider="imap", email=user,
                                  imap_ep=svc.Endpoint(dovecot.host, dovecot.tls_port, "ssl", user, password),
                                  smtp_ep=svc.Endpoint(dovecot.host, 25, "none", user, password))
        s.commit()
        account_id = acct.id
    yield {"env": mailpipe_env(**env), "tmp": tmp_path, "dovecot": dovecot, "user": user, "password": password,
           "account_id": account_id, "broker": broker, "port": int(env["MAILPIPE_METRICS_PORT"]), "prom": tmp_path / "prom"}
    broker.close()


def emails() -> tuple[int, int, int]:
    with Session(get_engine()) as s:
        total = s.execute(select(func.count()).select_from(Email)).scalar_one()
        done = s.execute(select(func.count()).select_from(Email).where(Email.pipeline_state == "done")).scalar_one()
        ids = s.execute(select(func.count(func.distinct(Email.message_id))).select_from(Email)).scalar_one()
        return int(total), int(done), int(ids)


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def total(fams: dict[str, Any], name: str, **labels: str) -> float:
    fam = fams[name]
    return sum(s.value for s in fam.samples if s.name == f"{name}_total" and all(s.labels.get(k) == v for k, v in labels.items()))


def test_two_worker_processes_one_exposition_that_sums_them(ops_env: dict[str, Any]) -> None:
    """Must-show 1: `mailpipe worker -p 2` syncs a mailbox and runs 30 selftests; the exposition port
    has Dramatiq's counters and mailpipe's, and each equals the sum of the two processes' own."""
    from pipeline.flows.selftest import start_run

    o = ops_env
    (o["prom"]).mkdir()
    (o["prom"] / "counter_999999.db").write_bytes(b"stale file from a previous run")  # must be wiped at start
    o["dovecot"].seed(o["user"], "INBOX", [make_message(i, to=o["user"]) for i in range(12)])
    worker = MailpipeProcess("worker", "-p", "2", "-t", "2", env=o["env"], cwd=o["tmp"], name="worker")
    try:
        wait_port("127.0.0.1", o["port"], 30)
        tick()  # the scheduler's sweep hands the mailbox to the workers
        runs = [start_run() for _ in range(30)]
        wait_until(lambda: emails()[1] == 12, 60, 0.2, "12 emails through the pipeline")

        def all_runs() -> bool:
            with Session(get_engine()) as s:
                return s.execute(select(func.count()).select_from(SelfTestRun).where(
                    SelfTestRun.id.in_(runs), SelfTestRun.second_at.is_not(None))).scalar_one() == 30  # type: ignore[attr-defined,union-attr]

        wait_until(all_runs, 60, 0.2, "30 selftest runs")

        def scrape() -> dict[str, Any]:
            return families(httpx.get(f"http://127.0.0.1:{o['port']}/metrics", timeout=10).text)

        # Counters land when a message finishes; wait until the exposition has them all.
        wait_until(lambda: total(scrape(), "dramatiq_messages", actor_name="selftest.second") == 30, 30, 0.2, "counters flushed")
        fams = scrape()
        assert total(fams, "mailpipe_emails_synced") == 12
        assert total(fams, "mailpipe_messages", actor_name="selftest.first") == 30
        assert total(fams, "mailpipe_ingest", stage="parse", outcome="stored") == 12 or total(fams, "mailpipe_ingest") > 0
        exposed = total(fams, "dramatiq_messages")
        assert exposed == total(fams, "mailpipe_messages") > 60

        # Per process: each worker process wrote its own samples file; the exposition is their sum.
        files = sorted(p for p in o["prom"].glob("counter_*.db"))
        assert "counter_999999.db" not in {f.name for f in files}, "the directory was wiped at start"
        per_pid = []
        for f in files:
            with tempfile.TemporaryDirectory() as one:
                shutil.copy(f, Path(one) / f.name)
                from prometheus_client import CollectorRegistry, multiprocess

                registry = CollectorRegistry()
                multiprocess.MultiProcessCollector(registry, path=one)
                from prometheus_client import generate_latest

                per_pid.append(total(families(generate_latest(registry).decode()), "dramatiq_messages"))
        busy = [v for v in per_pid if v > 0]
        assert len(busy) >= 2, f"both worker processes processed messages: {per_pid}"
        assert sum(per_pid) == exposed
        with Session(get_engine()) as s:
            workers = set(s.execute(select(SelfTestRun.first_worker).where(SelfTestRun.id.in_(runs))).scalars())  # type: ignore[attr-defined]
        assert len(workers) == 2
    finally:
        code = worker.stop()
    assert code == 0, worker.output()[-3000:]


def test_alert_rules_pass_promtool_and_every_referenced_metric_is_exported(tmp_path: Path) -> None:
    """Must-show 2: `promtool check rules` passes; each metric the alerts and the dashboard use is
    exported by a running `mailpipe serve` (listed in the assertion message when one is missing)."""
    rules = ROOT / "ops" / "prometheus" / "alerts.yml"
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr

    exprs = [r["expr"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]]
    dashboard = json.loads((ROOT / "ops" / "grafana" / "mailpipe.json").read_text())
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    assert len(panels) >= 20 and all(p["targets"] for p in panels)
    exprs += [t["expr"] for p in panels for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:mailpipe|dramatiq)_[a-z0-9_]+)", e)}

    env = mailpipe_env(MAILPIPE_SCHEDULER_TICK_SECONDS="1")
    port = free_port()
    proc = MailpipeProcess("serve", "--port", str(port), env=env, cwd=tmp_path, name="serve")
    try:
        wait_port("127.0.0.1", port, 30)
        run_mailpipe("org", "create", "acme", env=env, cwd=tmp_path)

        def exported() -> set[str]:
            names: set[str] = set()
            for f in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics").text):
                suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
                names.add(f.name)
                names.update(f.name + s for s in suffixes.get(f.type, ()))
            return names

        wait_until(lambda: "mailpipe_accounts" in exported(), 20, 0.5, "a scheduler tick's fleet gauges")
        missing = sorted(used - exported())
    finally:
        proc.stop()
    assert missing == [], f"referenced but not exported: {missing}"
    assert len(used) >= 20, sorted(used)


def test_a_full_flow_logs_json_lines_with_ids_and_no_secrets(tmp_path: Path, dovecot: Dovecot, dovecot_user: tuple[str, str],
                                                              smtp_server: Any, test_certs: tuple[Path, Path]) -> None:
    """Must-show 3: every line `mailpipe serve` writes in a sync + send + open flow is a JSON object;
    actor lines carry actor and message ids and the mailbox or email; no password, API key or body."""
    user, password = dovecot_user
    smtp_server.users[user] = password
    body_in, body_out = "INBOUND-BODY-PHRASE-7f3a", "OUTBOUND-BODY-PHRASE-91c2"
    dovecot.seed(user, "INBOX", [make_message(1, from_="Ada <ada@engine.example>", to=user, body=body_in)])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = mailpipe_env(SSL_CERT_FILE=str(test_certs[0]), MAILPIPE_SCHEDULER_TICK_SECONDS="1", MAILPIPE_LOG_JSON="true",
                       MAILPIPE_LOG_LEVEL="DEBUG", MAILPIPE_PUBLIC_URL=base)
    proc = MailpipeProcess("serve", "--port", str(port), env=env, cwd=tmp_path, name="serve")
    try:
        wait_port("127.0.0.1", port, 30)
        org = json.loads(run_mailpipe("org", "create", "acme", "--json", env=env, cwd=tmp_path).stdout)
        h = {"Authorization": f"Bearer {org['api_key']}"}
        httpx.put(f"{base}/api/v1/users/u1", json={"name": "Alice", "email": user}, headers=h)
        r = httpx.post(f"{base}/api/v1/accounts", headers=h, timeout=30, json={
            "user_id": "u1", "provider": "imap", "email": user,
            "imap": {"host": dovecot.host, "port": dovecot.tls_port, "security": "ssl", "password": password},
            "smtp": {"host": smtp_server.host, "port": smtp_server.port, "security": "starttls", "password": password}})
        assert r.status_code == 201, r.text
        acct = r.json()["id"]
        wait_until(lambda: httpx.get(f"{base}/api/v1/emails", params={"account_id": acct}, headers=h).json()["items"], 60, 0.25, "synced")
        r = httpx.post(f"{base}/api/v1/emails/send", headers=h, json={
            "account_id": acct, "to": ["ada@engine.example"], "subject": "Hello", "body_html": f"<p>{body_out}</p>"})
        eid = r.json()["id"]
        wait_until(lambda: httpx.get(f"{base}/api/v1/emails/{eid}", headers=h).json()["status"] == "sent", 60, 0.25, "sent")
        raw = smtp_server.messages[-1][2].decode()
        pixel = re.search(r'(/track/open/[0-9a-f]+/[0-9a-f]+)', raw.replace("=\r\n", ""))
        if pixel:
            httpx.get(base + pixel.group(1))
    finally:
        code = proc.stop()
    out = proc.output()
    assert code == 0, out[-3000:]
    lines = [ln for ln in out.splitlines() if ln.strip()]
    records = []
    for ln in lines:
        try:
            records.append(json.loads(ln))
        except ValueError:
            pytest.fail(f"not a JSON line: {ln[:300]}")
    assert all(isinstance(r, dict) and "event" in r and "level" in r and "timestamp" in r for r in records)
    fetch = [r for r in records if r.get("actor") == "fetch.account" and r.get("event") == "fetch_done"]
    assert fetch and all(r["account_id"] == acct and r["message_id"] for r in fetch)
    sends = [r for r in records if r.get("actor") == "send.email" and r.get("event") == "send_finished"]
    assert sends and sends[0]["email_id"] == eid and sends[0]["message_id"]
    for secret in (password, org["api_key"], body_in, body_out):
        assert secret not in out, f"{secret[:6]}... leaked into the logs"


def test_sigterm_mid_sync_finishes_or_requeues_and_nothing_is_duplicated(ops_env: dict[str, Any]) -> None:
    """Must-show 4: SIGTERM while a 1,500-message sync is storing batches: the worker exits cleanly;
    after a restart the sync completes with every message stored once and through the pipeline."""
    o = ops_env
    n = 1500
    o["dovecot"].seed(o["user"], "INBOX", [make_message(i, to=o["user"], message_id=f"<big{i}@t>") for i in range(n)])
    worker1 = MailpipeProcess("worker", "-p", "1", "-t", "4", env=o["env"], cwd=o["tmp"], name="worker1")
    try:
        tick()
        wait_until(lambda: emails()[0] >= 100, 90, 0.05, "the first batches stored")
        worker1.signal(signal.SIGTERM)  # what systemd's stop does
        code = worker1.proc.wait(90)
    finally:
        worker1.stop(timeout=90)
    assert code == 0, worker1.output()[-3000:]
    at_stop = emails()
    print(f"stored when the SIGTERMed worker had exited: {at_stop}")
    worker2 = MailpipeProcess("worker", "-p", "1", "-t", "4", env=o["env"], cwd=o["tmp"], name="worker2")
    try:
        def complete() -> bool:
            tick()  # sweeps re-hand the unfinished fetch and stalled ingest stages
            return emails()[1] == n

        wait_until(complete, 180, 1.0, f"{n} emails through the pipeline after the restart")
    finally:
        assert worker2.stop() == 0, worker2.output()[-3000:]
    total_rows, done, distinct = emails()
    with Session(get_engine()) as s:
        locations = s.execute(select(func.count()).select_from(EmailLocation)).scalar_one()
    assert total_rows == done == distinct == locations == n, (at_stop, total_rows, done, distinct, locations)


def test_dead_letters_are_counted_and_replayed(ops_env: dict[str, Any]) -> None:
    import dramatiq

    from ops import deadletters

    o = ops_env
    broker = o["broker"]
    message = dramatiq.Message(queue_name="ops", actor_name="selftest.second", args=("nope",), kwargs={},
                               options={"retries": 5, "traceback": "Traceback ..."})
    broker.get_queue_message_counts("ops")  # declares ops, ops.DQ and ops.XQ
    broker.channel.basic_publish(exchange="", routing_key="ops.XQ", body=message.encode())
    wait_until(lambda: deadletters.counts(broker, ("ops",))["ops"] == 1, 10, 0.1, "one dead letter")
    out = run_mailpipe("deadletters", "--queue", "ops", env=o["env"], cwd=o["tmp"])
    assert out.returncode == 0 and "ops: 1 dead" in out.stdout, out.stdout + out.stderr
    out = run_mailpipe("deadletters", "--queue", "ops", "--replay", env=o["env"], cwd=o["tmp"])
    assert out.returncode == 0 and "ops: replayed 1 of 1" in out.stdout, out.stdout + out.stderr
    ready, _, dead = broker.get_queue_message_counts("ops")
    assert (ready, dead) == (1, 0)


def test_systemd_units_verify_and_the_compose_file_holds_the_three_roles(tmp_path: Path) -> None:
    units = sorted((ROOT / "ops" / "systemd").glob("*.service"))
    assert {u.name for u in units} == {"mailpipe-web.service", "mailpipe-worker@.service", "mailpipe-scheduler.service",
                                       "mailpipe-watcher.service"}
    venv_bin = Path(shutil.which("mailpipe") or ROOT / ".venv" / "bin" / "mailpipe")
    for u in units:
        text = u.read_text().replace("/opt/mailpipe/.venv/bin/mailpipe", str(venv_bin))
        name = u.name.replace("@.service", "@fetch.service")
        (tmp_path / name).write_text(text)
        assert "ExecStart=" in text and "KillSignal=SIGTERM" in text
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.glob("*.service"))],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and (r.stdout + r.stderr).strip() == "", r.stdout + r.stderr
    compose = yaml.safe_load((ROOT / "ops" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "rabbitmq", "migrate", "web", "worker", "scheduler", "watcher"} <= set(services)
    for role in ("web", "worker", "scheduler", "watcher"):
        env = services[role]["environment"]
        assert env["MAILPIPE_DATABASE_URL"].startswith("postgresql+psycopg://") and env["MAILPIPE_BROKER_URL"].startswith("amqp://")
        assert services[role]["command"][0] == "mailpipe" and services[role]["command"][1] == role
