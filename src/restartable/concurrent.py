"""Concurrent processing inside one job, resumable although items finish out of order.

::

    with Job("thumbnails") as job:
        for result in job.map(fetch, urls, workers=32):      # threads
            save(result)

    async with ...:                                          # asyncio
        async for result in job.amap(fetch_async, urls, concurrency=32):
            save(result)
        async for item in job.aiterate(items):               # iterate's async twin
            ...

The contract:

* ``job.map(fn, items)`` runs ``fn(item)`` on ``workers`` threads and yields the
  results **in completion order** by default; ``ordered=True`` yields them in input
  order. ``job.amap(coro_fn, items, concurrency=N)`` is the same for coroutines and
  ``job.aiterate(items)`` is ``iterate`` for ``async for`` (sync or async iterables).
* As with ``iterate``, an item counts as done when the loop asks for the next result
  after its own: a result the caller is still handling when the process dies is
  redone. At most ``workers`` items are between their start and done (running,
  finished but not yet yielded, or yielded and being handled), so a SIGKILL redoes at
  most that many finished items, plus the items done since the last checkpoint.
* Items are numbered by their index in ``items``. A checkpoint holds the *low
  watermark* (the cursor's ``offset``: every item before it is done) and the done
  items above it (``extra["done"]``, run lengths, see :mod:`restartable._window`).
  A resumed run processes only the items not done, whatever order they finished in;
  sequences seek in O(1), iterators are read from the watermark on, skipping the
  done items.
* **The window trade-off**: items start only below ``watermark + window``. The
  window bounds the done set, hence the checkpoint (at most ``2 * window`` bytes for
  it, 20 KB at the default 10,000), but a single straggler (an item that takes very
  long, or hangs) lets at most a window's worth of later items finish; then new
  items wait for it.
* Failures: ``fn`` is called up to ``attempts`` times when it raises one of
  ``retry_on``, waiting ``backoff * 2**(n-1)`` seconds (jittered to 50-100%, at
  most 60 s) before retry ``n``. Then ``on_error="stop"`` (the default) re-raises the
  exception (the job fails, the item is not done, a rerun retries it), and
  ``on_error="skip"`` records a *dead letter* in ``extra["dead"]``:
  ``{"<index>": {"error": "Type: message", "attempts": n, "key": ...}}`` (the message
  cut to 300 characters; ``key`` is ``key(item)``, or the item itself when it is a
  small JSON value) and goes on; the item counts as done and yields nothing. More
  than ``skip_budget`` dead letters in the cursor (earlier runs' included) raise
  :class:`~restartable.errors.SkipBudgetExceeded` (exit 65). ``restartable show``
  lists the dead letters; a rerun of the same run with ``retry_dead=True``
  reprocesses them first (a success removes the entry, a failure updates it).
  Dead letters stay in the record, about 500 bytes each: bound them with a budget.
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
import itertools
import json
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from ._cursor import Source
from ._fingerprint import Fingerprinter
from ._window import DoneSet
from .checkpoint import encode_value
from .errors import InputChanged, SkipBudgetExceeded, UsageError

__all__ = ["map_threads", "amap", "aiterate", "DEFAULT_WINDOW", "DEFAULT_GRACE"]

log = logging.getLogger("restartable")

DEFAULT_WINDOW = 10_000
DEFAULT_GRACE = 25.0
#: How often a waiting consumer looks at signals and fencing.
_POLL = 0.1
#: Most items read ahead from an iterator.
_READ_AHEAD = 64
_MAX_BACKOFF = 60.0
_ERROR_CHARS = 300
_KEY_CHARS = 200

# Outcomes of one item, as workers report them.
_OK, _FAIL, _ABANDONED = "ok", "fail", "abandoned"
_GONE = object()  # ordered mode: a settled item that yields nothing


@dataclass(frozen=True)
class _Options:
    workers: int
    ordered: bool
    window: int
    attempts: int
    backoff: float
    retry_on: tuple[type[BaseException], ...]
    on_error: str
    skip_budget: int | None
    rate: float | None
    grace: float
    every: int | None
    seconds: float | None
    retry_dead: bool


def _options(*, workers: int, ordered: bool, window: int, attempts: int, backoff: float,
             retry_on: type[BaseException] | tuple[type[BaseException], ...], on_error: str,
             skip_budget: int | None, rate: float | None, grace: float, every: int | None,
             seconds: float | None, retry_dead: bool, what: str = "workers") -> _Options:
    def positive_int(value: Any, name: str, low: int = 1) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UsageError(f"{name} must be an int >= {low}, not {value!r}")

    positive_int(workers, what)
    positive_int(window, "window")
    positive_int(attempts, "attempts")
    if every is not None:
        positive_int(every, "every")
    if skip_budget is not None:
        positive_int(skip_budget, "skip_budget", 0)
    for value, name in ((backoff, "backoff"), (grace, "grace")):
        if not isinstance(value, (int, float)) or value < 0:
            raise UsageError(f"{name} must be a number >= 0, not {value!r}")
    for value, name in ((rate, "rate"), (seconds, "seconds")):
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise UsageError(f"{name} must be a positive number, not {value!r}")
    if on_error not in ("stop", "skip"):
        raise UsageError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
    retry = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry):
        raise UsageError(f"retry_on must be an exception class or a tuple of them, not {retry_on!r}")
    if every is None and seconds is None:
        from .job import DEFAULT_SECONDS

        seconds = DEFAULT_SECONDS
    return _Options(workers, bool(ordered), window, attempts, float(backoff), retry, on_error, skip_budget,
                    rate, float(grace), every, seconds, bool(retry_dead))


class _Bucket:
    """A token bucket of capacity one (GCRA): calls start ``1/rate`` seconds apart."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = 0.0
        self.lock = threading.Lock()

    def reserve(self) -> float:
        """Take the next slot; return how long to wait for it."""
        with self.lock:
            now = time.monotonic()
            at = max(self.next, now)
            self.next = at + self.interval
            return at - now


