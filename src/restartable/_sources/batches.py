"""Batches from a source that resumes by key: the driver behind ``job.batches``.

::

    with Job("reindex", store="postgresql://db/app") as job:
        table = PostgresTable("postgresql://db/app", "large_table", key="id", batch_size=1000)
        for batch in job.batches(table):
            with job.transaction() as tx:          # optional: exactly-once output
                tx.cursor().executemany("INSERT INTO out ...", [...])

The contract:

* A batch source (:class:`BatchSource`; :class:`~restartable.PostgresTable`,
  :class:`~restartable.SQLiteTable`) returns, for a key position, the
  next rows in key order strictly AFTER it, and the key of the last of them. The
  position is the key tuple, saved in the cursor's ``extra["key"]`` through the
  checkpoint codec (ints, text, timestamps, Decimals, UUIDs keep their types),
  beside ``offset``, the count of rows done.
* A batch is done when the loop asks for the next one, as an item of ``iterate`` is.
  A checkpoint is written every ``every`` done batches or ``seconds`` seconds,
  whichever comes first, and when the source is exhausted; with neither, every
  :data:`~restartable._run.DEFAULT_SECONDS` seconds, as ``iterate`` does (a durable
  commit per batch would cost about as much as reading the batch); a signal or a
  fencing is acted on between batches (the batch in flight finishes first).
* A batch shorter than the source's ``batch_size`` ends the iteration without
  another query; an empty batch ends it too. So the end is always reached, even when
  only the last row of the table is left (the ``>=`` loop never gets there).
* Inside the loop, :func:`~restartable._sources.transaction.transaction` commits the
  caller's output and the position AFTER the batch in flight in one transaction;
  the batch then counts as done at once, and the driver does not save again for it.
* When that transaction is rolled back, ``job.state`` is put back (in place) to a deep
  copy of what it was when the batch was handed out, so it always matches what is
  committed. When it was rolled back because its connection was lost (nothing of it
  committed), the transaction gives the batch back and the loop hands out THE SAME
  batch again (fetched again from the same key) after a backoff, within the store's
  ``retry`` budget counted from the batch's first failure; then StoreUnavailable
  (exit 75). Code after the ``with job.transaction()`` block runs for a given-back
  batch too: keep counters in ``job.state`` (restored) or inside the block.
* A rerun that names different key columns than the checkpoint's is refused
  (UsageError): the saved key would mean nothing for them.

Memory is one batch (plus what the caller keeps), whatever the table's size.
"""

from __future__ import annotations

import copy
import logging
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._checkpoint import dumps
from .._retry import STORE_BACKOFF
from .._run import DEFAULT_SECONDS, LoopHooks, RunContext, check_every
from ..errors import StateNotSerializable, UsageError

if TYPE_CHECKING:
    from .._cursor import Cursor

__all__ = ["Batch", "BatchRun", "BatchSource", "active_batch", "iterate_batches", "retry_budget"]

log = logging.getLogger("restartable")


@dataclass
class Batch:
    """What a source's ``fetch`` returns: the rows, and the key tuple of the last one."""

    rows: list[Any]
    last_key: tuple[Any, ...] | None


@runtime_checkable
class BatchSource(Protocol):
    """A source of batches in key order that can start strictly after any key.

    ``key_columns`` names the key (saved with the position, checked on resume);
    ``batch_size`` is the most rows one ``fetch`` returns; ``describe`` names the
    source in messages (no password). ``open()`` connects and validates (raising
    UsageError/ConfigError before any work), ``fetch(after)`` returns the next batch
    after the key tuple ``after`` (None: from the start), ``close()`` releases what
    ``open`` took. ``fetch`` must not hold a cursor or a transaction across calls.
    """

    key_columns: tuple[str, ...]
    batch_size: int

    @property
    def describe(self) -> str: ...

    def open(self) -> None: ...

    def fetch(self, after: tuple[Any, ...] | None) -> Batch: ...

    def close(self) -> None: ...


