"""``sqlite:///path.db``: the embedded default store, one SQLite file on a LOCAL disk.

URLs follow SQLAlchemy's convention, the path is what follows ``sqlite:///``::

    sqlite:///.restartable/checkpoints.db      relative to the current directory
    sqlite:////var/lib/jobs/checkpoints.db     absolute

Missing directories are created 0700 and the database 0600 (SQLite gives its -wal
and -shm files the database's mode). Opened read-only (``status``, ``show``, ``serve``)
nothing is created: see :meth:`SQLiteStore.__init__`. Use a local filesystem only: SQLite's locking
and WAL shared memory do not work over NFS or other network filesystems, and two
machines sharing a file there can corrupt it. For several machines use PostgreSQL.

Durability: WAL journal with ``synchronous=FULL``. Most saves are one ``UPDATE`` in
autocommit (its own transaction: one WAL commit, one fsync); every other write runs in
a ``BEGIN IMMEDIATE`` transaction. Either way the write lock is taken up front, so
concurrent writers wait on ``busy_timeout`` instead of failing on a lock upgrade.

History: a save writes a ``history`` row only now and then, by default at most once a
second (the ``history_every`` URL option, :func:`history_every_option`), always for a
run's first save here, a new epoch and a save that is not ``running``; ``history()``
heads the rows with the run's current save.

Schema (versioned in ``schema_migrations``, see :data:`MIGRATIONS`):

* ``runs``: one row per run; ``record`` holds :func:`encode_record` JSON, and the
  columns ``epoch``, ``status``, ``lease_expires``, ``heartbeat`` and ``updated``
  are the authority (``renew`` updates only the columns), overlaid on load.
* ``history``: recent saves per run (see History above), pruned to :data:`HISTORY_LIMIT`.
* ``markers``: per-item markers of file sources.
* ``epoch_floor``: the highest epoch of any deleted record (see ``base.first_epoch``).
* ``checkpoints_json`` (a view, for sqlite3 users): ``runs`` with its times named for
  their unit (``updated_at_s``: Unix seconds, as every time column here) and as UTC text.

:meth:`SQLiteStore.transaction` lets a job commit its own output rows and the
checkpoint in one transaction (exactly-once output into the same database).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, Self
from urllib.parse import quote

from .._checkpoint import RUNNING, Checkpoint, HistoryEntry, Owner, decode_record, dumps, encode_record, loads
from .._url import StoreURL, parse_duration
from ..errors import (
    CheckpointCorrupt,
    ConfigError,
    PermissionDenied,
    RestartableError,
    StoreNotFound,
    StoreUnavailable,
)
from ..stores._localfs import create_private_file, flock_exclusive, make_private_dirs, os_errors
from ..stores.base import HISTORY_LIMIT, Store, Unreadable

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore"]

#: Schema migrations in order; version N is ``MIGRATIONS[N - 1]``. Append, never edit.
MIGRATIONS: list[str] = [
    # 1: runs, history, markers. ``runs`` is a rowid table on purpose: its ~1 KB records
    # would spill to overflow pages in a WITHOUT ROWID b-tree (about 1 KB of local payload
    # per cell on 4 KB pages), and every save would write those pages too. A save updates
    # only non-key columns, so the primary key's index is not written. history and markers
    # have small rows and are only reached by their key: WITHOUT ROWID keeps them in one b-tree.
    """
    CREATE TABLE runs (
        job TEXT NOT NULL,
        run TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        status TEXT NOT NULL,
        lease_expires REAL,
        heartbeat REAL NOT NULL,
        updated REAL NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (job, run)
    );
    CREATE TABLE history (
        job TEXT NOT NULL,
        run TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at REAL NOT NULL,
        epoch INTEGER NOT NULL,
        status TEXT NOT NULL,
        done INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        PRIMARY KEY (job, run, seq),
        FOREIGN KEY (job, run) REFERENCES runs (job, run) ON DELETE CASCADE
    ) WITHOUT ROWID;
    CREATE TABLE markers (
        job TEXT NOT NULL,
        run TEXT NOT NULL,
        cursor TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (job, run, cursor, key),
        FOREIGN KEY (job, run) REFERENCES runs (job, run) ON DELETE CASCADE
    ) WITHOUT ROWID;
    """,
    # 2: the highest epoch of any deleted record, one row. A record created again starts
    # above it even when the wall clock (which seeds first epochs) stepped back, so a
    # stale runner of the deleted record can never match the new one's epoch.
    """
    CREATE TABLE epoch_floor (id INTEGER PRIMARY KEY CHECK (id = 0), epoch INTEGER NOT NULL);
    INSERT INTO epoch_floor (id, epoch) VALUES (0, 0);
    """,
    # 3: a view for people with sqlite3: the runs with every time column named for its
    # unit (Unix seconds, as the columns hold) and as UTC text, beside the record (JSON
    # text: record ->> '$.state' reads it). The tables keep their names, so a store of
    # schema 2 opened read-only (never migrated) reads the same; the code never reads it.
    """
    CREATE VIEW IF NOT EXISTS checkpoints_json AS
    SELECT job, run, status, epoch,
        updated AS updated_at_s, heartbeat AS heartbeat_at_s, lease_expires AS lease_until_s,
        datetime(updated, 'unixepoch') AS updated_utc, datetime(lease_expires, 'unixepoch') AS lease_until_utc,
        record
    FROM runs;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

