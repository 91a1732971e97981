"""The `mailpipe` command as operators run it: serve, org create, bad configuration, migrate."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, inspect

from ops.crypto import generate_key_entry
from ops.migrate import check, upgrade
from tests.harness.ports import free_port, wait_port
from tests.harness.proc import MailpipeProcess, mailpipe_env, run_mailpipe

pytestmark = pytest.mark.integration


class TestServe:
    def test_serve_org_key_and_tenancy(self, tmp_path: Path) -> None:
        """`serve` with nothing configured answers /healthz; an org key authorizes; others get 401/404."""
        env = mailpipe_env()
        port = free_port()
        proc = MailpipeProcess("serve", "--port", str(port), env=env, cwd=tmp_path, name="serve")
        try:
            wait_port("127.0.0.1", port, 30)
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
            assert httpx.get(f"{base}/readyz").status_code == 200
            assert "generated a new MAILPIPE_SECRET_KEYS" in proc.output()
            assert (tmp_path / ".env").read_text().startswith("MAILPIPE_SECRET_KEYS=")

            acme = json.loads(run_mailpipe("org", "create", "acme", "--json", env=env, cwd=tmp_path).stdout)
            globex = json.loads(run_mailpipe("org", "create", "globex", "--json", env=env, cwd=tmp_path).stdout)
            assert set(acme) == {"org_id", "api_key"}
            h = {"Authorization": f"Bearer {acme['api_key']}"}
            assert httpx.get(f"{base}/api/v1/crm/search", params={"q": "x"}, headers=h).status_code == 200
            assert httpx.get(f"{base}/api/v1/crm/search", params={"q": "x"}).status_code == 401
            g = {"Authorization": f"Bearer {globex['api_key']}"}
            assert httpx.put(f"{base}/api/v1/crm/contacts/c9", json={"last_name": "G"}, headers=g).status_code == 200
            assert httpx.get(f"{base}/api/v1/crm/contacts/c9", headers=h).status_code == 404
            assert httpx.get(f"{base}/api/v1/crm/contacts/c9", headers=g).status_code == 200
        finally:
            proc.signal(signal.SIGTERM)
            code = proc.stop()
        out = proc.output()
        assert code == 0, out
        assert out.index("shutting_down") < out.index("stopped")
        assert acme["api_key"] not in out


class TestBadConfiguration:
    @pytest.mark.parametrize(
        ("var", "value", "needle"),
        [
            ("MAILPIPE_DATABASE_URL", "nonsense", "MAILPIPE_DATABASE_URL"),
            ("MAILPIPE_SECRET_KEYS", "k1:c2hvcnQ=", "needs exactly 32"),
            ("MAILPIPE_BROKER_URL", "http://x", "MAILPIPE_BROKER_URL"),
        ],
    )
    @pytest.mark.parametrize("command", [("serve",), ("migrate",), ("scheduler",)])
    def test_one_clear_line(self, tmp_path: Path, var: str, value: str, needle: str, command: tuple[str, ...]) -> None:
        """A bad value exits non-zero with one line naming the problem, no traceback."""
        res = run_mailpipe(*command, env=mailpipe_env(**{var: value}), cwd=tmp_path, timeout=30)
        assert res.returncode != 0
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, res.stderr
        assert lines[0].startswith("mailpipe: error:") and needle in lines[0]
        assert "Traceback" not in res.stderr + res.stdout

    def test_unreachable_database_is_one_line(self, tmp_path: Path) -> None:
        """A PostgreSQL that is not there gives one line without the password."""
        port = free_port()
        env = mailpipe_env(MAILPIPE_DATABASE_URL=f"postgresql://u:hunter2@127.0.0.1:{port}/db")
        res = run_mailpipe("migrate", env=env, cwd=tmp_path)
        assert res.returncode == 1
        assert len(res.stderr.strip().splitlines()) == 1 and "hunter2" not in res.stderr
        assert "cannot use the database" in res.stderr

    def test_worker_needs_a_broker(self, tmp_path: Path) -> None:
        """`mailpipe worker` without MAILPIPE_BROKER_URL explains why it cannot run."""
        res = run_mailpipe("worker", env=mailpipe_env(), cwd=tmp_path)
        assert res.returncode == 2 and "MAILPIPE_BROKER_URL" in res.stderr


class TestMigrations:
    def test_postgres_from_empty(self, fresh_pg_url: str, tmp_path: Path) -> None:
        """`mailpipe migrate` on an empty PostgreSQL database creates the schema with no drift."""
        res = run_mailpipe("migrate", env=mailpipe_env(MAILPIPE_DATABASE_URL=fresh_pg_url), cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        insp = inspect(create_engine(fresh_pg_url))
        tables = set(insp.get_table_names())
        big = {c["name"]: type(c["type"]).__name__ for c in insp.get_columns("emails")}
        assert big["gm_msgid"] == "BIGINT"  # Gmail's 64-bit ids; UIDVALIDITY/UID likewise
        assert {c["name"]: type(c["type"]).__name__ for c in insp.get_columns("email_locations")}["uidvalidity"] == "BIGINT"
        assert {"emails", "crm_Contacts", "crm_Leads", "secondBrain_notions", "Users", "alembic_version"} <= tables
        check(fresh_pg_url)
        upgrade(fresh_pg_url)  # idempotent

    def test_sqlite_from_empty(self, tmp_path: Path) -> None:
        """`mailpipe migrate` on a new SQLite file creates the schema with no drift, in WAL mode."""
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
        res = run_mailpipe("migrate", env=mailpipe_env(MAILPIPE_DATABASE_URL=url, MAILPIPE_SECRET_KEYS=generate_key_entry()), cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        check(url)
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert "email_locations" in inspect(engine).get_table_names()
