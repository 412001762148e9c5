"""The Store contract: what every checkpoint store must do, and conveniences built on it.

A store keeps one record (:class:`~restartable._checkpoint.Checkpoint`) per run
``(job, run)``, a short history of its saves, and for each run's cursors a set of
per-item markers. Six operations make a store; everything else here is built on them:

``load``      read a record, or None.
``acquire``   take the run's lease, creating the record if needed; bumps the epoch.
``save``      compare-and-set the whole record on its epoch, renewing or releasing the lease.
``renew``     compare-and-set the lease expiry on the epoch.
``delete``    remove a run (optionally only at a given epoch).
``list_runs`` every record, for ``status`` and ``cleanup`` (an unreadable one raises, or is
              reported apart when the caller asks, so one bad run cannot hide the others).

plus ``history`` for ``show``, and the marker operations used by file sources.

The rules every store keeps (and ``tests/stores/test_contract.py`` checks):

* Every write is atomic and durable: after a crash a reader sees the old record or
  the new one, never a mix, and a save that returned survives a power loss.
* ``epoch`` is the fencing token. ``acquire`` increases it; ``save`` and ``renew``
  succeed only while the stored epoch equals the caller's, and raise
  :class:`~restartable.errors.Fenced` otherwise. A stale runner can therefore
  never overwrite a newer checkpoint. The first epoch of a new record is seeded from
  the clock and kept above a floor every store keeps: the highest epoch it deleted
  (memory, sqlite, file, PostgreSQL) or ever handed out or deleted (Redis, whose keys
  also expire), so a record deleted by ``reset`` and created again never reuses one,
  even after the clock stepped back. A takeover raises it by a random step
  (:func:`next_epoch`), not by one: a store that forgets its last acknowledged writes
  (a failover to a replica that lagged, Redis with ``appendfsync everysec`` after a
  crash, a volume restored from a snapshot) would otherwise hand the next runner the
  epoch it already gave to one that is still running, and both would write.
* Lease times (``heartbeat``, ``lease_expires``, ``updated``) are read from the
  store's clock where it has one (``now()``).
* A store is safe to share between threads (the heartbeat renews from a thread).
* Errors are translated at the boundary: unreachable or full stores raise
  :class:`~restartable.errors.StoreUnavailable`, refused access
  :class:`~restartable.errors.PermissionDenied`, unreadable records
  :class:`~restartable.errors.CheckpointCorrupt`; messages carry ``display``
  (the URL with its password redacted), never the raw URL.

Read-only stores (``from_url(url, read_only=True)``, ``open_store(..., read_only=True)``),
for commands that only look (``status``, ``show``, ``serve``):

* Opening one never creates a file, directory, database, schema, table, key or lock
  file, and runs no migration. A store that does not exist raises
  :class:`~restartable.errors.StoreNotFound` (exit 78) naming it and what would
  create it, a job's first run; a Redis store without keys is merely empty. A
  database at an older schema version is read as it is (every version has the
  columns the reads use); a newer one is refused with the upgrade to make.
* ``load``, ``list_runs``, ``history``, ``markers`` and ``now`` work as usual. Every
  write (``acquire``, ``save``, ``renew``, ``delete``, ``mark``, ``restore``,
  ``cleanup``, ``transactional``) raises :class:`~restartable.errors.UsageError`
  before any I/O (see :meth:`Store._make_read_only`). The connection itself is
  read-only too where the database can say so (SQLite ``mode=ro``, a PostgreSQL
  session with ``default_transaction_read_only``), so a missed path cannot write.
"""

from __future__ import annotations

import functools
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Self, TypeVar

from .._checkpoint import COMPLETED, RUNNING, Checkpoint, HistoryEntry, Owner
from .._url import StoreURL
from ..errors import CheckpointCorrupt, Fenced, RunLocked, UsageError

__all__ = ["Store", "EPOCH_STEP", "HISTORY_LIMIT", "Unreadable", "first_epoch", "next_epoch"]

_Raw = TypeVar("_Raw")

#: A run ``list_runs`` could not read: ``(job, run, error)``.
Unreadable = tuple[str, str, CheckpointCorrupt]

#: How many history entries a store keeps per run (older ones are pruned).
HISTORY_LIMIT = 50


