"""A real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

Enough of CDP for the tests: open a tab at a URL, evaluate JavaScript in it, read its location.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
import time
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.harness.ports import free_port

__all__ = ["Chromium", "Page"]


class Page:
    """One tab."""

    def __init__(self, ws_url: str) -> None:
        self._cm = connect(ws_url, max_size=None, open_timeout=10)
        self._ws: ClientConnection = self._cm.__enter__()
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._ws.recv(timeout=30))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10, interval: float = 0.02) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
            except RuntimeError:  # mid-navigation the context can vanish for a moment
                last = None
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {expression!r} (last: {last!r})")

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


class Chromium:
    """A headless Chromium process with remote debugging on a free loopback port."""

    def __init__(self, user_agent: str | None = None) -> None:
        """``user_agent`` replaces the browser's own (which says ``HeadlessChrome``, a robot's name to
        the tracking signal's crawler list) when the browser stands for a person."""
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            raise RuntimeError("chromium is not installed (tests/setup-machine.sh installs it)")
        self._profile = tempfile.mkdtemp(prefix="mailpipe-chromium-")
        self.port = free_port("127.0.0.1")
        self._user_agent = user_agent
        self._proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--disable-component-update",
             f"--remote-debugging-port={self.port}", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={self._profile}", *([f"--user-agent={user_agent}"] if user_agent else []), "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.version = httpx.get(f"http://127.0.0.1:{self.port}/json/version", timeout=1).json()
                return
            except (httpx.HTTPError, ValueError):
                if self._proc.poll() is not None:
                    raise RuntimeError("chromium exited at start") from None
                time.sleep(0.1)
        raise RuntimeError("chromium did not open its debugging port")

    @property
    def user_agent(self) -> str:
        return self._user_agent or str(self.version.get("User-Agent", ""))

    def open(self, url: str) -> Page:
        r = httpx.put(f"http://127.0.0.1:{self.port}/json/new?{url}", timeout=10)
        r.raise_for_status()
        return Page(r.json()["webSocketDebuggerUrl"])

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)
