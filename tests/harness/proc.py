"""Running the real `mailpipe` command in subprocesses, with an environment of our choosing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

__all__ = ["MailpipeProcess", "mailpipe_env", "run_mailpipe"]

BIN = str(Path(sys.executable).with_name("mailpipe"))


def mailpipe_env(**overrides: str | None) -> dict[str, str]:
    """The current environment minus MAILPIPE_* variables, plus ``overrides`` (None deletes).

    ``MAILPIPE_MAIL_ALLOWED_NETS`` defaults to 127.0.0.0/8: the test mail servers are on loopback.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["MAILPIPE_MAIL_ALLOWED_NETS"] = "127.0.0.0/8"
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run_mailpipe(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a mailpipe command to completion."""
    return subprocess.run([BIN, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


class MailpipeProcess:
    """A long-running mailpipe command (serve, worker, scheduler) with its output in a file."""

    def __init__(self, *args: str, env: dict[str, str], cwd: Path, name: str = "mailpipe") -> None:
        self.log_path = cwd / f"{name}-{time.monotonic_ns()}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")
        self.proc = subprocess.Popen([BIN, *args], env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                return text in self.output()
            time.sleep(0.1)
        return False

    def signal(self, sig: int) -> None:
        """Signal the main process only (like a supervisor would); children are its business."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the main process alone, as an OOM killer or a crash would."""
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def kill_group(self) -> None:
        """SIGKILL the process and every child it started."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