def first_epoch(floor: int = 0) -> int:
    """The epoch of a newly created record: microseconds since the Unix epoch, above ``floor``.

    Seeding from the clock means a record deleted (``reset``) and created again starts
    far above any epoch a stale runner of the old record can hold, as long as the clock
    only moves forward. Wall clocks step back (NTP, a restored VM), and a seed at or
    below a deleted record's epoch would let that record's stale runner write to the new
    one; so stores that can keep it pass ``floor``, the highest epoch of any record they
    deleted, and the seed is at least ``floor + 1``. It stays below 2**53, so it
    survives any JSON reader.
    """
    return max(time.time_ns() // 1_000, floor + 1)


#: A takeover raises the epoch by 1 to EPOCH_STEP (uniformly drawn; see :func:`next_epoch`).
EPOCH_STEP = 1 << 20


def next_epoch(epoch: int) -> int:
    """The epoch a takeover gives: ``epoch`` plus a random step of 1 to :data:`EPOCH_STEP`.

    Why not ``epoch + 1``: a store that loses acknowledged writes (failover to a lagging
    replica, a crash of a Redis with ``appendfsync everysec``, a snapshot restored) can
    forget that it handed ``epoch + 1`` to a runner that is still running; the next
    takeover would hand the same number to a second runner, and both would pass every
    compare-and-set. With a random step two such takeovers collide once in a million.
    The step keeps epochs below 2**53 for billions of takeovers (first epochs are about
    2**51). Stores that compute epochs in SQL or Lua take the step from the client:
    :func:`epoch_step`.
    """
    return epoch + epoch_step()


def epoch_step() -> int:
    """A random step for :func:`next_epoch`, 1 to :data:`EPOCH_STEP`."""
    return 1 + secrets.randbelow(EPOCH_STEP)


class Store(ABC):
    """A checkpoint store. See the module docstring for the contract."""

    #: URL schemes this store serves.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: restartable's own URL query options for this store (removed before a driver sees the URL).
    options: ClassVar[frozenset[str]] = frozenset()
    #: True when the store is a local file that only one machine may use (sqlite, file).
    local: ClassVar[bool] = False

    #: The store's URL with its password redacted: the only form that may be printed.
    display: str = ""
    #: True when the store was opened read-only (see the module docstring): writes raise UsageError.
    read_only: bool = False

    #: The methods that write, refused by a read-only store.
    _WRITES: ClassVar[tuple[str, ...]] = (
        "acquire",
        "save",
        "renew",
        "delete",
        "mark",
        "restore",
        "cleanup",
        "transactional",
    )

    @classmethod
    @abstractmethod
    def from_url(cls, url: StoreURL, *, read_only: bool = False) -> Self:
        """Open the store a parsed URL names. Raises ConfigError or MissingDriver.

        With ``read_only`` the open creates nothing and a missing store raises
        StoreNotFound; every write then raises UsageError (see the module docstring).
        """

    # -- the core operations -------------------------------------------------

    @abstractmethod
    def load(self, job: str, run: str) -> Checkpoint | None:
        """The run's record, or None when there is none."""

    @abstractmethod
    def acquire(
        self, job: str, run: str, *, owner: Owner, lease_seconds: float, steal_epoch: int | None = None
    ) -> Checkpoint:
        """Take the run's lease and return the record as stored.

        Creates a ``running`` record when there is none. Otherwise succeeds when the
        lease is free (``lease_expires`` is None or past by the store's clock) or when
        ``steal_epoch`` equals the stored epoch (the caller proved the holder dead) or
        the holder is ``owner`` itself (a retried acquire);
        then it increases the epoch, sets ``owner``, ``heartbeat`` and
        ``lease_expires = now + lease_seconds`` and sets the status to ``running``
        unless it is ``completed``. Raises :class:`RunLocked` when the lease is held.
        The check and the write are one atomic step.
        """

    @abstractmethod
    def save(self, record: Checkpoint, *, lease_seconds: float | None) -> Checkpoint:
        """Write ``record`` whole if the stored epoch equals ``record.epoch``; else raise Fenced.

        Sets ``updated`` and ``heartbeat`` to now and ``lease_expires`` to
        ``now + lease_seconds``, or to None when ``lease_seconds`` is None (the lease is
        released). Appends a history entry in the same atomic write and keeps at most
        :data:`HISTORY_LIMIT`; a store may sample its history instead (SQLite's
        ``history_every``: at most a row a second by default), but always records a run's
        first save in a process, a new owner, and every save whose status is not
        ``running``. Returns the record as stored.

        The network stores (PostgreSQL, Redis) also order the saves of one runner: each
        carries a sequence number, and a save older than the stored one (its bytes delayed
        in the network past the read deadline, landing after a newer save) changes
        nothing, nor does a retried save whose first attempt was applied (it returns the
        stored times). The epoch cannot do this: every save of one runner carries the same.
        """

    @abstractmethod
    def renew(self, job: str, run: str, *, epoch: int, lease_seconds: float) -> float:
        """Extend the lease to ``now + lease_seconds`` if the epoch matches; return the expiry.

        Raises Fenced when the stored epoch differs or the record is gone, and also when
        the lease was released (``lease_expires`` is None: a save with
        ``lease_seconds=None``): a renewal delayed past the release (the heartbeat's last
        one, held up by a store retry) must not take the lease again, or the next runner
        would wait a whole lease for a runner that has finished. An expired lease that
        nobody took over is still renewed: the runner is alive and still owns the epoch.
        The check and the write are one atomic step.
        """

    @abstractmethod
    def delete(self, job: str, run: str, *, epoch: int | None = None) -> bool:
        """Remove the run's record, history and markers. With ``epoch``, only at that epoch.

        Returns whether a record was removed.
        """

    @abstractmethod
    def list_runs(self, job: str | None = None, *, corrupt: list[Unreadable] | None = None) -> list[Checkpoint]:
        """Every record (of ``job`` when given), sorted by job then run.

        A run whose record cannot be read raises CheckpointCorrupt; when the caller
        passes a ``corrupt`` list, it is appended there as ``(job, run, error)`` and
        left out instead, so ``status`` and ``cleanup`` still see every other run.
        """

    @abstractmethod
    def history(self, job: str, run: str, *, limit: int = 20) -> list[HistoryEntry]:
        """The run's most recent saves, newest first."""

    # -- per-item markers ------------------------------------------------------

    def mark(self, job: str, run: str, cursor: str, key: str, value: Any, *, epoch: int) -> None:
        """Record ``key`` as done in ``cursor`` with a JSON ``value``, in O(1), fenced on ``epoch``."""
        raise NotImplementedError(f"{type(self).__name__} does not support markers yet")

    def markers(self, job: str, run: str, cursor: str) -> dict[str, Any]:
        """Every marker of ``cursor``, as ``{key: value}``."""
        raise NotImplementedError(f"{type(self).__name__} does not support markers yet")

    # -- conveniences ----------------------------------------------------------

    def restore(self, record: Checkpoint, *, lease_seconds: float) -> Checkpoint:
        """Write ``record`` back unconditionally after the store lost it (see CheckpointLost).

        Only stores that can detect a server-side loss (Redis without persistence)
        implement it; the job calls it with the record it holds in memory.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot lose records")

    def now(self) -> float:
        """The store's clock, in Unix seconds. Local stores use this machine's clock."""
        return time.time()

    def close(self) -> None:  # noqa: B027 - optional: a store with nothing to release keeps it
        """Release connections and files. The store must not be used afterwards."""

    # -- capabilities: what a store may offer beyond the contract ---------------------

    @property
    def retry_seconds(self) -> float:
        """How long this store rides out a lost connection (URL option ``retry``); 0: it does not retry.

        A transactional batch given back after a lost connection is retried within it too.
        """
        return 0.0

    def transactional(self) -> Any:
        """The store's batch transactions for ``job.transaction()``, or None when it has none.

        A store whose database can also hold the caller's output returns an object with
        ``batch_transaction(ctx, run)``: a context manager that yields a connection in an
        open transaction and, when the block succeeds, saves the checkpoint with the
        position after the batch in that same transaction (see
        :mod:`restartable._sources.transaction` for the contract it must keep). The
        default, None, makes ``job.transaction()`` refuse with a UsageError that names
        the stores that can.
        """
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cleanup(self, *, older_than: float, job: str | None = None) -> list[Checkpoint]:
        """Delete completed runs last updated more than ``older_than`` seconds ago.

        Never touches a run that is not ``completed``: an interrupted or failed run
        keeps its checkpoint. The delete is conditional on the epoch seen, so a run
        restarted meanwhile survives. Returns the records removed.
        """
        cutoff = self.now() - older_than
        removed = []
        # An unreadable run is not known to be completed: it stays, and the others are cleaned.
        for rec in self.list_runs(job, corrupt=[]):
            if rec.status == COMPLETED and rec.updated <= cutoff:
                if self.delete(rec.job, rec.run, epoch=rec.epoch):
                    removed.append(rec)
        return removed

    # -- helpers for implementations ------------------------------------------

    def _make_read_only(self) -> None:
        """Refuse every write of this store object: each write method raises UsageError.

        Called by a store's constructor when it is opened read-only. The refusal is
        installed on the instance, in front of the class's methods, so every store refuses
        the same way before any I/O, and the write paths themselves carry no check.
        """
        self.read_only = True
        for name in self._WRITES:
            setattr(self, name, functools.partial(self._refuse_write, name))

    def _refuse_write(self, what: str, *args: Any, **kwargs: Any) -> Any:
        raise UsageError(
            f"{self.display} was opened read-only, so {what}() is refused: open the store without "
            "read_only=True to change it (`status`, `show` and `serve` only read)"
        )

    @staticmethod
    def _readable(
        listed: Iterable[tuple[str, str, _Raw]],
        read: Callable[[_Raw], Checkpoint | None],
        corrupt: list[Unreadable] | None,
    ) -> list[Checkpoint]:
        """``read`` each listed run, for :meth:`list_runs`: a corrupt one raises, or goes to ``corrupt``."""
        out = []
        for job, run, raw in listed:
            try:
                rec = read(raw)
            except CheckpointCorrupt as exc:
                if corrupt is None:
                    raise
                corrupt.append((job, run, exc))
                continue
            if rec is not None:
                out.append(rec)
        return out

    def _new_record(
        self, job: str, run: str, owner: Owner, now: float, lease_seconds: float, *, floor: int = 0
    ) -> Checkpoint:
        """A fresh ``running`` record; ``floor`` is the highest epoch deleted (see :func:`first_epoch`)."""
        return Checkpoint(
            job=job,
            run=run,
            epoch=first_epoch(floor),
            status=RUNNING,
            owner=owner,
            started=now,
            updated=now,
            heartbeat=now,
            lease_expires=now + lease_seconds,
        )

    def _take_over(
        self, rec: Checkpoint, owner: Owner, now: float, lease_seconds: float, steal_epoch: int | None
    ) -> Checkpoint:
        """The record after ``owner`` takes its lease, or RunLocked. Pure: no I/O."""
        # The same owner may take its own lease again: a retried acquire whose first
        # attempt committed (the connection dropped during COMMIT) must not lock itself out.
        free = rec.lease_expires is None or rec.lease_expires <= now or steal_epoch == rec.epoch or rec.owner == owner
        if not free:
            raise self._locked(rec, now)
        return rec.replace(
            epoch=next_epoch(rec.epoch),
            owner=owner,
            heartbeat=now,
            updated=now,
            lease_expires=now + lease_seconds,
            status=rec.status if rec.status == COMPLETED else RUNNING,
        )

    def _locked(self, rec: Checkpoint, now: float) -> RunLocked:
        age = max(0.0, now - rec.heartbeat)
        who = rec.owner.describe() if rec.owner else "an unknown runner"
        left = (rec.lease_expires or now) - now
        return RunLocked(
            f"job {rec.job!r} run {rec.run!r} is held by {who} (lease renewed {age:.1f}s ago, "
            f"expires in {left:.1f}s) in {self.display}: wait for it to finish, pass wait=SECONDS "
            "(or RESTARTABLE_WAIT) to wait for the lease, or stop that runner",
            owner=rec.owner,
            lease_age=age,
        )

    def _released(self, job: str, run: str, epoch: int) -> Fenced:
        """The refusal of :meth:`renew` when the lease at ``epoch`` was released.

        A Fenced whose ``released`` attribute is True: only the holder of an epoch can
        save at it, so the runner itself released the lease (its last save), and the
        heartbeat that meets this refusal ends quietly instead of fencing the job.
        """
        exc = Fenced(
            f"job {job!r} run {run!r}: this runner (epoch {epoch}) may not renew its lease in {self.display}: "
            "the lease was released (the run was saved as finished, interrupted or failed); a renewal "
            "that arrives after the release never takes the lease again, so this runner stops"
        )
        exc.released = True  # type: ignore[attr-defined]  # read by _lease.Heartbeat
        return exc

    def _fenced(self, job: str, run: str, epoch: int, stored: int | None) -> Fenced:
        """The refusal of a write at ``epoch`` when the store holds ``stored`` (None: no record).

        The message names what happened, and only that: a record gone means the run was
        reset or deleted (no other runner need exist), and "a newer runner" is said only
        when the stored epoch is above this runner's.
        """
        head = f"job {job!r} run {run!r}: this runner (epoch {epoch}) was fenced off in {self.display}"
        if stored is None:
            why = "the run was reset (or deleted) while this runner worked; it stops without saving"
        elif stored > epoch:
            why = f"a newer runner (epoch {stored}) owns the run, so this one stops without saving"
        else:
            why = f"the record is now at epoch {stored}, not this runner's, so it stops without saving"
        return Fenced(f"{head}: {why}")