@dataclass(eq=False)
class BatchRun:
    """One ``job.batches`` loop in progress: what ``job.transaction()`` needs to know."""

    job: RunContext
    source: BatchSource
    cursor: Cursor
    hooks: LoopHooks
    #: The batch handed out and not yet done: (rows in it, key of its last row).
    pending: tuple[int, tuple[Any, ...]] | None = None
    #: True once a transaction committed the pending batch (the cursor already moved).
    committed: bool = False
    #: Resources a transaction keeps for the loop's duration (a connection), closed at its end.
    resources: dict[str, Any] = field(default_factory=dict)
    #: A deep copy of ``job.state`` and the cursor's (offset, key) when the pending batch was handed out.
    snapshot: tuple[dict[str, Any], int, Any] | None = None
    #: True when a transaction gave the pending batch back (rolled back, nothing committed): the
    #: loop hands the same batch out again instead of counting it done.
    given_back: bool = False
    #: Failed attempts of the batch at the current key, and when the first one failed (monotonic).
    failures: int = 0
    first_failure: float | None = None

    def advance(self) -> None:
        """Count the pending batch as done in memory."""
        assert self.pending is not None
        n, last = self.pending
        self.cursor.offset += n
        self.cursor.extra["key"] = last
        self.pending = None
        self.failures, self.first_failure = 0, None

    def take_snapshot(self) -> None:
        """Remember ``job.state`` and the position as they are when a batch is handed out."""
        self.snapshot = (copy.deepcopy(self.job.state), self.cursor.offset, self.cursor.extra.get("key"))

    def restore(self) -> None:
        """Put ``job.state`` (in place: callers may hold the dict) and the position back to the snapshot.

        A deep copy of the snapshot, so that a batch given back twice is restored twice.
        """
        if self.snapshot is None:
            return
        state, offset, key = self.snapshot
        self.job.state.clear()
        self.job.state.update(copy.deepcopy(state))
        self.cursor.offset = offset
        self.cursor.extra["key"] = key

    def close_resources(self) -> None:
        for res in self.resources.values():
            try:
                res.close()
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                log.debug("closing %r: %s", res, exc)
        self.resources.clear()


# The batch loops of each run in progress, innermost last. A WeakKeyDictionary keeps the
# run context free of source-specific fields and forgets a run that is garbage.
_RUNS: weakref.WeakKeyDictionary[RunContext, list[BatchRun]] = weakref.WeakKeyDictionary()


def retry_budget(job: RunContext) -> float:
    """Seconds a batch may keep failing on a lost connection: the store's ``retry`` budget."""
    return job.store.retry_seconds


def active_batch(job: RunContext) -> BatchRun | None:
    """The innermost ``job.batches`` loop of ``job`` in progress, or None."""
    runs = _RUNS.get(job)
    return runs[-1] if runs else None


def iterate_batches(
    job: RunContext,
    source: BatchSource,
    *,
    every: int | None = None,
    seconds: float | None = None,
    name: str | None = None,
    progress: bool | None = None,
) -> Iterator[list[Any]]:
    """Yield the batches of ``source`` after the checkpointed key; see the module docstring.

    ``every``: checkpoint every this many done batches; ``seconds``: and at least
    this often (with neither: every DEFAULT_SECONDS seconds); ``name``: the cursor's name (default: the
    call's order in the job); ``progress``: progress bar (True), log lines (False),
    or by terminal (None). Returns a generator: nothing runs until the first ``next``.
    """
    if not isinstance(source, BatchSource):
        raise UsageError(
            f"job.batches() needs a batch source such as PostgresTable or SQLiteTable, not {type(source).__name__}; "
            "use job.iterate() for sequences and iterators"
        )
    check_every(every)
    if every is None and seconds is None:
        seconds = DEFAULT_SECONDS
    if seconds is not None and seconds <= 0:
        raise UsageError(f"seconds must be positive, not {seconds!r}")
    if job.record is None:
        raise UsageError(f"{job.label} is not started: call batches inside `with Job(...) as job:`")
    if job.completed:
        log.info("%s is already complete: batches of %s yield nothing", job.label, source.describe)
        job.skip_iteration()  # keep later iterations' default names where they were
        return iter(())
    cursor = job.cursor(name)
    _check_key_columns(job, cursor, source)
    if cursor.finished:
        return iter(())
    return _drive(job, source, cursor, every=every, seconds=seconds, progress=progress)


