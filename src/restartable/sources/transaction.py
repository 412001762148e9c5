"""Exactly-once output: the caller's writes and the checkpoint's advance in ONE transaction.

::

    with Job("copy", store="postgresql://db/app?schema=ckpt") as job:
        for batch in job.batches(PostgresTable("postgresql://db/app", "src", key="id")):
            with job.transaction() as tx:            # a psycopg connection, transaction open
                with tx.cursor() as cur:
                    cur.executemany("INSERT INTO dst (id, v) VALUES (%s, %s)",
                                    [(r["id"], r["v"] * 2) for r in batch])

The contract:

* Only inside a ``job.batches`` loop, at most once per batch (UsageError otherwise).
* The connection handed out is in an open transaction on the STORE's database: a new
  psycopg connection (not autocommit) for a ``postgresql://`` store, kept for the
  loop; the store's own sqlite3 connection inside ``BEGIN IMMEDIATE`` for a
  ``sqlite://`` store. Other stores are refused (UsageError): they cannot commit
  with your data. Your output tables must live in that same database, so that the
  output and the checkpoint are one transaction.
* When the block succeeds, the checkpoint is written in that transaction with the
  position AFTER the batch in flight (and ``job.state`` as it is then), and both are
  committed together. The batch is then done at once. A SIGKILL at any moment
  leaves either both (the rerun starts after the batch) or neither (the rerun redoes
  the batch, whose earlier writes were rolled back): no row missing, none twice.
* When the block raises, everything is rolled back and the exception goes on; the
  batch is not done. ``job.state`` changes made in the block stay in memory.
* Fenced (a newer runner owns the run): the transaction is rolled back, so a stale
  runner commits no output, and Fenced is raised (exit 75).
* A lost connection: in the block or while saving, nothing was committed and
  StoreUnavailable is raised (exit 75; the rerun redoes the batch). During COMMIT the
  outcome is unknown, so the checkpoint is read back (with the store's retries)
  before anything else: when it holds this batch's position the commit happened and
  the loop goes on; otherwise it did not (nor did the output), and StoreUnavailable
  is raised so that the rerun resumes from what committed. The block itself is never
  run twice by us: it is the caller's code.
"""

from __future__ import annotations

import logging
import select
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..checkpoint import RUNNING, Checkpoint
from ..errors import Fenced, StoreUnavailable, UsageError
from ..stores.postgres import PostgresStore
from ..stores.sqlite import SQLiteStore
from .batches import _Run, active_batch

if TYPE_CHECKING:
    from ..job import Job

__all__ = ["transaction"]

log = logging.getLogger("restartable")


def transaction(job: Job) -> Any:
    """A context manager yielding a connection whose commit includes the batch's checkpoint.

    See the module docstring. Yields a ``psycopg.Connection`` for a PostgreSQL
    store, a ``sqlite3.Connection`` for a SQLite store.
    """
    run = active_batch(job)
    if run is not None and run.committed:
        raise UsageError(
            f"{job.label}: this batch was already committed by a job.transaction(); use one transaction per "
            "batch (a second one could be redone after a crash without the first)"
        )
    if run is None or run.pending is None:
        raise UsageError(
            f"{job.label}: job.transaction() belongs inside `for batch in job.batches(...)`: it commits your "
            "writes together with the position after the batch in flight"
        )
    store = job.store
    if isinstance(store, PostgresStore):
        return _postgres(job, run, store)
    if isinstance(store, SQLiteStore):
        return _sqlite(job, run, store)
    raise UsageError(
        f"{job.label}: job.transaction() needs a postgresql:// or sqlite:// store, whose database also holds "
        f"your output; {store.display} cannot commit with it. Use one of those stores, or write idempotent "
        "output (an upsert keyed on the batch's keys)"
    )


