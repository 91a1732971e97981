"""Pixel benchmark: mailpipe's tracking endpoint (intake on) against a bare Starlette GIF app, with wrk.

Both run under uvicorn (uvloop + httptools, access log off) as one worker pinned to CPU 0; wrk
runs pinned to CPU 1 with 64 connections. mailpipe serves a real pixel of a sent email, so each
request builds an event and hands it to the intake, whose publisher thread sends batches to
RabbitMQ with publisher confirms (a vhost of its own, no consumer: recording is the workers' job
and happens on other machines). wrk hammers one URL from one address, so mailpipe runs twice:

* "every hit admitted": the tracking throttle's limits raised out of reach, so every request pays
  for both limiter checks and is published (what real traffic, spread over many tokens, costs);
* "hammered, default throttle": the default limits, so after the token's burst every hit is
  counted in ``mailpipe_tracking_throttled_total`` and dropped before the buffer.

Prints req/s and p99 latency for each, the ratio admitted/bare, and how many hits the throttle
dropped. Usage::

    .venv/bin/python bench/pixel.py                    # 10 s per run, 64 connections
    .venv/bin/python bench/pixel.py --seconds 20 --connections 128
    .venv/bin/python bench/pixel.py --no-pin           # server and wrk share both cores (issue 21 measures this way)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.harness.ports import free_port  # noqa: E402

UVICORN = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--no-proxy-headers",
           "--log-level", "warning", "--host", "127.0.0.1"]


PIN = {"on": True}  # --no-pin: server and wrk float over every core, as in production


def _pinned(cpu: int) -> list[str]:
    if not PIN["on"]:
        return []
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def _start(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*_pinned(0), *UVICORN, "--port", str(port), *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "uvicorn exited") from None
            time.sleep(0.1)
    raise RuntimeError("uvicorn did not start")


def wrk(url: str, seconds: int, connections: int) -> tuple[float, float]:
    """(requests/s, p99 ms) from wrk --latency."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    out = subprocess.run([*_pinned(1), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert m is not None, out
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx answers:\n{out}")
    return rps, p99


def prepare(workdir: Path, broker_url: str) -> tuple[dict[str, str], str]:
    """A database with one sent, tracked email; the env for `mailpipe`'s app and its pixel path."""
    from ops.crypto import generate_key_entry

    env = {**os.environ, "MAILPIPE_DATABASE_URL": f"sqlite:///{workdir / 'pixel.db'}", "MAILPIPE_BROKER_URL": broker_url,
           "MAILPIPE_SECRET_KEYS": generate_key_entry("bench"), "MAILPIPE_SPOOL_DIR": str(workdir / "spool"),
           "MAILPIPE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    os.environ.update({k: v for k, v in env.items() if k.startswith("MAILPIPE_")})
    from sqlmodel import Session

    from models import Delivery, Email, new_id, utcnow
    from models.db import get_engine
    from ops.keys import get_keyring
    from ops.migrate import upgrade
    from pipeline.stages.tracking_ids import recipient_hash
    from tests.harness.flow import make_account, make_org

    upgrade(env["MAILPIPE_DATABASE_URL"])
    org_id, _ = make_org("bench")
    account_id = make_account(org_id)
    eid = new_id()
    with Session(get_engine()) as s:
        s.add(Email(id=eid, org_id=org_id, account_id=account_id, direction="outbound", status="sent", dedupe_key="mid:b@t",
                    message_id="b@t", subject="Bench", sent_at=utcnow(), pipeline_state="done"))
        s.flush()
        s.add(Delivery(email_id=eid, seq=0, recipients=["reader@bench.example"], tracked_for="reader@bench.example", state="sent"))
        s.commit()
    rhash = recipient_hash(partial(get_keyring().sign, "open"), eid, "reader@bench.example")
    return env, f"/track/open/{eid}/{rhash}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-pin", action="store_true", help="no CPU pinning: the server and wrk share every core")
    args = ap.parse_args()
    PIN["on"] = not args.no_pin
    from tests.harness.services import rabbit_vhost

    work = Path(tempfile.mkdtemp(prefix="mailpipe-bench-pixel-"))
    throttled: dict[str, float] = {}
    vhost = rabbit_vhost("mailpipe_pixel")
    broker_url = vhost.__enter__()
    try:
        env, path = prepare(work, broker_url)
        results = {}
        admitted = {**env, "MAILPIPE_TRACKING_TOKEN_PER_MINUTE": str(10**9), "MAILPIPE_TRACKING_IP_PER_MINUTE": str(10**9)}
        runs = (("bare", ["bench.bare_pixel:app"], env), ("mailpipe", ["--factory", "web.app:create_app"], admitted),
                ("hammered", ["--factory", "web.app:create_app"], env))
        for name, target, run_env in runs:
            port = free_port("127.0.0.1")
            proc = _start(target, run_env, port)
            try:
                url = f"http://127.0.0.1:{port}{path}"
                assert httpx.get(url).status_code == 200
                wrk(url, 2, args.connections)  # warm-up
                results[name] = wrk(url, args.seconds, args.connections)
                if name != "bare":
                    throttled[name] = _counter(port, "mailpipe_tracking_throttled_total")
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        from models.db import reset_engine

        reset_engine()
        vhost.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)
    (b_rps, b_p99), (m_rps, m_p99), (h_rps, h_p99) = results["bare"], results["mailpipe"], results["hammered"]
    out = {"connections": args.connections, "seconds": args.seconds, "bare_rps": round(b_rps), "bare_p99_ms": b_p99,
           "mailpipe_rps": round(m_rps), "mailpipe_p99_ms": m_p99, "ratio": round(m_rps / b_rps, 3),
           "hammered_rps": round(h_rps), "hammered_p99_ms": h_p99, "hammered_throttled": round(throttled["hammered"]),
           "admitted_throttled": round(throttled["mailpipe"])}
    if args.json:
        print(json.dumps(out))
        return
    where = "server pinned to CPU 0, wrk to CPU 1" if PIN["on"] else "no CPU pinning"
    print(f"wrk -t1 -c{args.connections} -d{args.seconds}s; {where}")
    print(f"bare Starlette GIF:                       {b_rps:9.0f} req/s  p99 {b_p99:6.2f} ms")
    print(f"mailpipe pixel (every hit admitted):      {m_rps:9.0f} req/s  p99 {m_p99:6.2f} ms")
    print(f"mailpipe pixel (hammered, default limits): {h_rps:8.0f} req/s  p99 {h_p99:6.2f} ms"
          f"  ({throttled['hammered']:.0f} hits throttled)")
    print(f"ratio mailpipe (admitted)/bare:           {m_rps / b_rps:9.3f}")


def _counter(port: int, name: str) -> float:
    """The sum of a counter's samples in the server's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} ([0-9.e+]+)$", text, re.MULTILINE))


if __name__ == "__main__":
    main()
