"""The PostgreSQL storage of the work queue (:class:`restartable.WorkQueue`): ``FOR UPDATE SKIP LOCKED``.

Each operation is one statement on an autocommit connection, with the fencing
comparison inside it; times are the server's. ``complete`` answers True when the task
is done by this claim's epoch, also when an earlier attempt of the same call committed
before the connection dropped: only this claim can complete with its epoch. The tables
(``queue_tasks``, ``queues``) are version 4 of the store's migrations
(:mod:`restartable._postgres.schema`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .._queue_types import Counts, Row
from .._retry import call_with_retry
from .._url import StoreURL
from ..errors import MissingDriver, StoreUnavailable
from ..stores.base import epoch_step
from . import xact as _xact
from .schema import check_schema, migrate

T = TypeVar("T")

_LEASE = "statement_timestamp() + %(lease)s::float8 * interval '1 second'"
_LIVE = "lease_expires > statement_timestamp()"
_KEY = "queue = %(q)s AND key = %(key)s"
_MINE = f"{_KEY} AND epoch = %(epoch)s AND done_at IS NULL"

_SQL = {
    "filled": "SELECT filled_at IS NOT NULL FROM {s}.queues WHERE queue = %(q)s",
    "mark_filled": "INSERT INTO {s}.queues (queue, filled_at) VALUES (%(q)s, statement_timestamp()) "
    "ON CONFLICT (queue) DO UPDATE SET filled_at = coalesce({s}.queues.filled_at, excluded.filled_at)",
    "fill": "INSERT INTO {s}.queue_tasks (queue, key, payload) "
    "SELECT %(q)s, k, p::jsonb FROM unnest(%(keys)s::text[], %(payloads)s::text[]) AS t(k, p) "
    "ON CONFLICT (queue, key) DO NOTHING",
    # The oldest claimable task, skipping rows another worker is claiming right now.
    "claim": f"""
        WITH next AS (
            SELECT key FROM {{s}}.queue_tasks
            WHERE queue = %(q)s AND done_at IS NULL AND (lease_expires IS NULL OR NOT {_LIVE})
            ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
        UPDATE {{s}}.queue_tasks t SET epoch = t.epoch + %(step)s::bigint, owner = %(owner)s, attempts = t.attempts + 1,
            lease_expires = {_LEASE}
        FROM next WHERE t.queue = %(q)s AND t.key = next.key
        RETURNING t.key, t.payload, t.epoch, t.attempts, t."offset\"""",
    "renew": f"UPDATE {{s}}.queue_tasks SET lease_expires = {_LEASE} WHERE {_MINE} RETURNING 1",
    "complete": f"UPDATE {{s}}.queue_tasks SET done_at = statement_timestamp(), lease_expires = NULL "
    f"WHERE {_MINE} RETURNING 1",
    "release": f"UPDATE {{s}}.queue_tasks SET lease_expires = NULL, owner = NULL WHERE {_MINE} RETURNING 1",
    "checkpoint": f'UPDATE {{s}}.queue_tasks SET "offset" = %(offset)s, lease_expires = {_LEASE} '
    f"WHERE {_MINE} RETURNING 1",
    "holder": f"SELECT epoch, owner, done_at IS NOT NULL FROM {{s}}.queue_tasks WHERE {_KEY}",
    "counts": f"""
        SELECT count(*), count(*) FILTER (WHERE done_at IS NOT NULL),
            count(*) FILTER (WHERE done_at IS NULL AND {_LIVE}),
            extract(epoch FROM min(lease_expires) FILTER (WHERE done_at IS NULL AND {_LIVE})
                - statement_timestamp())::float8
        FROM {{s}}.queue_tasks WHERE queue = %(q)s""",
    "drop_tasks": "DELETE FROM {s}.queue_tasks WHERE queue = %(q)s",
    "drop_queue": "DELETE FROM {s}.queues WHERE queue = %(q)s",
}


