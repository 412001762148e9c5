"""A private, throwaway PostgreSQL server for tests that stop, restart or reconfigure one.

Tests must never break the shared server on 127.0.0.1:5432, so these start their own
from the installed binaries (``/usr/lib/postgresql/*/bin``) on a free loopback port,
with trust authentication, in a temporary directory that is removed afterwards. As
root the binaries run as the ``postgres`` OS user (PostgreSQL refuses to run as root).

It is made for speed, not durability: ``initdb`` runs once per test session into a
template that each server copies, and the server runs with ``fsync=off`` and small
buffers, so a server costs well under a second to start. Use it as a fixture::

    from pgserver import private_postgres  # noqa: F401 - a fixture

    def test_restart(private_postgres):
        url = private_postgres.url()
        private_postgres.restart()
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ci_env import unavailable as _unavailable

__all__ = ["PgServer", "find_bindir", "private_postgres"]

_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "40",
    "max_wal_senders": "0",
    "wal_level": "minimal",
    "jit": "off",
    "log_min_messages": "warning",
}


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory with initdb and pg_ctl, or None."""
    candidates = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    candidates.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One private PostgreSQL cluster: :meth:`start`, :meth:`stop`, :meth:`restart`, :meth:`url`.

    The port stays the same across restarts, so URLs taken earlier stay valid.
    ``hba`` lines are put before the trust rules of ``pg_hba.conf`` (for example
    ``host all pwuser 127.0.0.1/32 scram-sha-256`` to test password checks).
    """

    def __init__(self, *, bindir: Path, template: Path, hba: Sequence[str] = (), listen: str = "127.0.0.1") -> None:
        self.bindir = bindir
        self.listen = listen
        self.root = Path(tempfile.mkdtemp(prefix="rt-pg-"))
        self._chown(self.root)
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = _free_port()
        self._as_pg(["cp", "-a", str(template), str(self.datadir)])
        if hba:
            hba_file = self.datadir / "pg_hba.conf"
            hba_file.write_text("\n".join(hba) + "\n" + hba_file.read_text())
            self._chown(hba_file)
        self.running = False

    # -- control ---------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        opts = f"-c port={self.port} -c listen_addresses={self.listen} -c unix_socket_directories={self.root}"
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.logfile), "-o", opts)
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients; ``immediate``: like a crash)."""
        if self.running:
            self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)
            self.running = False

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        """Stop the server if it runs and remove its directory."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(
        self, *, user: str = "postgres", password: str | None = None, dbname: str = "postgres", host: str = "127.0.0.1"
    ) -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@{host}:{self.port}/{dbname}"

    def execute(self, statement: str) -> None:
        """Run one statement as the superuser, in autocommit (e.g. CREATE ROLE)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(statement.encode())

    # -- internals ---------------------------------------------------------------

    def _pg_ctl(self, *args: str) -> None:
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args]
        done = self._as_pg(cmd, check=False)
        if done.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(f"pg_ctl {args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}\n{log}")

    @staticmethod
    def _as_pg(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    @staticmethod
    def _chown(path: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)


_template_dir: Path | None = None


def _template(bindir: Path) -> Path:
    """An initdb'd data directory made once per session, copied by every server."""
    global _template_dir
    if _template_dir is None:
        root = Path(tempfile.mkdtemp(prefix="rt-pg-template-"))
        PgServer._chown(root)
        data = root / "data"
        PgServer._as_pg(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]
        )
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("".join(f"{k} = '{v}'\n" for k, v in _SETTINGS.items()))
        _template_dir = data
    return _template_dir


def new_server(*, hba: Sequence[str] = (), listen: str = "127.0.0.1") -> PgServer:
    """A started private server, or skip/fail (via unavailable()) when it cannot be had."""
    bindir = find_bindir()
    if bindir is None:
        _unavailable("no PostgreSQL server binaries (initdb, pg_ctl) are installed")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' OS user to run a private server")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'restartable[postgres]')")
    assert bindir is not None
    server = PgServer(bindir=bindir, template=_template(bindir), hba=hba, listen=listen)
    try:
        server.start()
    except Exception:
        server.destroy()
        raise
    return server


@pytest.fixture
def private_postgres() -> Iterator[PgServer]:
    """A private PostgreSQL server of the test's own, started; destroyed afterwards."""
    server = new_server()
    try:
        yield server
    finally:
        server.destroy()


def _cleanup_template() -> None:
    if _template_dir is not None:
        shutil.rmtree(_template_dir.parent, ignore_errors=True)


atexit.register(_cleanup_template)