#: Seconds a writer waits for another process's write lock before StoreUnavailable.
BUSY_TIMEOUT = 10.0
#: History is pruned on the first save of a run in this process and every this many after:
#: one cheap range delete now and then instead of one per save. ``history()`` never
#: returns more than HISTORY_LIMIT entries, so the few extra rows are invisible.
_PRUNE_EVERY = 16
#: The default of the ``history_every`` URL option: at most one history row a second.
HISTORY_EVERY: int | float = 1.0

_COLUMNS = "epoch, status, lease_expires, heartbeat, updated, record"
_SELECT = f"SELECT {_COLUMNS} FROM runs WHERE job = ? AND run = ?"
_INSERT_RUN = f"INSERT INTO runs (job, run, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE_RUN = (
    "UPDATE runs SET epoch = ?, status = ?, lease_expires = ?, heartbeat = ?, updated = ?, record = ? "
    "WHERE job = ? AND run = ? AND epoch = ?"
)
# The next seq is found in-engine on the primary key (one b-tree descent to a page the
# insert touches anyway), so a save needs no SELECT round trip.
_INSERT_HISTORY = (
    "INSERT INTO history (job, run, seq, at, epoch, status, done, failed) VALUES "
    "(?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM history WHERE job = ?1 AND run = ?2), ?3, ?4, ?5, ?6, ?7)"
)
_SELECT_HISTORY = (
    "SELECT at, epoch, status, done, failed FROM history WHERE job = ? AND run = ? ORDER BY seq DESC LIMIT ?"
)
# The run's current save as a history entry (done and failed are only in the record). A
# record that is not JSON yields NULLs here (load() reports it), not an error.
_SELECT_CURRENT = (
    "SELECT updated, epoch, status, "
    "CASE WHEN json_valid(record) THEN json_extract(record, '$.done') END, "
    "CASE WHEN json_valid(record) THEN json_extract(record, '$.failed') END "
    "FROM runs WHERE job = ? AND run = ?"
)
_PRUNE_HISTORY = (
    "DELETE FROM history WHERE job = ?1 AND run = ?2 AND seq <= "
    "(SELECT MAX(seq) FROM history WHERE job = ?1 AND run = ?2) - ?3"
)

# Primary SQLite result codes (the low byte of sqlite_errorcode).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_AUTH, _SQLITE_NOTADB = 11, 13, 14, 23, 26


def _path_from_url(url: StoreURL) -> str:
    forms = "sqlite:///relative/path.db or sqlite:////absolute/path.db"
    raw = url.driver_url  # without our own options (history_every)
    head = "sqlite:///"
    if not raw.lower().startswith(head):
        raise ConfigError(f"invalid SQLite store URL {url.display!r}: use {forms} (no host part)")
    path = raw[len(head) :]
    if "?" in path or "#" in path:
        raise ConfigError(f"the SQLite store URL {url.display!r} takes no query options but history_every: use {forms}")
    if not path or path.endswith("/"):
        raise ConfigError(f"the SQLite store URL {url.display!r} names no database file: use {forms}")
    if path == ":memory:":
        raise ConfigError(f"{url.display!r} would keep nothing: use memory:// for an in-process store")
    return path