def _check_key_columns(job: RunContext, cursor: Cursor, source: BatchSource) -> None:
    stored = cursor.extra.get("key_columns")
    columns = list(source.key_columns)
    if stored is not None and list(stored) != columns:
        raise UsageError(
            f"{job.label} iteration {cursor.name!r}: the checkpoint holds a position on key {tuple(stored)!r} "
            f"but {source.describe} is keyed on {tuple(columns)!r}; use the same key, a new run id, or "
            f"`restartable reset {job.name}` to start over"
        )
    cursor.extra["key_columns"] = columns
    key = cursor.extra.get("key")
    if key is not None and (not isinstance(key, tuple) or len(key) != len(columns)):
        raise UsageError(
            f"{job.label} iteration {cursor.name!r}: the saved position {key!r:.80} is not a key of "
            f"{len(columns)} column(s); was this cursor name used by another kind of iteration?"
        )


def _drive(
    job: RunContext,
    source: BatchSource,
    cursor: Cursor,
    *,
    every: int | None,
    seconds: float | None,
    progress: bool | None,
) -> Iterator[list[Any]]:
    # Opened here, not in iterate_batches: a generator never started must hold nothing.
    try:
        source.open()
    except BaseException:
        source.close()  # a refusal after connecting must not leave the connection behind
        raise
    hooks = job.loop_hooks(seconds=seconds, progress=progress)
    run = BatchRun(job=job, source=source, cursor=cursor, hooks=hooks)
    runs = _RUNS.setdefault(job, [])
    runs.append(run)
    cursor.finished = False
    checked = False
    since = 0
    try:
        hooks.boundary(cursor, False)
        while True:
            batch = source.fetch(cursor.extra.get("key"))
            rows = batch.rows
            if not rows:
                break
            if batch.last_key is None:
                raise UsageError(f"{source.describe} returned rows without the key of the last one")
            if not checked:  # once: a key the codec cannot hold fails now, not at the first save
                _check_encodable(job, source, batch.last_key)
                checked = True
            run.pending, run.committed = (len(rows), batch.last_key), False
            run.take_snapshot()
            yield rows
            if run.given_back:
                # Its transaction rolled back after a lost connection (job.state is restored):
                # hand the same batch out again, fetched again from the same key, after a backoff.
                run.given_back, run.pending = False, None
                _pause_before_retry(job, run)
                hooks.boundary(cursor, False)  # a signal or a fencing stops the retries here
                continue
            # The loop came back for the next batch: this one is done.
            committed = run.committed
            if not committed:
                run.advance()
            run.pending, run.committed = None, False
            since += 1
            due = every is not None and since >= every
            if due or committed:
                since = 0
            if committed:
                # The transaction saved this position with the output: no second save for it.
                hooks.saved()
                due = False
            hooks.boundary(cursor, due)
            if len(rows) < source.batch_size:
                break  # a short batch: nothing is left after it (no extra query to find out)
        hooks.end(cursor)
    finally:
        run.pending = run.snapshot = None
        runs.remove(run)
        if not runs:
            _RUNS.pop(job, None)
        run.close_resources()
        hooks.close(cursor)
        source.close()


def _pause_before_retry(job: RunContext, run: BatchRun) -> None:
    """Back off before a given-back batch is handed out again (woken early by a signal).

    The transaction that gave it back checked the budget; the pause never outlasts it.
    """
    first = run.first_failure if run.first_failure is not None else time.monotonic()
    end = time.monotonic() + max(
        0.0, min(STORE_BACKOFF.delay(run.failures), first + retry_budget(job) - time.monotonic())
    )
    while job.signal is None and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))


def _check_encodable(job: RunContext, source: BatchSource, key: Sequence[Any]) -> None:
    try:
        dumps(tuple(key), what=f"the key {source.key_columns!r}")
    except StateNotSerializable as exc:
        raise UsageError(
            f"{job.label}: {source.describe}: {exc}. Key on columns of integer, numeric, text, date, timestamp, "
            "uuid, boolean or bytea type"
        ) from None
