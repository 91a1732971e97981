"""Distributed mode against the machine's RabbitMQ and PostgreSQL: workers and scheduler leaders."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ops.crypto import generate_key_entry
from tests.harness.proc import MailpipeProcess, mailpipe_env, run_mailpipe
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration


def _env(pg_url: str, amqp_url: str, **extra: str) -> dict[str, str]:
    return mailpipe_env(MAILPIPE_DATABASE_URL=pg_url, MAILPIPE_BROKER_URL=amqp_url,
                        MAILPIPE_SECRET_KEYS=generate_key_entry("dist"), **extra)


class TestWorkers:
    def test_two_actor_pipeline_through_rabbitmq(self, pg_url: str, amqp_url: str, tmp_path: Path) -> None:
        """`mailpipe selftest` sends a two-stage pipeline through RabbitMQ and `mailpipe worker` runs both
        (bound with two -Q options, of which the first names the selftest's queue)."""
        env = _env(pg_url, amqp_url)
        worker = MailpipeProcess("worker", "-p", "1", "-t", "2", "-Q", "ops", "-Q", "fetch", env=env, cwd=tmp_path, name="worker")
        try:
            res = run_mailpipe("selftest", "--timeout", "60", env=env, cwd=tmp_path, timeout=90)
            assert res.returncode == 0, res.stderr + worker.output()
            assert res.stdout.startswith("ok: run ")
            assert f":{os.getpid()}" not in res.stdout  # the worker process did the work, not us
        finally:
            assert worker.stop() == 0, worker.output()

    def test_selftest_without_workers_fails_clearly(self, pg_url: str, amqp_url: str, tmp_path: Path) -> None:
        """With no worker consuming, selftest says so and exits 1 instead of hanging."""
        from tests.harness.services import rabbit_vhost

        with rabbit_vhost("mailpipe_idle") as idle_vhost:
            res = run_mailpipe("selftest", "--timeout", "2", env=_env(pg_url, idle_vhost), cwd=tmp_path)
        assert res.returncode == 1 and "are `mailpipe worker` processes running?" in res.stderr


def _heartbeat(pg_url: str) -> tuple[str, float, int] | None:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT holder, extract(epoch FROM became_leader_at), ticks"
                                    " FROM scheduler_heartbeats WHERE name='main'")).first()
    finally:
        engine.dispose()
    return (row[0], float(row[1]), int(row[2])) if row else None


class TestSchedulerLeadership:
    def test_one_leads_and_other_takes_over(self, fresh_pg_url: str, amqp_url: str, tmp_path: Path) -> None:
        """Two schedulers: exactly one leads; SIGKILL it and the other leads within one tick."""
        tick = 1.0
        env = _env(fresh_pg_url, amqp_url, MAILPIPE_SCHEDULER_TICK_SECONDS=str(tick))
        assert run_mailpipe("migrate", env=env, cwd=tmp_path).returncode == 0
        a = MailpipeProcess("scheduler", env=env, cwd=tmp_path, name="sched-a")
        b = MailpipeProcess("scheduler", env=env, cwd=tmp_path, name="sched-b")
        procs = {a.pid: a, b.pid: b}
        try:
            first = wait_until(lambda: _heartbeat(fresh_pg_url), 30, 0.05, "a leader's heartbeat")
            assert first, a.output() + b.output()
            holder = first[0]  # type: ignore[index]
            leader_pid = int(holder.rsplit(":", 1)[1])
            assert leader_pid in procs
            follower = procs[next(p for p in procs if p != leader_pid)]

            # Over three ticks the leader keeps ticking and the follower never takes over.
            time.sleep(3 * tick)
            hb = _heartbeat(fresh_pg_url)
            assert hb is not None and hb[0] == holder and hb[2] >= 3
            assert "leading=True" in procs[leader_pid].output() and "leading=True" not in follower.output()

            killed_at = time.time()
            procs[leader_pid].kill()
            new = wait_until(lambda: (h := _heartbeat(fresh_pg_url)) and h[0] != holder and h, 10, 0.05, "a new leader")
            assert new, follower.output()
            new_pid = int(new[0].rsplit(":", 1)[1])  # type: ignore[index]
            assert new_pid == follower.pid
            takeover = new[1] - killed_at  # type: ignore[index]
            assert takeover <= tick + 0.5, f"takeover took {takeover:.2f}s"
        finally:
            for p in procs.values():
                p.stop()


class TestReadiness:
    def test_readyz_reports_the_broker(self, pg_url: str, amqp_url: str, tmp_path: Path) -> None:
        """`mailpipe web` on PostgreSQL + RabbitMQ is ready; pointed at a dead broker it answers 503 naming it."""
        import httpx

        from tests.harness.ports import free_port, wait_port

        for broker_url, expected in ((amqp_url, 200), (f"amqp://guest:guest@127.0.0.1:{free_port()}/x", 503)):
            port = free_port()
            web = MailpipeProcess("web", "--port", str(port), env=_env(pg_url, broker_url), cwd=tmp_path, name="web")
            try:
                wait_port("127.0.0.1", port, 30)
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=15)
                assert r.status_code == expected, r.text
                assert r.json()["checks"]["database"]["ok"] is True
                assert r.json()["checks"]["broker"]["ok"] is (expected == 200)
                assert "guest:guest" not in r.text
            finally:
                web.stop()
