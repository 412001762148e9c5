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
* When the block raises, everything is rolled back and ``job.state`` is put back, in
  place, to what it was when the batch was handed out (so it matches what is
  committed); the exception goes on and the batch is not done.
* Fenced (a newer runner owns the run): the transaction is rolled back, so a stale
  runner commits no output, and Fenced is raised (exit 75).
* A lost connection (a psycopg OperationalError that left the connection broken, the
  store's ``read_timeout`` included) in the block or while saving: nothing was
  committed. The batch is given back: ``job.state`` is restored, a warning names the
  batch and the attempt, the exception is suppressed, and the loop hands out THE SAME
  batch again (fetched again from its key) after a backoff, so a flaky network slows
  the job instead of failing it. Code after the ``with`` block runs for a given-back
  batch too: keep counters in ``job.state`` or inside the block. The store's ``retry``
  budget is counted from the batch's first failure; once spent, StoreUnavailable
  (exit 75; the rerun redoes the batch). Any other error, the caller's own SQL's
  included, is not retried.
* A lost connection during COMMIT: the outcome is unknown, and the server may still be
  committing. Nothing else is written for the run until it is resolved for certain
  (:mod:`restartable._xact`): the transaction's id, read before COMMIT, is asked about
  on new connections (``pg_xact_status``), with the checkpoint read back as the proof
  of a commit; a session still running it is ended so that the answer is final.
  Committed: the batch is done and the loop goes on. Not committed: the batch is
  given back as above. No final answer within the ``retry`` budget: this runner
  writes nothing more at its epoch (as if fenced: not even the final ``failed``
  save, which could overwrite the landing commit with an older position) and raises
  StoreUnavailable (exit 75); the next runner takes a new epoch and resumes from
  what committed. The block itself is never run twice by us for one handing-out:
  a given-back batch is handed out again by the loop.
* SQLite: COMMIT runs in this process, so when it fails the transaction is rolled back
  (or still open) before anything else happens; the checkpoint read back on the same
  connection then tells for certain whether it committed. A failed SQLite COMMIT is
  not retried (a full disk or an I/O error): StoreUnavailable.
"""

from __future__ import annotations

import logging
import select
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .. import _xact
from ..checkpoint import RUNNING, Checkpoint
from ..errors import Fenced, StoreUnavailable, UsageError
from ..stores.postgres import PostgresStore
from ..stores.sqlite import SQLiteStore
from .batches import _Run, active_batch

if TYPE_CHECKING:
    from ..job import Job

__all__ = ["transaction", "retry_budget"]

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
    if run is not None and run.given_back:
        raise UsageError(
            f"{job.label}: this batch's transaction was rolled back and the batch given back, to be handed out "
            "again by the loop; use one transaction per batch"
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


def retry_budget(job: Job) -> float:
    """Seconds a batch may keep failing on lost connections before StoreUnavailable: the store's ``retry``."""
    return float(getattr(job.store, "_retry_seconds", 0.0))


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
        run.restore()
        if _lost(exc, conn, psycopg):
            _give_back(job, run, what, exc, "lost its connection")
            return  # suppressed: the loop hands the batch out again
        raise
    try:
        # Before the save: the id that lets a lost COMMIT's outcome be asked for later.
        ref = _xact.note(conn)
        record = _record_after_batch(job, run)
        saved = store._save_in(conn, record, lease_seconds=job.lease_seconds)
    except Fenced as exc:
        _rollback(conn)
        run.restore()
        if job._fenced is None:
            job._fence(exc)
        raise
    except psycopg.Error as exc:
        _rollback(conn)
        run.restore()
        if _lost(exc, conn, psycopg):
            _give_back(job, run, what, exc, "lost its connection while saving the checkpoint")
            return
        raise StoreUnavailable(f"{what} could not save the checkpoint ({exc}); nothing of it was committed, "
                               "a rerun does the batch again") from exc
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
        log.warning("%s: the connection was lost during COMMIT (%s); asking the server whether it committed "
                    "before anything else is written", what, _one_line(exc))
        outcome = _resolve_postgres(job, store, ref, record, what)
        if outcome == _xact.ABORTED:
            run.restore()
            _give_back(job, run, what, exc, "was not committed (its COMMIT's answer was lost)")
            return
        if outcome == _xact.UNKNOWN:
            raise _in_doubt(job, what, exc) from exc
        log.warning("%s: the server shows that it committed; going on", what)
    except BaseException as exc:
        # Interrupted while waiting for COMMIT's answer (KeyboardInterrupt without our signal
        # handlers): the outcome is unknown and there is no time to ask. Write nothing more.
        _in_doubt(job, what, exc)
        raise
    _adopt(job, run, saved)


def _resolve_postgres(job: Job, store: PostgresStore, ref: _xact.XactRef, record: Checkpoint, what: str) -> str:
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
            job._fence(fenced)
            raise
        # The position after the batch is unique (keys only increase) and only this runner
        # writes at its epoch: finding it proves that this transaction committed.
        return stored is not None and _same_position(stored, record)

    return _xact.resolve(ref, connect=connect, shows_commit=shows_commit, budget=retry_budget(job), what=what,
                         transient=(psycopg.OperationalError, psycopg.InterfaceError, StoreUnavailable))


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
        run.restore()
        if job._fenced is None:
            job._fence(exc)
        raise
    except StoreUnavailable as exc:
        if record is None:
            run.restore()
            raise
        # COMMIT (or the save) failed in this process. SQLite has rolled back by now, or
        # the transaction is still open if even ROLLBACK failed: then nothing is certain
        # on this connection, and nothing more may be written at this epoch.
        if store._c.in_transaction:
            raise _in_doubt(job, what, exc) from exc
        saved = _resolve_commit(job, store, record, what, exc)
        if saved is None:
            run.restore()
            raise StoreUnavailable(
                f"{what} failed during COMMIT ({exc}); the checkpoint read back shows it did not commit (nor did "
                "the output): a rerun does the batch again"
            ) from exc
    except BaseException:
        run.restore()
        raise
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


def _resolve_commit(job: Job, store: Any, record: Checkpoint, what: str, exc: BaseException) -> Checkpoint | None:
    """SQLite, after a failed COMMIT already rolled back: the stored record if it is ours, else None.

    The position after the batch is unique (keys only increase), so finding it in the
    store proves this transaction committed, and with it the caller's output.
    """
    stored = store.load(job.name, job.run)
    if stored is not None and stored.epoch != record.epoch:
        fenced = store._fenced(job.name, job.run, record.epoch, stored.epoch)
        job._fence(fenced)
        raise fenced
    if stored is not None and _same_position(stored, record):
        log.warning("%s: the checkpoint shows the commit happened; going on", what)
        return stored
    return None


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


def _lost(exc: BaseException, conn: Any, psycopg: Any) -> bool:
    """A connection-level failure: the connection is gone, so its transaction did not commit.

    The store's read deadline closes the connection too. An error of the caller's own
    SQL leaves the connection usable, and the caller's own exceptions are not psycopg's.
    """
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and (conn.broken or conn.closed)


def _give_back(job: Job, run: _Run, what: str, exc: BaseException, why: str) -> None:
    """Nothing of the batch committed (``job.state`` is restored): give it back to the loop, or,
    once the retry budget since its first failure is spent, raise StoreUnavailable."""
    now = time.monotonic()
    if run.first_failure is None:
        run.first_failure = now
    run.failures += 1
    budget = retry_budget(job)
    spent = now - run.first_failure
    if spent >= budget:
        raise StoreUnavailable(
            f"{what} {why} ({_one_line(exc)}), attempt {run.failures} over {spent:.1f}s; nothing of it was "
            f"committed and the retry budget of {budget:g}s is spent: a rerun does the batch again (raise it with "
            "the store URL option ?retry=SECONDS)"
        ) from exc
    log.warning("%s %s (%s); nothing of it was committed: job.state is restored and the batch handed out again "
                "(attempt %d, %.1fs of the %gs retry budget)", what, why, _one_line(exc), run.failures + 1, spent,
                budget)
    run.given_back = True


def _in_doubt(job: Job, what: str, exc: BaseException) -> StoreUnavailable:
    """The COMMIT's outcome stays unknown: write nothing more at this epoch (as if fenced)."""
    message = (f"{what} lost its COMMIT's answer ({_one_line(exc)}) and whether it committed could not be "
               f"settled; this runner writes nothing more at epoch {job.epoch} (an older checkpoint could overwrite "
               "the commit as it lands). The next runner takes a new epoch and resumes from what committed: rerun")
    if job._fenced is None:
        job._fence(Fenced(message))
    return StoreUnavailable(message)


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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _key_text(run: _Run) -> str:
    key = run.cursor.extra.get("key")
    return "the start" if key is None else f"key {key!r:.60}"
