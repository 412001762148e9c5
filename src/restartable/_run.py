"""The run context: what sources and engines need from a running job, and nothing else.

A :class:`~restartable.Job` is the public facade; behind it one :class:`RunContext`
owns the run in progress: the record as last saved, the cursors, the input
fingerprints, the loop hooks, per-item marks, saving (also the record a caller's
transaction saves, and adopting what it saved), fencing, signals and the stall
watchdog's progress. Sources (``restartable._sources``) and engines (threads, asyncio,
processes) receive the context, never the Job, so they cannot reach into it and the
job module may import them without an import cycle.

The contract the sources build on:

* ``cursor(name)`` registers a cursor loaded from the record (``skip_iteration()``
  keeps the numbering of unnamed iterations when one yields nothing);
* ``loop_hooks(...)`` gives the between-items work of one iteration: checkpoint when
  due, stop on a signal or a fencing, progress;
* ``save``, ``mark``, ``record_for_save`` + ``adopt_saved`` (a save inside the caller's
  transaction), ``fence`` / ``raise_if_fenced``, ``stopping`` and ``interrupted()``.

Every save goes through :meth:`RunContext.save` (or a caller's transaction, which
adopts the saved record at once): one writer, under ``save_lock``, fenced.
"""

from __future__ import annotations

import logging
import signal as _signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from ._checkpoint import INTERRUPTED, RUNNING, Checkpoint
from ._cursor import Cursor, Source, skip
from ._fingerprint import Fingerprinter, sample_indices
from ._progress import Progress
from .errors import CheckpointLost, Fenced, InputChanged, Interrupted, UsageError

if TYPE_CHECKING:
    from . import _watchdog
    from .stores import Store

__all__ = ["DEFAULT_SECONDS", "LoopHooks", "OnChange", "RunContext", "check_every"]

log = logging.getLogger("restartable")

#: Checkpoint interval when an iteration is given neither ``every`` nor ``seconds``.
DEFAULT_SECONDS = 5.0

OnChange = Literal["refuse", "restart", "force"]


def check_every(every: object) -> None:
    """Refuse an ``every`` that is not None or a positive int, with one message for every loop.

    ``iterate``, ``batches``, ``files``, ``map``, ``amap`` and ``aiterate`` all call this, so the
    same value is accepted or refused everywhere. A bool is refused although it is an ``int``:
    ``every=True`` is not a count, and silently meaning ``every=1`` would checkpoint on every item.
    """
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise UsageError(f"every must be a positive int (a count of done items) or None, not {every!r}")


