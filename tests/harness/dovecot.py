"""A throwaway Dovecot 2.3 IMAP server on loopback ports, plus doveadm helpers to stage scenarios.

Each instance lives in its own temp directory (config, base_dir, state_dir, log, passwd-file, maildirs)
and listens on free high ports, so several can run at once. Dovecot refuses to run its login and mail
processes as root, so they run as ``nobody``/``nogroup`` and the mail tree is owned by that user.
The doveadm helpers need the server running: doveadm looks users up through its auth socket.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import grp
import imaplib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Self

from tests.harness.certs import make_self_signed
from tests.harness.ports import free_port, port_open

__all__ = ["DoveadmError", "Dovecot"]

RUN_AS_USER = "nobody"
RUN_AS_GROUP = "nogroup"
DEFAULT_SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash"}
MAILDIR_FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None
START_TIMEOUT = 15.0
STOP_GRACE = 1.5


class DoveadmError(RuntimeError):
    """A doveadm command exited non-zero."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"doveadm {' '.join(args)} failed ({returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


class Dovecot:
    """One Dovecot instance with its own config, data and ports."""

    def __init__(
        self,
        cert_path: str | os.PathLike[str] | None = None,
        key_path: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        max_userip_connections: int = 20,
        oauth_introspection_url: str | None = None,
        condstore: bool = True,
        connections: int | None = None,
    ) -> None:
        """``condstore=False``: the server advertises neither CONDSTORE nor QRESYNC (a server without
        them, as many are). ``connections``: size the login and imap services for that many open
        sessions at once (the defaults stop near 100 TLS sessions)."""
        self._base = Path(tempfile.mkdtemp(prefix="mailpipe-dovecot-"))
        self._base.chmod(0o755)  # login processes (nobody) must reach the sockets in run/
        self._run_dir = self._base / "run"
        self._mail_dir = self._base / "mail"
        self._run_dir.mkdir()
        self._mail_dir.mkdir()
        self._uid = pwd.getpwnam(RUN_AS_USER).pw_uid
        self._gid = grp.getgrnam(RUN_AS_GROUP).gr_gid
        os.chown(self._mail_dir, self._uid, self._gid)
        self._cert, self._key = self._install_cert(cert_path, key_path)
        self._host = host
        self._max_userip = max_userip_connections
        self._introspection = oauth_introspection_url
        self._condstore = condstore
        self._connections = connections
        self._port, self._tls_port = _two_free_ports(host)
        self._users: dict[str, str] = {}
        self._special_use: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._served = False
        self._seq = 0
        self._users_dir = self._base / "users"
        self._users_dir.mkdir()
        self._users_dir.chmod(0o755)
        atexit.register(self.close)  # a crashed test run must not leave servers or directories behind

    # -- lifecycle ---------------------------------------------------------------------------

    @staticmethod
    def ensure_installed() -> None:
        """Install dovecot-imapd with apt-get when the dovecot binary is missing."""
        if shutil.which("dovecot") and shutil.which("doveadm"):
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "dovecot-imapd"], check=True, env=env, capture_output=True)

    def start(self) -> None:
        """Start (or start again, on the same data and ports) and wait until both listeners accept."""
        if self.running:
            return
        self.ensure_installed()
        for _attempt in range(3):
            self._write_config()
            error = self._spawn_and_wait()
            if error is None:
                self._served = True
                return
            if "Address already in use" in error and not self._served:
                self._port, self._tls_port = _two_free_ports(self._host)
                continue
            raise RuntimeError(f"dovecot failed to start:\n{error}")
        raise RuntimeError("dovecot failed to start: no free ports")

    def stop(self, graceful: bool = True) -> None:
        """Shut the server down (at most ~1.5s; graceful=False kills it at once); ports are closed after."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _terminate_group(proc, graceful)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (port_open(self._host, self._port) or port_open(self._host, self._tls_port)):
            time.sleep(0.02)

    def restart(self) -> None:
        """Stop and start again on the same data and ports."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop(graceful=False)
        shutil.rmtree(self._base, ignore_errors=True)
        atexit.unregister(self.close)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Tell whether the master process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def host(self) -> str:
        """Listening address."""
        return self._host

    @property
    def port(self) -> int:
        """Plain IMAP port (STARTTLS available)."""
        return self._port

    @property
    def tls_port(self) -> int:
        """Implicit-TLS IMAP port."""
        return self._tls_port

    @property
    def cert_path(self) -> Path:
        """The server certificate, to build a trusting client SSL context."""
        return self._cert

    @property
    def conf_path(self) -> Path:
        """The generated dovecot.conf."""
        return self._base / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        """Dovecot's log file."""
        return self._base / "dovecot.log"

    # -- users and folders ---------------------------------------------------------------------

    def add_user(self, email: str, password: str) -> None:
        """Add a login, usable at once (changing a password may take Dovecot a second to notice).

        Each user gets a passwd-file of its own: Dovecot stats a passwd-file at most once a second,
        so a user appended to a shared file right after a login would stay unknown for a moment.
        """
        for value in (email, password):
            if any(ch in value for ch in ":/\r\n") or not value:
                raise ValueError("users and passwords cannot be empty or contain ':', '/' or line breaks")
        self._users[email] = password
        self._write_passwd(email, password)

    def create_folder(self, user: str, name: str, special_use: str | None = None) -> None:
        """Create a mailbox; special_use (e.g. "\\Archive") is set server-wide via config and a reload,

        so only sessions opened afterwards see it.
        """
        if special_use is not None and DEFAULT_SPECIAL_USE.get(name, special_use) != special_use:
            raise ValueError(f"{name} is always {DEFAULT_SPECIAL_USE[name]} in this harness")
        if special_use is not None and user not in self._users:
            raise ValueError("add_user() first: the reload is confirmed by logging in as that user")
        try:
            self.doveadm("mailbox", "create", "-u", user, name)
        except DoveadmError as exc:
            if "already exists" not in exc.stderr:
                raise
        if special_use is not None and self._special_use.get(name) != special_use:
            self._special_use[name] = special_use
            self._write_config()
            self._reload_and_wait(user, name, special_use)

    # -- doveadm helpers -----------------------------------------------------------------------

    def doveadm(self, *args: str, stdin: bytes | None = None) -> str:
        """Run doveadm against this instance's config and return its stdout."""
        if not self.running:
            raise RuntimeError("doveadm helpers need the Dovecot instance running (userdb lookups)")
        result = subprocess.run(
            ["doveadm", "-c", str(self.conf_path), *args], input=stdin, capture_output=True, check=False
        )
        if result.returncode != 0:
            raise DoveadmError(args, result.returncode, result.stderr.decode("utf-8", "replace"))
        return result.stdout.decode("utf-8", "replace")

    def seed(
        self,
        user: str,
        folder: str,
        messages: bytes | Iterable[bytes],
        flags: Iterable[str] | None = None,
        when: datetime | None = None,
    ) -> list[int]:
        """Store messages in folder (created if missing) in order and return their new UIDs.

        Files are written straight into the maildir's cur/ and picked up by a sync, which seeds
        thousands of messages in well under a second. ``when`` sets INTERNALDATE (the file mtime).
        """
        raws = [bytes(messages)] if isinstance(messages, (bytes, bytearray)) else [bytes(m) for m in messages]
        flag_list = list(flags or [])
        system = "".join(sorted(MAILDIR_FLAG_LETTERS[f] for f in flag_list if f in MAILDIR_FLAG_LETTERS))
        keywords = [f for f in flag_list if f not in MAILDIR_FLAG_LETTERS]
        self._ensure_folder(user, folder)
        first_uid = self.status(user, folder)["uidnext"]
        path = Path(self.doveadm("mailbox", "path", "-u", user, folder).strip())
        stamp, pid = int(time.time()), os.getpid()
        mtime = when.timestamp() if when is not None else None
        for index, raw in enumerate(raws):
            self._seq += 1
            name = f"{stamp}.M{index:06d}P{pid}Q{self._seq}.mailpipe,S={len(raw)}:2,{system}"
            staged = path / "tmp" / name
            staged.write_bytes(raw)
            os.chown(staged, self._uid, self._gid)
            if mtime is not None:
                os.utime(staged, (mtime, mtime))
            staged.rename(path / "cur" / name)
        uids = self._uids_from(user, folder, first_uid)
        if len(uids) != len(raws):
            raise RuntimeError(f"seeded {len(raws)} messages into {folder} but Dovecot shows {len(uids)} new UIDs")
        if keywords and uids:
            self.add_flags(user, folder, uids, keywords)
        return uids

    def flags(self, user: str, folder: str) -> dict[int, frozenset[str]]:
        """Map each UID in folder to its flags (without the per-session \\Recent)."""
        rows = _tab_rows(self.doveadm("-f", "tab", "fetch", "-u", user, "uid flags", "mailbox", folder, "all"))
        return {int(row["uid"]): frozenset(f for f in row["flags"].split() if f != "\\Recent") for row in rows}

    def status(self, user: str, folder: str) -> dict[str, int]:
        """Return messages, uidnext, uidvalidity and highestmodseq of folder."""
        fields = "messages uidnext uidvalidity highestmodseq"
        rows = _tab_rows(self.doveadm("-f", "tab", "mailbox", "status", "-u", user, fields, folder))
        return {key: int(rows[0][key]) for key in fields.split()}

    def set_uidvalidity(self, user: str, folder: str, value: int) -> None:
        """Force a new UIDVALIDITY on folder (UIDs stay as they are)."""
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(value), folder)

    def expunge(self, user: str, folder: str, uid: int | Sequence[int]) -> None:
        """Expunge one or more UIDs from folder, as another client would."""
        self.doveadm("expunge", "-u", user, "mailbox", folder, "uid", _uid_list(uid))

    def add_flags(self, user: str, folder: str, uid: int | Sequence[int], flags: Iterable[str]) -> None:
        """Add flags to one or more UIDs, as another client would."""
        self.doveadm("flags", "add", "-u", user, " ".join(flags), "mailbox", folder, "uid", _uid_list(uid))

    def remove_flags(self, user: str, folder: str, uid: int | Sequence[int], flags: Iterable[str]) -> None:
        """Remove flags from one or more UIDs, as another client would."""
        self.doveadm("flags", "remove", "-u", user, " ".join(flags), "mailbox", folder, "uid", _uid_list(uid))

    def kick(self, user: str) -> None:
        """Disconnect every IMAP session of user (``doveadm kick``), as an admin or a failover would."""
        self.doveadm("kick", user)

    def deliver(self, user: str, raw: bytes) -> int:
        """Deliver one message into INBOX the way an MTA's LDA does (``doveadm save``, so sessions
        idling on INBOX are told at once); returns its UID."""
        first = self.status(user, "INBOX")["uidnext"]
        self.doveadm("save", "-u", user, "-m", "INBOX", stdin=raw)
        uids = self._uids_from(user, "INBOX", first)
        if not uids:
            raise RuntimeError("doveadm save stored nothing")
        return uids[-1]

    # -- internals -----------------------------------------------------------------------------

    def _install_cert(
        self, cert_path: str | os.PathLike[str] | None, key_path: str | os.PathLike[str] | None
    ) -> tuple[Path, Path]:
        """Copy the given cert/key into our directory (readable by nobody) or make a new pair."""
        if cert_path is None or key_path is None:
            return make_self_signed(self._base / "tls")
        cert, key = self._base / "cert.pem", self._base / "key.pem"
        shutil.copyfile(cert_path, cert)
        shutil.copyfile(key_path, key)
        cert.chmod(0o644)
        key.chmod(0o644)
        return cert, key

    def _write_passwd(self, email: str, password: str) -> None:
        """Write one user's passwd-file atomically."""
        staged = self._users_dir / f".{email}.new"
        staged.write_text(f"{email}:{{PLAIN}}{password}::::::\n")
        staged.chmod(0o644)
        staged.replace(self._users_dir / email)

    def _write_config(self) -> None:
        """Render dovecot.conf for the current ports and special-use mailboxes."""
        mailboxes = "".join(
            f'  mailbox "{name}" {{\n    special_use = {flag}\n    auto = create\n  }}\n'
            for name, flag in DEFAULT_SPECIAL_USE.items()
        ) + "".join(
            f'  mailbox "{name}" {{\n    special_use = {flag}\n  }}\n'
            for name, flag in self._special_use.items()
            if name not in DEFAULT_SPECIAL_USE
        )
        self.conf_path.write_text(
            _CONFIG.format(
                base=self._base,
                run=self._run_dir,
                mail=self._mail_dir,
                user=RUN_AS_USER,
                group=RUN_AS_GROUP,
                cert=self._cert,
                key=self._key,
                host=self._host,
                port=self._port,
                tls_port=self._tls_port,
                max_userip=self._max_userip,
                mailboxes=mailboxes,
                capability=_capability_line(self._condstore),
                scale=_scale_settings(self._connections),
                oauth_passdb=self._oauth_passdb(),
                password_mechanisms="  mechanisms = plain login\n" if self._introspection else "",
                # doveadm's userdb lookups would otherwise ask the passdbs, which are per-mechanism now
                userdb_extra=" allow_all_users=yes" if self._introspection else "",
            )
        )

    def _oauth_passdb(self) -> str:
        """With an introspection URL: XOAUTH2/OAUTHBEARER tokens are checked by ``passdb oauth2``
        against it (POST token=...), as a provider's IMAP server checks its own tokens."""
        if not self._introspection:
            return ""
        ext = self._base / "dovecot-oauth2.conf.ext"
        ext.write_text(
            "introspection_mode = post\n"
            f"introspection_url = {self._introspection}\n"
            "force_introspection = yes\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n"
        )
        ext.chmod(0o644)
        return f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {ext}\n}}\n"

    def _spawn_and_wait(self) -> str | None:
        """Run dovecot -F; return None once both ports accept, else the error output."""
        stderr_path = self._base / "stderr.log"
        with open(stderr_path, "wb") as stderr:
            # Own process group: the master leaves its imap/log children running when it exits,
            # so stop() signals the whole group to make the outage real for connected clients.
            self._proc = subprocess.Popen(
                ["dovecot", "-F", "-c", str(self.conf_path)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return stderr_path.read_text(errors="replace") + self._log_tail()
            if port_open(self._host, self._port) and port_open(self._host, self._tls_port):
                return None
            time.sleep(0.02)
        self.stop()
        return "timed out waiting for the listeners\n" + self._log_tail()

    def _log_tail(self, lines: int = 30) -> str:
        """Last lines of the Dovecot log, for error messages."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _reload_and_wait(self, user: str, name: str, special_use: str) -> None:
        """SIGHUP the master and wait until a fresh IMAP session lists name with special_use."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)
        password = self._users[user]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._listed_with(user, password, name, special_use):
                return
            time.sleep(0.05)
        raise RuntimeError(f"Dovecot did not pick up special_use {special_use} for {name} after reload")

    def _listed_with(self, user: str, password: str, name: str, special_use: str) -> bool:
        """Log in over IMAP and tell whether LIST shows name carrying special_use."""
        try:
            client = imaplib.IMAP4(self._host, self._port, timeout=5)
        except OSError:
            return False
        try:
            client.login(user, password)
            _typ, lines = client.list()
            return any(
                isinstance(line, bytes) and special_use.encode() in line and name.encode() in line
                for line in lines
            )
        except (imaplib.IMAP4.error, OSError):
            return False
        finally:
            try:
                client.logout()
            except (imaplib.IMAP4.error, OSError):
                pass

    def _ensure_folder(self, user: str, folder: str) -> None:
        """Open folder (which creates auto=create mailboxes on disk), creating it when missing."""
        try:
            self.doveadm("mailbox", "status", "-u", user, "messages", folder)
        except DoveadmError:
            self.doveadm("mailbox", "create", "-u", user, folder)
            self.doveadm("mailbox", "status", "-u", user, "messages", folder)

    def _uids_from(self, user: str, folder: str, first_uid: int) -> list[int]:
        """Sync folder and return its UIDs >= first_uid, ascending."""
        output = self.doveadm("search", "-u", user, "mailbox", folder, "uid", f"{first_uid}:*")
        uids = (int(line.split()[1]) for line in output.splitlines() if line.strip())
        return sorted(uid for uid in uids if uid >= first_uid)


# Dovecot 2.3's post-login capabilities, without CONDSTORE and QRESYNC for condstore=False.
_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS "
    "THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED "
    "I18NLEVEL=1 ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY "
    "PREVIEW STATUS=SIZE SAVEDATE LITERAL+ SPECIAL-USE"
)


def _capability_line(condstore: bool) -> str:
    """Nothing (Dovecot's own list, CONDSTORE and QRESYNC included) or a list without them."""
    return "" if condstore else f"imap_capability = {_CAPABILITIES}\n"


def _scale_settings(connections: int | None) -> str:
    """Service limits for many concurrent sessions: login processes that each proxy many TLS
    sessions, and one imap process per session (Dovecot's imap processes serve one user each).

    All sessions run as one user here, and Linux gives a user 128 inotify instances by default
    (``fs.inotify.max_user_instances``): past that Dovecot notices new mail in an idling session by
    looking every ``mailbox_idle_check_interval`` (30 s by default), so it looks every second.
    """
    if connections is None:
        return ""
    return (
        "mailbox_idle_check_interval = 1 secs\n"
        f"default_client_limit = {connections * 2 + 200}\n"
        f"default_process_limit = {connections + 100}\n"
        "service imap-login {\n  service_count = 0\n  process_min_avail = 2\n"
        f"  client_limit = {connections + 100}\n}}\n"
        f"service imap {{\n  process_limit = {connections + 50}\n}}\n"
    )


def _die_with_parent() -> None:
    """In the forked child: get SIGTERM when the test process dies, even by SIGKILL or timeout(1).

    atexit covers normal exits; this covers the rest. Linux only (prctl PR_SET_PDEATHSIG); it
    follows the thread that started the server, so start servers from the main thread.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _two_free_ports(host: str) -> tuple[int, int]:
    """Two different free ports (plain and TLS)."""
    first = free_port(host)
    second = free_port(host)
    while second == first:
        second = free_port(host)
    return first, second


def _terminate_group(proc: subprocess.Popen[bytes], graceful: bool = True) -> None:
    """SIGTERM the master's process group (clients get "BYE Server shutting down"), then SIGKILL the rest.

    The master alone leaves running imap processes behind, and right after startup it can take
    ~6s to exit, so the grace period is capped.
    """
    if graceful:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send sig to a process group that may already be gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _tab_rows(output: str) -> list[dict[str, str]]:
    """Parse doveadm's -f tab output into one dict per row."""
    lines = output.splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]


