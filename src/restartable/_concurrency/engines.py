"""Concurrent processing inside one job, resumable although items finish out of order.

::

    with Job("thumbnails") as job:                            # threads
        for result in job.map(fetch, urls, workers=32):
            save(result)

    async def main() -> None:                                 # asyncio
        with Job("thumbnails") as job:
            async for result in job.amap(fetch_async, urls, workers=32):
                save(result)
            async for item in job.aiterate(items):            # iterate's async twin
                ...

The contract:

* ``job.map(fn, items)`` runs ``fn(item)`` on ``workers`` threads (``executor=``:
  worker processes, a Dask cluster or any ``concurrent.futures`` executor, see
  :mod:`restartable._concurrency.executors`) and yields the results **in completion order** by default; ``ordered=True`` yields them in input
  order. ``job.amap(coro_fn, items, workers=N)`` is the same for coroutines and
  ``job.aiterate(items)`` is ``iterate`` for ``async for`` (sync or async iterables).
* As with ``iterate``, an item counts as done when the loop asks for the next result
  after its own: a result the caller is still handling when the process dies is
  redone. At most ``workers`` items are between their start and done (running,
  finished but not yet yielded, or yielded and being handled), so a SIGKILL redoes at
  most that many finished items, plus the items done since the last checkpoint.
* Items are numbered by their index in ``items``. A checkpoint holds the *low
  watermark* (the cursor's ``offset``: every item before it is done) and the done
  items above it (``extra["done"]``, run lengths, see :mod:`restartable._concurrency.window`).
  A resumed run processes only the items not done, whatever order they finished in;
  sequences seek in O(1), iterators are read from the watermark on, skipping the
  done items.
* **The window trade-off**: items start only below ``watermark + window``. The
  window bounds the done set, hence the checkpoint (at most ``2 * window`` bytes for
  it, 20 KB at the default 10,000), but a single straggler (an item that takes very
  long, or hangs) lets at most a window's worth of later items finish; then new
  items wait for it.
* Failures: ``fn`` is called up to ``attempts`` times when it raises one of
  ``retry_on``, waiting at least ``backoff * 2**(n-1)`` seconds (default
  ``backoff=1.0``; up to half as much again of jitter, at most 60 s: the one policy of
  :mod:`restartable._retry`) before retry ``n``. Then ``on_error="stop"`` (the default) re-raises the
  exception (the job fails, the item is not done, a rerun retries it), and
  ``on_error="skip"`` records a *dead letter* in ``extra["dead"]``:
  ``{"<index>": {"error": "Type: message", "attempts": n, "key": ...}}`` (the message
  cut to 300 characters; ``key`` is ``key(item)``, or the item itself when it is a
  small JSON value) and goes on; the item counts as done and yields nothing. More
  than ``skip_budget`` dead letters in the cursor (earlier runs' included) raise
  :class:`~restartable.errors.SkipBudgetExceeded` (exit 65). ``restartable show``
  lists the dead letters. ``retry_dead=True`` in a rerun of a run that did not
  complete (stopped by the skip budget, an error or a signal) reprocesses them first:
  a success removes the entry, a failure updates it. A run that completes keeps its
  dead letters for ``show`` (a completed run does no work, so reprocessing them then
  needs a new run). They stay in the record, about 500 bytes each: bound them with
  a budget.
* ``rate`` limits the calls of ``fn`` (retries included) to that many per second,
  evenly spaced (a token bucket of capacity one), for APIs with quotas.
* SIGTERM/SIGINT: no new item starts, the running ones get ``grace`` seconds to
  finish and their results are yielded; then the job checkpoints, releases its
  lease and raises :class:`~restartable.errors.Interrupted` (exit 143/130). Items
  still running then are not done; their threads are daemons (never joined, so the
  process exits even if ``fn`` never returns) and their tasks are cancelled.
* Checkpoints are written only by the consuming thread, when the loop comes back
  for a result: every ``every`` done items or ``seconds`` seconds (default 5), and
  at the end. ``extra["in_flight"]`` holds the number of items started and not done.

With ``ordered=True`` a slow item holds back the results after it, and with them
the workers (the bound above applies to the buffered results too). Leave an
``async for`` over ``amap`` early only inside ``contextlib.aclosing``, or its tasks
run until the generator is garbage-collected.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import logging
import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from .._retry import DEFAULT_BACKOFF_SECONDS, Backoff
from .._run import RunContext
from ..errors import InitializerFailed, ItemTimeout, UsageError
from .executors import ExecutorPool, Target, infrastructure, resolve
from .window import ABANDONED, FAIL, OK, Bucket, Engine, Options, options

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["DEFAULT_GRACE", "DEFAULT_WINDOW", "aiterate", "amap", "map_threads"]

log = logging.getLogger("restartable")

DEFAULT_WINDOW = 10_000
DEFAULT_GRACE = 25.0
#: How often a waiting consumer looks at signals and fencing.
_POLL = 0.1
#: How long cancelled tasks get to unwind after the grace, before the lease is kept instead.
_CANCEL_WAIT = 2.0


def _engine(job: RunContext, items: Any, opts: Options, target: Target | None, **engine: Any) -> Engine:
    """The map's :class:`Engine`; an executor already made for it is closed if the Engine refuses."""
    try:
        return Engine(job, items, opts, **engine)
    except BaseException:
        if target is not None:
            target.close(busy=False)
        raise


