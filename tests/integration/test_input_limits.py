"""Hostile input against the real `mailpipe web` process (uvicorn, real sockets): a 300 MB upload
is refused without the process's memory growing, and bad input answers a 4xx that keeps the
keep-alive connection usable (a 500 used to drop it)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.crypto import generate_key_entry
from tests.harness.ports import free_port
from tests.harness.proc import MailpipeProcess, mailpipe_env, run_mailpipe
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration

MB = 1024 * 1024
UPLOAD = 300 * MB


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


@pytest.fixture
def web(tmp_path: Path) -> Iterator[dict[str, Any]]:
    env = mailpipe_env(MAILPIPE_DATABASE_URL=f"sqlite:///{tmp_path / 'web.db'}", MAILPIPE_SECRET_KEYS=generate_key_entry("w1"),
                       MAILPIPE_STORAGE_URL=f"file://{tmp_path / 'store'}")
    assert run_mailpipe("migrate", env=env, cwd=tmp_path).returncode == 0
    key = json.loads(run_mailpipe("org", "create", "acme", "--json", env=env, cwd=tmp_path).stdout)["api_key"]
    port = free_port("127.0.0.1")
    proc = MailpipeProcess("web", "--host", "127.0.0.1", "--port", str(port), env=env, cwd=tmp_path, name="web")

    def up() -> bool:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            return c.getresponse().status == 200
        except OSError:
            return False

    wait_until(up, 60, what="mailpipe web")
    yield {"port": port, "key": key, "pid": proc.pid}
    proc.stop()


def _upload(port: int, key: str, *, chunked: bool) -> tuple[int, int]:
    """POST 300 MB to /api/v1/emails/send (declared or chunked), streaming until the server answers
    or stops reading. Returns (status, bytes the server let us send)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {UPLOAD}"
    sock.sendall((f"POST /api/v1/emails/send HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
                  f"Content-Type: application/json\r\n{framing}\r\n\r\n").encode())
    piece = b"[" + b"0," * (MB // 2 - 1) + b"0"  # 1 MiB of JSON-looking bytes
    sent = 0
    sock.settimeout(5)
    try:
        while sent < UPLOAD:
            data = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
            sock.sendall(data)
            sent += len(piece)
    except OSError:  # the server answered and closed: it will not read the rest
        pass
    sock.settimeout(30)
    head = b""
    try:
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    except OSError:
        pass
    sock.close()
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_300_mb_upload_is_refused_without_memory_growth(web: dict[str, Any], chunked: bool) -> None:
    """The issue: an authenticated 300 MB POST grew the process from 286 to 848 MB. Now: 413, and the
    peak RSS of the web process grows by less than 64 MiB (the send route's cap is 30 MiB)."""
    before = _status(web["pid"])
    status, sent = _upload(web["port"], web["key"], chunked=chunked)
    after = _status(web["pid"])
    assert status == 413
    assert after["VmHWM"] - before["VmHWM"] < 64 * MB, (before, after, sent)
    # and the process still serves
    c = http.client.HTTPConnection("127.0.0.1", web["port"], timeout=10)
    c.request("GET", "/healthz")
    assert c.getresponse().status == 200


def test_bad_input_is_4xx_and_keeps_the_connection(web: dict[str, Any]) -> None:
    """Each listed 500 (deep JSON, a 5,000-digit integer, a 30-digit cursor, a non-ASCII Notion
    token, a path as database id) is a 4xx naming the problem, on one keep-alive connection."""
    c = http.client.HTTPConnection("127.0.0.1", web["port"], timeout=30)
    h = {"Authorization": f"Bearer {web['key']}", "Content-Type": "application/json"}

    def call(method: str, path: str, body: str | None = None) -> tuple[int, dict[str, Any]]:
        c.request(method, path, body=body.encode() if body is not None else None, headers=h)
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"{}")

    assert call("PUT", "/api/v1/users/u1", json.dumps({"name": "Sam", "email": "sam@example.test"}))[0] == 200
    sock = c.sock
    cases = [
        ("POST", "/api/v1/emails/send", '{"to": ' + "[" * 3000 + "]" * 3000 + "}", "json_too_deep"),
        ("PATCH", "/api/v1/org", '{"own_domains": ' + "[" * 3000 + "]" * 3000 + "}", "json_too_deep"),
        ("PUT", "/api/v1/crm/opportunities/o1", '{"name": "D", "budget": ' + "9" * 5000 + "}", "budget"),
        ("GET", "/api/v1/templates?cursor=" + "1" * 30, None, "cursor"),
        ("PUT", "/api/v1/users/u1/notion", json.dumps({"notion_api_key": "ntn_ключ"}), "notion_api_key"),
        ("PUT", "/api/v1/users/u1/notion", json.dumps({"notion_api_key": "ntn_x", "notion_db_id": "../../_state"}), "notion_db_id"),
        ("POST", "/api/v1/emails/send", json.dumps({"account_id": "a", "to": ["x@y.z"], "track_opens": "yes"}), "track_opens"),
        ("PUT", "/api/v1/crm/accounts/a1", '{"name": "I", "annual_revenue": NaN}', "annual_revenue"),
    ]
    for method, path, body, named in cases:
        status, answer = call(method, path, body)
        assert status == 422, (path, answer)
        err = answer["error"]
        assert named == err["code"] or named in {e["field"] for e in err["details"].get("errors", [])}, (path, err)
        assert "ключ" not in json.dumps(answer)
    assert c.sock is sock, "a 4xx must not drop the keep-alive connection"
    assert call("GET", "/api/v1/org")[0] == 200
    assert c.sock is sock
