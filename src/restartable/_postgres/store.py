"""``postgresql://user:password@host:5432/db?schema=restartable``: a PostgreSQL store (psycopg 3).

Install with ``pip install 'restartable[postgres]'``. The URL is libpq's (its query
parameters such as ``sslmode``, ``connect_timeout`` or ``application_name`` pass
through); restartable's own options are taken out of it first:

``schema``   the schema holding the tables (default ``restartable``), created and
             migrated on first use (see :mod:`restartable._postgres.schema`); a
             read-only open (``status``, ``show``, ``serve``) creates and migrates
             nothing, raises StoreNotFound when the schema or its tables are missing,
             and runs its session with ``default_transaction_read_only``.
``retry``    how long to ride out a lost connection or a server restart (``30s``,
             ``2m``; default 60 s). After that an operation raises StoreUnavailable.
``history``  how many saves to keep in each run's history (default 50, 0 for none).
``read_timeout`` how long to wait for the server's answer on a connection (``30s``;
             default 60 s; ``0`` for no deadline). A connection that goes silent
             (partition, frozen server: no error ever arrives) is closed after it,
             and the operation is retried on a new one within ``retry``. It also
             bounds each statement on the connection ``job.transaction()`` hands out.
             See :mod:`restartable._postgres.conn`.

Every operation is one statement, one round trip, in autocommit mode, and the
compare-and-set is inside that statement, so there is no read-modify-write race
between runners. Lease times come from the server's clock (``statement_timestamp()``),
never the client's. The columns ``epoch``, ``status``, ``owner`` and the times are the
authority; the JSON record in ``record`` holds the rest and is overlaid with them
when read. Names are always parameters and the schema always a quoted identifier:
nothing a user names becomes SQL text.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self, TypeVar

from .._checkpoint import (
    STATUSES,
    Checkpoint,
    HistoryEntry,
    Owner,
    decode_record,
    dumps,
    encode_record,
    loads,
)
from .._retry import DEFAULT_RETRY_SECONDS, call_with_retry, one_line
from .._url import StoreURL, parse_duration
from ..errors import (
    CheckpointCorrupt,
    ConfigError,
    MissingDriver,
    PermissionDenied,
    StoreNotFound,
    StoreUnavailable,
)
from ..stores.base import HISTORY_LIMIT, Store, Unreadable, epoch_step
from . import schema as _pgschema
from .errors import classify, scrub, secrets_of

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresStore"]

T = TypeVar("T")

log = logging.getLogger("restartable")

_INSTALL = "pip install 'restartable[postgres]'"

# What a row of ``runs`` reads as, in this order (see _decode). Times as Unix seconds.
_COLS = (
    "job, run, record, epoch, status, owner, extract(epoch FROM lease_expires)::float8, "
    "extract(epoch FROM heartbeat)::float8, extract(epoch FROM updated)::float8, "
    "extract(epoch FROM started)::float8"
)
_NOW = "statement_timestamp()"  # the server's clock, fixed for the statement (also inside a transaction)
_LEASE = "statement_timestamp() + %(lease)s::float8 * interval '1 second'"  # NULL lease -> NULL expiry

# acquire: create the record, or take the lease over when it is free, in one statement.
# ON CONFLICT locks the existing row, so the check and the write are atomic; when the
# WHERE is false nothing is returned and the caller reports RunLocked.
# A new record's epoch is the client's clock seed, but above the floor of deleted epochs
# (see schema.py, version 2). The floor is read FOR SHARE: a delete of this run that has
# raised the floor but not committed yet is waited for, so the insert that follows it
# never seeds below the epoch it removed (deletes lock the floor before the run's row,
# so the two never wait for each other in a cycle).
_ACQUIRE = f"""
INSERT INTO {{s}}.runs AS r (job, run, epoch, status, owner, lease_expires, heartbeat, updated, started, record)
VALUES (%(job)s, %(run)s,
    GREATEST(%(epoch)s::bigint, (SELECT f.epoch + 1 FROM {{s}}.epoch_floor f WHERE f.id = 0 FOR SHARE)),
    'running', %(owner)s, {_LEASE}, {_NOW}, {_NOW}, {_NOW}, %(record)s)
