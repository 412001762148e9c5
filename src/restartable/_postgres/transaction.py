"""``job.transaction()`` on a PostgreSQL store: the caller's writes and the checkpoint in one commit.

The contract is :mod:`restartable._sources.transaction`'s; this is its PostgreSQL side:
a connection of the store's own database kept for the batch loop, the checkpoint saved
in the caller's transaction (``PostgresStore._save_in``, fenced by the epoch), a lost
connection that gives the batch back, and a COMMIT whose answer was lost resolved by
:mod:`restartable._postgres.xact` before anything else is written.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from .._checkpoint import Checkpoint
from .._run import RunContext
from .._sources.batches import BatchRun, retry_budget
from .._sources.transaction import adopt, error_text, give_back, in_doubt, key_text, record_after_batch, same_position
from ..errors import Fenced, StoreUnavailable
from . import xact as _xact


class PostgresStore(Protocol):
    """What this module uses of :class:`restartable._postgres.store.PostgresStore` (its ``transactional()``
    hands itself over): typed here so that the store module, which imports this one, is not imported back."""

    display: str

    def _connect(self) -> Any: ...

    def _save_in(self, conn: Any, record: Checkpoint, *, lease_seconds: float | None) -> Checkpoint: ...

    def load_in(self, conn: Any, job: str, run: str, *, epoch: int | None = None) -> Checkpoint | None: ...


__all__ = ["PostgresTransactions"]

log = logging.getLogger("restartable")


class PostgresTransactions:
    """The batch transactions of one PostgreSQL store (its ``transactional()``)."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def batch_transaction(self, ctx: RunContext, run: BatchRun) -> Any:
        return _postgres(ctx, run, self.store)


@contextmanager
def _postgres(job: RunContext, run: BatchRun, store: PostgresStore) -> Iterator[Any]:
    import psycopg

    job.raise_if_fenced()
    conn = run.resources.get("postgres-transaction")
    if conn is None or not _usable(conn):
        if conn is not None:
            conn.close()
        conn = store._connect()  # rides out a restart within the store's retry budget
        run.resources["postgres-transaction"] = conn
    what = f"{job.label}: the transaction of batch after {key_text(run)} on {store.display}"
    try:
        yield conn
    except BaseException as exc:
        _rollback(conn)
        run.restore()
        if _lost(exc, conn, psycopg):
            give_back(job, run, what, exc, "lost its connection")
            return  # suppressed: the loop hands the batch out again
        raise
    try:
        # Before the save: the id that lets a lost COMMIT's outcome be asked for later.
        ref = _xact.note(conn)
        record = record_after_batch(job, run)
        saved = store._save_in(conn, record, lease_seconds=job.lease_seconds)
    except Fenced as exc:
        _rollback(conn)
        run.restore()
        if job.fenced is None:
            job.fence(exc)
        raise
    except psycopg.Error as exc:
        _rollback(conn)
        run.restore()
        if _lost(exc, conn, psycopg):
            give_back(job, run, what, exc, "lost its connection while saving the checkpoint")
            return
        raise StoreUnavailable(
            f"{what} could not save the checkpoint ({exc}); nothing of it was committed, a rerun does the batch again"
        ) from exc
    except BaseException:
        _rollback(conn)
        run.restore()
        raise
    try:
        conn.commit()
    except psycopg.Error as exc:
        if not _lost(exc, conn, psycopg):
            run.restore()
            raise  # a definite failure (a deferred constraint, a serialization failure): rolled back, yours
        log.warning(
            "%s: the connection was lost during COMMIT (%s); asking the server whether it committed "
            "before anything else is written",
            what,
            error_text(exc),
        )
        outcome = _resolve_postgres(job, store, ref, record, what)
        if outcome == _xact.ABORTED:
            run.restore()
            give_back(job, run, what, exc, "was not committed (its COMMIT's answer was lost)")
            return
        if outcome == _xact.UNKNOWN:
            raise in_doubt(job, what, exc) from exc
        log.warning("%s: the server shows that it committed; going on", what)
    except BaseException as exc:
        # Interrupted while waiting for COMMIT's answer (KeyboardInterrupt without our signal
        # handlers): the outcome is unknown and there is no time to ask. Write nothing more.
        in_doubt(job, what, exc)
        raise
    adopt(job, run, saved)


def _resolve_postgres(job: RunContext, store: PostgresStore, ref: _xact.XactRef, record: Checkpoint, what: str) -> str:
    """Committed, aborted or unknown: asked on NEW connections (the store's own may be blocked
    behind the orphan's row lock, in the heartbeat thread's renew)."""
    import psycopg

    def connect() -> Any:
        conn = store._connect()
        conn.autocommit = True
        return conn

    def shows_commit(conn: Any) -> bool:
        try:
            stored = store.load_in(conn, job.name, job.run, epoch=record.epoch)
        except Fenced as fenced:
            job.fence(fenced)
            raise
        # The position after the batch is unique (keys only increase) and only this runner
        # writes at its epoch: finding it proves that this transaction committed.
        return stored is not None and same_position(stored, record)

    return _xact.resolve(
        ref,
        connect=connect,
        shows_commit=shows_commit,
        budget=retry_budget(job),
        what=what,
        transient=(psycopg.OperationalError, psycopg.InterfaceError, StoreUnavailable),
    )


def _lost(exc: BaseException, conn: Any, psycopg: Any) -> bool:
    """A connection-level failure: the connection is gone, so its transaction did not commit.

    The store's read deadline closes the connection too. An error of the caller's own
    SQL leaves the connection usable, and the caller's own exceptions are not psycopg's.
    """
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and (conn.broken or conn.closed)


def _usable(conn: Any) -> bool:
    """False when the idle connection is known lost, or the server said something unasked.

    An idle connection has nothing to read, unless the server ended it (a restart sends
    "terminating connection" and closes): one poll, no round trip, saves handing the
    caller a dead connection that would fail the batch after a restart between batches.
    """
    if conn.closed or conn.broken:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _rollback(conn: Any) -> None:
    """Roll back, keeping the error that got us here; a connection that cannot is closed."""
    if conn.closed or conn.broken:
        return
    try:
        conn.rollback()
    except Exception:  # noqa: BLE001 - the original error is the one to report
        conn.close()