def _backoff(opts: _Options, attempt: int) -> float:
    return min(_MAX_BACKOFF, opts.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def _retryable(opts: _Options, exc: BaseException, attempt: int) -> bool:
    return attempt < opts.attempts and isinstance(exc, opts.retry_on)


def _call_sync(fn: Callable[[Any], Any], item: Any, opts: _Options, bucket: _Bucket | None,
               stop: threading.Event) -> tuple[str, Any, int]:
    """Run ``fn(item)`` with retries in a worker thread: ``(outcome, value or exception, attempts)``."""
    attempt = 0
    while True:
        if bucket is not None:
            wait = bucket.reserve()
            if wait > 0 and stop.wait(wait):
                return _ABANDONED, None, attempt
        attempt += 1
        try:
            return _OK, fn(item), attempt
        except BaseException as exc:  # noqa: BLE001 - reported to the consuming thread, which decides
            if not _retryable(opts, exc, attempt):
                return _FAIL, exc, attempt
            if stop.wait(_backoff(opts, attempt)):
                return _ABANDONED, exc, attempt


async def _call_async(fn: Callable[[Any], Awaitable[Any]], item: Any, opts: _Options, bucket: _Bucket | None,
                      stop: asyncio.Event) -> tuple[str, Any, int]:
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
                return _ABANDONED, None, attempt
        attempt += 1
        try:
            return _OK, await fn(item), attempt
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported to the consumer, which decides
            if not _retryable(opts, exc, attempt):
                return _FAIL, exc, attempt
            if await pause(_backoff(opts, attempt)):
                return _ABANDONED, exc, attempt


def _identity(item: Any, key: Callable[[Any], Any] | None) -> Any:
    """What a dead letter says about its item: ``key(item)``, or the item if it is small JSON."""
    try:
        value = key(item) if key is not None else item
        if len(json.dumps(encode_value(value), separators=(",", ":"))) <= _KEY_CHARS:
            return value
    except Exception:  # noqa: BLE001 - an item we cannot describe is simply not described
        pass
    return None


def _capture(it: Iterable[Any], wanted: set[int], into: dict[int, Any]) -> Iterator[Any]:
    """Pass ``it`` through, keeping the items at the ``wanted`` indices (dead letters to retry)."""
    for i, x in enumerate(it):
        if i in wanted:
            into[i] = x
        yield x


class _Engine:
    """The bookkeeping of one concurrent iteration, owned by the consuming thread.

    It reads the input, decides which item starts next (not done, below the window),
    tracks outcomes, yields in the chosen order, keeps the done set and the dead
    letters, and writes them into the cursor before every checkpoint.
    """

    def __init__(self, job: Any, items: Any, opts: _Options, *, name: str | None, key: Callable[[Any], Any] | None,
                 on_change: str | None, progress: bool | None, allow_async: bool) -> None:
        self.job = job
        self.opts = opts
        self.key = key
        self.aiter: AsyncIterator[Any] | None = None
        self.source: Source | None = None
        if hasattr(items, "__aiter__"):
            if not allow_async:
                raise UsageError("job.map takes a sync iterable; use job.amap for an async one")
            self.aiter = items.__aiter__()
            total = None
        else:
            self.source = Source(items)
            total = self.source.length
        cursor = self.cursor = job._cursor(name, total=total)
        self.where = f"{job.label} iteration {cursor.name!r}"
        self.empty = bool(job.completed)
        if self.empty:
            log.info("%s is already complete: iteration %r yields nothing", job.label, cursor.name)
            return
        change = on_change or job.on_change
        self.dead: dict[str, dict[str, Any]] = dict(cursor.extra.get("dead") or {})
        wanted = {int(k) for k in self.dead} if opts.retry_dead else set()
        below = {i for i in wanted if i < cursor.offset}
        self.captured: dict[int, Any] = {}
        offset = cursor.offset
        self.to_skip = 0
        if self.source is not None:
            if below and not self.source.seekable:
                self.source = Source(_capture(items, below, self.captured))
            self.fp = job._check_input(cursor, self.source, key, change)
        else:
            if change == "restart":
                raise UsageError(f"{self.where}: on_change='restart' needs a sequence, not an async iterable")
            self.fp = Fingerprinter(length=None, key=key, describe=self.where, position=offset,
                                    stored=None if change == "force" else job._fingerprints.get(cursor.name))
            self.to_skip = offset  # read past the done items at the first read (it must await)
        if cursor.offset != offset:  # on_change='restart' started this iteration over
            self.dead, wanted, below = {}, set(), set()
            cursor.extra.pop("done", None)
        self.done = DoneSet.decode(cursor.offset, cursor.extra.get("done"), where=self.where)
        if total is not None:
            self.done.drop_from(total)
        self.retry_above = wanted - below
        self.retry: deque[int] = deque(sorted(below)) if self.aiter is None else deque()
        self.retry_later = sorted(below) if self.aiter is not None else []
        self.empty = (cursor.finished and (total is None or cursor.offset >= total) and not wanted)
        if self.empty:
            return
        cursor.finished = False
        self.seq = self.source.seq if self.source is not None else None
        self.length = total
        self.next = cursor.offset  # the next input index to read
        self.buf: deque[tuple[int, Any]] = deque()  # read from an iterator, not started
        self.read_n = 1
        self.exhausted = False
        self.need_read = False
        self.unsettled = 0  # started and not yet done: running, buffered, or yielded and being handled
        self.running = 0  # started and no outcome yet
        self.settled = 0  # done or dead in this run
        self.next_count = opts.every or 0
        self.order: deque[int] | None = deque() if opts.ordered else None
        self.ready: deque[tuple[int, Any]] = deque()  # completion order: results to yield
        self.results: dict[int, Any] = {}  # input order: results waiting for their turn
        # Iterator items in flight, kept for their dead letter's key (sequences index them again).
        self.held: dict[int, Any] | None = {} if opts.on_error == "skip" and self.seq is None else None
        self.closed = False
        self.hooks = job._loop_hooks(seconds=opts.seconds, progress=progress, fingerprint=self.fp)
        job.on_checkpoint(self.sync)

    # -- reading and starting ------------------------------------------------------

    def _skip(self, index: int) -> bool:
        return index in self.done and index not in self.retry_above

    def next_task(self) -> tuple[int, Any] | None:
        """The next ``(index, item)`` to start, or None when none may start now: the input
        is exhausted, the window is full, or an async input must be read (``need_read``)."""
        if self.retry:
            i = self.retry.popleft()
            return i, (self.seq[i] if self.seq is not None else self.captured.pop(i))
        limit = self.done.low + self.opts.window
        seq = self.seq
        while True:
            if seq is not None:
                i = self.next
                if i >= self.length:  # type: ignore[operator]
                    self.exhausted = True
                    return None
                if i >= limit:
                    return None
                self.next = i + 1
                if self._skip(i):
                    continue
                return i, seq[i]
            if not self.buf:
                if self.exhausted:
                    return None
                if self.aiter is not None:
                    self.need_read = True
                    return None
                self._read()
                continue
            i, item = self.buf[0]
            if i >= limit:
                return None
            self.buf.popleft()
            if self._skip(i):
                continue
            return i, item

    def _read(self) -> None:
        assert self.source is not None
        chunk = self.source.take(self.next, self.read_n)
        if self.fp.enabled and chunk:
            self.fp.see(self.next, chunk)
        self.buf.extend(zip(itertools.count(self.next), chunk))
        self.next += len(chunk)
        if len(chunk) < self.read_n:
            self.exhausted = True  # an iterator that gave fewer items than asked is exhausted
        self.read_n = min(2 * self.read_n, _READ_AHEAD)

    async def aread(self) -> None:
        """Read one item of an async input (after skipping the done ones, the first time)."""
        assert self.aiter is not None
        self.need_read = False
        if self.to_skip:
            count, self.to_skip = self.to_skip, 0
            wanted = set(self.retry_later)
            for i in range(count):
                try:
                    x = await self.aiter.__anext__()
                except StopAsyncIteration:
                    raise InputChanged(f"{self.where}: the input now has {i} items but {count} were already "
                                       "done; it changed under the checkpoint") from None
                self.fp.see(i, [x])
                if i in wanted:
                    self.captured[i] = x
            self.retry.extend(self.retry_later)
            self.retry_later = []
            return
        try:
            x = await self.aiter.__anext__()
        except StopAsyncIteration:
            self.exhausted = True
            return
        self.fp.see(self.next, [x])
        self.buf.append((self.next, x))
        self.next += 1

    def start(self, index: int, item: Any, *, running: bool = True) -> None:
        self.unsettled += 1
        self.running += running
        if self.order is not None:
            self.order.append(index)
        if self.held is not None:
            self.held[index] = item

    def fill(self, submit: Callable[[int, Any], None]) -> None:
        """Start items while fewer than ``workers`` are unsettled."""
        while self.unsettled < self.opts.workers:
            task = self.next_task()
            if task is None:
                return
            self.start(*task)
            submit(*task)

    async def afill(self, submit: Callable[[int, Any], None]) -> None:
        while self.unsettled < self.opts.workers:
            task = self.next_task()
            if task is None:
                if not self.need_read:
                    return
                await self.aread()
                continue
            self.start(*task)
            submit(*task)

    # -- outcomes, results, done ---------------------------------------------------

    def outcome(self, index: int, kind: str, value: Any, attempts: int) -> None:
        """Take a worker's report on ``index``; raises when the iteration must stop."""
        self.running -= 1
        item = self.held.pop(index, None) if self.held is not None else None
        if kind == _OK:
            if self.order is None:
                self.ready.append((index, value))
            else:
                self.results[index] = value
            return
        self.unsettled -= 1
        if self.order is not None:
            self.results[index] = _GONE
        if kind == _ABANDONED:
            return  # stopping: not done, the next run does it
        exc: BaseException = value
        if self.opts.on_error == "stop" or not isinstance(exc, Exception):
            exc.add_note(f"restartable: {self.where}: item {index} failed after {attempts} attempt(s)")
            raise exc
        self._dead_letter(index, self.seq[index] if self.seq is not None else item, exc, attempts)

    def _dead_letter(self, index: int, item: Any, exc: Exception, attempts: int) -> None:
        k = str(index)
        previous = self.dead.get(k)
        error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        self.dead[k] = {
            "error": error,
            "attempts": attempts + (previous or {}).get("attempts", 0),
            "key": previous.get("key") if previous else _identity(item, self.key),
        }
        self._settle(index)
        if previous is not None:
            log.warning("%s: item %d failed again (%s); it stays a dead letter", self.where, index, error)
            return
        log.warning("%s: item %d failed after %d attempt(s) (%s); skipped, recorded as a dead letter",
                    self.where, index, attempts, error)
        budget = self.opts.skip_budget
        if budget is not None and len(self.dead) > budget:
            raise SkipBudgetExceeded(
                f"{self.where}: {len(self.dead)} items failed, more than the skip budget of {budget} (the last, "
                f"item {index}: {error}). `restartable show {self.job.name}` lists them; fix the cause and "
                "rerun with retry_dead=True to reprocess them"
            )

    def pop_ready(self) -> tuple[int, Any] | None:
        """The next result to yield, in the chosen order, or None."""
        if self.order is None:
            return self.ready.popleft() if self.ready else None
        order, results = self.order, self.results
        while order and order[0] in results:
            i = order.popleft()
            value = results.pop(i)
            if value is not _GONE:
                return i, value
        return None

    def ack(self, index: int) -> None:
        """The loop asked for the next result after ``index``'s: it is done."""
        self.unsettled -= 1
        if self.dead:
            self.dead.pop(str(index), None)  # a dead letter reprocessed with success
        self._settle(index)

    def _settle(self, index: int) -> None:
        self.done.add(index)
        self.cursor.offset = self.done.low
        self.settled += 1

    def count_due(self) -> bool:
        if not self.opts.every or self.settled < self.next_count:
            return False
        self.next_count = self.settled + self.opts.every
        return True

    def finished(self) -> bool:
        return (self.exhausted and not self.buf and not self.retry and not self.need_read and not self.to_skip
                and self.unsettled == 0)

    def sync(self) -> None:
        """Write the done set, dead letters and in-flight count into the cursor (before each save)."""
        cur = self.cursor
        cur.offset = self.done.low
        cur.extra["done"] = self.done.encode()
        cur.extra["dead"] = dict(self.dead)
        cur.extra["in_flight"] = 0 if self.closed else self.unsettled

    def end(self) -> None:
        """The input is exhausted and every item settled: finish the cursor (and checkpoint)."""
        self.done.drop_from(self.next)  # an iterator that became shorter than its done set
        self.cursor.offset = self.done.low
        if self.dead:
            log.warning("%s: %d item(s) failed and were skipped; `restartable show %s` lists them, and a rerun "
                        "of this run with retry_dead=True (before it completes) reprocesses them",
                        self.where, len(self.dead), self.job.name)
        self.hooks.end(self.cursor)

    def close(self) -> None:
        self.closed = True
        self.hooks.close(self.cursor)


# -- threads --------------------------------------------------------------------------


class _Pool:
    """Daemon worker threads fed by a queue: never joined, so a hung ``fn`` cannot hold the process."""

    def __init__(self, fn: Callable[[Any], Any], opts: _Options) -> None:
        self.fn = fn
        self.opts = opts
        self.bucket = _Bucket(opts.rate) if opts.rate else None
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
        while True:
            task = self.tasks.get()
            if task is None:
                return
            index, item = task
            if self.stop.is_set():
                self.results.put((index, _ABANDONED, None, 0))
                continue
            self.results.put((index, *_call_sync(self.fn, item, self.opts, self.bucket, self.stop)))

    def shutdown(self) -> None:
        self.stop.set()
        for _ in self.threads:
            self.tasks.put(None)


def map_threads(
    job: Any,
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    workers: int = 8,
    ordered: bool = False,
    window: int = DEFAULT_WINDOW,
    attempts: int = 1,
    backoff: float = 0.5,
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
) -> Iterator[Any]:
    """``job.map``: yield ``fn(item)`` for the items not done, run on ``workers`` daemon threads.

    Results come in completion order (``ordered=True``: input order). See the module
    docstring for the done rule, the window, failures, rate and signals; ``every``,
    ``seconds``, ``name``, ``key``, ``on_change`` and ``progress`` are as for ``iterate``.
    """
    opts = _options(workers=workers, ordered=ordered, window=window, attempts=attempts, backoff=backoff,
                    retry_on=retry_on, on_error=on_error, skip_budget=skip_budget, rate=rate, grace=grace,
                    every=every, seconds=seconds, retry_dead=retry_dead)
    if not callable(fn):
        raise UsageError(f"job.map needs a callable, not {fn!r}")
    eng = _Engine(job, items, opts, name=name, key=key, on_change=on_change, progress=progress, allow_async=False)
    if eng.empty:
        return iter(())
    return _run_threads(eng, _Pool(fn, opts))


def _run_threads(eng: _Engine, pool: _Pool) -> Iterator[Any]:
    job, cursor, hooks = eng.job, eng.cursor, eng.hooks
    deadline: float | None = None
    try:
        hooks.boundary(cursor, False)
        while True:
            if job._signal is None:
                eng.fill(pool.submit)
            elif deadline is None:
                deadline = time.monotonic() + eng.opts.grace
                pool.stop.set()  # no new attempt, no retry: only the running calls finish
            out = eng.pop_ready()
            if out is not None:
                yield out[1]
                eng.ack(out[0])
                if job._signal is None:
                    hooks.boundary(cursor, eng.count_due())
                continue
            if eng.running == 0 or (deadline is not None and time.monotonic() >= deadline):
                break
            if job._fenced is not None:
                raise job._fenced
            try:
                report = pool.results.get(timeout=_POLL)
            except queue.Empty:
                continue
            eng.outcome(*report)
        if job._signal is not None:
            _stopping(eng)
            hooks.boundary(cursor, False)  # checkpoints, releases the lease, raises Interrupted
        _check_finished(eng)
        eng.end()
    finally:
        pool.shutdown()
        eng.close()


def _stopping(eng: _Engine) -> None:
    if eng.running:
        log.warning("%s: %d item(s) still running after the %gs grace: not done, the next run redoes them",
                    eng.where, eng.running, eng.opts.grace)


def _check_finished(eng: _Engine) -> None:
    if not eng.finished():  # cannot happen: nothing runs and nothing could start
        raise RuntimeError(f"{eng.where}: the concurrent iteration stalled with {eng.unsettled} unsettled items")


# -- asyncio --------------------------------------------------------------------------


async def _nothing() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover - makes this an async generator


def amap(
    job: Any,
    fn: Callable[[Any], Awaitable[Any]],
    items: Any,
    *,
    concurrency: int = 8,
    ordered: bool = False,
    window: int = DEFAULT_WINDOW,
    attempts: int = 1,
    backoff: float = 0.5,
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
) -> AsyncIterator[Any]:
    """``job.amap``: ``async for result in job.amap(coro_fn, items, concurrency=N)``.

    ``map``'s twin: ``await coro_fn(item)`` runs in up to ``concurrency`` tasks on the
    running loop; ``items`` may be a sync or an async iterable. Checkpoints are
    written on the loop's thread (a short pause of the loop every ``seconds``).
    """
    opts = _options(workers=concurrency, ordered=ordered, window=window, attempts=attempts, backoff=backoff,
                    retry_on=retry_on, on_error=on_error, skip_budget=skip_budget, rate=rate, grace=grace,
                    every=every, seconds=seconds, retry_dead=retry_dead, what="concurrency")
    if not callable(fn):
        raise UsageError(f"job.amap needs a coroutine function, not {fn!r}")
    eng = _Engine(job, items, opts, name=name, key=key, on_change=on_change, progress=progress, allow_async=True)
    return _nothing() if eng.empty else _run_async(eng, fn)


async def _run_async(eng: _Engine, fn: Callable[[Any], Awaitable[Any]]) -> AsyncIterator[Any]:
    job, cursor, hooks, opts = eng.job, eng.cursor, eng.hooks, eng.opts
    loop = asyncio.get_running_loop()
    bucket = _Bucket(opts.rate) if opts.rate else None
    stop = asyncio.Event()
    tasks: dict[int, asyncio.Task[tuple[str, Any, int]]] = {}
    reports: deque[tuple[int, str, Any, int]] = deque()
    waiter: list[asyncio.Future[None] | None] = [None]

    def wake(fut: asyncio.Future[None] | None) -> None:
        if fut is not None and not fut.done():
            fut.set_result(None)

    def on_done(index: int, task: asyncio.Task[tuple[str, Any, int]]) -> None:
        tasks.pop(index, None)
        reports.append((index, _ABANDONED, None, 0) if task.cancelled() else (index, *task.result()))
        wake(waiter[0])

    def submit(index: int, item: Any) -> None:
        task = loop.create_task(_call_async(fn, item, opts, bucket, stop))
        tasks[index] = task
        task.add_done_callback(lambda t, i=index: on_done(i, t))

    deadline: float | None = None
    try:
        hooks.boundary(cursor, False)
        while True:
            if job._signal is None:
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
                if job._signal is None:
                    hooks.boundary(cursor, eng.count_due())
                continue
            if eng.running == 0 or (deadline is not None and time.monotonic() >= deadline):
                break
            if job._fenced is not None:
                raise job._fenced
            fut = waiter[0] = loop.create_future()
            timer = loop.call_later(_POLL, wake, fut)
            try:
                await fut
            finally:
                timer.cancel()
                waiter[0] = None
        if job._signal is not None:
            _stopping(eng)
            hooks.boundary(cursor, False)  # checkpoints, releases the lease, raises Interrupted
        _check_finished(eng)
        eng.end()
    finally:
        for task in list(tasks.values()):
            task.cancel()  # abandoned: not done
        eng.close()


def aiterate(
    job: Any,
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
    opts = _options(workers=1, ordered=False, window=1, attempts=1, backoff=0.0, retry_on=(Exception,),
                    on_error="stop", skip_budget=None, rate=None, grace=0.0, every=every, seconds=seconds,
                    retry_dead=False)
    eng = _Engine(job, items, opts, name=name, key=key, on_change=on_change, progress=progress, allow_async=True)
    return _nothing() if eng.empty else _run_aiterate(eng)


async def _run_aiterate(eng: _Engine) -> AsyncIterator[Any]:
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
