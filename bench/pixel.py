"""Pixel benchmark: mailpipe's tracking endpoint (intake on) against a bare Starlette GIF app, with wrk.

Both run under uvicorn (uvloop + httptools, access log off) as one worker, pinned to CPU 0 with wrk
on CPU 1 unless ``--no-pin`` (issue 21 measures without pinning). wrk rotates through the pixels of
``--emails`` sent, tracked emails (a Lua script; real opens are spread over many pixels), so each
request builds an event and hands it to the intake. The runs, in one process tree:

* "bare": a bare Starlette app returning the same GIF (the baseline);
* "every hit admitted" (``mailpipe web``'s app): the throttle's limits raised out of reach, so every
  request pays for both limiter checks and is published by the intake's thread to RabbitMQ with
  publisher confirms (a vhost of its own, no consumer: recording is the workers' job, elsewhere);
* "hammered, default throttle": one URL with the default limits, so after the token's burst every
  hit is counted in ``mailpipe_tracking_throttled_total`` and dropped before the buffer;
* "serve" (``mailpipe serve``, embedded: SQLite and the in-process broker and worker): the limits
  raised too, so the same process records every hit (paced while the app is busy,
  ``MAILPIPE_TRACKING_RECORD_SHARE``); after the load it waits until every admitted hit is recorded.

Prints req/s and p99 latency for each and the ratios to bare. Usage::

    .venv/bin/python bench/pixel.py --no-pin           # as issue 21 measures: server and wrk share both cores
    .venv/bin/python bench/pixel.py                    # pinned: 10 s per run, 64 connections
    .venv/bin/python bench/pixel.py --seconds 20 --connections 128 --emails 1
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
    if args[:1] == ["serve"]:  # `mailpipe serve`: app, in-process worker (recording the hits) and scheduler
        cmd = [sys.executable, "-m", "ops.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    else:
        cmd = [*UVICORN, "--port", str(port), *args]
    # The server's stderr goes to a file: a pipe nobody reads fills up, and a server logging into it then stalls.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([*_pinned(0), *cmd], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(log.read().decode(errors="replace") or "the server exited") from None
            time.sleep(0.1)
    raise RuntimeError("uvicorn did not start")


def _rotation(paths: list[str]) -> str:
    """A wrk script sending each request to the next of ``paths`` (many pixels, as real opens are)."""
    fd, name = tempfile.mkstemp(prefix="pixel-paths-", suffix=".lua")
    listed = ",".join(f'"{p}"' for p in paths)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"local paths = {{{listed}}}\nlocal i = 0\n"
                 "request = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n")
    return name


def wrk(url: str, seconds: int, connections: int, script: str | None = None) -> tuple[float, float]:
    """(requests/s, p99 ms) from wrk --latency (with ``script``: the request paths it rotates through)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    out = subprocess.run([*_pinned(1), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          *(["-s", script] if script else []), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert m is not None, out
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx answers:\n{out}")
    return rps, p99


def prepare(workdir: Path, broker_url: str, emails: int = 1) -> tuple[dict[str, str], list[str]]:
    """A database with ``emails`` sent, tracked emails; the env for `mailpipe`'s app and their pixel paths."""
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
    paths = []
    with Session(get_engine()) as s:
        for n in range(emails):
            eid = new_id()
            s.add(Email(id=eid, org_id=org_id, account_id=account_id, direction="outbound", status="sent",
                        dedupe_key=f"mid:b{n}@t", message_id=f"b{n}@t", subject="Bench", sent_at=utcnow(), pipeline_state="done"))
            s.flush()
            s.add(Delivery(email_id=eid, seq=0, recipients=["reader@bench.example"], tracked_for="reader@bench.example", state="sent"))
            paths.append(f"/track/open/{eid}/{recipient_hash(partial(get_keyring().sign, 'open'), eid, 'reader@bench.example')}")
        s.commit()
    return env, paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-pin", action="store_true", help="no CPU pinning: the server and wrk share every core")
    ap.add_argument("--emails", type=int, default=5000,
                    help="tracked emails whose pixels wrk rotates through (1: one URL, the old figure)")
    ap.add_argument("--no-serve", action="store_true", help="skip the `mailpipe serve` run (app + recorder in one process)")
    args = ap.parse_args()
    PIN["on"] = not args.no_pin
    from tests.harness.services import rabbit_vhost

    work = Path(tempfile.mkdtemp(prefix="mailpipe-bench-pixel-"))
    throttled: dict[str, float] = {}
    recorded: dict[str, tuple[int, float, float]] = {}
    vhost = rabbit_vhost("mailpipe_pixel")
    broker_url = vhost.__enter__()
    try:
        env, paths = prepare(work, broker_url, args.emails)
        path, script = paths[0], (_rotation(paths) if len(paths) > 1 else None)
        results = {}
        admitted = {**env, "MAILPIPE_TRACKING_TOKEN_PER_MINUTE": str(10**9), "MAILPIPE_TRACKING_IP_PER_MINUTE": str(10**9)}
        embedded = {**admitted, "MAILPIPE_BROKER_URL": ""}  # `serve`: SQLite + the in-process broker and worker
        runs = [("bare", ["bench.bare_pixel:app"], env), ("mailpipe", ["--factory", "web.app:create_app"], admitted),
                ("hammered", ["--factory", "web.app:create_app"], env)]
        if not args.no_serve:
            runs.append(("serve", ["serve"], embedded))
        for name, target, run_env in runs:
            port = free_port("127.0.0.1")
            proc = _start(target, run_env, port)
            try:
                url = f"http://127.0.0.1:{port}{path}"
                assert httpx.get(url).status_code == 200
                rotate = None if name == "hammered" else script  # hammered: one URL, the throttle's case
                wrk(url, 2, args.connections, rotate)  # warm-up
                results[name] = wrk(url, args.seconds, args.connections, rotate)
                if name != "bare":
                    throttled[name] = _counter(port, "mailpipe_tracking_throttled_total")
                if name == "serve":
                    admitted_hits = _counter(port, "mailpipe_tracking_intake_total", 'stage="buffered"')
                    recorded[name] = (*_recorded_after(work / "pixel.db", admitted_hits), admitted_hits)
            finally:
                proc.terminate()
                proc.wait(120)
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
    if "serve" in results:
        s_rps, s_p99 = results["serve"]
        out |= {"serve_rps": round(s_rps), "serve_p99_ms": s_p99, "serve_ratio": round(s_rps / b_rps, 3),
                "serve_admitted": round(recorded["serve"][2]), "serve_recorded": recorded["serve"][0],
                "serve_recorded_after_s": round(recorded["serve"][1], 1)}
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
    if "serve" in results:
        print(f"mailpipe serve (embedded, recording):     {out['serve_rps']:9.0f} req/s  p99 {out['serve_p99_ms']:6.2f} ms"
              f"  ({out['serve_recorded']} of {out['serve_admitted']} hits recorded, the last"
              f" {out['serve_recorded_after_s']} s after wrk stopped)")
        print(f"ratio serve/bare:                         {out['serve_ratio']:9.3f}")


def _recorded_after(db: Path, admitted: float, settle: float = 120.0) -> tuple[int, float]:
    """(opens recorded, seconds after the load stopped until all ``admitted`` hits were): ``serve``
    records every admitted hit in its own process, paced while the app is busy; this waits (up to
    ``settle`` s, or until the count stops growing for 5 s) for it to catch up."""
    import sqlite3

    start = time.monotonic()
    last, since = -1, start
    while time.monotonic() - start < settle:
        with sqlite3.connect(db) as conn:
            n = conn.execute("SELECT count(*) FROM tracking_events").fetchone()[0]
        if n >= admitted:
            return n, time.monotonic() - start
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > 5:
            break
        time.sleep(0.25)
    return last, time.monotonic() - start


def _counter(port: int, name: str, labels: str = "") -> float:
    """The sum of a counter's samples in the server's /metrics (those whose labels contain ``labels``)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(v) for got, v in re.findall(rf"^{name}{{([^}}]*)}} ([0-9.e+]+)$", text, re.MULTILINE) if labels in got)


if __name__ == "__main__":
    main()