ON CONFLICT (job, run) DO UPDATE SET
    epoch = r.epoch + %(step)s::bigint,
    owner = excluded.owner,
    heartbeat = excluded.heartbeat,
    updated = excluded.updated,
    lease_expires = excluded.lease_expires,
    save_seq = 0,
    status = CASE WHEN r.status = 'completed' THEN r.status ELSE 'running' END
WHERE r.lease_expires IS NULL OR r.lease_expires <= {_NOW}
    OR r.epoch = %(steal)s::bigint OR r.owner = excluded.owner
RETURNING {_COLS}"""

# save: compare-and-set on the epoch and the history entry in one statement (a
# data-modifying CTE). History is a ring: the save writes slot ``saves % keep``, so the
# run keeps its last ``keep`` saves without pruning or scanning (see schema.py).
# The owner column is left alone: an equal epoch means the same acquire, which wrote it.
# ``save_seq`` orders the saves of one runner (see schema.py, version 3): a save older than
# the stored one (delayed in the network, landing late) or the same one again (a retry
# whose first attempt committed) changes nothing.
_SAVE_UPDATE = f"""
UPDATE {{s}}.runs SET status = %(status)s, record = %(record)s, saves = saves + 1, save_seq = %(seq)s::bigint,
    updated = {_NOW}, heartbeat = {_NOW}, lease_expires = {_LEASE}