@contextlib.contextmanager
def _init_lock(path: str, timeout: float, display: str) -> Iterator[None]:
    """Hold an exclusive flock on ``<path>.lock`` while a process opens the database."""
    with os_errors(path, display=display):
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        flock_exclusive(
            fd,
            timeout,
            lambda: StoreUnavailable(
                f"{display}: another process kept the database's open lock ({path}.lock) for "
                f"{timeout:g}s; retry, or find the stuck process"
            ),
        )
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class SQLiteStore(Store):
    """The Store contract on one SQLite file. Thread-safe: one connection behind a lock."""

    schemes = ("sqlite",)
    local = True
    options = frozenset({"history_every"})

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        display: str | None = None,
        busy_timeout: float = BUSY_TIMEOUT,
        read_only: bool = False,
        history_every: int | float = HISTORY_EVERY,
    ) -> None:
        """Open (creating if needed) the database at ``path`` and bring its schema up to date.

        ``busy_timeout`` is how long a write waits for another process's write lock.
        ``history_every``: how often a save writes a history row, a number of saves (an
        int) or of seconds (a float); see :func:`history_every_option`.

        ``read_only``: create nothing (no directory, database, -wal, -shm or lock file)
        and migrate nothing. A missing file raises StoreNotFound, a database of a newer
        schema ConfigError, an older one is read as it is. SQLite's own read-only mode
        still creates a WAL database's -wal and -shm when they are missing, so: while
        they both exist (a connection is open somewhere) the file is opened ``mode=ro``
        and reads share SQLite's locks (a reader registers in the -shm, SQLite's lock
        table in shared memory: nothing of the store changes); while the log is absent
        or empty the database file holds every commit and is opened ``immutable=1`` (no
        locks, no files), and checked again before each read (a writer that appeared
        makes the next read reopen). A log with data but without its -shm cannot be
        read without creating that file: StoreUnavailable says so.
        """
        self.busy_timeout = busy_timeout
        self.path = os.path.abspath(os.fspath(path))
        self.display = display or f"sqlite:///{self.path}"
        self._lock = threading.RLock()
        self.history_every = history_every
        self._saves: dict[tuple[str, str], _Mark] = {}
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._inherited: sqlite3.Connection | None = None
        #: Read-only, immutable: the database file's (dev, ino, size, mtime) when opened.
        self._stamp: tuple[int, int, int, int] | None = None
        if os.path.isdir(self.path):
            raise ConfigError(f"{self.display}: {self.path} is a directory; name a database file in it")
        if read_only:
            self._make_read_only()
            self._open_read_only()
            return
        with self._errors("opening the store"):
            with os_errors(self.path, display=self.display):
                make_private_dirs(os.path.dirname(self.path))
                create_private_file(self.path)
            # Opening is serialized between processes with an flock on a sidecar file: two
            # processes creating one database at once can otherwise deadlock on the switch
            # to WAL (it needs an exclusive lock while the other holds a shared one, and
            # SQLite then answers SQLITE_BUSY without waiting).
            with _init_lock(self.path, self.busy_timeout, self.display):
                self._connect_and_migrate()

    def _open_read_only(self) -> None:
        """The read-only open: nothing created, the schema version checked (see ``__init__``)."""
        if not os.path.exists(self.path):
            raise StoreNotFound(
                f"no SQLite store at {self.path} ({self.display}): the file does not exist; a job's first "
                "run creates it, so check the path (--store or $RESTARTABLE_STORE) or run the job first"
            )
        if not os.access(self.path, os.R_OK):
            raise PermissionDenied(
                f"{self.display}: cannot read {self.path}: make it readable by uid {os.geteuid()}, "
                "or run the command as its owner"
            )
        with self._errors("opening the store"):
            self._connect_and_migrate()

    def _connect_and_migrate(self) -> None:
        """Connect, then bring the schema up to date (read-only: check it); no connection is kept on failure."""
        self._conn = self._connect()
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    def _wal_state(self) -> tuple[int, bool]:
        """The -wal file's size (-1: absent) and whether the -shm file exists."""
        try:
            wal = os.stat(self.path + "-wal").st_size
        except FileNotFoundError:
            wal = -1
        return wal, os.path.exists(self.path + "-shm")

    def _stale(self) -> bool:
        """Read-only: whether the open connection no longer fits the files (reopen before reading)."""
        wal, _ = self._wal_state()
        if self._stamp is None:  # mode=ro: fine while the log exists (a writer closing removes it)
            return wal < 0
        if wal > 0:  # a writer appeared, and its commits are in the log the immutable read ignores
            return True
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != self._stamp

    def _connect_read_only(self) -> sqlite3.Connection:
        """A read-only connection that creates no file (see ``__init__`` for the two ways)."""
        wal, shm = self._wal_state()
        uri = "file:" + quote(self.path) + "?mode=ro"
        if wal > 0 and not shm:
            raise StoreUnavailable(
                f"{self.display}: {self.path}-wal holds commits but {self.path}-shm is missing, and a "
                "read-only command does not create it; run any job on the store (or `sqlite3 "
                f"{self.path} 'PRAGMA wal_checkpoint'`) to fold the log into the database, then retry"
            )
        if wal > 0 or (wal == 0 and shm):
            self._stamp = None
        else:
            # No log, or an empty one: the database file holds every commit. immutable=1 reads it
            # without SQLite's locks, which in WAL mode live in the -shm file it would create.
            st = os.stat(self.path)
            self._stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            uri += "&immutable=1"
        conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect(self) -> sqlite3.Connection:
        """A connection in WAL mode with our pragmas (the switch to WAL only once per database)."""
        if self.read_only:
            return self._connect_read_only()
        # isolation_level=None: the sqlite3 module starts no transactions of its own;
        # we issue BEGIN IMMEDIATE / COMMIT / ROLLBACK ourselves.
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False, cached_statements=64
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":  # persistent: only the first open of a database switches
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreUnavailable(
                    f"{self.display}: SQLite refused WAL mode (got {mode!r}); put the database "
                    "on a local filesystem that supports shared memory"
                )
            # FULL, not NORMAL: in WAL mode NORMAL does not fsync the WAL on commit, so
            # a power loss can drop the last checkpoints that save() reported as written.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    @classmethod
    def from_url(cls, url: StoreURL, *, read_only: bool = False) -> Self:
        return cls(
            _path_from_url(url),
            display=url.display,
            read_only=read_only,
            history_every=history_every_option(url.options.get("history_every"), url.display),
        )

    # -- plumbing --------------------------------------------------------------

    @property
    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(f"the store {self.display} is closed")
        if self._pid != os.getpid():
            # A forked child must not use its parent's connection (SQLite forbids it), nor
            # close it (that could disturb the parent's locks): abandon it, open our own.
            self._pid = os.getpid()
            self._inherited = self._conn  # kept referenced, so never closed here
            self._conn = self._connect()
        elif self.read_only and self._stale():
            self._conn.close()
            self._conn = None
            self._conn = self._connect()
        return self._conn

    def _fix(self) -> str:
        return f"restore {self.path} from a backup, or delete it (or run `restartable reset`) to start over"

    def _translate(self, exc: sqlite3.Error, what: str) -> RestartableError:
        code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
        msg = str(exc)
        where = f"{what} in {self.display}"
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in msg:
            return StoreUnavailable(
                f"{where}: the database stayed locked by another process for {self.busy_timeout:g}s ({msg}); "
                "retry, or find the process holding a long transaction on it"
            )
        if code == _SQLITE_FULL or "disk is full" in msg:
            return StoreUnavailable(
                f"{where}: disk full ({msg}); free space on the filesystem of {self.path}, then rerun"
            )
        if code in (_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_PERM, _SQLITE_AUTH) or "unable to open" in msg:
            return PermissionDenied(
                f"{where}: cannot open {self.path} for writing ({msg}); make the file and its "
                f"directory readable and writable by uid {os.geteuid()} (SQLite creates -wal and -shm "
                "files beside it), or point the store elsewhere"
            )
        if "decode to UTF-8" in msg:  # a record whose bytes are not text: damaged, not busy
            return CheckpointCorrupt(f"{where}: a record in {self.path} is not UTF-8 text ({msg}); {self._fix()}")
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "not a database" in msg or "malformed" in msg:
            return CheckpointCorrupt(f"{where}: {self.path} is not a readable SQLite database ({msg}); {self._fix()}")
        return StoreUnavailable(f"{where}: SQLite error: {msg}")

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate sqlite3 errors at the boundary: no raw driver error escapes."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._translate(exc, what) from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exit by raise.

        Inside :meth:`transaction` on the same thread it joins the open transaction
        instead, so ``save`` called there commits with the caller's rows.
        """
        with self._lock:
            conn = self._c
            if conn.in_transaction:
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    def _migrate(self) -> None:
        if self.read_only:
            self._check_schema()
            return
        with self._write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
            have = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
            if have > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.display}: the database has schema version {have}, newer than this restartable "
                    f"knows ({SCHEMA_VERSION}): upgrade restartable (pip install -U restartable)"
                )
            for version in range(have + 1, SCHEMA_VERSION + 1):
                # Statement by statement: executescript() would COMMIT first, outside our transaction.
                for statement in _split_sql(MIGRATIONS[version - 1]):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, time.time())
                )

    def _check_schema(self) -> None:
        """Read-only: the database must hold a store this restartable can read, unmigrated."""
        conn = self._c
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if found is None:
            raise StoreNotFound(
                f"no store in {self.path} ({self.display}): the file holds no restartable tables; a job's "
                "first run creates them, so check the path (--store or $RESTARTABLE_STORE) or run the job first"
            )
        have = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
        if have > SCHEMA_VERSION:
            raise ConfigError(
                f"{self.display}: the database has schema version {have}, newer than this restartable "
                f"knows ({SCHEMA_VERSION}): upgrade restartable (pip install -U restartable)"
            )
        if have < SCHEMA_VERSION:
            # Read as it is (a read-only open migrates nothing), as long as the reads' columns exist.
            try:
                conn.execute(f"SELECT job, run, {_COLUMNS} FROM runs LIMIT 0").fetchall()
                conn.execute("SELECT at, epoch, status, done, failed FROM history LIMIT 0").fetchall()
                conn.execute("SELECT key, value FROM markers LIMIT 0").fetchall()
            except sqlite3.OperationalError as exc:
                raise ConfigError(
                    f"{self.display}: the database has schema version {have}, older than this restartable "
                    f"reads without migrating it ({exc}); run any job on the store (that migrates it), then retry"
                ) from None

    def _row_to_record(self, job: str, run: str, row: tuple[Any, ...]) -> Checkpoint:
        epoch, status, lease_expires, heartbeat, updated, text = row
        try:
            rec = decode_record(
                text, where=f"the record of job {job!r} run {run!r} in {self.display}", expect=(job, run)
            )
        except CheckpointCorrupt as exc:
            raise CheckpointCorrupt(f"{exc}; {self._fix()}") from None
        # The columns are the authority: renew() updates only them.
        return rec.replace(
            epoch=epoch, status=status, lease_expires=lease_expires, heartbeat=heartbeat, updated=updated
        )

    def _stored_epoch(self, conn: sqlite3.Connection, job: str, run: str) -> int | None:
        row = conn.execute("SELECT epoch FROM runs WHERE job = ? AND run = ?", (job, run)).fetchone()
        return None if row is None else row[0]

    def _history_due(self, rec: Checkpoint) -> bool:
        """Whether the save of ``rec`` writes a history row (see :data:`HISTORY_EVERY`); counts it if not.

        Always for a run's first row from this store object, a new epoch (a new owner),
        and a save that is not ``running`` (finishing, failing, interrupted: the last save
        of a run is always in its history). Otherwise after ``history_every`` saves (an int)
        or once ``history_every`` seconds (a float) have passed since the last row.
        """
        mark = self._saves.get((rec.job, rec.run))
        if mark is None or mark.epoch != rec.epoch or rec.status != RUNNING:
            return True
        every = self.history_every
        if type(every) is int:
            due = mark.saves + 1 >= every
        else:
            due = not 0 <= rec.updated - mark.at < every  # a clock stepped back writes one too
        if not due:
            mark.saves += 1
        return due

    def _history_in(self, conn: sqlite3.Connection, rec: Checkpoint) -> None:
        """Write ``rec``'s history row (and prune the run's oldest now and then)."""
        conn.execute(_INSERT_HISTORY, (rec.job, rec.run, rec.updated, rec.epoch, rec.status, rec.done, rec.failed))
        key = (rec.job, rec.run)
        mark = self._saves.get(key)
        rows = 0 if mark is None else mark.rows
        self._saves[key] = _Mark(rec.epoch, rec.updated, rows + 1)
        if rows % _PRUNE_EVERY == 0:
            conn.execute(_PRUNE_HISTORY, (rec.job, rec.run, HISTORY_LIMIT))

    def _stamped(self, record: Checkpoint, now: float, lease_seconds: float | None) -> tuple[Checkpoint, str]:
        """``record`` as :meth:`save` stores it, and its JSON text."""
        rec = record.replace(
            updated=now, heartbeat=now, lease_expires=None if lease_seconds is None else now + lease_seconds
        )
        return rec, encode_record(rec)

    def _update_in(self, conn: sqlite3.Connection, rec: Checkpoint, text: str) -> None:
        """The compare-and-set itself: one UPDATE on the epoch, whose rowcount says whether it matched."""
        cur = conn.execute(
            _UPDATE_RUN,
            (rec.epoch, rec.status, rec.lease_expires, rec.heartbeat, rec.updated, text, rec.job, rec.run, rec.epoch),
        )
        if cur.rowcount == 0:
            # Nothing was written: the stored epoch is read only to name it in the error.
            raise self._fenced(rec.job, rec.run, rec.epoch, self._stored_epoch(conn, rec.job, rec.run))

    def _cas_in(self, conn: sqlite3.Connection, rec: Checkpoint, text: str, *, history: bool | None = None) -> None:
        """The statements of a save on an open transaction: the UPDATE, then the history row if due.

        ``history``: whether the row is due, when the caller has already asked :meth:`_history_due`.
        """
        if history is None:
            history = self._history_due(rec)
        self._update_in(conn, rec, text)
        if history:
            self._history_in(conn, rec)

    def _save_in(
        self, conn: sqlite3.Connection, record: Checkpoint, now: float, lease_seconds: float | None
    ) -> Checkpoint:
        """The compare-and-set of :meth:`save` on an open transaction; does NOT commit.

        Raises Fenced when the stored epoch differs; the caller must then roll back
        (``_write`` and :meth:`transaction` do).
        """
        rec, text = self._stamped(record, now, lease_seconds)
        self._cas_in(conn, rec, text)
        return rec

    # -- the contract ------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Yield the connection inside ``BEGIN IMMEDIATE``; commit on success, roll back on any raise.

        For writing a job's output rows and its checkpoint atomically::

            with store.transaction() as conn:
                conn.executemany("INSERT INTO results VALUES (?, ?)", rows)
                store.save(record, lease_seconds=30)   # joins this transaction

        A Fenced save rolls the caller's rows back too. The store's lock is held for
        the whole block (the heartbeat's renew waits), so keep it short.
        """
        # Unlike _write, only BEGIN and COMMIT are translated: an error in the caller's own
        # SQL (an IntegrityError, say) is theirs and reaches them as sqlite3 raised it.
        with self._lock:
            with self._errors("beginning a transaction"):
                conn = self._c
                nested = conn.in_transaction
                if not nested:
                    conn.execute("BEGIN IMMEDIATE")
            if nested:  # join the open transaction
                yield conn
                return
            try:
                yield conn
                with self._errors("committing a transaction"):
                    conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    def load(self, job: str, run: str) -> Checkpoint | None:
        with self._lock, self._errors(f"loading job {job!r} run {run!r}"):
            row = self._c.execute(_SELECT, (job, run)).fetchone()
        return None if row is None else self._row_to_record(job, run, row)

    def acquire(
        self, job: str, run: str, *, owner: Owner, lease_seconds: float, steal_epoch: int | None = None
    ) -> Checkpoint:
        with self._errors(f"acquiring job {job!r} run {run!r}"), self._write() as conn:
            now = self.now()
            row = conn.execute(_SELECT, (job, run)).fetchone()
            if row is None:
                floor = conn.execute("SELECT epoch FROM epoch_floor WHERE id = 0").fetchone()[0]
                rec = self._new_record(job, run, owner, now, lease_seconds, floor=floor)
                conn.execute(
                    _INSERT_RUN,
                    (
                        job,
                        run,
                        rec.epoch,
                        rec.status,
                        rec.lease_expires,
                        rec.heartbeat,
                        rec.updated,
                        encode_record(rec),
                    ),
                )
            else:
                old = self._row_to_record(job, run, row)
                rec = self._take_over(old, owner, now, lease_seconds, steal_epoch)
                conn.execute(
                    _UPDATE_RUN,
                    (
                        rec.epoch,
                        rec.status,
                        rec.lease_expires,
                        rec.heartbeat,
                        rec.updated,
                        encode_record(rec),
                        job,
                        run,
                        old.epoch,
                    ),
                )
            self._history_in(conn, rec)
            return rec

    def save(self, record: Checkpoint, *, lease_seconds: float | None) -> Checkpoint:
        # Stamped and encoded before the write lock is taken, so that other processes wait
        # for our statements only, not for our JSON encoding.
        rec, text = self._stamped(record, self.now(), lease_seconds)
        # The hot path: _write and _errors spelled out inline (two generator context
        # managers cost more than the statements' own Python overhead).
        with self._lock:
            try:
                conn = self._c
                if conn.in_transaction:  # inside transaction(): join it
                    self._cas_in(conn, rec, text)
                    return rec
                if not self._history_due(rec):
                    # Most saves: the UPDATE alone, in autocommit. It is its own transaction: a
                    # writing statement takes the write lock as it starts (waiting busy_timeout,
                    # as BEGIN IMMEDIATE does) and commits as it ends, one WAL commit, one fsync.
                    # Fenced writes nothing, so there is nothing to roll back.
                    self._update_in(conn, rec, text)
                    return rec
                conn.execute("BEGIN IMMEDIATE")
                try:
                    self._cas_in(conn, rec, text, history=True)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
                return rec
            except sqlite3.Error as exc:
                raise self._translate(exc, f"saving job {record.job!r} run {record.run!r}") from exc

    def renew(self, job: str, run: str, *, epoch: int, lease_seconds: float) -> float:
        with self._errors(f"renewing the lease of job {job!r} run {run!r}"), self._write() as conn:
            now = self.now()
            expires = now + lease_seconds
            # A released lease (lease_expires NULL) is not taken again by a late renewal.
            cur = conn.execute(
                "UPDATE runs SET heartbeat = ?, lease_expires = ? "
                "WHERE job = ? AND run = ? AND epoch = ? AND lease_expires IS NOT NULL",
                (now, expires, job, run, epoch),
            )
            if cur.rowcount == 0:
                stored = self._stored_epoch(conn, job, run)
                raise self._released(job, run, epoch) if stored == epoch else self._fenced(job, run, epoch, stored)
            return expires

    def delete(self, job: str, run: str, *, epoch: int | None = None) -> bool:
        with self._errors(f"deleting job {job!r} run {run!r}"), self._write() as conn:
            stored = self._stored_epoch(conn, job, run)
            if stored is None or (epoch is not None and stored != epoch):
                return False
            # In the same transaction as the delete: a record made again starts above it.
            conn.execute("UPDATE epoch_floor SET epoch = max(epoch, ?) WHERE id = 0", (stored,))
            conn.execute("DELETE FROM runs WHERE job = ? AND run = ?", (job, run))
            # history and markers go by ON DELETE CASCADE (foreign_keys is on).
            self._saves.pop((job, run), None)
            return True

    def list_runs(self, job: str | None = None, *, corrupt: list[Unreadable] | None = None) -> list[Checkpoint]:
        with self._lock, self._errors("listing runs"):
            if job is None:
                rows = self._c.execute(f"SELECT job, run, {_COLUMNS} FROM runs ORDER BY job, run").fetchall()
            else:
                rows = self._c.execute(
                    f"SELECT job, run, {_COLUMNS} FROM runs WHERE job = ? ORDER BY run", (job,)
                ).fetchall()
        return self._readable(
            ((r[0], r[1], r) for r in rows), lambda r: self._row_to_record(r[0], r[1], r[2:]), corrupt
        )

    def history(self, job: str, run: str, *, limit: int = 20) -> list[HistoryEntry]:
        """The saved rows, newest first, headed by the run's current save when it wrote no row.

        A save writes a history row only now and then (``history_every``), so the newest
        entry is made from the ``runs`` row itself when it is newer than the last row:
        ``show`` always lists the checkpoint as it stands.
        """
        n = max(0, min(limit, HISTORY_LIMIT))
        with self._lock, self._errors(f"reading the history of job {job!r} run {run!r}"):
            conn = self._c
            rows = conn.execute(_SELECT_HISTORY, (job, run, n)).fetchall()
            current = conn.execute(_SELECT_CURRENT, (job, run)).fetchone() if n else None
        out = [HistoryEntry(at=at, epoch=ep, status=st, done=d, failed=f) for at, ep, st, d, f in rows]
        if current is not None and type(current[3]) is int and type(current[4]) is int:
            at, ep, st, d, f = current
            now = HistoryEntry(at=at, epoch=ep, status=st, done=d, failed=f)
            if not out or out[0] != now:
                out = [now, *out[: n - 1]]
        return out

    def mark(self, job: str, run: str, cursor: str, key: str, value: Any, *, epoch: int) -> None:
        text = dumps(value, what=f"the marker value of {key!r}")
        with self._errors(f"marking {key!r} in job {job!r} run {run!r}"), self._write() as conn:
            stored = self._stored_epoch(conn, job, run)
            if stored != epoch:
                raise self._fenced(job, run, epoch, stored)
            conn.execute(
                "INSERT OR REPLACE INTO markers (job, run, cursor, key, value) VALUES (?, ?, ?, ?, ?)",
                (job, run, cursor, key, text),
            )

    def markers(self, job: str, run: str, cursor: str) -> dict[str, Any]:
        with self._lock, self._errors(f"reading the markers of job {job!r} run {run!r}"):
            rows = self._c.execute(
                "SELECT key, value FROM markers WHERE job = ? AND run = ? AND cursor = ?", (job, run, cursor)
            ).fetchall()
        out: dict[str, Any] = {}
        for key, text in rows:
            try:
                out[key] = loads(text)
            except ValueError as exc:
                _corrupt_marker(self, job, run, cursor, key, exc)
        return out

    def transactional(self) -> Any:
        """Batch transactions on this store's own connection (:mod:`restartable._sqlite.transaction`)."""
        from .transaction import SQLiteTransactions

        return SQLiteTransactions(self)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back whatever transaction is open, keeping the error that got us here."""
    # SQLite has already rolled back after some errors (SQLITE_FULL, IOERR, ...), and a
    # failed COMMIT leaves the transaction open: either way leave none behind.
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the original error is the one to report


def _corrupt_marker(store: SQLiteStore, job: str, run: str, cursor: str, key: str, exc: Exception) -> NoReturn:
    raise CheckpointCorrupt(
        f"marker {key!r} of cursor {cursor!r}, job {job!r} run {run!r} in {store.display} is not valid "
        f"JSON ({exc}); {store._fix()}"
    )


class _Mark:
    """The history row a store object last wrote for a run, and the saves since (see ``_history_due``)."""

    __slots__ = ("at", "epoch", "rows", "saves")

    def __init__(self, epoch: int, at: float, rows: int) -> None:
        self.epoch = epoch
        self.at = at
        #: Rows written for the run by this object (the oldest are pruned every _PRUNE_EVERY).
        self.rows = rows
        #: Saves since the row that wrote no row of their own.
        self.saves = 0


def history_every_option(value: str | None, display: str) -> int | float:
    """The ``history_every`` URL option: a whole number of saves, or a duration with its unit.

    ``history_every=1`` writes a row for every save (as all saves did before), ``history_every=100``
    one for every hundredth, ``history_every=1s`` (the default) or ``250ms`` at most one
    per that time. A plain number is a count, never seconds, so that ``1`` cannot be read
    two ways.
    """
    if value is None:
        return HISTORY_EVERY
    fix = "use a whole number of saves (1: every save) or a duration with its unit (1s, 250ms, 1m)"
    if value.isdigit():
        if int(value) < 1:
            raise ConfigError(f"invalid history_every option {value!r} in {display}: {fix}")
        return int(value)
    if not value[-1:].isalpha():
        raise ConfigError(f"invalid history_every option {value!r} in {display}: {fix}")
    try:
        seconds = parse_duration(value, "history_every option")
    except ConfigError:
        raise ConfigError(f"invalid history_every option {value!r} in {display}: {fix}") from None
    return seconds


def _split_sql(script: str) -> list[str]:
    """The statements of a migration (our own SQL: no semicolons inside literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]
