"""A resumable job: its lifecycle, its lease, its signals, and its iterations.

::

    with Job("nightly-export", run="2026-11-27", store="sqlite:///ckpt.db") as job:
        for item in job.iterate(items, every=100, seconds=10):
            process(item)
            job.state["rows"] = job.state.get("rows", 0) + 1

The contract, in order of the lifecycle:

* Entering takes the run's lease (one writer per run) and loads its checkpoint. A
  run that is already ``completed`` does no work: ``job.completed`` is True, every
  ``iterate`` yields nothing, and a log line says so, until ``restartable reset``.
* ``iterate`` resumes right after the last checkpointed item. An item counts as done
  when the loop asks for the next one; a checkpoint is written every ``every`` done
  items or ``seconds`` seconds, whichever comes first, and when the iteration ends.
* On SIGTERM or SIGINT the item in flight finishes; when the loop asks for the next
  one, the job checkpoints, marks the run ``interrupted``, releases the lease and
  raises :class:`~restartable.errors.Interrupted` (exit 143 or 130), so code after
  the loop never runs on partial data.
* Leaving the block normally marks the run ``completed`` when every iteration it
  started ran to its end (or ``job.complete()`` was called); a ``break`` leaves it
  ``interrupted`` with a warning; an exception marks it ``failed`` and keeps the
  checkpoint, so a rerun resumes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from . import _lease, _shard, _watchdog
from ._cursor import Cursor, Source, run_chunks, skip
from ._fingerprint import Fingerprinter, sample_indices
from ._names import check_name
from .entry import install_excepthook
from ._proc import current_owner
from ._progress import Progress
from ._signals import SignalGuard
from ._url import parse_duration
from .checkpoint import COMPLETED, FAILED, INTERRUPTED, RUNNING, Checkpoint
from .errors import (
    CheckpointLost,
    Fenced,
    InputChanged,
    Interrupted,
    RestartableError,
    StateNotSerializable,
    UsageError,
)
from .stores import Store, open_store

__all__ = ["Job", "DEFAULT_SECONDS"]

log = logging.getLogger("restartable")

#: Checkpoint interval when ``iterate`` is given neither ``every`` nor ``seconds``.
DEFAULT_SECONDS = 5.0
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_RETENTION = "7d"

OnChange = Literal["refuse", "restart", "force"]


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return parse_duration(value, name) if value else None


def _ensure_logging() -> None:
    """Show our INFO lines on stderr when the application configured no logging at all."""
    root = logging.getLogger()
    if log.handlers or root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("restartable: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class Job:
    """One run of a resumable job. Use it as a context manager; see the module docstring.

    :param name: the job's name, ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``.
    :param run: which execution of the job (a date, a batch id). Default:
        ``$RESTARTABLE_RUN`` (the Kubernetes manifests set it to the Job's uid), else
        ``"default"``: one run per name.
    :param store: a store URL or a :class:`~restartable.stores.Store`. Default:
        ``$RESTARTABLE_STORE``, else ``sqlite:///.restartable/checkpoints.db``.
    :param lease_seconds: the lease length (``$RESTARTABLE_LEASE_SECONDS``, default 30).
    :param wait: how long to wait for a live runner's lease before giving up with exit
        75 (``$RESTARTABLE_WAIT``; default 0, or one lease length inside Kubernetes).
    :param retention: how long a completed run's record is kept (default 7 days).
    :param cleanup: ``"keep"`` the completed record (a restarted pod then redoes
        nothing) or ``"delete"`` it at once, as the article does.
    :param on_change: what to do when an input changed before the checkpointed
        position: ``"refuse"`` (InputChanged, exit 65), ``"restart"`` that iteration
        from its start, or ``"force"`` resuming at the position anyway.
    :param progress: a progress bar (True), log lines (False), or by terminal (None).
    :param handle_signals: install SIGTERM/SIGINT handlers (main thread only).
    :param stall_timeout: opt-in progress watchdog (``$RESTARTABLE_STALL_TIMEOUT``; default off):
        when an iteration is active and no item, batch, file or result finished for this
        long, log every thread's stack and exit 75, so a hung runner stops holding the
        lease (:mod:`restartable._watchdog`). Set it well above the slowest item.
    :param shard: ``"auto"`` (default: inside a Kubernetes Indexed Job, the pod's
        ``JOB_COMPLETION_INDEX`` of ``$RESTARTABLE_SHARDS``), ``(index, count)``, or None.
        A shard keeps its own checkpoint, under the run ``<run>.shard-<i>-of-<n>``.
    """

    def __init__(
        self,
        name: str,
        *,
        run: str | None = None,
        store: str | Store | None = None,
        lease_seconds: float | None = None,
        wait: float | None = None,
        retention: str | float = DEFAULT_RETENTION,
        cleanup: Literal["keep", "delete"] = "keep",
        on_change: OnChange = "refuse",
        progress: bool | None = None,
        handle_signals: bool = True,
        shard: Any = "auto",
        stall_timeout: str | float | None = None,
    ) -> None:
        # Before anything can raise: a library error that escapes the script (a bad name
        # included) ends it with its documented exit code, decorator or not.
        install_excepthook()
        self.name = check_name(name, "job name")
        base_run = check_name(run if run is not None else os.environ.get("RESTARTABLE_RUN") or "default", "run")
        #: ``(index, count)`` when this runner is one shard of the run (an Indexed Job's pod), else None.
        self.shard = _shard.resolve(shard)
        #: The run this runner's record is stored under: ``<run>.shard-<i>-of-<n>`` for a shard.
        self.run = check_name(_shard.shard_run(base_run, self.shard) if self.shard else base_run, "run")
        self.base_run = base_run
        self._store_arg = store
        lease = lease_seconds if lease_seconds is not None else _env_float("RESTARTABLE_LEASE_SECONDS")
        self.lease_seconds = float(lease if lease is not None else DEFAULT_LEASE_SECONDS)
        if self.lease_seconds <= 0:
            raise UsageError(f"lease_seconds must be positive, not {self.lease_seconds}")
        in_kube = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        w = wait if wait is not None else _env_float("RESTARTABLE_WAIT")
        self.wait = float(w if w is not None else (self.lease_seconds if in_kube else 0.0))
        self.retention = parse_duration(retention, "retention")
        if cleanup not in ("keep", "delete"):
            raise UsageError(f"cleanup must be 'keep' or 'delete', not {cleanup!r}")
        if on_change not in ("refuse", "restart", "force"):
            raise UsageError(f"on_change must be 'refuse', 'restart' or 'force', not {on_change!r}")
        stall = stall_timeout if stall_timeout is not None else os.environ.get("RESTARTABLE_STALL_TIMEOUT") or None
        #: Seconds without progress before the watchdog ends the process (None: no watchdog).
        self.stall_timeout = parse_duration(stall, "stall_timeout") if stall is not None else None
        if self.stall_timeout is not None and self.stall_timeout <= 0:
            raise UsageError(f"stall_timeout must be positive, not {stall!r}; leave it out to turn the watchdog off")
        self.cleanup = cleanup
        self.on_change: OnChange = on_change
        self._progress_opt = progress
        self._handle_signals = handle_signals

        #: The job's JSON state, saved atomically with every checkpoint.
        self.state: dict[str, Any] = {}
        #: True when the run is completed: it was at start, or it completed since.
        self.completed = False
        #: True when this runner continues a checkpoint left by an earlier one.
        self.resumed = False

        self._store: Store | None = None
        self._owns_store = False
        self._record: Checkpoint | None = None
        self._cursors: dict[str, Cursor] = {}
        self._fingerprints: dict[str, Any] = {}
        self._active: Cursor | None = None
        self._calls = 0
        self._complete_called = False
        self._fenced: Fenced | None = None
        #: This runner took the lease (False: it found the run completed and only reads).
        self._holds_lease = False
        self._signal: int | None = None
        self._guard: SignalGuard | None = None
        self._heartbeat: _lease.Heartbeat | None = None
        self._watchdog: _watchdog.StallWatchdog | None = None
        self._last_save = time.monotonic()
        self._entered = False
        self._save_lock = threading.Lock()
        self._before_save: list[Callable[[], None]] = []

    # -- properties -------------------------------------------------------------

    @property
    def label(self) -> str:
        return f"job {self.name!r} run {self.run!r}"

    @property
    def store(self) -> Store:
        if self._store is None:
            raise UsageError(f"{self.label} is not started: use it as `with Job(...) as job:`")
        return self._store

    @property
    def record(self) -> Checkpoint | None:
        """The checkpoint as last loaded or saved."""
        return self._record

    @property
    def epoch(self) -> int | None:
        return self._record.epoch if self._record else None

    @property
    def stopping(self) -> bool:
        """True once SIGTERM/SIGINT arrived: code outside ``iterate`` may poll it."""
        return self._signal is not None

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Job:
        if self._entered:
            raise UsageError(f"{self.label} was already started; create a new Job for another run")
        self._entered = True
        _ensure_logging()
        self._owns_store = not isinstance(self._store_arg, Store)
        self._store = open_store(self._store_arg)
        try:
            self._start()
        except BaseException:
            if self._owns_store:
                self._store.close()
            raise
        return self

    def _start(self) -> None:
        store = self.store
        log.info("%s: store %s", self.label, store.display)
        rec = store.load(self.name, self.run)
        previous = rec.status if rec is not None else None
        if rec is None or rec.status != COMPLETED:
            rec = _lease.acquire(
                store, self.name, self.run, owner=current_owner(), lease_seconds=self.lease_seconds,
                wait=self.wait, label=self.label,
            )
            self._holds_lease = True
            if rec.status == COMPLETED:  # completed by another runner meanwhile
                rec = store.save(rec, lease_seconds=None)
        self._record = rec
        self.state = dict(rec.state)
        self._fingerprints = dict(rec.fingerprints)
        if rec.status == COMPLETED:
            self.completed = True
            log.info(
                "%s is already complete (%s items, finished %s): nothing to do; `restartable reset %s%s` "
                "runs it again", self.label, f"{rec.done:,}", time.strftime("%Y-%m-%d %H:%M:%S",
                time.localtime(rec.updated)), self.name, "" if self.run == "default" else f" --run {self.run}",
            )
            return
        self.resumed = rec.done > 0 or bool(rec.positions) or bool(rec.state)
        if self.resumed:
            log.info("%s: resuming after %s done items (it was %s)", self.label, f"{rec.done:,}", previous)
        else:
            log.info("%s: starting", self.label)
        self._heartbeat = _lease.Heartbeat(
            store, self.name, self.run, epoch=rec.epoch, lease_seconds=self.lease_seconds,
            on_fenced=self._on_fenced, on_lost=self._on_lost, label=self.label,
        )
        self._heartbeat.start()
        if self.stall_timeout is not None:
            self._watchdog = _watchdog.StallWatchdog(timeout=self.stall_timeout, label=self.label,
                                                     on_stall=self._stop_renewing)
            self._watchdog.start()
        if self._handle_signals:
            self._guard = SignalGuard(self._on_signal, self.label)
            self._guard.install()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            self._finish(exc)
        finally:
            if self._watchdog is not None:
                self._watchdog.stop()
            if self._heartbeat is not None:
                self._heartbeat.stop()
            if self._guard is not None:
                self._guard.restore()
            if self._owns_store and self._store is not None:
                self._store.close()

    def _finish(self, exc: BaseException | None) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        rec = self._record
        # A runner that found the run completed took no lease and writes nothing, not even to
        # release a lease a crashed runner left on the completed record (the store may be
        # read-only to it, and that lease is not its own).
        if rec is None or not self._holds_lease or (self.completed and rec.lease_expires is None):
            return
        if isinstance(exc, (Fenced, Interrupted)) or self._fenced is not None:
            return  # fenced: nothing may be saved; interrupted: already saved and released
        if exc is not None:
            status = FAILED
            log.error("%s failed after %s done items: %s; the checkpoint is kept, a rerun resumes",
                      self.label, f"{self._done():,}", exc if isinstance(exc, RestartableError) else repr(exc))
        elif self.completed or self._complete_called or all(c.finished for c in self._cursors.values()):
            status = COMPLETED
        elif self._signal is not None:
            status = INTERRUPTED
        else:
            status = INTERRUPTED
            unfinished = [c.name for c in self._cursors.values() if not c.finished]
            log.warning("%s left its block before iteration %s finished (a break?): marked interrupted, a "
                        "rerun resumes it", self.label, ", ".join(repr(n) for n in unfinished))
        try:
            self._save(status, release=True)
        except StateNotSerializable:
            if exc is None:
                raise
            # The state is what failed: keep the last good checkpoint, marked failed.
            self._record = self.store.save(self._record.replace(status=FAILED), lease_seconds=None)
        except RestartableError as save_exc:
            if exc is None:
                raise
            log.error("%s: could not save the final checkpoint (%s); the last one saved is kept", self.label,
                      save_exc)
            return
        if status == COMPLETED:
            self.completed = True
            self._after_completion()
        elif status == INTERRUPTED and self._signal is not None and exc is None:
            raise self._interrupted()

    def _after_completion(self) -> None:
        log.info("%s completed: %s items", self.label, f"{self._done():,}")
        store = self.store
        try:
            if self.cleanup == "delete":
                store.delete(self.name, self.run, epoch=self._record.epoch if self._record else None)
            store.cleanup(older_than=self.retention, job=self.name)
        except RestartableError as exc:  # retention is housekeeping: never fail a completed run for it
            log.warning("%s: cleanup of old runs failed: %s", self.label, exc)

    # -- saving -------------------------------------------------------------------

    def _done(self) -> int:
        """Items done in this run, over every iteration (those of earlier processes too)."""
        return sum(int(p.get("offset", 0)) for p in self._positions().values())


    def _positions(self) -> dict[str, dict[str, Any]]:
        # Cursors not used by this process keep their stored positions; a used cursor
        # owns its whole position (its extra was loaded from the record).
        positions = dict(self._record.positions) if self._record else {}
        for name, cur in self._cursors.items():
            positions[name] = cur.as_position()
        return positions

    def on_checkpoint(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` before every checkpoint is written, in the saving thread.

        Use it to make output durable before the checkpoint claims it: flush and fsync
        an output file and put its length in ``job.state``; on resume, truncate the file
        to that length and nothing is written twice (``restartable demo`` does this).
        Returns a function that unregisters the callback.
        """
        self._before_save.append(callback)

        def remove() -> None:
            if callback in self._before_save:
                self._before_save.remove(callback)

        return remove

    def _record_for_save(self, status: str, *, positions: dict[str, dict[str, Any]] | None = None) -> Checkpoint:
        """Run the on_checkpoint callbacks, then build the record a save writes now.

        ``positions`` overrides the cursors' own (a transaction saves the position after
        the batch in flight). Raises Fenced once this runner was fenced.
        """
        if self._fenced is not None:
            raise self._fenced
        for callback in self._before_save:
            callback()
        rec = self._record
        assert rec is not None
        positions = self._positions() if positions is None else positions
        return rec.replace(
            status=status,
            positions=positions,
            state=self.state,
            done=sum(int(p.get("offset", 0)) for p in positions.values()),
            # Skipped items: failed files and dead letters, kept per cursor by their sources.
            failed=sum(len(p[k]) for p in positions.values() for k in ("failed", "dead") if isinstance(p.get(k), dict)),
            fingerprints=dict(self._fingerprints),
        )

    def _adopt_saved(self, saved: Checkpoint) -> None:
        """``saved`` is now the stored record (its dicts are ours to keep: copy the state)."""
        self._record = saved.replace(state=dict(self.state))
        self._last_save = time.monotonic()

    def _fence(self, exc: Fenced) -> None:
        """This runner was fenced off: nothing more may be saved."""
        self._fenced = exc
        log.error("%s", exc)

    def _save(self, status: str, *, release: bool = False) -> Checkpoint:
        new = self._record_for_save(status)
        lease = None if release else self.lease_seconds
        with self._save_lock:
            try:
                saved = self.store.save(new, lease_seconds=lease)
            except CheckpointLost as exc:
                log.error("%s: %s; writing the checkpoint back from memory", self.label, exc)
                saved = self.store.restore(new, lease_seconds=lease or self.lease_seconds)
                if release:
                    saved = self.store.save(new, lease_seconds=None)
            except Fenced as exc:
                self._fence(exc)
                raise
        self._adopt_saved(saved)
        return saved

    def _mark(self, cursor: str, key: str, value: Any) -> None:
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
            with self._save_lock:
                self._adopt_saved(self.store.restore(self._record_for_save(RUNNING), lease_seconds=self.lease_seconds))
            self.store.mark(self.name, self.run, cursor, key, value, epoch=epoch)
        except Fenced as exc:
            if self._fenced is None:
                self._fence(exc)
            raise

    def checkpoint(self) -> None:
        """Save a checkpoint now. Inside a loop, the item in flight is not yet done."""
        if self.completed:
            return
        self._save(RUNNING)

    def complete(self) -> None:
        """Mark the run completed now, whatever its iterations did. Further iterations yield nothing."""
        if self.completed:
            return
        self._complete_called = True
        self._save(COMPLETED)
        self.completed = True

    # -- signals and fencing -------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        self._signal = signum
        if self._active is not None:
            self._active.stop_soon()

    def _on_fenced(self, exc: Fenced) -> None:
        # From the heartbeat thread: the main thread notices at the next chunk boundary.
        self._fence(exc)

    def _on_lost(self, exc: CheckpointLost) -> None:
        log.error("%s: %s; writing the checkpoint back from memory", self.label, exc)
        with self._save_lock:
            if self._record is not None:
                self._record = self.store.restore(self._record, lease_seconds=self.lease_seconds)

    def _stop_renewing(self) -> None:
        """For the stall watchdog: no more renewals, without waiting for one in flight (it exits next)."""
        if self._heartbeat is not None:
            self._heartbeat.stop(wait=0)

    def _interrupted(self) -> Interrupted:
        import signal as _signal

        signum = self._signal or _signal.SIGTERM
        msg = (f"{self.label} interrupted by {_signal.Signals(signum).name} after {self._done():,} done items; "
               "checkpoint saved, rerun to resume")
        log.warning("%s", msg)
        return Interrupted(msg, signum=signum)

    # -- iteration ------------------------------------------------------------------

    def iterate(
        self,
        iterable: Iterable[Any],
        *,
        every: int | None = None,
        seconds: float | None = None,
        name: str | None = None,
        key: Callable[[Any], Any] | None = None,
        on_change: OnChange | None = None,
        progress: bool | None = None,
        shard: Any = None,
    ) -> Iterator[Any]:
        """Yield the items of ``iterable`` not yet done in this run, checkpointing as it goes.

        A checkpoint is written every ``every`` done items or ``seconds`` seconds,
        whichever comes first, and when the iteration ends; with neither, every
        :data:`DEFAULT_SECONDS` seconds. Sequences (``len`` and indexing, ``range``)
        resume by an O(1) seek; other iterables by reading and skipping the done
        items (O(position)). ``key(item)`` gives each item a stable JSON identity for
        the input fingerprint when the items themselves are not JSON values.
        Each call has its own cursor: ``name``, by default its order in the job.
        ``shard="auto"`` processes only this runner's shard (``Job(shard=...)``): a
        contiguous block of a sequence, every n-th item of an iterator.
        """
        if self._record is None:
            raise UsageError(f"{self.label} is not started: call iterate inside `with Job(...) as job:`")
        if every is not None and (not isinstance(every, int) or every < 1):
            raise UsageError(f"every must be a positive int, not {every!r}")
        if seconds is not None and seconds <= 0:
            raise UsageError(f"seconds must be positive, not {seconds!r}")
        if every is None and seconds is None:
            seconds = DEFAULT_SECONDS
        if self.completed:
            log.info("%s is already complete: iteration %r yields nothing", self.label,
                     name if name is not None else str(self._calls))
            self._calls += 1
            return iter(())
        if shard is not None:
            chosen = self.shard if shard == "auto" else _shard.resolve(shard)
            if chosen is None:
                raise UsageError(f"{self.label}: shard='auto' outside a sharded job: pass Job(shard=(i, n)) "
                                 "or run as a Kubernetes Indexed Job with RESTARTABLE_SHARDS set")
            if self.shard is not None and chosen != self.shard:
                raise UsageError(f"{self.label}: iterate(shard={chosen}) differs from the job's shard {self.shard}")
            iterable = _shard.slice_for(iterable, chosen)
        source = Source(iterable)
        cursor = self._cursor(name, total=source.length)
        fp = self._check_input(cursor, source, key, on_change or self.on_change)
        if cursor.finished and (source.length is None or cursor.offset >= source.length):
            return iter(())
        cursor.finished = False
        hooks = self._loop_hooks(seconds=seconds, progress=progress, fingerprint=fp)
        return run_chunks(cursor, source, fp, every=every, hooks=hooks)

    # -- the extension API of sources (restartable.sources, concurrency) -------------

    def _cursor(self, name: str | None, *, total: int | None = None) -> Cursor:
        """Register this run's cursor ``name`` (default: the call's order), loaded from the record.

        Sources build on it: the cursor's ``offset`` counts done items, ``extra`` holds
        source-specific position data, ``finished`` marks an exhausted source.
        """
        if self._record is None:
            raise UsageError(f"{self.label} is not started: iterate inside `with Job(...) as job:`")
        cname = name if name is not None else str(self._calls)
        self._calls += 1
        if cname in self._cursors:
            raise UsageError(f"{self.label}: iteration {cname!r} was already used in this run; give each a name=")
        pos = dict(self._record.positions.get(cname, {}))
        offset = int(pos.pop("offset", 0))
        finished = bool(pos.pop("finished", False))
        stored_total = pos.pop("total", None)
        cursor = Cursor(cname, offset=offset, total=total if total is not None else stored_total,
                        finished=finished, extra=pos)
        self._cursors[cname] = cursor
        return cursor

    def _loop_hooks(self, *, seconds: float | None, progress: bool | None,
                    fingerprint: Fingerprinter | None = None) -> _LoopHooks:
        """The between-items work of one iteration: call ``boundary(cursor, count_due)`` whenever
        the loop comes back for more (it checkpoints when due and raises Interrupted or Fenced),
        ``end(cursor)`` when the source is exhausted and ``close(cursor)`` in a ``finally``."""
        shown = Progress(label=self.label, enabled=progress if progress is not None else self._progress_opt)
        return _LoopHooks(self, fingerprint, seconds, shown)

    def batches(self, source: Any, **options: Any) -> Iterator[Any]:
        """Yield batches from a source that resumes by key (``PostgresTable``); see restartable.sources."""
        from .sources.batches import iterate_batches

        return iterate_batches(self, source, **options)

    def transaction(self, **options: Any) -> Any:
        """One transaction for the caller's output and the checkpoint's advance (exactly-once)."""
        from .sources.transaction import transaction

        return transaction(self, **options)

    def files(self, pattern: Any, **options: Any) -> Iterator[Any]:
        """Yield the files of a glob or directory not yet done, marking each when the loop moves on."""
        from .sources.files import iterate_files

        return iterate_files(self, pattern, **options)

    def output(self, path: Any, **options: Any) -> Any:
        """A temp path beside ``path``, renamed into place only when the block succeeds."""
        from .sources.files import atomic_output

        return atomic_output(self, path, **options)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], **options: Any) -> Iterator[Any]:
        """Run ``fn(item)`` on worker threads, resumable with out-of-order completion."""
        from .concurrent import map_threads

        return map_threads(self, fn, items, **options)

    def aiterate(self, items: Any, **options: Any) -> Any:
        """``async for item in job.aiterate(items)``: ``iterate`` for asyncio."""
        from .concurrent import aiterate

        return aiterate(self, items, **options)

    def amap(self, fn: Callable[[Any], Any], items: Any, **options: Any) -> Any:
        """``async for result in job.amap(coro_fn, items, concurrency=N)``."""
        from .concurrent import amap

        return amap(self, fn, items, **options)

    def _check_input(self, cursor: Cursor, source: Source, key: Callable[[Any], Any] | None,
                     on_change: OnChange) -> Fingerprinter:
        """Check the input against its stored fingerprint; seek or skip to the position."""
        describe = f"{self.label} iteration {cursor.name!r}"
        stored = self._fingerprints.get(cursor.name)
        for attempt in range(2):
            try:
                fp = Fingerprinter(length=source.length, key=key, stored=stored, position=cursor.offset,
                                   describe=describe)
                if source.seq is not None:
                    for idx in sample_indices(0, source.length or 0):
                        fp.see(idx, [source.seq[idx]])
                elif cursor.offset:
                    skipped = skip(source, cursor.offset, fp)
                    if skipped < cursor.offset:
                        raise InputChanged(f"{describe}: the input now has {skipped} items but {cursor.offset} "
                                           "were already done; it changed under the checkpoint")
                break
            except InputChanged as exc:
                if on_change == "force" or attempt:
                    log.warning("%s (resuming anyway: on_change='force')", exc)
                    fp = Fingerprinter(length=source.length, key=key, stored=None, position=0, describe=describe)
                    break
                if on_change == "restart":
                    log.warning("%s: restarting this iteration from its start (on_change='restart')", exc)
                    if not source.seekable:
                        raise InputChanged(f"{exc}; on_change='restart' needs a sequence (the iterator was "
                                           "consumed while checking)") from None
                    cursor.offset, cursor.finished, stored = 0, False, None
                    continue
                raise InputChanged(f"{exc}. Pass on_change='restart' to start this iteration over, "
                                   "on_change='force' to resume anyway, or use a new run id") from None
        self._fingerprints[cursor.name] = fp.result()
        return fp