WHERE job = %(job)s AND run = %(run)s AND epoch = %(epoch)s::bigint AND save_seq < %(seq)s::bigint"""
_SAVE = f"""
WITH upd AS ({_SAVE_UPDATE}
    RETURNING job, run, epoch, status, saves, updated, lease_expires
), hist AS (
    INSERT INTO {{s}}.history (job, run, slot, seq, at, epoch, status, done, failed)
    SELECT job, run, saves %% %(keep)s::int, saves, updated, epoch, status, %(done)s::bigint, %(failed)s::bigint
    FROM upd
    ON CONFLICT (job, run, slot) DO UPDATE SET seq = excluded.seq, at = excluded.at, epoch = excluded.epoch,
        status = excluded.status, done = excluded.done, failed = excluded.failed
)
SELECT extract(epoch FROM updated)::float8, extract(epoch FROM lease_expires)::float8 FROM upd"""
_SAVE_NO_HISTORY = f"""{_SAVE_UPDATE}
RETURNING extract(epoch FROM updated)::float8, extract(epoch FROM lease_expires)::float8"""

# A released lease (lease_expires NULL) is refused: a renewal delayed past the release
# must not take it again (see Store.renew).
_RENEW = f"""
UPDATE {{s}}.runs SET heartbeat = {_NOW}, lease_expires = {_LEASE}
WHERE job = %(job)s AND run = %(run)s AND epoch = %(epoch)s::bigint AND lease_expires IS NOT NULL
RETURNING extract(epoch FROM lease_expires)::float8"""

# Deletes raise the epoch floor in the same statement (a CTE), so a record made again
# starts above every epoch it had. The floor row is locked first (``fl``; the count is a
# one-time filter evaluated before the run's row is touched): the lock order is the
# acquire's (floor, then run), so a delete and an acquire of one run never deadlock.
_FLOOR_FIRST = "WITH fl AS (SELECT 1 FROM {s}.epoch_floor WHERE id = 0 FOR UPDATE)"
_RAISE_FLOOR = """raised AS (
    UPDATE {s}.epoch_floor f SET epoch = GREATEST(f.epoch, (SELECT max(epoch) FROM gone))
    WHERE f.id = 0 AND EXISTS (SELECT FROM gone))"""

# history and markers go with the run (ON DELETE CASCADE).
_DELETE = f"""{_FLOOR_FIRST},
gone AS (DELETE FROM {{s}}.runs
    WHERE job = %(job)s AND run = %(run)s AND (%(epoch)s::bigint IS NULL OR epoch = %(epoch)s::bigint)
    AND (SELECT count(*) FROM fl) >= 0
    RETURNING epoch),
{_RAISE_FLOOR}
SELECT count(*) FROM gone"""

# FOR SHARE waits for a concurrent acquire or delete of the run and re-checks the
# epoch on the row it leaves, so a fenced runner can never add a marker.
_MARK = """
INSERT INTO {s}.markers (job, run, "cursor", key, value)
SELECT job, run, %(cursor)s, %(key)s, %(value)s FROM {s}.runs
WHERE job = %(job)s AND run = %(run)s AND epoch = %(epoch)s::bigint FOR SHARE
ON CONFLICT (job, run, "cursor", key) DO UPDATE SET value = excluded.value
RETURNING 1"""

_STATEMENTS = {
    "acquire": _ACQUIRE,
    "save": _SAVE,
    "save_no_history": _SAVE_NO_HISTORY,
    "renew": _RENEW,
    "delete": _DELETE,
    "mark": _MARK,
    "load": f"SELECT {_COLS} FROM {{s}}.runs WHERE job = %(job)s AND run = %(run)s",
    "load_now": f"SELECT {_COLS}, extract(epoch FROM clock_timestamp())::float8 FROM {{s}}.runs "
    "WHERE job = %(job)s AND run = %(run)s",
    "epoch": "SELECT epoch FROM {s}.runs WHERE job = %(job)s AND run = %(run)s",
    "saved": "SELECT epoch, save_seq, extract(epoch FROM updated)::float8, extract(epoch FROM lease_expires)::float8 "
    "FROM {s}.runs WHERE job = %(job)s AND run = %(run)s",
    "list": f"SELECT {_COLS} FROM {{s}}.runs ORDER BY job, run",
    "list_job": f"SELECT {_COLS} FROM {{s}}.runs WHERE job = %(job)s ORDER BY job, run",
    "history": "SELECT extract(epoch FROM at)::float8, epoch, status, done, failed FROM {s}.history "
    "WHERE job = %(job)s AND run = %(run)s ORDER BY seq DESC LIMIT %(limit)s",
    "markers": 'SELECT key, value FROM {s}.markers WHERE job = %(job)s AND run = %(run)s AND "cursor" = %(cursor)s',
    "cleanup_runs": f"{_FLOOR_FIRST}, gone AS (DELETE FROM {{s}}.runs WHERE status = 'completed' "
    f"AND updated <= {_NOW} - %(age)s::float8 * interval '1 second' "
    f"AND (%(job)s::text IS NULL OR job = %(job)s) AND (SELECT count(*) FROM fl) >= 0 RETURNING *), "
    f"{_RAISE_FLOOR} SELECT {_COLS} FROM gone",
    # Old history goes too, but each run keeps its newest entry (seq = saves).
    "cleanup_history": f"DELETE FROM {{s}}.history h USING {{s}}.runs r "
    f"WHERE h.job = r.job AND h.run = r.run AND h.seq < r.saves "
    f"AND h.at <= {_NOW} - %(age)s::float8 * interval '1 second' AND (%(job)s::text IS NULL OR h.job = %(job)s)",
}


# libpq reports failed connections without a SQLSTATE: these message parts mean
# retrying cannot help (checked before the error counts as transient).
class _Stale(Exception):
    """Internal: the CAS matched no row; carries the stored epoch (None: no record)."""

    def __init__(self, stored: int | None) -> None:
        super().__init__(stored)
        self.stored = stored


def _import_psycopg(display: str) -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise MissingDriver(
            f"the PostgreSQL store {display} needs psycopg 3 ({exc.name} is missing): {_INSTALL}"
        ) from None
    return psycopg


class PostgresStore(Store):
    """A checkpoint store in a PostgreSQL schema. See the module docstring.

    One connection per store, guarded by a lock: the heartbeat thread's renew and the
    main thread's save take turns, each a single round trip. An operation that fails
    with a lost connection (or another transient error) goes on through
    :func:`~restartable._retry.call_with_retry`, reconnecting before each
    attempt, until the ``retry`` budget is spent; then it raises StoreUnavailable.
    """

    schemes = ("postgresql", "postgres")
    options = frozenset({"schema", "retry", "history", "read_timeout"})

    def __init__(
        self,
        conninfo: str,
        *,
        display: str,
        schema: str = "restartable",
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        history_limit: int = HISTORY_LIMIT,
        read_timeout: float | None = None,
        secrets: tuple[str, ...] = (),
        read_only: bool = False,
        quick: bool = False,
    ) -> None:
        """Open (and if needed create and migrate) the store. Prefer :meth:`from_url`.

        ``read_only``: create and migrate nothing (see the module docstring). ``quick``:
        a read a person waits for (``open_store(retry=)``): the connect is bounded by the
        retry budget too, and retries are counted and logged as
        :func:`~restartable._retry.call_with_retry` describes.

        ``conninfo`` is the libpq URL without restartable's options; ``secrets`` are
        strings (the password) scrubbed from any driver message before it is shown.
        ``read_timeout`` bounds every wait for the server on every connection the
        store opens, its own and the one :meth:`_connect` hands out (seconds, 0 for
        none; None: 60 s); see :mod:`restartable._postgres.conn`.
        """
        self._pg = _import_psycopg(display)
        from psycopg import sql

        from . import conn as _pgconn

        self._pgconn = _pgconn
        self._read_timeout = _pgconn.DEFAULT_READ_TIMEOUT if read_timeout is None else float(read_timeout)

        self.display = display
        self._conninfo = conninfo
        self._schema = _pgschema.check_schema(schema, display)
        self._retry_seconds = retry_seconds
        self._history_limit = history_limit
        self._secrets = tuple(s for s in secrets if s)
        self._transient: tuple[type[BaseException], ...] = (self._pg.OperationalError, self._pg.InterfaceError)
        ident = sql.Identifier(self._schema)
        # Rendered once: the schema is the only identifier, everything else a parameter.
        self._sql = {k: sql.SQL(v).format(s=ident).as_bytes(None) for k, v in _STATEMENTS.items()}
        self._lock = threading.Lock()
        self._seq_lock = threading.Lock()
        self._last_seq = 0
        self._conn: psycopg.Connection | None = None
        self._quick = quick
        # libpq's connect_timeout is whole seconds, at least 2; a quick read waits no longer than its budget.
        self._connect_timeout = max(2, min(10, math.ceil(retry_seconds))) if quick else 10
        if read_only:
            self._make_read_only()
            self._call("open", self._check_schema)
        else:
            self._call("open", lambda conn: _pgschema.migrate(conn, self._schema))

    @classmethod
    def from_url(cls, url: StoreURL, *, read_only: bool = False) -> Self:
        display = url.display
        psycopg = _import_psycopg(display)
        secrets = secrets_of(url.raw)
        try:
            params = psycopg.conninfo.conninfo_to_dict(url.driver_url)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(
                f"invalid PostgreSQL URL {display}: {scrub(one_line(exc), secrets)}; restartable's own options "
                "are schema, retry, history and read_timeout, the rest must be libpq connection parameters"
            ) from None
        from .conn import parse_read_timeout

        retry = parse_duration(url.options.get("retry", DEFAULT_RETRY_SECONDS), "retry option")
        read_timeout = parse_read_timeout(url.options.get("read_timeout"), display)
        history = url.options.get("history", str(HISTORY_LIMIT))
        if not history.isdigit():
            raise ConfigError(
                f"invalid history option {history!r} in {display}: use a whole number of saves (0 for none)"
            )
        return cls(
            url.driver_url,
            display=display,
            schema=url.options.get("schema", "restartable"),
            retry_seconds=retry,
            history_limit=int(history),
            read_timeout=read_timeout,
            secrets=secrets + ((params["password"],) if params.get("password") else ()),
            read_only=read_only,
            quick=url.quick,
        )

    def _check_schema(self, conn: psycopg.Connection) -> None:
        """Read-only open: the schema must hold a store this restartable reads, as it is."""
        found = _pgschema.current_version(conn, self._schema)
        if found == 0:
            raise StoreNotFound(
                f"no PostgreSQL store in schema {self._schema!r} of {self.display}: the schema or its tables "
                "do not exist; a job's first run creates them, so check the database and ?schema= of the URL "
                "(default restartable) or run the job first"
            )
        if found > _pgschema.LATEST:
            raise ConfigError(
                f"PostgreSQL schema {self._schema!r} in {self.display} is at version {found}, newer than this "
                f"restartable understands ({_pgschema.LATEST}): upgrade restartable"
            )
        if found < _pgschema.LATEST:
            # Read as it is, as long as the columns the reads use are there (every version so far).
            from psycopg import sql

            ident = sql.Identifier(self._schema)
            probes = [
                sql.SQL(f"SELECT {_COLS} FROM {{s}}.runs LIMIT 0").format(s=ident),
                sql.SQL("SELECT seq, at, epoch, status, done, failed FROM {s}.history LIMIT 0").format(s=ident),
                sql.SQL('SELECT key, value, "cursor" FROM {s}.markers LIMIT 0').format(s=ident),
            ]
            try:
                for probe in probes:
                    conn.execute(probe)
            except self._pg.errors.UndefinedColumn as exc:
                raise ConfigError(
                    f"PostgreSQL schema {self._schema!r} in {self.display} is at version {found}, older than "
                    f"this restartable reads without migrating it ({self._scrub(one_line(exc))}); run any job "
                    "on the store (that migrates it), then retry"
                ) from None

    def __repr__(self) -> str:
        return f"<PostgresStore {self.display} schema={self._schema!r}>"

    # -- the core operations -------------------------------------------------

    def load(self, job: str, run: str) -> Checkpoint | None:
        row = self._call("load", lambda c: c.execute(self._sql["load"], {"job": job, "run": run}).fetchone())
        return None if row is None else self._decode(row)

    def acquire(
        self, job: str, run: str, *, owner: Owner, lease_seconds: float, steal_epoch: int | None = None
    ) -> Checkpoint:
        params = {
            "job": job,
            "run": run,
            "owner": self._jsonb(owner.to_dict()),
            "lease": float(lease_seconds),
            "steal": steal_epoch,
        }
        # A retried acquire whose first attempt committed finds its own owner holding
        # the lease and takes it again (a second epoch bump), which the contract allows.
        for _ in range(5):
            new = self._new_record(job, run, owner, 0.0, lease_seconds)  # times are the server's
            # A takeover's step is random (base.next_epoch): never the epoch a lost write gave.
            params.update(epoch=new.epoch, record=encode_record(new), step=epoch_step())
            row = self._call("acquire", lambda c: c.execute(self._sql["acquire"], params).fetchone())
            if row is not None:
                return self._decode(row)
            # Held (the rare path): read the holder for the message. If it vanished or
            # expired between the two statements, try again.
            held = self._call("acquire", lambda c: c.execute(self._sql["load_now"], params).fetchone())
            if held is not None:
                rec, now = self._decode(held[:-1]), held[-1]
                if rec.lease_expires is not None and rec.lease_expires > now:
                    raise self._locked(rec, now)
        raise StoreUnavailable(
            f"acquire of job {job!r} run {run!r} in {self.display} kept racing with other runners; try again"
        )

    def save(self, record: Checkpoint, *, lease_seconds: float | None) -> Checkpoint:
        params = self._save_params(record, lease_seconds)  # encodes first: StateNotSerializable before any I/O
        # Retrying after a lost connection is safe even if the lost attempt committed:
        # the retry carries the same save_seq, finds it stored and writes nothing again.
        # If another runner took over meanwhile, the retry is fenced, as it must be.
        try:
            updated, lease = self._call("save", lambda c: self._exec_save(c, params))
        except _Stale as stale:
            raise self._fenced(record.job, record.run, record.epoch, stale.stored) from None
        return record.replace(updated=updated, heartbeat=updated, lease_expires=lease)

    def renew(self, job: str, run: str, *, epoch: int, lease_seconds: float) -> float:
        params = {"job": job, "run": run, "epoch": epoch, "lease": float(lease_seconds)}

        def op(conn: psycopg.Connection) -> float:
            row = conn.execute(self._sql["renew"], params).fetchone()
            if row is None:
                raise _Stale(self._stored_epoch(conn, params))
            return float(row[0])

        try:
            return self._call("renew", op)
        except _Stale as stale:
            if stale.stored == epoch:  # our epoch, but no lease: it was released
                raise self._released(job, run, epoch) from None
            raise self._fenced(job, run, epoch, stale.stored) from None

    def delete(self, job: str, run: str, *, epoch: int | None = None) -> bool:
        # A retry after a lost commit reports False although the first attempt removed it.
        params = {"job": job, "run": run, "epoch": epoch}
        row = self._call("delete", lambda c: c.execute(self._sql["delete"], params).fetchone())
        return row is not None and row[0] > 0

    def list_runs(self, job: str | None = None, *, corrupt: list[Unreadable] | None = None) -> list[Checkpoint]:
        key, params = ("list", {}) if job is None else ("list_job", {"job": job})
        rows = self._call("list", lambda c: c.execute(self._sql[key], params).fetchall())
        return self._readable(((r[0], r[1], r) for r in rows), self._decode, corrupt)

    def history(self, job: str, run: str, *, limit: int = 20) -> list[HistoryEntry]:
        params = {"job": job, "run": run, "limit": max(0, int(limit))}
        rows = self._call("history", lambda c: c.execute(self._sql["history"], params).fetchall())
        return [HistoryEntry(at=at, epoch=ep, status=st, done=d, failed=f) for at, ep, st, d, f in rows]

    def mark(self, job: str, run: str, cursor: str, key: str, value: Any, *, epoch: int) -> None:
        params = {
            "job": job,
            "run": run,
            "cursor": cursor,
            "key": key,
            "epoch": epoch,
            "value": dumps(value, what=f"marker {key!r}"),
        }

        def op(conn: psycopg.Connection) -> None:
            if conn.execute(self._sql["mark"], params).fetchone() is None:
                raise _Stale(self._stored_epoch(conn, params))

        try:
            self._call("mark", op)  # an upsert: retrying it is idempotent
        except _Stale as stale:
            raise self._fenced(job, run, epoch, stale.stored) from None

    def markers(self, job: str, run: str, cursor: str) -> dict[str, Any]:
        params = {"job": job, "run": run, "cursor": cursor}
        rows = self._call("markers", lambda c: c.execute(self._sql["markers"], params).fetchall())
        try:
            return {k: loads(v) for k, v in rows}
        except ValueError as exc:
            raise CheckpointCorrupt(
                f"a marker of job {job!r} run {run!r} in {self.display} is not JSON ({exc})"
            ) from None

    def now(self) -> float:
        row = self._call("now", lambda c: c.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone())
        assert row is not None  # SELECT without FROM returns one row
        return float(row[0])

    def cleanup(self, *, older_than: float, job: str | None = None) -> list[Checkpoint]:
        """Delete completed runs not updated for ``older_than`` seconds (server clock), in one statement.

        Also drops history entries older than that from the runs that stay, keeping
        each run's newest entry. Returns the removed records, sorted by job and run.
        """
        params = {"age": float(older_than), "job": job}
        rows = self._call("cleanup", lambda c: c.execute(self._sql["cleanup_runs"], params).fetchall())
        self._call("cleanup", lambda c: c.execute(self._sql["cleanup_history"], params))
        return sorted((self._decode(r, lenient=True) for r in rows), key=lambda r: (r.job, r.run))

    @property
    def retry_seconds(self) -> float:
        return self._retry_seconds

    def transactional(self) -> Any:
        """Batch transactions on a connection of this store's database (:mod:`restartable._postgres.transaction`)."""
        from .transaction import PostgresTransactions  # psycopg-heavy: only for job.transaction()

        return PostgresTransactions(self)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- one transaction with the caller's own writes -------------------------------

    def _connect(self) -> psycopg.Connection:
        """A NEW connection to the same database (not autocommit), for the caller to own.

        The store's statements name the schema explicitly, so the connection's
        ``search_path`` is left alone for the caller's tables. Close it when done.
        Every wait for the server on it ends after the store's ``read_timeout``: then
        the connection is closed (``conn.broken``) and a ``psycopg.OperationalError``
        (:class:`~restartable._postgres.conn.ReadTimeout`) raised; during COMMIT that
        means the outcome is unknown.
        """
        return call_with_retry(
            lambda: self._open_connection(autocommit=False),
            seconds=self._retry_seconds,
            transient=self._transient,
            display=self.display,
            what="connect",
        )

    def _save_in(self, conn: psycopg.Connection, record: Checkpoint, *, lease_seconds: float | None) -> Checkpoint:
        """Run save's compare-and-set on ``conn`` inside the caller's transaction; do not commit.

        The checkpoint becomes visible (and durable) with the caller's COMMIT, together
        with whatever else the transaction wrote, or not at all. Raises Fenced when the
        stored epoch differs (the caller must roll back). Driver errors propagate as is:
        the caller retries its whole transaction, not this statement.
        """
        try:
            updated, lease = self._exec_save(conn, self._save_params(record, lease_seconds))
        except _Stale as stale:
            raise self._fenced(record.job, record.run, record.epoch, stale.stored) from None
        return record.replace(updated=updated, heartbeat=updated, lease_expires=lease)

    def load_in(self, conn: psycopg.Connection, job: str, run: str, *, epoch: int | None = None) -> Checkpoint | None:
        """The run's record as ``conn`` (a connection of the caller's, e.g. from :meth:`_connect`) sees it.

        One statement on ``conn``, no retry and no lock of the store's: for a caller that
        must read on a connection of its own (resolving a COMMIT whose answer was lost,
        while the store's connection may wait behind the orphaned transaction's row lock).
        Driver errors propagate as they are, for the caller to judge. With ``epoch``,
        a record stored at another epoch raises Fenced (a newer runner owns the run); a
        missing record is None either way.
        """
        row = conn.execute(self._sql["load"], {"job": job, "run": run}).fetchone()
        rec = None if row is None else self._decode(row)
        if rec is not None and epoch is not None and rec.epoch != epoch:
            raise self._fenced(job, run, epoch, rec.epoch)
        return rec

    # -- internals -----------------------------------------------------------------

    def _next_seq(self) -> int:
        """A save's sequence number: above every one this store object gave before.

        Monotonic nanoseconds, so that two store objects of one process (one runner)
        keep one order too; the counter part breaks ties. Only the order of the saves
        of one epoch matters (an acquire resets the stored number to 0).
        """
        with self._seq_lock:
            self._last_seq = max(self._last_seq + 1, time.monotonic_ns())
            return self._last_seq

    def _save_params(self, record: Checkpoint, lease_seconds: float | None) -> dict[str, Any]:
        return {
            "seq": self._next_seq(),
            "job": record.job,
            "run": record.run,
            "epoch": record.epoch,
            "status": record.status,
            "record": encode_record(record),
            "lease": None if lease_seconds is None else float(lease_seconds),
            "done": record.done,
            "failed": record.failed,
            "keep": self._history_limit,
        }

    def _exec_save(self, conn: psycopg.Connection, params: dict[str, Any]) -> tuple[float, float | None]:
        query = self._sql["save" if self._history_limit else "save_no_history"]
        row = conn.execute(query, params).fetchone()
        if row is None:  # the rare path: a second statement to tell why
            saved = conn.execute(self._sql["saved"], {"job": params["job"], "run": params["run"]}).fetchone()
            if saved is not None and int(saved[0]) == params["epoch"] and int(saved[1]) >= params["seq"]:
                # Our epoch, and this save (a retry whose first attempt committed) or a later
                # one of ours is stored already: nothing to write, the stored times answer.
                return float(saved[2]), saved[3]
            raise _Stale(None if saved is None else int(saved[0]))
        return float(row[0]), row[1]

    def _stored_epoch(self, conn: psycopg.Connection, params: dict[str, Any]) -> int | None:
        row = conn.execute(self._sql["epoch"], {"job": params["job"], "run": params["run"]}).fetchone()
        return None if row is None else int(row[0])

    def _jsonb(self, value: dict[str, Any]) -> Any:
        from psycopg.types.json import Jsonb

        return Jsonb(value)

    def _decode(self, row: tuple[Any, ...], *, lenient: bool = False) -> Checkpoint:
        job, run, text, epoch, status, owner, lease, heartbeat, updated, started = row
        where = f"checkpoint of job {job!r} run {run!r} in {self.display}"
        if status not in STATUSES:
            raise CheckpointCorrupt(f"{where}: unknown status {status!r}")
        try:
            rec = decode_record(text, where=where, expect=(job, run))
        except CheckpointCorrupt:
            if not lenient:
                raise
            rec = Checkpoint(job=job, run=run, epoch=epoch)  # cleanup reports what it removed anyway
        return rec.replace(
            job=job,
            run=run,
            epoch=int(epoch),
            status=status,
            owner=Owner.from_dict(owner) if isinstance(owner, dict) else None,
            lease_expires=lease,
            heartbeat=heartbeat,
            updated=updated,
            started=started,
        )

    def _call(self, what: str, fn: Callable[[psycopg.Connection], T]) -> T:
        """Run ``fn(connection)`` under the lock, retrying transient failures within the budget."""

        def attempt() -> T:
            with self._lock:
                conn = self._conn
                if conn is None or conn.closed or conn.broken:
                    if conn is not None:
                        conn.close()
                    self._conn = None
                    conn = self._conn = self._open_connection(autocommit=True)
                try:
                    return fn(conn)
                except self._pg.Error as exc:
                    if conn.broken or conn.closed:
                        self._conn = None
                        conn.close()
                    raise self._translate(exc, what)

        if self._quick:
            # A read a person waits for: the budget counts from this attempt, the retries
            # are quiet, and each attempt reconnects by itself (no second connect before it).
            return call_with_retry(
                attempt,
                seconds=self._retry_seconds,
                transient=self._transient,
                display=self.display,
                what=f"{what} on the PostgreSQL store",
                quick=True,
            )
        # The first attempt runs bare: building tenacity's retry loop costs ~30 µs, a
        # tenth of a checkpoint. Only after a transient failure does the operation enter
        # call_with_retry, whose budget then covers the retries.
        try:
            return attempt()
        except self._transient as exc:
            log.warning("%s on %s failed (%s); retrying", what, self.display, self._scrub(one_line(exc)))
            try:
                self._reconnect(exc)
            except self._transient:
                pass  # the retry loop tries again
        return call_with_retry(
            attempt,
            seconds=self._retry_seconds,
            transient=self._transient,
            display=self.display,
            what=f"{what} on the PostgreSQL store",
            before_retry=self._reconnect,
        )

    def _reconnect(self, exc: BaseException) -> None:
        """Before a retry: replace a lost connection (a failure here is retried too)."""
        with self._lock:
            if self._conn is not None and not (self._conn.closed or self._conn.broken):
                return
            self._conn = None
            self._conn = self._open_connection(autocommit=True)

    def _open_connection(self, *, autocommit: bool) -> psycopg.Connection:
        pg = self._pg
        try:
            # A server that stops answering must not hang a job: the connect is bounded
            # (connect_timeout) and so is every later wait for an answer (read_timeout).
            conn: psycopg.Connection = self._pgconn.connect(
                self._conninfo,
                autocommit=autocommit,
                display=self.display,
                read_timeout=self._read_timeout,
                connect_timeout=self._connect_timeout,
            )
        except pg.Error as exc:
            raise self._translate(exc, "connect", connecting=True) from None
        try:
            if self.read_only:
                # Defence in depth behind the refused write methods: the server refuses too.
                conn.execute("SET default_transaction_read_only TO on")
            else:
                # The contract wants a returned save to survive a power loss, whatever the
                # server's default; this session's commits wait for the WAL flush.
                conn.execute("SET synchronous_commit TO on")
            if not autocommit:
                conn.commit()
        except BaseException:
            conn.close()
            raise
        return conn

    def _translate(self, exc: BaseException, what: str, *, connecting: bool = False) -> BaseException:
        """The error to raise for a driver error: ours when retrying cannot help, else ``exc`` itself."""
        pg = self._pg
        raw = one_line(exc)  # libpq's messages end in a newline and indent their hints
        message = self._scrub(raw)
        sqlstate = getattr(exc, "sqlstate", None) or ""
        kind = classify(exc, pg, message, connecting=connecting, transient=self._transient)
        err: BaseException | None = None
        if kind == "denied":
            err = PermissionDenied(
                f"{what} on {self.display} was refused ({message}): check the user and password in the URL, "
                f"pg_hba.conf, and that the user may CREATE in the database or owns schema {self._schema!r}"
            )
        elif kind == "config":
            err = ConfigError(f"{what} on {self.display} failed ({message}): fix the store URL or create the database")
        elif isinstance(exc, pg.ProgrammingError) and sqlstate in ("42P01", "3F000"):
            err = ConfigError(
                f"{what} on {self.display} failed ({message}): the tables in schema {self._schema!r} are gone "
                "(dropped while in use?); open the store again to recreate them"
            )
        elif kind == "transient":
            return exc  # retried by call_with_retry (connection lost, server restarting, deadlock...)
        else:
            err = StoreUnavailable(f"{what} on {self.display} failed: {message}")
        # Keep the driver error as the cause unless it would print the password.
        err.__cause__ = None if message != raw else exc
        err.__suppress_context__ = True
        return err

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)
