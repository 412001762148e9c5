"""``job.transaction()`` on a SQLite store: the caller's writes and the checkpoint in one commit.

The contract is :mod:`restartable._sources.transaction`'s; this is its SQLite side: the
store's own connection inside ``BEGIN IMMEDIATE``, the checkpoint saved in it (the
store's ``save`` joins the open transaction), and a failed COMMIT settled on the same
connection, where the checkpoint read back tells for certain whether it committed.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from .._checkpoint import Checkpoint
from .._run import RunContext
from .._sources.batches import BatchRun
from .._sources.transaction import adopt, in_doubt, key_text, record_after_batch, same_position
from ..errors import Fenced, StoreUnavailable


class SQLiteStore(Protocol):
    """What this module uses of :class:`restartable._sqlite.store.SQLiteStore` (its ``transactional()``
    hands itself over): typed here so that the store module, which imports this one, is not imported back."""

    display: str

    @property
    def _c(self) -> sqlite3.Connection: ...

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def save(self, record: Checkpoint, *, lease_seconds: float | None) -> Checkpoint: ...

    def load(self, job: str, run: str) -> Checkpoint | None: ...

    def _fenced(self, job: str, run: str, epoch: int, stored: int | None) -> Fenced: ...


__all__ = ["SQLiteTransactions"]

log = logging.getLogger("restartable")


class SQLiteTransactions:
    """The batch transactions of one SQLite store (its ``transactional()``)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def batch_transaction(self, ctx: RunContext, run: BatchRun) -> Any:
        return _sqlite(ctx, run, self.store)


@contextmanager
def _sqlite(job: RunContext, run: BatchRun, store: SQLiteStore) -> Iterator[sqlite3.Connection]:
    job.raise_if_fenced()
    what = f"{job.label}: the transaction of batch after {key_text(run)} on {store.display}"
    record: Checkpoint | None = None
    try:
        # BEGIN IMMEDIATE ... COMMIT on the store's own connection; rolled back on any raise.
        with store.transaction() as conn:
            yield conn
            record = record_after_batch(job, run)
            saved = store.save(record, lease_seconds=job.lease_seconds)  # joins the open transaction
    except Fenced as exc:
        run.restore()
        if job.fenced is None:
            job.fence(exc)
        raise
    except StoreUnavailable as exc:
        if record is None:
            run.restore()
            raise
        # COMMIT (or the save) failed in this process. SQLite has rolled back by now, or
        # the transaction is still open if even ROLLBACK failed: then nothing is certain
        # on this connection, and nothing more may be written at this epoch.
        if store._c.in_transaction:
            raise in_doubt(job, what, exc) from exc
        resolved = _resolve_commit(job, store, record, what, exc)
        if resolved is None:
            run.restore()
            raise StoreUnavailable(
                f"{what} failed during COMMIT ({exc}); the checkpoint read back shows it did not commit (nor did "
                "the output): a rerun does the batch again"
            ) from exc
        saved = resolved
    except BaseException:
        run.restore()
        raise
    adopt(job, run, saved)


def _resolve_commit(
    job: RunContext, store: SQLiteStore, record: Checkpoint, what: str, exc: BaseException
) -> Checkpoint | None:
    """SQLite, after a failed COMMIT already rolled back: the stored record if it is ours, else None.

    The position after the batch is unique (keys only increase), so finding it in the
    store proves this transaction committed, and with it the caller's output.
    """
    stored = store.load(job.name, job.run)
    if stored is not None and stored.epoch != record.epoch:
        fenced = store._fenced(job.name, job.run, record.epoch, stored.epoch)
        job.fence(fenced)
        raise fenced
    if stored is not None and same_position(stored, record):
        log.warning("%s: the checkpoint shows the commit happened; going on", what)
        return stored
    return None
