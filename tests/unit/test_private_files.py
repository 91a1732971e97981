"""Private file modes (issue 14, "Operations"): the SQLite database and its -wal/-shm, stored
attachments, the tracking spool and .env are readable by mailpipe's user only (files 0600,
directories 0700), whether created now, later, or left looser by an older version."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from models.db import engine_for
from ops.private_files import make_private_dirs, open_private, tighten
from pipeline.clients.storage import LocalStorage, safe_key
from web.intake import Spool, spool_for_later


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _usual_umask() -> None:
    """The common 022 umask, under which files would be created 0644 and directories 0755."""
    old = os.umask(0o022)
    yield
    os.umask(old)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


class TestHelpers:
    def test_every_new_directory_level_is_0700_existing_ones_untouched(self, tmp_path: Path) -> None:
        (tmp_path / "kept").mkdir(mode=0o755)
        make_private_dirs(tmp_path / "kept" / "a" / "b" / "c")
        assert mode(tmp_path / "kept") == 0o755
        assert [mode(tmp_path / "kept" / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3
        make_private_dirs(tmp_path / "kept" / "a")  # already there: nothing to do

    def test_open_private_creates_0600_and_tightens_an_existing_0644(self, tmp_path: Path) -> None:
        new, old = tmp_path / "new", tmp_path / "old"
        os.close(open_private(new, os.O_WRONLY))
        old.write_text("x")
        old.chmod(0o644)
        os.close(open_private(old, os.O_RDONLY))
        assert mode(new) == 0o600 and mode(old) == 0o600 and old.read_text() == "x"

    @needs_root
    def test_another_users_file_is_left_alone(self, tmp_path: Path) -> None:
        theirs = tmp_path / "theirs"
        theirs.write_text("x")
        theirs.chmod(0o644)
        os.chown(theirs, 65534, 65534)
        assert tighten(theirs, 0o600) is False and mode(theirs) == 0o644
        assert tighten(tmp_path / "missing", 0o600) is False


class TestDatabase:
    def test_new_database_wal_and_shm_are_0600_in_a_0700_directory(self, tmp_path: Path) -> None:
        db = tmp_path / "data" / "mailpipe.db"
        engine = engine_for(f"sqlite:///{db}")
        with engine.begin() as c:
            c.execute(text("CREATE TABLE t (x INTEGER)"))
            c.execute(text("INSERT INTO t VALUES (1)"))
            files = {p.name: mode(p) for p in db.parent.iterdir()}
        assert files == {"mailpipe.db": 0o600, "mailpipe.db-wal": 0o600, "mailpipe.db-shm": 0o600}
        assert mode(db.parent) == 0o700
        engine.dispose()

    def test_wal_files_created_later_follow_the_database_file(self, tmp_path: Path) -> None:
        """SQLite removes -wal/-shm when the last connection closes and makes them again on the next
        write, with the database file's permissions."""
        db = tmp_path / "mailpipe.db"
        engine = engine_for(f"sqlite:///{db}")
        with engine.begin() as c:
            c.execute(text("CREATE TABLE t (x INTEGER)"))
        engine.dispose()
        assert not (tmp_path / "mailpipe.db-wal").exists()
        engine = engine_for(f"sqlite:///{db}")
        with engine.begin() as c:
            c.execute(text("INSERT INTO t VALUES (2)"))
            assert mode(tmp_path / "mailpipe.db-wal") == 0o600 and mode(tmp_path / "mailpipe.db-shm") == 0o600
        engine.dispose()

    def test_a_world_readable_database_and_wal_are_tightened(self, tmp_path: Path) -> None:
        """Files an older version left 0644 are 0600 once mailpipe opens the database again."""
        db = tmp_path / "mailpipe.db"
        engine = engine_for(f"sqlite:///{db}")
        with engine.begin() as c:
            c.execute(text("CREATE TABLE t (x INTEGER)"))
        conn = engine.connect()  # keeps -wal/-shm in place
        conn.execute(text("INSERT INTO t VALUES (1)"))
        for p in tmp_path.glob("mailpipe.db*"):
            p.chmod(0o644)
        engine_for(f"sqlite:///{db}").dispose()
        assert {p.name: mode(p) for p in tmp_path.glob("mailpipe.db*")} == {
            "mailpipe.db": 0o600, "mailpipe.db-wal": 0o600, "mailpipe.db-shm": 0o600}
        conn.close()
        engine.dispose()


class TestAttachments:
    def test_stored_files_0600_and_every_directory_0700(self, tmp_path: Path) -> None:
        root = tmp_path / "attachments"
        store = LocalStorage(root)
        key = safe_key("org", "o1", "emails", "e1", "1-report.pdf")
        store.put(key, b"%PDF-1.7 secret")
        store.put(safe_key("org", "o1", "emails", "e2", "raw.eml"), b"raw", durable=False)
        dirs = [root, *(p for p in root.rglob("*") if p.is_dir())]
        files = [p for p in root.rglob("*") if p.is_file()]
        assert len(dirs) == 6 and {mode(d) for d in dirs} == {0o700}
        assert len(files) == 2 and {mode(f) for f in files} == {0o600}
        assert store.get(key) == b"%PDF-1.7 secret"

    def test_a_world_readable_root_is_tightened_on_the_first_write(self, tmp_path: Path) -> None:
        root = tmp_path / "attachments"
        root.mkdir(mode=0o755)
        LocalStorage(root).put("org/o1/x.txt", b"x")
        assert mode(root) == 0o700


class TestSpool:
    def test_spool_directory_0700_and_files_0600(self, tmp_path: Path) -> None:
        directory = tmp_path / "spool" / "tracking"
        spool = Spool(directory, 1 << 20)
        spool.append([{"id": "1", "ip": "203.0.113.9"}])
        spool.sync()
        assert mode(directory) == 0o700 and mode(directory.parent) == 0o700
        assert mode(spool.path) == 0o600
        assert spool.read_own() == [{"id": "1", "ip": "203.0.113.9"}]
        spool.close()

    def test_an_existing_world_readable_spool_directory_is_tightened(self, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        """spool_for_later (the path taken when the broker is down) writes a 0600 file into a 0700 directory."""
        from ops.settings import reset_settings

        directory = tmp_path / "spool"
        directory.mkdir(mode=0o755)
        monkeypatch.setenv("MAILPIPE_SPOOL_DIR", str(directory))
        reset_settings()
        spool_for_later([{"id": "2"}])
        files = list(directory.glob("tracking-*.jsonl"))
        assert mode(directory) == 0o700 and len(files) == 1 and mode(files[0]) == 0o600