def _backoff(opts: Options, attempt: int) -> float:
    return Backoff(opts.backoff).delay(attempt)  # the one policy: restartable._retry


def _retryable(opts: Options, exc: BaseException, attempt: int) -> bool:
    return attempt < opts.attempts and (isinstance(exc, opts.retry_on) or infrastructure(exc))


def _run_for(fn: Callable[[Any], Any], item: Any, timeout: float) -> Any:
    """``fn(item)`` on a daemon thread of its own, given ``timeout`` seconds: a thread cannot be
    killed, so a call past its time runs on in the background and its result is ignored."""
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, fn(item)))
        except BaseException as exc:  # noqa: BLE001 - handed to the worker thread, which decides
            box.append((False, exc))

    thread = threading.Thread(target=run, name="restartable-map-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        raise ItemTimeout(f"the call ran longer than timeout={timeout:g}s")
    ok, value = box[0]
    if ok:
        return value
    raise value


def _call_sync(
    fn: Callable[[Any], Any],
    item: Any,
    opts: Options,
    bucket: Bucket | None,
    stop: threading.Event,
    timeout: float | None = None,
) -> tuple[str, Any, int]:
    """Run ``fn(item)`` with retries in a worker thread: ``(outcome, value or exception, attempts)``."""
    attempt = 0
    while True:
        if bucket is not None:
            wait = bucket.reserve()
            if wait > 0 and stop.wait(wait):
                return ABANDONED, None, attempt
        attempt += 1
        try:
            return OK, (fn(item) if timeout is None else _run_for(fn, item, timeout)), attempt
        except BaseException as exc:  # noqa: BLE001 - reported to the consuming thread, which decides
            if not _retryable(opts, exc, attempt):
                return FAIL, exc, attempt
            if stop.wait(_backoff(opts, attempt)):
                return ABANDONED, exc, attempt


async def _call_async(
    fn: Callable[[Any], Awaitable[Any]], item: Any, opts: Options, bucket: Bucket | None, stop: asyncio.Event
) -> tuple[str, Any, int]:
    """The coroutine twin of :func:`_call_sync` (cancellation propagates)."""

    async def pause(seconds: float) -> bool:  # True when stopping cut the pause short
        try:
            await asyncio.wait_for(stop.wait(), seconds)
            return True
        except TimeoutError:
            return False

    attempt = 0
    while True:
        if bucket is not None:
            wait = bucket.reserve()
            if wait > 0 and await pause(wait):
                return ABANDONED, None, attempt
        attempt += 1
        try:
            return OK, await fn(item), attempt
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported to the consumer, which decides
            if not _retryable(opts, exc, attempt):
                return FAIL, exc, attempt
            if await pause(_backoff(opts, attempt)):
                return ABANDONED, exc, attempt


# -- threads --------------------------------------------------------------------------


class _Pool:
    """Daemon worker threads fed by a queue: never joined, so a hung ``fn`` cannot hold the process.

    The face :func:`_run_threads` drives, shared with :class:`~.executors.ExecutorPool`:
    ``submit``, ``report``, ``stop``, ``abandon``, ``shutdown``.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        opts: Options,
        *,
        timeout: float | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self.fn = fn
        self.opts = opts
        self.timeout = timeout
        self.initializer = initializer
        self.initargs = initargs
        self.bucket = Bucket(opts.rate) if opts.rate else None
        self.tasks: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[tuple[int, str, Any, int]] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def submit(self, index: int, item: Any) -> None:
        if len(self.threads) < self.opts.workers:  # start threads as the first items arrive
            t = threading.Thread(target=self._work, name=f"restartable-map-{len(self.threads)}", daemon=True)
            self.threads.append(t)
            t.start()
        self.tasks.put((index, item))

    def _work(self) -> None:
        failed: InitializerFailed | None = None
        if self.initializer is not None:  # as ThreadPoolExecutor: once per worker thread, before its first item
            try:
                self.initializer(*self.initargs)
            except BaseException as exc:  # noqa: BLE001 - reported by each item this thread takes
                failed = InitializerFailed(
                    f"job.map's initializer failed in a worker thread: {type(exc).__name__}: {exc}"
                )
                failed.__cause__ = exc
        while True:
            task = self.tasks.get()
            if task is None:
                return
            index, item = task
            if self.stop.is_set():
                self.results.put((index, ABANDONED, None, 0))
            elif failed is not None:
                self.results.put((index, FAIL, failed, 0))
            else:
                self.results.put((index, *_call_sync(self.fn, item, self.opts, self.bucket, self.stop, self.timeout)))

    def report(self, wait: float) -> tuple[int, str, Any, int] | None:
        """The next outcome, waiting at most ``wait`` seconds; raises when the initializer failed."""
        try:
            report = self.results.get(timeout=wait)
        except queue.Empty:
            return None
        if report[1] == FAIL and isinstance(report[2], InitializerFailed):
            raise report[2]  # no item is to blame: the run stops, whatever on_error says
        return report

    def abandon(self) -> list[int]:
        """After the grace: a thread cannot be stopped, so every running item keeps running."""
        return []

    def shutdown(self) -> None:
        self.stop.set()
        for _ in self.threads:
            self.tasks.put(None)


def map_threads(
    job: RunContext,
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
    executor: Literal["threads", "processes"] | cf.Executor | Client | None = None,
    timeout: float | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[Any]:
    """``job.map``: yield ``fn(item)`` for the items not done, run on ``workers`` threads or an executor.

    Results come in completion order (``ordered=True``: input order). See the module
    docstring for the done rule, the window, failures, rate and signals; ``every``,
    ``seconds``, ``name``, ``key``, ``on_change`` and ``progress`` are as for ``iterate``.
    ``executor``, ``timeout``, ``initializer`` and ``initargs``: see
    :mod:`restartable._concurrency.executors` (threads: ``timeout`` abandons a call that
    runs on in the background; ``initializer`` runs once in each worker thread).
    """
    opts = options(
        workers=workers,
        ordered=ordered,
        window=window,
        attempts=attempts,
        backoff=backoff,
        retry_on=retry_on,
        on_error=on_error,
        skip_budget=skip_budget,
        rate=rate,
        grace=grace,
        every=every,
        seconds=seconds,
        retry_dead=retry_dead,
    )
    if not callable(fn):
        raise UsageError(f"job.map needs a callable, not {fn!r}")
    _check_timeout(timeout)
    target: Target | None = None
    if executor is not None and executor != "threads":
        # Before the Engine: a fn that cannot reach the workers is refused before anything is saved.
        what = f"job.map(executor={executor if isinstance(executor, str) else type(executor).__name__})"
        target = resolve(executor, fn, workers=workers, initializer=initializer, initargs=initargs, what=what)
    elif not isinstance(initargs, tuple) or (initializer is not None and not callable(initializer)):
        raise UsageError(
            f"job.map: initializer must be callable and initargs a tuple, not {initializer!r}, {initargs!r}"
        )
    eng = _engine(
        job, items, opts, target, name=name, key=key, on_change=on_change, progress=progress, allow_async=False
    )
    pool: _Pool | ExecutorPool
    if target is None:
        pool = _Pool(fn, opts, timeout=timeout, initializer=initializer, initargs=initargs)
    else:
        budget = job.store.retry_seconds if job.has_store else 0.0
        pool = ExecutorPool(target, opts, timeout=timeout, unavailable_budget=budget)
    if eng.empty:
        pool.shutdown()
        return iter(())
    return _run_threads(eng, pool)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
        raise UsageError(f"timeout must be a positive number of seconds or None, not {timeout!r}")


def _run_threads(eng: Engine, pool: _Pool | ExecutorPool) -> Iterator[Any]:
    job, cursor, hooks = eng.job, eng.cursor, eng.hooks
    deadline: float | None = None
    try:
        hooks.boundary(cursor, False)
        while True:
            if job.signal is None:
                eng.fill(pool.submit)
            elif deadline is None:
                deadline = time.monotonic() + eng.opts.grace
                pool.stop.set()  # no new attempt, no retry: only the running calls finish
            out = eng.pop_ready()
            if out is not None:
                yield out[1]
                eng.ack(out[0])
                if job.signal is None:
                    hooks.boundary(cursor, eng.count_due())
                continue
            if eng.running == 0 or (deadline is not None and time.monotonic() >= deadline):
                break
            if job.fenced is not None:
                raise job.fenced
            report = pool.report(_POLL)
            if report is not None:
                eng.outcome(*report)
        if job.signal is not None:
            _stopping(eng)
            for index in pool.abandon():  # killed or cancelled: not running any more, not done
                eng.outcome(index, ABANDONED, None, 0)
            eng.interrupt()  # checkpoints, releases the lease (if nothing runs) and raises Interrupted
        _check_finished(eng)
        eng.end()
    finally:
        pool.shutdown()
        eng.close()


def _stopping(eng: Engine) -> None:
    if eng.running:
        log.warning(
            "%s: %d item(s) still running after the %gs grace: not done, the next run redoes them",
            eng.where,
            eng.running,
            eng.opts.grace,
        )


def _check_finished(eng: Engine) -> None:
    if not eng.finished():  # cannot happen: nothing runs and nothing could start
        raise RuntimeError(f"{eng.where}: the concurrent iteration stalled with {eng.unsettled} unsettled items")


# -- asyncio --------------------------------------------------------------------------


async def _nothing() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover - makes this an async generator


def amap(
    job: RunContext,
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
    executor: Literal["threads", "processes"] | cf.Executor | Client | None = None,
    timeout: float | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
) -> AsyncIterator[Any]:
    """``job.amap``: ``async for result in job.amap(coro_fn, items, workers=N)``.

    ``map``'s twin: ``await coro_fn(item)`` runs in up to ``workers`` tasks on the
    running loop; ``items`` may be a sync or an async iterable. Checkpoints are
    written on the loop's thread (a short pause of the loop every ``seconds``).
    ``concurrency`` is the deprecated spelling of ``workers`` (one name for threads,
    asyncio and the CLI's ``-j``): accepted with a DeprecationWarning until 0.3.

    With ``executor=`` (as for ``job.map``: ``"threads"``, ``"processes"``, an Executor or
    a Dask Client) ``fn`` is a plain function, run by ``loop.run_in_executor``; at most
    ``workers`` calls are in flight. A worker process that dies fails the item it ran
    (one attempt; our pool is replaced) without ``job.map``'s isolation of the culprit.
    ``timeout``: an attempt that takes longer fails (:class:`~restartable.errors.ItemTimeout`);
    the call is cancelled, which cannot stop one already running in a thread or a
    process: it runs on, its result ignored (``job.map`` kills the worker instead).
    """
    if concurrency is not None:
        if workers != 8 and workers != concurrency:  # both spellings, two answers: guessing would hide a bug
            raise UsageError(f"job.amap got workers={workers!r} and concurrency={concurrency!r}: give workers= only")
        warnings.warn(
            "job.amap(concurrency=...) is deprecated: use workers=... (the same name as job.map)",
            DeprecationWarning,
            stacklevel=3,  # the caller of Job.amap
        )
        workers = concurrency
    opts = options(
        workers=workers,
        ordered=ordered,
        window=window,
        attempts=attempts,
        backoff=backoff,
        retry_on=retry_on,
        on_error=on_error,
        skip_budget=skip_budget,
        rate=rate,
        grace=grace,
        every=every,
        seconds=seconds,
        retry_dead=retry_dead,
    )
    if not callable(fn):
        raise UsageError(f"job.amap needs a coroutine function, not {fn!r}")
    _check_timeout(timeout)
    target: Target | None = None
    what = f"job.amap(executor={executor if isinstance(executor, str) else type(executor).__name__})"
    if executor == "threads":
        pool = cf.ThreadPoolExecutor(workers, "restartable-amap", initializer, initargs)
        target = Target("other", pool, fn, workers=workers, initializer=None, initargs=(), what=what)
        target.owned = True
    elif executor is not None:
        target = resolve(executor, fn, workers=workers, initializer=initializer, initargs=initargs, what=what)
    elif initializer is not None or initargs:
        raise UsageError("job.amap: initializer= needs executor= (the workers it initializes)")
    eng = _engine(
        job, items, opts, target, name=name, key=key, on_change=on_change, progress=progress, allow_async=True
    )
    if eng.empty:
        if target is not None:
            target.close(busy=False)
        return _nothing()
    if target is None:
        return _run_async(eng, fn if timeout is None else _with_timeout(fn, timeout))
    return _run_async(eng, _in_executor(target, timeout), prepare=target.prepare, target=target)


def _with_timeout(fn: Callable[[Any], Awaitable[Any]], timeout: float) -> Callable[[Any], Awaitable[Any]]:
    async def call(item: Any) -> Any:
        try:
            return await asyncio.wait_for(fn(item), timeout)
        except TimeoutError:
            raise ItemTimeout(f"the call ran longer than timeout={timeout:g}s") from None

    return call


def _in_executor(target: Target, timeout: float | None) -> Callable[[Any], Awaitable[Any]]:
    """``amap``'s ``fn`` with an executor: a coroutine that runs one attempt there."""

    async def call(prepared: Any) -> Any:
        generation = target.generation
        func, args = target.call(prepared)
        try:
            running = asyncio.get_running_loop().run_in_executor(target.executor, func, *args)
            if timeout is None:
                return await running
            try:
                return await asyncio.wait_for(running, timeout)
            except TimeoutError:
                raise ItemTimeout(f"the call ran longer than timeout={timeout:g}s") from None
        except cf.process.BrokenProcessPool:
            if target.kind != "own":
                raise
            if generation == target.generation:  # the first to see the break replaces the pool
                log.warning("%s: a worker process died; the process pool is replaced", target.what)
                target.replace()
            raise

    return call


async def _run_async(
    eng: Engine,
    fn: Callable[[Any], Awaitable[Any]],
    *,
    prepare: Callable[[int, Any], Any] | None = None,
    target: Target | None = None,
) -> AsyncIterator[Any]:
    job, cursor, hooks, opts = eng.job, eng.cursor, eng.hooks, eng.opts
    loop = asyncio.get_running_loop()
    bucket = Bucket(opts.rate) if opts.rate else None
    stop = asyncio.Event()
    tasks: dict[int, asyncio.Task[tuple[str, Any, int]]] = {}
    reports: deque[tuple[int, str, Any, int]] = deque()
    waiter: list[asyncio.Future[None] | None] = [None]

    def wake(fut: asyncio.Future[None] | None) -> None:
        if fut is not None and not fut.done():
            fut.set_result(None)

    def on_done(index: int, task: asyncio.Task[tuple[str, Any, int]]) -> None:
        tasks.pop(index, None)
        if not task.cancelled():
            reports.append((index, *task.result()))
        elif stop.is_set():  # we cancelled it: stopping, the item is simply not done
            reports.append((index, ABANDONED, None, 0))
        else:  # cancelled from elsewhere (or fn raised CancelledError): a failure that stops the loop
            reports.append((index, FAIL, asyncio.CancelledError(f"the task of item {index} was cancelled"), 1))
        wake(waiter[0])

    def submit(index: int, item: Any) -> None:
        if prepare is not None:  # pickled here: an item that cannot be stops the loop (UsageError)
            item = prepare(index, item)
        task = loop.create_task(_call_async(fn, item, opts, bucket, stop))
        tasks[index] = task
        task.add_done_callback(functools.partial(on_done, index))

    deadline: float | None = None
    try:
        hooks.boundary(cursor, False)
        while True:
            if job.signal is None:
                await eng.afill(submit)
            elif deadline is None:
                deadline = time.monotonic() + opts.grace
                stop.set()
            while reports:
                eng.outcome(*reports.popleft())
            out = eng.pop_ready()
            if out is not None:
                yield out[1]
                eng.ack(out[0])
                if job.signal is None:
                    hooks.boundary(cursor, eng.count_due())
                continue
            if eng.running == 0 or (deadline is not None and time.monotonic() >= deadline):
                break
            if job.fenced is not None:
                raise job.fenced
            fut = waiter[0] = loop.create_future()
            timer = loop.call_later(_POLL, wake, fut)
            try:
                await fut
            finally:
                timer.cancel()
                waiter[0] = None
        if job.signal is not None:
            _stopping(eng)
            if tasks:  # past the grace: cancel them and let them unwind before the lease goes
                stop.set()
                for task in list(tasks.values()):
                    task.cancel()
                if target is not None and target.kind == "own":
                    target.kill()  # a process, unlike a thread, can be stopped: nothing runs once the lease goes
                await asyncio.wait(list(tasks.values()), timeout=_CANCEL_WAIT)
                while reports:  # whatever they did while unwinding, their items are not done
                    eng.outcome(reports.popleft()[0], ABANDONED, None, 0)
            eng.interrupt()  # checkpoints, releases the lease (if nothing runs) and raises Interrupted
        _check_finished(eng)
        eng.end()
    finally:
        stop.set()
        busy = bool(tasks)
        for task in list(tasks.values()):
            task.cancel()  # abandoned: not done
        if target is not None:
            target.close(busy=busy)
        eng.close()


def aiterate(
    job: RunContext,
    items: Any,
    *,
    name: str | None = None,
    every: int | None = None,
    seconds: float | None = None,
    key: Callable[[Any], Any] | None = None,
    on_change: str | None = None,
    progress: bool | None = None,
) -> AsyncIterator[Any]:
    """``job.aiterate``: ``async for item in job.aiterate(items)``, ``iterate`` for asyncio.

    Items come one at a time in input order; each is done when the loop asks for the
    next. ``items`` may be a sync or an async iterable (an async one resumes by
    reading past the done items).
    """
    opts = options(
        workers=1,
        ordered=False,
        window=1,
        attempts=1,
        backoff=0.0,
        retry_on=(Exception,),
        on_error="stop",
        skip_budget=None,
        rate=None,
        grace=0.0,
        every=every,
        seconds=seconds,
        retry_dead=False,
    )
    eng = Engine(job, items, opts, name=name, key=key, on_change=on_change, progress=progress, allow_async=True)
    if eng.empty:
        return _nothing()
    # One item at a time and none in flight at a boundary: a signal stops the loop there at once.
    eng.hooks.stop_after_save = True
    return _run_aiterate(eng)


async def _run_aiterate(eng: Engine) -> AsyncIterator[Any]:
    cursor, hooks = eng.cursor, eng.hooks
    try:
        hooks.boundary(cursor, False)
        while True:
            task = eng.next_task()
            if task is None:
                if not eng.need_read:
                    break
                await eng.aread()
                continue
            eng.start(*task, running=False)
            yield task[1]
            eng.ack(task[0])
            hooks.boundary(cursor, eng.count_due())
        _check_finished(eng)
        eng.end()
    finally:
        eng.close()
