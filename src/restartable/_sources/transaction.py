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
  (:mod:`restartable._postgres.xact`): the transaction's id, read before COMMIT, is asked about
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
import time
from contextlib import AbstractContextManager
from typing import Any, Protocol

from .._checkpoint import RUNNING, Checkpoint
from .._run import RunContext
from ..errors import Fenced, StoreUnavailable, UsageError
from .batches import BatchRun, active_batch, retry_budget

__all__ = [
    "BatchTransactions",
    "adopt",
    "error_text",
    "give_back",
    "in_doubt",
    "key_text",
    "record_after_batch",
    "retry_budget",
    "same_position",
    "transaction",
]

log = logging.getLogger("restartable")


class BatchTransactions(Protocol):
    """What a store's ``transactional()`` returns (see :meth:`restartable.stores.Store.transactional`).

    ``batch_transaction(ctx, run)`` yields a connection in an open transaction on the
    store's database; when the block succeeds it saves :func:`record_after_batch` in that
    transaction, commits, and calls :func:`adopt`; when the block raises it rolls back and
    restores the batch's snapshot (``run.restore()``); a lost connection gives the batch
    back (:func:`give_back`); a COMMIT whose answer was lost is resolved before anything
    else is written, or the runner stops writing (:func:`in_doubt`).
    """

    def batch_transaction(self, ctx: RunContext, run: BatchRun) -> AbstractContextManager[Any]: ...


def transaction(job: RunContext) -> Any:
    """A context manager yielding a connection whose commit includes the batch's checkpoint.

    See the module docstring. Yields a ``psycopg.Connection`` for a PostgreSQL
    store, a ``sqlite3.Connection`` for a SQLite store: the store says what it offers
    (``store.transactional()``), nothing here knows the databases.
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
    transactions: BatchTransactions | None = store.transactional()
    if transactions is None:
        raise UsageError(
            f"{job.label}: job.transaction() needs a postgresql:// or sqlite:// store, whose database also holds "
            f"your output; {store.display} cannot commit with it. Use one of those stores, or write idempotent "
            "output (an upsert keyed on the batch's keys)"
        )
    return transactions.batch_transaction(job, run)


def record_after_batch(job: RunContext, run: BatchRun) -> Checkpoint:
    """The record ``Job._save(RUNNING)`` would write, with the batch in flight counted as done."""
    assert run.pending is not None and job.record is not None
    n, last = run.pending
    cur = run.cursor
    positions = job.positions()
    position = dict(positions.get(cur.name, {}))
    position.update(offset=cur.offset + n, key=last, finished=False)
    positions[cur.name] = position
    return job.record_for_save(RUNNING, positions=positions)


def same_position(stored: Checkpoint, record: Checkpoint) -> bool:
    return all(
        stored.positions.get(name, {}).get("key") == pos.get("key")
        and stored.positions.get(name, {}).get("offset") == pos.get("offset")
        for name, pos in record.positions.items()
    )


def adopt(job: RunContext, run: BatchRun, saved: Checkpoint) -> None:
    """The transaction committed: the batch is done in memory too, as ``Job._save`` would record it."""
    run.advance()
    run.committed = True
    job.adopt_saved(saved)


def give_back(job: RunContext, run: BatchRun, what: str, exc: BaseException, why: str) -> None:
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
            f"{what} {why} ({error_text(exc)}), attempt {run.failures} over {spent:.1f}s; nothing of it was "
            f"committed and the retry budget of {budget:g}s is spent: a rerun does the batch again (raise it with "
            "the store URL option ?retry=SECONDS)"
        ) from exc
    log.warning(
        "%s %s (%s); nothing of it was committed: job.state is restored and the batch handed out again "
        "(attempt %d, %.1fs of the %gs retry budget)",
        what,
        why,
        error_text(exc),
        run.failures + 1,
        spent,
        budget,
    )
    run.given_back = True


def in_doubt(job: RunContext, what: str, exc: BaseException) -> StoreUnavailable:
    """The COMMIT's outcome stays unknown: write nothing more at this epoch (as if fenced)."""
    message = (
        f"{what} lost its COMMIT's answer ({error_text(exc)}) and whether it committed could not be "
        f"settled; this runner writes nothing more at epoch {job.epoch} (an older checkpoint could overwrite "
        "the commit as it lands). The next runner takes a new epoch and resumes from what committed: rerun"
    )
    if job.fenced is None:
        job.fence(Fenced(message))
    return StoreUnavailable(message)


def error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def key_text(run: BatchRun) -> str:
    key = run.cursor.extra.get("key")
    return "the start" if key is None else f"key {key!r:.60}"
