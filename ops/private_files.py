"""Private file modes: what mailpipe writes to disk (database, attachments, spool, ``.env``) is
readable by its own user only — files 0600, directories 0700 — whatever the umask.

Modes are given at creation (``os.open``/``os.mkdir`` with the mode) rather than by changing the
process umask, so they hold however the code is entered (CLI, an embedding process, tests) and
without touching other threads' files. :func:`tighten` fixes files left looser by older versions.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["PRIVATE_DIR", "PRIVATE_FILE", "is_private", "make_private_dirs", "open_private", "tighten"]

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def make_private_dirs(path: str | os.PathLike[str]) -> None:
    """Create ``path`` and any missing parents, each new directory 0700 (like ``mkdir -p -m 700``
    for every level, which ``Path.mkdir(parents=True)`` does not do). Existing directories are
    left as they are."""
    missing: list[Path] = []
    current = Path(path).absolute()
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR)
        except FileExistsError:  # a concurrent writer made it; a file in the way fails below
            if not directory.is_dir():
                raise
            continue
        os.chmod(directory, PRIVATE_DIR)  # a restrictive umask (e.g. 0o277) must not leave it unusable


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open`` that creates a missing file 0600 and tightens an existing one this user owns;
    returns the fd."""
    fd = os.open(path, flags | os.O_CREAT, PRIVATE_FILE)
    try:
        _tighten_fd(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def tighten(path: str | os.PathLike[str], mode: int) -> bool:
    """Remove every permission bit of ``path`` that ``mode`` lacks (0644 → 0600 for ``PRIVATE_FILE``);
    True if it changed. A missing path, or one another user owns (an operator's shared setup, which
    only its owner may change), is left alone (False)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    if not _needs_tightening(st, mode):
        return False
    os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
    return True


def is_private(path: str | os.PathLike[str], mode: int = PRIVATE_FILE) -> bool:
    """True when ``path`` grants nothing beyond ``mode``."""
    return not stat.S_IMODE(os.stat(path).st_mode) & ~mode


def _needs_tightening(st: os.stat_result, mode: int) -> bool:
    return bool(stat.S_IMODE(st.st_mode) & ~mode) and st.st_uid == os.geteuid()


def _tighten_fd(fd: int, mode: int) -> None:
    st = os.fstat(fd)
    if _needs_tightening(st, mode):
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & mode)
