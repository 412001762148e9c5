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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import _lease, _shard, _watchdog
from ._checkpoint import COMPLETED, FAILED, INTERRUPTED, RUNNING, Checkpoint
from ._concurrency.engines import DEFAULT_GRACE, DEFAULT_WINDOW, aiterate, amap, map_threads
from ._cursor import Source, run_chunks
from ._entry import install_excepthook
from ._names import check_name
from ._proc import current_owner
from ._retry import DEFAULT_BACKOFF_SECONDS
from ._run import DEFAULT_SECONDS, OnChange, RunContext, check_every
from ._signals import SignalGuard
from ._sources.batches import BatchSource, iterate_batches
from ._sources.files import FileItem, atomic_output, iterate_files
from ._sources.transaction import transaction
from ._url import parse_duration
from .errors import (
    CheckpointLost,
    Fenced,
    Interrupted,
    RestartableError,
    StateNotSerializable,
    UsageError,
)
from .stores import Store, open_store

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["Job", "DEFAULT_SECONDS", "run_context"]

log = logging.getLogger("restartable")

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_RETENTION = "7d"


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
        self._handle_signals = handle_signals
        #: What sources and engines see of this run (restartable._run): the job is its facade.
        self._ctx = RunContext(
            name=self.name, run=self.run, lease_seconds=self.lease_seconds, on_change=on_change, progress=progress
        )
        #: True when this runner continues a checkpoint left by an earlier one.
        self.resumed = False

        self._owns_store = False
        self._complete_called = False
        #: This runner took the lease (False: it found the run completed and only reads).
        self._holds_lease = False
        self._guard: SignalGuard | None = None
        self._heartbeat: _lease.Heartbeat | None = None
        self._entered = False

    # -- properties -------------------------------------------------------------

    @property
    def label(self) -> str:
        return self._ctx.label

    @property
    def store(self) -> Store:
        return self._ctx.store

    @property
    def state(self) -> dict[str, Any]:
        """The job's JSON state, saved atomically with every checkpoint."""
        return self._ctx.state

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._ctx.state = value

    @property
    def completed(self) -> bool:
        """True when the run is completed: it was at start, or it completed since."""
        return self._ctx.completed

    @completed.setter
    def completed(self, value: bool) -> None:
        self._ctx.completed = value

    @property
    def record(self) -> Checkpoint | None:
        """The checkpoint as last loaded or saved."""
        return self._ctx.record

    @property
    def epoch(self) -> int | None:
        return self._ctx.epoch

    @property
    def stopping(self) -> bool:
        """True once SIGTERM/SIGINT arrived: code outside ``iterate`` may poll it."""
        return self._ctx.stopping

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Job:
        if self._entered:
            raise UsageError(f"{self.label} was already started; create a new Job for another run")
        self._entered = True
        _ensure_logging()
        self._owns_store = not isinstance(self._store_arg, Store)
        store = self._ctx.store = open_store(self._store_arg)
        try:
            self._start()
        except BaseException:
            if self._owns_store:
                store.close()
            raise
        return self

    def _start(self) -> None:
        store = self.store
        log.info("%s: store %s", self.label, store.display)
        rec = store.load(self.name, self.run)
        previous = rec.status if rec is not None else None
        if rec is None or rec.status != COMPLETED:
            rec = _lease.acquire(
                store,
                self.name,
                self.run,
                owner=current_owner(),
                lease_seconds=self.lease_seconds,
                wait=self.wait,
                label=self.label,
            )
            self._holds_lease = True
            if rec.status == COMPLETED:  # completed by another runner meanwhile
                rec = store.save(rec, lease_seconds=None)
        ctx = self._ctx
        ctx.record = rec
        ctx.state = dict(rec.state)
        ctx.fingerprints = dict(rec.fingerprints)
        if rec.status == COMPLETED:
            self.completed = True
            log.info(
                "%s is already complete (%s items, finished %s): nothing to do; `restartable reset %s%s` runs it again",
                self.label,
                f"{rec.done:,}",
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.updated)),
                self.name,
                "" if self.run == "default" else f" --run {self.run}",
            )
            return
        self.resumed = rec.done > 0 or bool(rec.positions) or bool(rec.state)
        if self.resumed:
            log.info("%s: resuming after %s saved items (it was %s)", self.label, f"{rec.done:,}", previous)
        else:
            log.info("%s: starting", self.label)
        self._heartbeat = _lease.Heartbeat(
            store,
            self.name,
            self.run,
            epoch=rec.epoch,
            lease_seconds=self.lease_seconds,
            on_fenced=ctx.fence,
            on_lost=self._on_lost,
            label=self.label,
        )
        self._heartbeat.start()
        if self.stall_timeout is not None:
            ctx.watchdog = _watchdog.StallWatchdog(
                timeout=self.stall_timeout, label=self.label, on_stall=self._stop_renewing
            )
            ctx.watchdog.start()
        if self._handle_signals:
            self._guard = SignalGuard(ctx.on_signal, self.label)
            self._guard.install()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            self._finish(exc)
        finally:
            if self._ctx.watchdog is not None:
                self._ctx.watchdog.stop()
            if self._heartbeat is not None:
                self._heartbeat.stop()
            if self._guard is not None:
                self._guard.restore()
            if self._owns_store and self._ctx.has_store:
                self._ctx.store.close()

    def _finish(self, exc: BaseException | None) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        ctx = self._ctx
        rec = ctx.record
        # A runner that found the run completed took no lease and writes nothing, not even to
        # release a lease a crashed runner left on the completed record (the store may be
        # read-only to it, and that lease is not its own).
        if rec is None or not self._holds_lease or (self.completed and rec.lease_expires is None):
            return
        if isinstance(exc, (Fenced, Interrupted)) or ctx.fenced is not None:
            return  # fenced: nothing may be saved; interrupted: already saved and released
        if exc is not None:
            status = FAILED
            log.error(
                "%s failed after %s done items: %s; the checkpoint is kept, a rerun resumes",
                self.label,
                f"{self._done():,}",
                exc if isinstance(exc, RestartableError) else repr(exc),
            )
        elif self.completed or self._complete_called or all(c.finished for c in ctx.cursors.values()):
            status = COMPLETED
        elif ctx.signal is not None:
            status = INTERRUPTED
        else:
            status = INTERRUPTED
            unfinished = [c.name for c in ctx.cursors.values() if not c.finished]
            log.warning(
                "%s left its block before iteration %s finished (a break?): marked interrupted, a rerun resumes it",
                self.label,
                ", ".join(repr(n) for n in unfinished),
            )
        try:
            ctx.save(status, release=True)
        except StateNotSerializable:
            if exc is None:
                raise
            # The state is what failed: keep the last good checkpoint, marked failed.
            ctx.record = self.store.save(rec.replace(status=FAILED), lease_seconds=None)
        except RestartableError as save_exc:
            if exc is None:
                raise
            log.error("%s: could not save the final checkpoint (%s); the last one saved is kept", self.label, save_exc)
            return
        if status == COMPLETED:
            self.completed = True
            self._after_completion()
        elif status == INTERRUPTED and ctx.signal is not None and exc is None:
            raise ctx.interrupted()

    def _after_completion(self) -> None:
        log.info("%s completed: %s items", self.label, f"{self._done():,}")
        store = self.store
        try:
            if self.cleanup == "delete":
                store.delete(self.name, self.run, epoch=self.epoch)
            store.cleanup(older_than=self.retention, job=self.name)
        except RestartableError as exc:  # retention is housekeeping: never fail a completed run for it
            log.warning("%s: cleanup of old runs failed: %s", self.label, exc)

    # -- saving -------------------------------------------------------------------

    def _done(self) -> int:
        """Items done in this run, over every iteration (those of earlier processes too)."""
        return self._ctx.done()

    def on_checkpoint(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` before every checkpoint is written, in the saving thread.

        Use it to make output durable before the checkpoint claims it: flush and fsync
        an output file and put its length in ``job.state``; on resume, truncate the file
        to that length and nothing is written twice (``restartable demo`` does this).
        Returns a function that unregisters the callback.
        """
        return self._ctx.on_checkpoint(callback)

    def checkpoint(self) -> None:
        """Save a checkpoint now. Inside a loop, the item in flight is not yet done."""
        if self.completed:
            return
        self._ctx.save(RUNNING)

    def complete(self) -> None:
        """Mark the run completed now, whatever its iterations did. Further iterations yield nothing."""
        if self.completed:
            return
        self._complete_called = True
        self._ctx.save(COMPLETED)
        self.completed = True

    # -- signals and fencing -------------------------------------------------------

    def _on_lost(self, exc: CheckpointLost) -> None:
        self._ctx.restore_lost(exc)

    def _stop_renewing(self) -> None:
        """For the stall watchdog: no more renewals, without waiting for one in flight (it exits next)."""
        if self._heartbeat is not None:
            self._heartbeat.stop(wait=0)

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
        ctx = self._ctx
        if ctx.record is None:
            raise UsageError(f"{self.label} is not started: call iterate inside `with Job(...) as job:`")
        check_every(every)
        if seconds is not None and seconds <= 0:
            raise UsageError(f"seconds must be positive, not {seconds!r}")
        if every is None and seconds is None:
            seconds = DEFAULT_SECONDS
        if self.completed:
            log.info(
                "%s is already complete: iteration %r yields nothing",
                self.label,
                name if name is not None else str(ctx.calls),
            )
            ctx.skip_iteration()
            return iter(())
        if shard is not None:
            chosen = self.shard if shard == "auto" else _shard.resolve(shard)
            if chosen is None:
                raise UsageError(
                    f"{self.label}: shard='auto' outside a sharded job: pass Job(shard=(i, n)) "
                    "or run as a Kubernetes Indexed Job with RESTARTABLE_SHARDS set"
                )
            if self.shard is not None and chosen != self.shard:
                raise UsageError(f"{self.label}: iterate(shard={chosen}) differs from the job's shard {self.shard}")
            iterable = _shard.slice_for(iterable, chosen)
        source = Source(iterable)
        cursor = ctx.cursor(name, total=source.length)
        fp = ctx.check_input(cursor, source, key, on_change or self.on_change)
        if cursor.finished and (source.length is None or cursor.offset >= source.length):
            return iter(())
        cursor.finished = False
        hooks = ctx.loop_hooks(seconds=seconds, progress=progress, fingerprint=fp)
        return run_chunks(cursor, source, fp, every=every, hooks=hooks)

    # -- sources and engines: each gets the run context, never the Job -----------------

    def batches(
        self,
        source: BatchSource,
        *,
        every: int | None = None,
        seconds: float | None = None,
        name: str | None = None,
        progress: bool | None = None,
    ) -> Iterator[list[Any]]:
        """Yield batches from a source that resumes by key (``PostgresTable``, ``SQLiteTable``).

        ``every``/``seconds``/``name``/``progress`` are as for :meth:`iterate`; each
        batch is done when the loop asks for the next. See :mod:`restartable._sources.batches`.
        """
        return iterate_batches(self._ctx, source, every=every, seconds=seconds, name=name, progress=progress)

    def transaction(self) -> Any:
        """One transaction for the caller's output and the checkpoint's advance (exactly-once).

        Yields the store's own connection (``psycopg.Connection``, ``sqlite3.Connection``)
        inside a ``job.batches`` loop; see :mod:`restartable._sources.transaction`.
        """
        return transaction(self._ctx)

    def files(
        self,
        pattern: str | os.PathLike[str],
        *,
        name: str | None = None,
        recheck: bool = True,
        attempts: int = 1,
        backoff: float = DEFAULT_BACKOFF_SECONDS,
        on_error: Literal["stop", "skip"] = "stop",
        skip_budget: int | None = None,
        marker_dir: str | os.PathLike[str] | None = None,
        allow_empty: bool = False,
        every: int | None = None,
        seconds: float | None = None,
        progress: bool | None = None,
    ) -> Iterator[FileItem]:
        """Yield the files of a glob or directory not yet done, marking each when the loop moves on.

        See :mod:`restartable._sources.files` for the contract of each option.
        """
        return iterate_files(
            self._ctx,
            pattern,
            name=name,
            recheck=recheck,
            attempts=attempts,
            backoff=backoff,
            on_error=on_error,
            skip_budget=skip_budget,
            marker_dir=marker_dir,
            allow_empty=allow_empty,
            every=every,
            seconds=seconds,
            progress=progress,
        )

    def output(self, path: str | os.PathLike[str], *, makedirs: bool = True) -> AbstractContextManager[Path]:
        """A temp path beside ``path``, renamed into place only when the block succeeds."""
        return atomic_output(self._ctx, path, makedirs=makedirs)

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        *,
        workers: int = 8,
        ordered: bool = False,
        window: int = DEFAULT_WINDOW,
        attempts: int = 1,
        backoff: float = DEFAULT_BACKOFF_SECONDS,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        on_error: Literal["stop", "skip"] = "stop",
        skip_budget: int | None = None,
        retry_dead: bool = False,
        rate: float | None = None,
        grace: float = DEFAULT_GRACE,
        name: str | None = None,
        every: int | None = None,
        seconds: float | None = None,
        key: Callable[[Any], Any] | None = None,
        on_change: str | None = None,
        progress: bool | None = None,
        executor: Literal["threads", "processes"] | Executor | Client | None = None,
        timeout: float | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Iterator[Any]:
        """Run ``fn(item)`` on ``workers`` threads (or processes, or an executor), resumable with
        out-of-order completion.

        See :mod:`restartable._concurrency.engines` for the done rule, the window,
        retries, ``on_error``, ``rate`` and ``grace``; ``every``, ``seconds``, ``name``,
        ``key``, ``on_change`` and ``progress`` are as for :meth:`iterate`.

        ``executor``: None or ``"threads"`` (``workers`` daemon threads), ``"processes"``
        (a process pool of ``workers`` processes that restartable creates, replaces when
        a worker dies, and shuts down), a ``concurrent.futures.Executor`` (used as given,
        never shut down by us) or a ``distributed.Client`` (its ``get_executor()``); at
        most ``workers`` items are in flight whatever runs them. ``timeout``: seconds an
        attempt may take before it counts as failed (``ItemTimeout``; a process of ours
        running it is killed). ``initializer(*initargs)`` runs first in each worker thread
        or process restartable creates. See :mod:`restartable._concurrency.executors`.
        """
        return map_threads(
            self._ctx,
            fn,
            items,
            workers=workers,
            ordered=ordered,
            window=window,
            attempts=attempts,
            backoff=backoff,
            retry_on=retry_on,
            on_error=on_error,
            skip_budget=skip_budget,
            retry_dead=retry_dead,
            rate=rate,
            grace=grace,
            name=name,
            every=every,
            seconds=seconds,
            key=key,
            on_change=on_change,
            progress=progress,
            executor=executor,
            timeout=timeout,
            initializer=initializer,
            initargs=initargs,
        )

    def aiterate(
        self,
        items: Any,
        *,
        name: str | None = None,
        every: int | None = None,
        seconds: float | None = None,
        key: Callable[[Any], Any] | None = None,
        on_change: str | None = None,
        progress: bool | None = None,
    ) -> AsyncIterator[Any]:
        """``async for item in job.aiterate(items)``: ``iterate`` for asyncio (sync or async ``items``)."""
        return aiterate(
            self._ctx, items, name=name, every=every, seconds=seconds, key=key, on_change=on_change, progress=progress
        )

    def amap(
        self,
        fn: Callable[[Any], Awaitable[Any]],
        items: Any,
        *,
        workers: int = 8,
        ordered: bool = False,
        window: int = DEFAULT_WINDOW,
        attempts: int = 1,
        backoff: float = DEFAULT_BACKOFF_SECONDS,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        on_error: Literal["stop", "skip"] = "stop",
        skip_budget: int | None = None,
        retry_dead: bool = False,
        rate: float | None = None,
        grace: float = DEFAULT_GRACE,
        name: str | None = None,
        every: int | None = None,
        seconds: float | None = None,
        key: Callable[[Any], Any] | None = None,
        on_change: str | None = None,
        progress: bool | None = None,
        concurrency: int | None = None,
        executor: Literal["threads", "processes"] | Executor | Client | None = None,
        timeout: float | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> AsyncIterator[Any]:
        """``async for result in job.amap(coro_fn, items, workers=N)``: :meth:`map` for asyncio.

        ``concurrency`` is the deprecated spelling of ``workers`` (DeprecationWarning).
        With ``executor=`` (as for :meth:`map`) ``fn`` is a plain function run by
        ``loop.run_in_executor``; ``timeout`` and ``initializer`` are as for :meth:`map`.
        """
        return amap(
            self._ctx,
            fn,
            items,
            workers=workers,
            ordered=ordered,
            window=window,
            attempts=attempts,
            backoff=backoff,
            retry_on=retry_on,
            on_error=on_error,
            skip_budget=skip_budget,
            retry_dead=retry_dead,
            rate=rate,
            grace=grace,
            name=name,
            every=every,
            seconds=seconds,
            key=key,
            on_change=on_change,
            progress=progress,
            concurrency=concurrency,
            executor=executor,
            timeout=timeout,
            initializer=initializer,
            initargs=initargs,
        )


def run_context(job: Job) -> RunContext:
    """The run context behind ``job``: for code of this package that receives a public Job
    (a Pipeline's ``run_in``, the each-file runner) and drives its iterations itself."""
    return job._ctx