def _uid_list(uid: int | Sequence[int]) -> str:
    """Render one UID or several as a doveadm uid set."""
    if isinstance(uid, int):
        return str(uid)
    if not uid:
        raise ValueError("no UIDs given")
    return ",".join(str(u) for u in uid)


_CONFIG = """\
# Generated by tests/harness/dovecot.py -- self-contained, no /etc/dovecot includes.
base_dir = {run}
state_dir = {run}/state
instance_name = mailpipe-test
listen = {host}
protocols = imap
log_path = {base}/dovecot.log
default_login_user = {user}
default_internal_user = {user}
default_internal_group = {group}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2 oauthbearer
# Failed logins still take ~0.5s with 0: Dovecot flushes delayed failures on a 500 ms timer.
auth_failure_delay = 0
mail_fsync = never
{oauth_passdb}passdb {{
  driver = passwd-file
{password_mechanisms}  args = scheme=PLAIN username_format=%u {base}/users/%u
}}
userdb {{
  driver = static
  args = uid={user} gid={group} home={mail}/%u{userdb_extra}
}}
mail_location = maildir:~/Maildir
{capability}{scale}namespace inbox {{
  inbox = yes
  separator = /
{mailboxes}}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = {tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  # Mode 0: the auth process cannot reach anvil's penalty socket, which switches off the growing
  # per-IP delay (2s, 4s, ... up to 15s) after failed logins.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol imap {{
  mail_max_userip_connections = {max_userip}
}}
"""