class RunContext:
    """One run in progress, as its sources and engines see it (see the module docstring).

    Created by the Job before it starts; ``store`` and ``record`` are set when it enters.
    Thread-safety: ``save`` and ``mark`` may be called from worker threads (they take
    ``save_lock``); cursors and hooks belong to the consuming thread.
    """

    def __init__(
        self, *, name: str, run: str, lease_seconds: float, on_change: OnChange, progress: bool | None
    ) -> None:
        self.name = name
        self.run = run
        self.lease_seconds = lease_seconds
        self.on_change: OnChange = on_change
        #: The job's default for progress display: a bar (True), log lines (False), by terminal (None).
        self.progress = progress
        self._store: Store | None = None
        #: The job's JSON state, saved atomically with every checkpoint (``job.state``).
        self.state: dict[str, Any] = {}
        #: True when the run is completed: it was at start, or it completed since.
        self.completed = False
        #: The checkpoint as last loaded or saved.
        self.record: Checkpoint | None = None
        self.cursors: dict[str, Cursor] = {}
        self.fingerprints: dict[str, Any] = {}
        #: The cursor whose loop runs now (a signal asks it to stop soon).
        self.active: Cursor | None = None
        self.calls = 0
        self.fenced: Fenced | None = None
        self.signal: int | None = None
        self.watchdog: _watchdog.StallWatchdog | None = None
        self.last_save = time.monotonic()
        self.save_lock = threading.Lock()
        self.before_save: list[Callable[[], None]] = []

    # -- identity ---------------------------------------------------------------------

    @property
    def label(self) -> str:
        return f"job {self.name!r} run {self.run!r}"

    @property
    def store(self) -> Store:
        if self._store is None:
            raise UsageError(f"{self.label} is not started: use it as `with Job(...) as job:`")
        return self._store

    @store.setter
    def store(self, store: Store | None) -> None:
        self._store = store

    @property
    def has_store(self) -> bool:
        """True once the job opened (or was given) its store."""
        return self._store is not None

    @property
    def epoch(self) -> int | None:
        return self.record.epoch if self.record else None

    @property
    def stopping(self) -> bool:
        """True once SIGTERM/SIGINT arrived."""
        return self.signal is not None

    # -- cursors and inputs -------------------------------------------------------------

    def require_started(self, what: str) -> None:
        """Raise UsageError unless the run was entered (``what`` names the call, for the message)."""
        if self.record is None:
            raise UsageError(f"{self.label} is not started: call {what} inside `with Job(...) as job:`")

    def skip_iteration(self) -> None:
        """An iteration that yields nothing (the run is complete) still takes its default name."""
        self.calls += 1

    def cursor(self, name: str | None, *, total: int | None = None) -> Cursor:
        """Register this run's cursor ``name`` (default: the call's order), loaded from the record.

        The cursor's ``offset`` counts done items, ``extra`` holds source-specific
        position data, ``finished`` marks an exhausted source.
        """
        if self.record is None:
            raise UsageError(f"{self.label} is not started: iterate inside `with Job(...) as job:`")
        cname = name if name is not None else str(self.calls)
        self.calls += 1
        if cname in self.cursors:
            raise UsageError(f"{self.label}: iteration {cname!r} was already used in this run; give each a name=")
        pos = dict(self.record.positions.get(cname, {}))
        offset = int(pos.pop("offset", 0))
        finished = bool(pos.pop("finished", False))
        stored_total = pos.pop("total", None)
        cursor = Cursor(
            cname, offset=offset, total=total if total is not None else stored_total, finished=finished, extra=pos
        )
        self.cursors[cname] = cursor
        return cursor

    def loop_hooks(
        self, *, seconds: float | None, progress: bool | None, fingerprint: Fingerprinter | None = None
    ) -> LoopHooks:
        """The between-items work of one iteration: call ``boundary(cursor, count_due)`` whenever
        the loop comes back for more (it checkpoints when due and raises Interrupted or Fenced),
        ``end(cursor)`` when the source is exhausted and ``close(cursor)`` in a ``finally``."""
        shown = Progress(label=self.label, enabled=progress if progress is not None else self.progress)
        return LoopHooks(self, fingerprint, seconds, shown)

    def check_input(
        self, cursor: Cursor, source: Source, key: Callable[[Any], Any] | None, on_change: OnChange
    ) -> Fingerprinter:
        """Check the input against its stored fingerprint; seek or skip to the position."""
        describe = f"{self.label} iteration {cursor.name!r}"
        stored = self.fingerprints.get(cursor.name)
        for attempt in range(2):
            try:
                fp = Fingerprinter(
                    length=source.length, key=key, stored=stored, position=cursor.offset, describe=describe
                )
                if source.seq is not None:
                    for idx in sample_indices(0, source.length or 0):
                        fp.see(idx, [source.seq[idx]])
                elif cursor.offset:
                    skipped = skip(source, cursor.offset, fp)
                    if skipped < cursor.offset:
                        raise InputChanged(
                            f"{describe}: the input now has {skipped} items but {cursor.offset} "
                            "were already done; it changed under the checkpoint"
                        )
                break
            except InputChanged as exc:
                if on_change == "force" or attempt:
                    log.warning("%s (resuming anyway: on_change='force')", exc)
                    fp = Fingerprinter(length=source.length, key=key, stored=None, position=0, describe=describe)
                    break
                if on_change == "restart":
                    log.warning("%s: restarting this iteration from its start (on_change='restart')", exc)
                    if not source.seekable:
                        raise InputChanged(
                            f"{exc}; on_change='restart' needs a sequence (the iterator was consumed while checking)"
                        ) from None
                    cursor.offset, cursor.finished, stored = 0, False, None
                    continue
                raise InputChanged(
                    f"{exc}. Pass on_change='restart' to start this iteration over, "
                    "on_change='force' to resume anyway, or use a new run id"
                ) from None
        self.fingerprints[cursor.name] = fp.result()
        return fp

    # -- saving ---------------------------------------------------------------------------

    def done(self) -> int:
        """Items done in this run, over every iteration (those of earlier processes too)."""
        return sum(int(p.get("offset", 0)) for p in self.positions().values())

    def positions(self) -> dict[str, dict[str, Any]]:
        """Every cursor's position as a save would write it now."""
        # Cursors not used by this process keep their stored positions; a used cursor
        # owns its whole position (its extra was loaded from the record).
        positions = dict(self.record.positions) if self.record else {}
        for name, cur in self.cursors.items():
            positions[name] = cur.as_position()
        return positions

    def on_checkpoint(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` before every checkpoint is written; returns its remover."""
        self.before_save.append(callback)

        def remove() -> None:
            if callback in self.before_save:
                self.before_save.remove(callback)

        return remove

    def record_for_save(self, status: str, *, positions: dict[str, dict[str, Any]] | None = None) -> Checkpoint:
        """Run the on_checkpoint callbacks, then build the record a save writes now.

        ``positions`` overrides the cursors' own (a transaction saves the position after
        the batch in flight). Raises Fenced once this runner was fenced.
        """
        self.raise_if_fenced()
        for callback in self.before_save:
            callback()
        rec = self.record
        assert rec is not None
        positions = self.positions() if positions is None else positions
        return rec.replace(
            status=status,
            positions=positions,
            state=self.state,
            done=sum(int(p.get("offset", 0)) for p in positions.values()),
            # Skipped items: failed files and dead letters, kept per cursor by their sources.
            failed=sum(len(p[k]) for p in positions.values() for k in ("failed", "dead") if isinstance(p.get(k), dict)),
            fingerprints=dict(self.fingerprints),
        )

    def adopt_saved(self, saved: Checkpoint) -> None:
        """``saved`` is now the stored record (its dicts are ours to keep: copy the state)."""
        self.record = saved.replace(state=dict(self.state))
        self.last_save = time.monotonic()

    def save(self, status: str, *, release: bool = False) -> Checkpoint:
        """Write the run's record now with ``status`` (``release``: and give the lease up).

        A store that lost the run gets it written back from memory (a restore, fenced);
        a Fenced answer fences this runner: nothing more is saved.
        """
        new = self.record_for_save(status)
        lease = None if release else self.lease_seconds
        with self.save_lock:
            try:
                saved = self.store.save(new, lease_seconds=lease)
            except CheckpointLost as exc:
                log.error("%s: %s; writing the checkpoint back from memory", self.label, exc)
                try:
                    saved = self.store.restore(new, lease_seconds=lease or self.lease_seconds)
                    if release:
                        saved = self.store.save(new, lease_seconds=None)
                except Fenced as fenced:  # another runner made the run again meanwhile
                    self.fence(fenced)
                    raise
            except Fenced as exc:
                self.fence(exc)
                raise
        self.adopt_saved(saved)
        return saved

    def mark(self, cursor: str, key: str, value: Any) -> None:
        """Record one item of ``cursor`` as done with a per-item marker: O(1), fenced.

        A store that lost the run (Redis restarted without persistence) gets the record
        written back from memory first, as a save does, and the marker again.
        """
        epoch = self.epoch
        assert epoch is not None
        try:
            self.store.mark(self.name, self.run, cursor, key, value, epoch=epoch)
        except CheckpointLost as exc:
            log.error("%s: %s; writing the checkpoint back from memory", self.label, exc)
            try:
                with self.save_lock:
                    self.adopt_saved(
                        self.store.restore(self.record_for_save(RUNNING), lease_seconds=self.lease_seconds)
                    )
                self.store.mark(self.name, self.run, cursor, key, value, epoch=epoch)
            except Fenced as fenced:  # another runner made the run again meanwhile
                if self.fenced is None:
                    self.fence(fenced)
                raise
        except Fenced as exc:
            if self.fenced is None:
                self.fence(exc)
            raise

    def restore_lost(self, exc: CheckpointLost) -> None:
        """The heartbeat found the run gone from the store: write it back from memory."""
        log.error("%s: %s; writing the checkpoint back from memory", self.label, exc)
        with self.save_lock:
            if self.record is not None:
                self.record = self.store.restore(self.record, lease_seconds=self.lease_seconds)

    # -- fencing and signals ------------------------------------------------------------------

    def fence(self, exc: Fenced) -> None:
        """This runner was fenced off: nothing more may be saved."""
        self.fenced = exc
        log.error("%s", exc)

    def raise_if_fenced(self) -> None:
        if self.fenced is not None:
            raise self.fenced

    def on_signal(self, signum: int) -> None:
        """SIGTERM/SIGINT arrived: the loop in progress stops at its next boundary."""
        self.signal = signum
        if self.active is not None:
            self.active.stop_soon()

    def interrupted(self) -> Interrupted:
        """The Interrupted error to raise after the interrupted checkpoint was saved (logged)."""
        signum = self.signal or _signal.SIGTERM
        msg = (
            f"{self.label} interrupted by {_signal.Signals(signum).name} after {self.done():,} done items; "
            "checkpoint saved, rerun to resume"
        )
        log.warning("%s", msg)
        return Interrupted(msg, signum=signum)

    def stop_now(self) -> Interrupted:
        """Save ``interrupted``, release the lease, and return the Interrupted error to raise."""
        self.save(INTERRUPTED, release=True)
        return self.interrupted()


class LoopHooks:
    """Between-chunk work of one iteration: checkpoints, signals, fencing, progress, the watchdog."""

    def __init__(self, run: RunContext, fp: Fingerprinter | None, seconds: float | None, shown: Progress) -> None:
        self.run = run
        self.fp = fp
        self.seconds = seconds
        self.shown = shown
        self.last_save = time.monotonic()
        self.started = False
        #: Stop at once when a signal arrived during the periodic save. A source that drains
        #: work in flight before stopping (job.map) turns it off and stops by itself.
        self.stop_after_save = True

    def sync_fingerprint(self, cur: Cursor) -> None:
        """Put this iteration's input fingerprint, as far as it was read, into the next save."""
        if self.fp is not None:
            self.run.fingerprints[cur.name] = self.fp.result()

    def boundary(self, cur: Cursor, count_due: bool) -> None:
        run = self.run
        watchdog = run.watchdog
        if not self.started:
            self.started = True
            run.active = cur
            self.shown.start(cur.name, cur.offset, cur.total)
            if watchdog is not None:
                watchdog.enter()
        elif watchdog is not None:
            watchdog.progressed()
        run.raise_if_fenced()
        self.shown.update(cur.offset)
        signalled = run.signal is not None
        now = time.monotonic()
        if not signalled and (count_due or (self.seconds is not None and now - self.last_save >= self.seconds)):
            self.sync_fingerprint(cur)
            run.save(RUNNING)
            self.last_save = now
            self.shown.checkpointed(cur.name, cur.offset, cur.total)
        # A signal that arrived during that save stops the loop now, not a chunk (or a
        # batch) later, unless the source drains its work in flight first (job.map,
        # each-file): then never here, even for a signal that landed between the source's
        # own check and this call, as releasing the lease now would leave its workers running
        # unleased; the source sets stop_after_save again once they have ended.
        if run.signal is not None and self.stop_after_save:
            self.sync_fingerprint(cur)
            run.save(INTERRUPTED, release=True)
            self.shown.stop(cur.offset)
            raise run.interrupted()

    def saved(self) -> None:
        """A checkpoint was written by the source itself (a transaction): restart the clock."""
        self.last_save = time.monotonic()

    def end(self, cur: Cursor) -> None:
        cur.finished = True
        if cur.total is None:
            cur.total = cur.offset
        self.sync_fingerprint(cur)
        self.run.save(RUNNING)
        self.shown.stop(cur.offset)
        self.shown.checkpointed(cur.name, cur.offset, cur.total, force=True)

    def close(self, cur: Cursor) -> None:
        if self.started and self.run.watchdog is not None:
            self.run.watchdog.leave()
        self.shown.stop(cur.position())
        if self.run.active is cur:
            self.run.active = None
