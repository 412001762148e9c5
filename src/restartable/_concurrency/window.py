"""The bookkeeping of a concurrent iteration: which items are done when they finish out of order.

The drivers in :mod:`restartable._concurrency.engines` (threads, asyncio) run the items; the
:class:`Engine` here, owned by the consuming thread, decides what starts next, takes
the outcomes, orders the results and keeps the done set and the dead letters in the
cursor.

Items are numbered by their index in the input. A :class:`DoneSet` is a *low
watermark* ``low`` (every index below it is done) plus the set of done indices
above it. The concurrent drivers start items only below ``low + window``, so the
set always lies in ``(low, low + window)``: its size, and the checkpoint's, is
bounded whatever the order of completion.

In the checkpoint the watermark is the cursor's ``offset`` and the set is
``extra["done"]``, a flat list of run lengths relative to the watermark::

    offset 100, done [2, 3, 1, 1]   ->  100-101 not done, 102-104 done,
                                        105 not done, 106 done

(alternately the length of a run of not-done items, then of done ones). Every
number is at least 1 and they sum to at most ``window``, and a number ``x`` takes
at most ``x`` digits, so the JSON of the list never exceeds ``2 * window + 2``
bytes (:func:`encoded_bound`), however large the indices are: 20 KB at the default
window of 10,000. (A run resumed with a smaller window keeps the larger bound until
its watermark has passed the old done set.)
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from .._checkpoint import INTERRUPTED, encode_value
from .._cursor import Source
from .._fingerprint import Fingerprinter
from .._run import DEFAULT_SECONDS, OnChange, RunContext, check_every
from .._text import clip
from ..errors import CheckpointCorrupt, InputChanged, SkipBudgetExceeded, UsageError

__all__ = ["ABANDONED", "FAIL", "OK", "Bucket", "DoneSet", "Engine", "Options", "encoded_bound", "options"]

log = logging.getLogger("restartable")


def encoded_bound(window: int) -> int:
    """The most bytes the JSON of ``DoneSet.encode()`` can take under ``window``."""
    return 2 * window + 2


class DoneSet:
    """A low watermark plus the done indices above it. Not thread-safe: one thread owns it."""

    __slots__ = ("above", "low")

    def __init__(self, low: int = 0, above: set[int] | None = None) -> None:
        self.low = low
        self.above: set[int] = set()
        for i in above or ():
            self.add(i)

    def __contains__(self, index: int) -> bool:
        return index < self.low or index in self.above

    def __len__(self) -> int:
        """Done indices above the watermark (those the checkpoint lists one by one)."""
        return len(self.above)

    def add(self, index: int) -> None:
        """Mark ``index`` done; the watermark moves up over every contiguous done index."""
        if index == self.low:
            low = index + 1
            above = self.above
            if above:
                while low in above:
                    above.remove(low)
                    low += 1
            self.low = low
        elif index > self.low:
            self.above.add(index)

    def span(self) -> int:
        """How far above the watermark the highest done index lies (0 when none)."""
        return max(self.above) - self.low + 1 if self.above else 0

    def drop_from(self, end: int) -> None:
        """Forget done indices at or above ``end`` (an input that became shorter)."""
        self.above = {i for i in self.above if i < end}

    def encode(self) -> list[int]:
        """The run lengths from the watermark: not-done, done, not-done, done, ..."""
        out: list[int] = []
        pos = self.low  # the first index the list does not describe yet
        start = prev = -2
        for i in sorted(self.above):
            if i != prev + 1:  # a new run of done indices starts at i
                if start >= 0:
                    out += [start - pos, prev + 1 - start]
                    pos = prev + 1
                start = i
            prev = i
        if start >= 0:
            out += [start - pos, prev + 1 - start]
        return out

    @classmethod
    def decode(cls, low: int, runs: Any, *, where: str) -> DoneSet:
        """The inverse of :meth:`encode`; ``where`` names the cursor in error messages."""
        if runs is None:
            return cls(low)
        if not isinstance(runs, list) or not all(type(x) is int and x >= 0 for x in runs):
            raise CheckpointCorrupt(f"{where}: the done set {clip(str(runs), 80)} is not a list of run lengths")
        done = cls(low)
        pos = low
        for k, length in enumerate(runs):
            if k % 2:
                for i in range(pos, pos + length):
                    done.add(i)
            pos += length
        return done


# -- options and outcomes ------------------------------------------------------------

#: Most items read ahead from an iterator.
_READ_AHEAD = 64
_ERROR_CHARS = 300
_KEY_CHARS = 200

# Outcomes of one item, as the workers report them: (index, outcome, value or exception, attempts).
OK, FAIL, ABANDONED = "ok", "fail", "abandoned"
_GONE = object()  # ordered mode: a settled item that yields nothing


@dataclass(frozen=True)
class Options:
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


def options(
    *,
    workers: int,
    ordered: bool,
    window: int,
    attempts: int,
    backoff: float,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    on_error: str,
    skip_budget: int | None,
    rate: float | None,
    grace: float,
    every: int | None,
    seconds: float | None,
    retry_dead: bool,
    what: str = "workers",
) -> Options:
    def positive_int(value: Any, name: str, low: int = 1) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UsageError(f"{name} must be an int >= {low}, not {value!r}")

    positive_int(workers, what)
    positive_int(window, "window")
    positive_int(attempts, "attempts")
    check_every(every)
    if skip_budget is not None:
        positive_int(skip_budget, "skip_budget", 0)
    for value, name in ((backoff, "backoff"), (grace, "grace")):
        if not isinstance(value, (int, float)) or value < 0:
            raise UsageError(f"{name} must be a number >= 0, not {value!r}")
    for maybe, name in ((rate, "rate"), (seconds, "seconds")):
        if maybe is not None and (not isinstance(maybe, (int, float)) or maybe <= 0):
            raise UsageError(f"{name} must be a positive number, not {maybe!r}")
    if on_error not in ("stop", "skip"):
        raise UsageError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
    retry = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry):
        raise UsageError(f"retry_on must be an exception class or a tuple of them, not {retry_on!r}")
    if every is None and seconds is None:
        seconds = DEFAULT_SECONDS
    return Options(
        workers,
        bool(ordered),
        window,
        attempts,
        float(backoff),
        retry,
        on_error,
        skip_budget,
        rate,
        float(grace),
        every,
        seconds,
        bool(retry_dead),
    )


def _identity(item: Any, key: Callable[[Any], Any] | None) -> Any:
    """What a dead letter says about its item: ``key(item)``, or the item if it is small JSON."""
    try:
        value = key(item) if key is not None else item
        size = len(json.dumps(encode_value(value), separators=(",", ":")))
    except Exception:  # noqa: BLE001 - an item we cannot describe is simply not described
        return None
    return value if size <= _KEY_CHARS else None


def _capture(it: Iterable[Any], wanted: set[int], into: dict[int, Any]) -> Iterator[Any]:
    """Pass ``it`` through, keeping the items at the ``wanted`` indices (dead letters to retry)."""
    for i, x in enumerate(it):
        if i in wanted:
            into[i] = x
        yield x


class Engine:
    """The bookkeeping of one concurrent iteration, owned by the consuming thread.

    It reads the input, decides which item starts next (not done, below the window),
    tracks outcomes, yields in the chosen order, keeps the done set and the dead
    letters, and writes them into the cursor before every checkpoint.
    """

    def __init__(
        self,
        job: RunContext,
        items: Any,
        opts: Options,
        *,
        name: str | None,
        key: Callable[[Any], Any] | None,
        on_change: str | None,
        progress: bool | None,
        allow_async: bool,
    ) -> None:
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
        cursor = self.cursor = job.cursor(name, total=total)
        self.where = f"{job.label} iteration {cursor.name!r}"
        self.empty = bool(job.completed)
        if self.empty:
            log.info("%s is already complete: iteration %r yields nothing", job.label, cursor.name)
            return
        change = cast("OnChange", on_change or job.on_change)
        self.dead: dict[str, dict[str, Any]] = dict(cursor.extra.get("dead") or {})
        wanted = {int(k) for k in self.dead} if opts.retry_dead else set()
        below = {i for i in wanted if i < cursor.offset}
        self.captured: dict[int, Any] = {}
        offset = cursor.offset
        self.to_skip = 0
        if self.source is not None:
            if below and not self.source.seekable:
                self.source = Source(_capture(items, below, self.captured))
            self.fp = job.check_input(cursor, self.source, key, change)
        else:
            if change == "restart":
                raise UsageError(f"{self.where}: on_change='restart' needs a sequence, not an async iterable")
            self.fp = Fingerprinter(
                length=None,
                key=key,
                describe=self.where,
                position=offset,
                stored=None if change == "force" else job.fingerprints.get(cursor.name),
            )
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
        self.empty = cursor.finished and (total is None or cursor.offset >= total) and not wanted
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
        self.hooks = job.loop_hooks(seconds=opts.seconds, progress=progress, fingerprint=self.fp)
        self.hooks.stop_after_save = False  # a signal is acted on by the engine: it drains in-flight items first
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
                    raise InputChanged(
                        f"{self.where}: the input now has {i} items but {count} were already "
                        "done; it changed under the checkpoint"
                    ) from None
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
        if kind == OK:
            if self.order is None:
                self.ready.append((index, value))
            else:
                self.results[index] = value
            return
        self.unsettled -= 1
        if self.order is not None:
            self.results[index] = _GONE
        if kind == ABANDONED:
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
        log.warning(
            "%s: item %d failed after %d attempt(s) (%s); skipped, recorded as a dead letter",
            self.where,
            index,
            attempts,
            error,
        )
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
        return (
            self.exhausted
            and not self.buf
            and not self.retry
            and not self.need_read
            and not self.to_skip
            and self.unsettled == 0
        )

    def sync(self) -> None:
        """Write the done set, dead letters and in-flight count into the cursor (before each save)."""
        cur = self.cursor
        cur.offset = self.done.low
        cur.extra["done"] = self.done.encode()
        if self.dead or "dead" in cur.extra:  # (a key once saved stays in the record: keep it current)
            cur.extra["dead"] = dict(self.dead)
        cur.extra["in_flight"] = 0 if self.closed else self.unsettled

    def end(self) -> None:
        """The input is exhausted and every item settled: finish the cursor (and checkpoint)."""
        self.done.drop_from(self.next)  # an iterator that became shorter than its done set
        self.cursor.offset = self.done.low
        if self.dead:
            log.warning(
                "%s: %d item(s) failed and were skipped as dead letters; `restartable show %s` lists them",
                self.where,
                len(self.dead),
                self.job.name,
            )
        self.hooks.end(self.cursor)

    def interrupt(self) -> None:
        """Stop after a signal, once the drain is over: checkpoint ``interrupted`` and raise Interrupted.

        The lease is released only when no item runs any more (``running == 0``): a released
        lease lets a second runner start the same items. Items still running after the
        grace (a thread cannot be killed) keep it: the checkpoint is saved with the lease
        held, which ends with this process (a rerun on this machine sees the owner gone and
        takes over at once) or expires one lease length after the last renewal.
        """
        hooks, job, cur = self.hooks, self.job, self.cursor
        if self.running == 0:
            hooks.stop_after_save = True
            hooks.boundary(cur, False)  # checkpoints, releases the lease, raises Interrupted
        if job.fenced is not None:
            raise job.fenced
        if hooks.fp is not None:
            job.fingerprints[cur.name] = hooks.fp.result()
        job.save(INTERRUPTED)
        log.warning(
            "%s: the lease is kept until this process ends (or it expires in %gs): %d item(s) still running",
            self.where,
            job.lease_seconds,
            self.running,
        )
        hooks.shown.stop(cur.offset)
        raise job.interrupted()

    def close(self) -> None:
        """The loop is over (ended, broken, failed or interrupted): nothing is in flight any more."""
        self.closed = True
        self.sync()
        # The cursor now holds the final state: stop syncing it, so that a job running many
        # iterations does not call one callback per finished iteration at every save.
        try:
            self.job.before_save.remove(self.sync)
        except ValueError:
            pass
        self.hooks.close(self.cursor)


class Bucket:
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