class PostgresQueue:
    """The queue's tasks as rows of ``{schema}.queue_tasks``; one autocommit connection, locked."""

    options = frozenset({"schema", "retry", "history", "read_timeout"})

    def __init__(self, url: StoreURL, name: str, *, retry: float) -> None:
        try:
            import psycopg
            from psycopg import sql
        except ImportError:
            raise MissingDriver(
                f"a work queue on {url.display} needs psycopg: pip install 'restartable[postgres]'"
            ) from None
        from .conn import parse_read_timeout

        self._pg = psycopg
        self.display = url.display
        self._url = url.driver_url
        # Ours, like the store's: taken out of the URL (libpq would refuse it) and checked now.
        self._read_timeout = parse_read_timeout(url.options.get("read_timeout"), url.display)
        self._name = name
        self._retry = retry
        schema = check_schema(url.options.get("schema", "restartable"), url.display)
        ident = sql.Identifier(schema)
        self._sql = {k: sql.SQL(v).format(s=ident) for k, v in _SQL.items()}
        self._schema = schema
        self._lock = threading.Lock()
        self._conn: Any = None
        self._tx_conn: Any = None
        self._call("open", self._create)

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = _pg_connect(self._url, autocommit=True, display=self.display, read_timeout=self._read_timeout)
        return self._conn

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        def attempt() -> T:
            with self._lock:
                return fn(self._connect())

        def reconnect(exc: BaseException) -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None

        return call_with_retry(
            attempt,
            seconds=self._retry,
            transient=(self._pg.OperationalError, self._pg.InterfaceError),
            display=self.display,
            what=f"queue {what}",
            before_retry=reconnect,
        )

    def _create(self, conn: Any) -> None:
        # The queue's tables are versioned migrations of the store's schema (version 4):
        # workers that start together serialize on the migration's advisory lock.
        migrate(conn, self._schema)

    def _one(self, what: str, params: dict[str, Any]) -> Any:
        params = {"q": self._name, **params}
        return self._call(what, lambda c: c.execute(self._sql[what], params).fetchone())

    def filled(self) -> bool:
        row = self._one("filled", {})
        return bool(row and row[0])

    def mark_filled(self) -> None:
        self._call("fill", lambda c: c.execute(self._sql["mark_filled"], {"q": self._name}))

    def fill(self, rows: list[tuple[str, str]]) -> int:
        params = {"q": self._name, "keys": [k for k, _ in rows], "payloads": [p for _, p in rows]}
        return int(self._call("fill", lambda c: c.execute(self._sql["fill"], params).rowcount))  # one statement

    def claim(self, owner: str, lease: float) -> Row | None:
        # A claim's epoch step is random (base.next_epoch): never the epoch a lost write gave.
        row = self._one("claim", {"owner": owner, "lease": lease, "step": epoch_step()})
        return None if row is None else Row(row[0], row[1], int(row[2]), int(row[3]), int(row[4]))

    def renew(self, key: str, epoch: int, lease: float) -> bool:
        return self._one("renew", {"key": key, "epoch": epoch, "lease": lease}) is not None

    def complete(self, key: str, epoch: int) -> bool:
        if self._one("complete", {"key": key, "epoch": epoch}) is not None:
            return True
        return self._done_by(key, epoch)

    def _done_by(self, key: str, epoch: int) -> bool:
        held = self.holder(key)
        return held[2] and held[0] == epoch

    def release(self, key: str, epoch: int) -> bool:
        return self._one("release", {"key": key, "epoch": epoch}) is not None

    def checkpoint(self, key: str, epoch: int, offset: int, lease: float) -> bool:
        return self._one("checkpoint", {"key": key, "epoch": epoch, "offset": offset, "lease": lease}) is not None

    def holder(self, key: str) -> tuple[int, str | None, bool]:
        row = self._one("holder", {"key": key})
        return (0, None, False) if row is None else (int(row[0]), row[1], bool(row[2]))

    def counts(self) -> Counts:
        total, done, leased, expiry = self._one("counts", {})
        return Counts(int(total), int(done), int(leased), None if expiry is None else float(expiry))

    def drop(self) -> None:
        self._call(
            "drop",
            lambda c: (
                c.execute(self._sql["drop_tasks"], {"q": self._name}),
                c.execute(self._sql["drop_queue"], {"q": self._name}),
            ),
        )

    @contextmanager
    def transaction(self, key: str, epoch: int) -> Iterator[tuple[Any, dict[str, bool]]]:
        """Yield ``(conn, result)``: the caller's writes, then the fenced completion, in one commit.

        ``result["ok"]`` is False (and everything rolled back) when the claim was fenced.
        """
        pg = self._pg
        if self._tx_conn is None or self._tx_conn.closed or self._tx_conn.broken:
            try:
                self._tx_conn = _pg_connect(
                    self._url, autocommit=False, display=self.display, read_timeout=self._read_timeout
                )
            except pg.OperationalError as exc:
                raise StoreUnavailable(f"queue transaction: cannot connect to {self.display} ({exc})") from exc
        conn, result = self._tx_conn, {"ok": False, "in_doubt": False}
        try:
            yield conn, result
            ref = _xact.note(conn)  # before COMMIT: what lets a lost answer be asked about
            row = conn.execute(self._sql["complete"], {"q": self._name, "key": key, "epoch": epoch}).fetchone()
        except BaseException as exc:
            _rollback(conn)
            if isinstance(exc, pg.OperationalError):
                raise StoreUnavailable(
                    f"queue transaction on {self.display} failed ({exc}); nothing of it was committed"
                ) from exc
            raise
        if row is None:  # fenced: the output must not commit either
            _rollback(conn)
            return
        try:
            conn.commit()
        except pg.Error as exc:
            if not (conn.broken or conn.closed):
                raise  # a definite failure (a deferred constraint): rolled back, the caller's
            # The answer was lost: the server may still be committing, so reading the task at once
            # cannot tell "not committed" from "not yet". Ask until the answer is final.
            what = f"queue transaction of task {key!r} (claim {epoch}) on {self.display}"
            outcome = self._resolve(ref, key, epoch, what)
            if outcome == _xact.ABORTED:
                raise StoreUnavailable(
                    f"{what} lost its connection during COMMIT ({exc}); the server shows it did "
                    "not commit (nor did the output)"
                ) from exc
            if outcome == _xact.UNKNOWN:
                result["in_doubt"] = True
                raise StoreUnavailable(
                    f"{what} lost its connection during COMMIT ({exc}) and whether it committed "
                    "could not be settled; the claim is left to expire (not released): the task "
                    "is claimed again only if it did not commit"
                ) from exc
        result["ok"] = True

    def _resolve(self, ref: _xact.XactRef, key: str, epoch: int, what: str) -> str:
        """Committed, aborted or unknown, asked on new connections (the shared one may be blocked
        behind the orphan's row lock, in the heartbeat's renew)."""
        pg = self._pg

        def connect() -> Any:
            return _pg_connect(self._url, autocommit=True, display=self.display, read_timeout=self._read_timeout)

        def shows_commit(conn: Any) -> bool:
            # Only this claim can complete the task with its epoch: done by it proves the commit.
            row = conn.execute(self._sql["holder"], {"q": self._name, "key": key}).fetchone()
            return row is not None and bool(row[2]) and int(row[0]) == epoch

        return _xact.resolve(
            ref,
            connect=connect,
            shows_commit=shows_commit,
            budget=self._retry,
            what=what,
            transient=(pg.OperationalError, pg.InterfaceError),
        )

    def close(self) -> None:
        for conn in (self._conn, self._tx_conn):
            if conn is not None:
                conn.close()
        self._conn = self._tx_conn = None


def _pg_connect(url: str, *, autocommit: bool, display: str, read_timeout: float) -> Any:
    """A connection whose every read is bounded by ``read_timeout`` (?read_timeout=; see conn.py)."""
    from . import conn as _pgconn  # imports psycopg: only once a PostgreSQL queue connects

    return _pgconn.connect(url, autocommit=autocommit, display=display, connect_timeout=5, read_timeout=read_timeout)


def _rollback(conn: Any) -> None:
    if conn.closed or conn.broken:
        return
    try:
        conn.rollback()
    except Exception:  # noqa: BLE001 - keep the error that got us here
        conn.close()