class _LoopHooks:
    """Between-chunk work of one ``iterate``: checkpoints, signals, fencing, progress."""

    def __init__(self, job: Job, fp: Fingerprinter | None, seconds: float | None, shown: Progress) -> None:
        self.job = job
        self.fp = fp
        self.seconds = seconds
        self.shown = shown
        self.last_save = time.monotonic()
        self.started = False
        #: Stop at once when a signal arrived during the periodic save. A source that drains
        #: work in flight before stopping (job.map) turns it off and stops by itself.
        self.stop_after_save = True

    def boundary(self, cur: Cursor, count_due: bool) -> None:
        job = self.job
        watchdog = job._watchdog
        if not self.started:
            self.started = True
            job._active = cur
            self.shown.start(cur.name, cur.offset, cur.total)
            if watchdog is not None:
                watchdog.enter()
        elif watchdog is not None:
            watchdog.progressed()
        if job._fenced is not None:
            raise job._fenced
        self.shown.update(cur.offset)
        signalled = job._signal is not None
        now = time.monotonic()
        if not signalled and (count_due or (self.seconds is not None and now - self.last_save >= self.seconds)):
            if self.fp is not None:
                job._fingerprints[cur.name] = self.fp.result()
            job._save(RUNNING)
            self.last_save = now
            self.shown.checkpointed(cur.name, cur.offset, cur.total)
        # A signal that arrived during that save stops the loop now, not a chunk (or a
        # batch) later, unless the source drains its work in flight first (job.map,
        # each-file): then never here, even for a signal that landed between the source's
        # own check and this call, as releasing the lease now would leave its workers running
        # unleased; the source sets stop_after_save again once they have ended.
        if job._signal is not None and self.stop_after_save:
            if self.fp is not None:
                job._fingerprints[cur.name] = self.fp.result()
            job._save(INTERRUPTED, release=True)
            self.shown.stop(cur.offset)
            raise job._interrupted()

    def saved(self) -> None:
        """A checkpoint was written by the source itself (a transaction): restart the clock."""
        self.last_save = time.monotonic()

    def end(self, cur: Cursor) -> None:
        cur.finished = True
        if cur.total is None:
            cur.total = cur.offset
        if self.fp is not None:
            self.job._fingerprints[cur.name] = self.fp.result()
        self.job._save(RUNNING)
        self.shown.stop(cur.offset)
        self.shown.checkpointed(cur.name, cur.offset, cur.total, force=True)

    def close(self, cur: Cursor) -> None:
        if self.started and self.job._watchdog is not None:
            self.job._watchdog.leave()
        self.shown.stop(cur.position())
        if self.job._active is cur:
            self.job._active = None