@contextmanager
def _postgres(job: Job, run: _Run, store: PostgresStore) -> Iterator[Any]:
    import psycopg

    if job._fenced is not None:
        raise job._fenced
    conn = run.resources.get("postgres-transaction")
    if conn is None or not _usable(conn):
        if conn is not None:
            conn.close()
        conn = store._connect()  # rides out a restart within the store's retry budget
        run.resources["postgres-transaction"] = conn
    what = f"{job.label}: the transaction of batch after {_key_text(run)} on {store.display}"
    try:
        yield conn
    except BaseException as exc:
        _rollback(conn)
        if isinstance(exc, psycopg.Error) and conn.broken:
            raise StoreUnavailable(f"{what} lost its connection ({exc}); nothing of it was committed, "
                                   "a rerun does the batch again") from exc
        raise
    try:
        record = _record_after_batch(job, run)
        saved = store._save_in(conn, record, lease_seconds=job.lease_seconds)
    except Fenced as exc:
        _rollback(conn)
        if job._fenced is None:
            job._fence(exc)
        raise
    except psycopg.Error as exc:
        _rollback(conn)
        raise StoreUnavailable(f"{what} could not save the checkpoint ({exc}); nothing of it was committed, "
                               "a rerun does the batch again") from exc
    except BaseException:
        _rollback(conn)
        raise
    try:
        conn.commit()
    except psycopg.Error as exc:
        if not conn.broken:
            raise  # a definite failure (a deferred constraint, a serialization failure): rolled back, yours
        log.warning("%s: the connection dropped during COMMIT (%s); reading the checkpoint back", what, exc)
        saved = _resolve_commit(job, store, record, what, exc)
    _adopt(job, run, saved)


@contextmanager
def _sqlite(job: Job, run: _Run, store: SQLiteStore) -> Iterator[sqlite3.Connection]:
    if job._fenced is not None:
        raise job._fenced
    what = f"{job.label}: the transaction of batch after {_key_text(run)} on {store.display}"
    record: Checkpoint | None = None
    try:
        # BEGIN IMMEDIATE ... COMMIT on the store's own connection; rolled back on any raise.
        with store.transaction() as conn:
            yield conn
            record = _record_after_batch(job, run)
            saved = store.save(record, lease_seconds=job.lease_seconds)  # joins the open transaction
    except Fenced as exc:
        if job._fenced is None:
            job._fence(exc)
        raise
    except StoreUnavailable as exc:
        if record is None:
            raise
        # A failed COMMIT (an I/O error) is read back too: never guess whether it happened.
        saved = _resolve_commit(job, store, record, what, exc)
    _adopt(job, run, saved)


def _record_after_batch(job: Job, run: _Run) -> Checkpoint:
    """The record ``Job._save(RUNNING)`` would write, with the batch in flight counted as done."""
    assert run.pending is not None and job.record is not None
    n, last = run.pending
    cur = run.cursor
    positions = job._positions()
    position = dict(positions.get(cur.name, {}))
    position.update(offset=cur.offset + n, key=last, finished=False)
    positions[cur.name] = position
    return job._record_for_save(RUNNING, positions=positions)


def _resolve_commit(job: Job, store: Any, record: Checkpoint, what: str, exc: BaseException) -> Checkpoint:
    """After a COMMIT whose outcome is unknown: the stored record if it is ours, else raise.

    The position after the batch is unique (keys only increase), so finding it in the
    store proves this transaction committed, and with it the caller's output.
    """
    stored = store.load(job.name, job.run)  # retries within the store's budget, or StoreUnavailable
    if stored is not None and stored.epoch != record.epoch:
        fenced = store._fenced(job.name, job.run, record.epoch, stored.epoch)
        job._fence(fenced)
        raise fenced
    if stored is not None and _same_position(stored, record):
        log.warning("%s: the checkpoint shows the commit happened; going on", what)
        return stored
    raise StoreUnavailable(
        f"{what} failed during COMMIT ({exc}); the checkpoint read back shows it did not commit (nor did the "
        "output): a rerun does the batch again"
    ) from exc


def _same_position(stored: Checkpoint, record: Checkpoint) -> bool:
    return all(
        stored.positions.get(name, {}).get("key") == pos.get("key")
        and stored.positions.get(name, {}).get("offset") == pos.get("offset")
        for name, pos in record.positions.items()
    )


def _adopt(job: Job, run: _Run, saved: Checkpoint) -> None:
    """The transaction committed: the batch is done in memory too, as ``Job._save`` would record it."""
    run.advance()
    run.committed = True
    job._adopt_saved(saved)


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


def _key_text(run: _Run) -> str:
    key = run.cursor.extra.get("key")
    return "the start" if key is None else f"key {key!r:.60}"
