"""``job.map`` over a ``concurrent.futures`` executor: worker processes, a Dask cluster, any Executor.

::

    with Job("features") as job:
        for row in job.map(extract, paths, executor="processes", workers=os.cpu_count()):
            save(row)

    client = distributed.Client("tcp://scheduler:8786")
    with Job("features") as job:
        for row in job.map(extract, paths, executor=client, workers=64):
            save(row)

The bookkeeping (done set, window, dead letters, order, checkpoints, signals) is the
engine's (:mod:`.window`, :mod:`.engines`); this module only runs the items. What it
adds to the ``job.map`` contract:

* **What ``executor=`` takes.** ``"processes"``: a :class:`~concurrent.futures.ProcessPoolExecutor`
  of ``workers`` processes that we create and shut down, started by ``spawn`` (never a
  plain ``fork`` of a process holding database connections and a heartbeat thread; not
  ``forkserver`` either, whose server dies of a SIGTERM sent to the process group and
  takes its children, our workers, with it in the middle of the grace). A user's executor (a ``ProcessPoolExecutor``, a
  ``ThreadPoolExecutor``, Dask's ``client.get_executor()``) is used as given and never
  shut down by us. A ``distributed.Client`` (recognised by its ``get_executor`` method and
  its module, without importing Dask) is used through ``client.get_executor(retries=0,
  pure=False)``: Dask reruns a lost worker's tasks itself, ``attempts`` counts our retries.
  In every case at most ``workers`` items are in flight: the window of the engine.
* **Pickling.** For processes and Dask, ``fn`` and every item must pickle (Dask uses
  cloudpickle, so a lambda is fine there). ``fn`` is checked before the loop starts and
  each item before it is submitted: a :class:`~restartable.errors.UsageError` names the
  item's index and the fix; nothing about that item is saved. Items are pickled once, in
  the driver (the worker receives bytes), so the check costs nothing extra.
* **Worker processes we create** ignore SIGINT and SIGTERM (Ctrl-C reaches the whole
  process group: the driver decides, and drains as for threads), run ``initializer(*initargs)``
  first, and die with the driver: each holds the read end of a pipe whose only write end
  is the driver's, and SIGKILLs itself when it reads end-of-file, which the kernel
  delivers the moment the driver exits, however it dies.
* **A broken pool** (a worker process killed: OOM killer, a segfault, ``os._exit``) is
  replaced by a new one. The culprit is isolated, not guessed: the items that were in
  flight in the broken pool are rerun *one at a time* (nothing else runs beside them,
  and that rerun counts no attempt); an item that breaks the pool while it runs alone is
  the culprit, and only that counts an attempt (``BrokenProcessPool``), retried within
  ``attempts`` whatever ``retry_on`` says, then handled like any failure (``on_error``:
  a dead letter with ``skip``). Innocent items never burn attempts; the price is a short
  serial stretch after each break. A user's ``ProcessPoolExecutor`` cannot be replaced
  by us: its breaking ends the run with :class:`~restartable.errors.TemporaryError`
  (exit 75, the checkpoint kept), whose message says to pass ``executor="processes"``.
* **``timeout``** (seconds, from the submission of an attempt): an attempt running
  longer is a failed attempt (:class:`ItemTimeout`, a :class:`TimeoutError`), retried within ``attempts``
  whatever ``retry_on`` says. In a pool we created the worker is killed: the pool is
  replaced, and the other items in flight in it are rerun without counting an attempt.
  A user's executor cannot be made to kill a call: the future is cancelled (Dask drops
  the task; a call already running in a thread or a user's process runs on, its result
  ignored, so the executor may then hold more than ``workers`` calls). With a user's
  executor smaller than ``workers``, queueing time counts toward the timeout.
* **Dask.** ``KilledWorker`` (Dask gave up on a task whose workers kept dying) counts
  as an attempt. A lost scheduler (its futures cancelled by the client, or a submit
  that fails) is not the items' fault: they wait and are resubmitted, no attempt
  counted, while the client reconnects; past the store's ``retry`` budget (URL option,
  0 for local stores: the first loss) the run ends with
  :class:`~restartable.errors.TemporaryError` (exit 75), the checkpoint intact.
  Tasks submitted by a driver that was killed may still run on the cluster when the
  next driver submits the same items: ``fn`` may then run twice for an item at the same
  time, as after any crash it may run twice in sequence.
* **``initializer(*initargs)``** runs first in each worker process (or thread) we create,
  as the standard library's; one that raises stops the run with :class:`InitializerFailed`
  whatever ``on_error`` says (no item is to blame). A user's executor gets its own.
* **Throughput**: at most ``workers`` items are in flight, so a worker that finishes waits
  for the driver to hand it the next item. For items of a few milliseconds give more
  ``workers`` than cores (two per core) to hide that round trip.
* **SIGTERM/SIGINT**: no new submission and no retry; the items in flight get
  ``grace`` seconds, then in a pool we created the workers are killed (and Dask's
  futures cancelled), so nothing runs when the lease is released. A user's threads or
  processes that are still running keep the lease, as for ``job.map``'s own threads.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import heapq
import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Any

from .._retry import Backoff
from ..errors import InitializerFailed, ItemTimeout, TemporaryError, UsageError
from .window import ABANDONED, FAIL, OK, Bucket, Options

__all__ = ["ExecutorPool", "InitializerFailed", "ItemTimeout", "Target", "infrastructure", "is_dask_client", "resolve"]

log = logging.getLogger("restartable")

Report = tuple[int, str, Any, int]

#: How long a task lost with the executor (a Dask scheduler gone) waits before it is resubmitted.
_LOST_RETRY = 0.5


def infrastructure(exc: BaseException) -> bool:
    """A failure of where the item ran, not of ``fn``: retried within ``attempts`` whatever ``retry_on`` says.

    A timeout, a worker process that died (``BrokenProcessPool``), Dask's ``KilledWorker``.
    """
    return isinstance(exc, (ItemTimeout, BrokenProcessPool)) or _is_killed_worker(exc)


# -- the worker side (runs in the worker processes we create) -----------------------------

#: Per worker process: the last ``fn`` unpickled (with its bytes) and the initializer's failure.
_WORKER: dict[str, Any] = {"fn": (b"", None), "init_error": None}


def _die_with_driver(alive: Connection) -> None:
    """Block until the driver's end of the pipe closes (it exited or was killed), then die."""
    try:
        alive.recv_bytes()
    except (EOFError, OSError):
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _worker_init(
    alive: Connection | None, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
) -> None:
    """Every worker process we start runs this first (the executor's ``initializer``)."""
    # The driver decides what a signal means (it drains, then kills us): a Ctrl-C that
    # reaches the whole process group must not kill a worker in the middle of an item.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    if alive is not None:
        threading.Thread(target=_die_with_driver, args=(alive,), name="restartable-driver-watch", daemon=True).start()
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:  # noqa: BLE001 - reported by every call in this worker instead
            _WORKER["init_error"] = f"{type(exc).__name__}: {exc}"


def _invoke(fn_blob: bytes, item_blob: bytes) -> Any:
    """Run one item in a worker process: ``fn`` and the item arrive pickled by the driver."""
    if _WORKER["init_error"] is not None:
        raise InitializerFailed(f"job.map's initializer failed in a worker process: {_WORKER['init_error']}")
    blob, fn = _WORKER["fn"]
    if blob != fn_blob:  # unpickle fn once per worker (and again only if another map sends another)
        fn = pickle.loads(fn_blob)
        _WORKER["fn"] = (fn_blob, fn)
    return fn(pickle.loads(item_blob))


# -- what executor= names ------------------------------------------------------------------

_FIX = "define fn (and the items' classes) at module level, not as a lambda, a nested function or a local class"


def is_dask_client(obj: object) -> bool:
    """A ``distributed.Client``, recognised without importing Dask."""
    return hasattr(obj, "get_executor") and type(obj).__module__.split(".")[0] == "distributed"


def _is_dask_executor(obj: object) -> bool:
    return type(obj).__module__.split(".")[0] == "distributed"


def _is_killed_worker(exc: BaseException) -> bool:
    """Dask's ``KilledWorker``, recognised by name (no import of Dask in the core)."""
    return type(exc).__name__ == "KilledWorker" and type(exc).__module__.split(".")[0] == "distributed"


def _start_method() -> str:
    # spawn, not forkserver: a SIGTERM sent to the whole process group (systemd, a shell's
    # `kill -- -PGID`) kills the forkserver, which does not ignore it, and its children, our
    # workers, exit with it (code 255) in the middle of the grace. Spawned workers are the
    # driver's own children and ignore the signal. Never fork: the driver holds database
    # connections and a heartbeat thread.
    return "spawn"


class Target:
    """The executor a map runs on, and how items reach it.

    ``kind`` is ``"own"`` (a process pool we created: replaced when it breaks, killed at
    the end), ``"process"`` (a user's ProcessPoolExecutor), ``"dask"`` (a Dask
    ClientExecutor, ours from a Client or the user's) or ``"other"`` (any Executor, used
    as is: nothing is pickled by us).
    """

    def __init__(
        self,
        kind: str,
        executor: cf.Executor | None,
        fn: Callable[[Any], Any],
        *,
        workers: int,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        what: str,
    ) -> None:
        self.kind = kind
        self.fn = fn
        self.workers = workers
        self.initializer = initializer
        self.initargs = initargs
        self.what = what
        self.generation = 0
        self.alive_w: Connection | None = None
        self.alive_r: Connection | None = None
        self.fn_blob = b""
        if kind in ("own", "process"):
            self.fn_blob = self._dumps_fn(pickle.dumps)
        elif kind == "dask":
            try:
                import cloudpickle

                self._dumps_fn(cloudpickle.dumps)
            except ImportError:  # pragma: no cover - distributed depends on cloudpickle
                pass
        if executor is None:  # "own": ours to create, replace and kill
            self.alive_r, self.alive_w = multiprocessing.Pipe(duplex=False)
            executor = self._new_pool()
        self.executor: cf.Executor = executor
        self.owned = kind == "own"  # shut down at the end (also a thread pool amap creates)

    def _dumps_fn(self, dumps: Callable[[Any], bytes]) -> bytes:
        fn = self.fn
        if getattr(fn, "__module__", None) == "__main__" and not hasattr(sys.modules["__main__"], "__file__"):
            if self.kind != "dask":  # an interactive __main__ cannot be imported by a worker process
                raise UsageError(
                    f"{self.what}: fn {fn!r} is defined in an interactive session (python -c, stdin, a notebook), "
                    f"which worker processes cannot import: {_FIX}, in a module or a script file"
                )
        try:
            return dumps(fn)
        except Exception as exc:
            raise UsageError(f"{self.what}: fn {fn!r} cannot be pickled to reach the workers ({exc}): {_FIX}") from exc

    def prepare(self, index: int, item: Any) -> Any:
        """What is submitted for ``item``: its pickle for processes (checked here), the item otherwise."""
        if self.kind == "other":
            return item
        try:
            blob = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            if self.kind == "dask":  # Dask falls back to cloudpickle: so do we, before giving up
                try:
                    import cloudpickle

                    cloudpickle.dumps(item)
                    return item
                except Exception:  # noqa: BLE001
                    pass
            raise UsageError(
                f"{self.what}: item {index} ({type(item).__name__}) cannot be pickled to reach the workers "
                f"({exc}): {_FIX}; or pass items that pickle (their keys, paths or ids) and load them in fn"
            ) from exc
        return item if self.kind == "dask" else blob

    def call(self, prepared: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """The callable and arguments to submit for a prepared item."""
        if self.kind in ("own", "process"):
            return _invoke, (self.fn_blob, prepared)
        return self.fn, (prepared,)

    def submit(self, prepared: Any) -> cf.Future[Any]:
        func, args = self.call(prepared)
        return self.executor.submit(func, *args)

    # -- the pools we create -----------------------------------------------------------

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context(_start_method()),
            initializer=functools.partial(_worker_init, self.alive_r, self.initializer, self.initargs),
        )

    def replace(self) -> None:
        """A new pool for a broken one (ours only); the futures of the old one are already failed."""
        old = self.executor
        self.generation += 1
        self.executor = self._new_pool()
        old.shutdown(wait=False, cancel_futures=True)

    def kill(self) -> None:
        """SIGKILL the worker processes of our pool (a hung or timed-out item, the end of the grace)."""
        # ProcessPoolExecutor has no public way to kill its workers before Python 3.14
        # (kill_workers); _processes (pid -> Process) has been there since 3.2.
        for proc in list((getattr(self.executor, "_processes", None) or {}).values()):
            try:
                proc.kill()
            except (OSError, ValueError):  # already gone, or already closed
                pass

    def close(self, *, busy: bool) -> None:
        """The end of the map: shut down (and if ``busy`` first kill) what we created; keep the user's."""
        if not self.owned:
            return
        if self.kind != "own":
            self.executor.shutdown(wait=False, cancel_futures=True)
            return
        if busy:
            self.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self.alive_w is not None:  # any worker left (none should be) now kills itself
            self.alive_w.close()
            self.alive_w = None


def resolve(
    executor: object,
    fn: Callable[[Any], Any],
    *,
    workers: int,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    what: str,
) -> Target:
    """The :class:`Target` for ``executor=`` (anything but None and "threads")."""
    if not isinstance(initargs, tuple):
        raise UsageError(f"{what}: initargs must be a tuple, not {type(initargs).__name__}")
    if initializer is not None and not callable(initializer):
        raise UsageError(f"{what}: initializer must be callable, not {initializer!r}")
    if executor == "processes":
        return Target("own", None, fn, workers=workers, initializer=initializer, initargs=initargs, what=what)
    if isinstance(executor, str):
        raise UsageError(
            f"{what}: executor must be 'threads', 'processes', an Executor or a Dask Client, not {executor!r}"
        )
    if initializer is not None or initargs:
        raise UsageError(
            f"{what}: initializer= applies to the workers restartable creates (executor='threads' or "
            "'processes'); give your own executor its initializer when you create it"
        )
    if is_dask_client(executor):
        ex = executor.get_executor(retries=0, pure=False)  # type: ignore[attr-defined]
        return Target("dask", ex, fn, workers=workers, initializer=None, initargs=(), what=what)
    if not isinstance(executor, cf.Executor):
        raise UsageError(
            f"{what}: executor must be 'threads', 'processes', a concurrent.futures.Executor or a Dask Client, "
            f"not {type(executor).__name__}"
        )
    if isinstance(executor, cf.ProcessPoolExecutor):
        kind = "process"
    elif _is_dask_executor(executor):
        kind = "dask"
    else:
        kind = "other"
    return Target(kind, executor, fn, workers=workers, initializer=None, initargs=(), what=what)


# -- the driver ----------------------------------------------------------------------------------


class _Task:
    """One item given to the pool and not yet reported."""

    __slots__ = ("alone", "attempts", "deadline", "future", "generation", "index", "prepared", "reserved", "serial")

    def __init__(self, index: int, prepared: Any) -> None:
        self.index = index
        self.prepared = prepared
        self.attempts = 0  # counted attempts that failed
        self.alone = False  # must run with nothing else in the pool (a suspect after a break)
        self.reserved = False  # holds a rate slot
        self.serial = -1
        self.future: cf.Future[Any] | None = None
        self.generation = 0
        self.deadline = float("inf")


class ExecutorPool:
    """Runs ``fn`` on a :class:`Target` for the engine's consuming thread (``_run_threads``).

    The same face as the thread pool: ``submit(index, item)`` once per started item,
    ``report(wait)`` the next ``(index, outcome, value, attempts)`` or None, ``stop``
    (an Event: no new attempt), ``abandon()`` after the grace, ``shutdown()``. Exactly
    one report comes for each submitted item. Retries, backoff, rate, timeouts and the
    broken-pool isolation happen here, on the consuming thread; the executor's
    callbacks only put finished futures on a queue.
    """

    def __init__(self, target: Target, opts: Options, *, timeout: float | None, unavailable_budget: float) -> None:

        self.target = target
        self.opts = opts
        self.timeout = timeout
        self.budget = unavailable_budget
        self.bucket = Bucket(opts.rate) if opts.rate else None
        self.stop = threading.Event()
        self.tasks: dict[int, _Task] = {}
        self.inflight: dict[int, _Task] = {}  # serial -> task with a live future
        self.heap: list[tuple[float, int, int]] = []  # (due, seq, index): waiting to be submitted
        self.seq = itertools.count()
        self.serials = itertools.count()
        self.finished: queue.SimpleQueue[tuple[int, cf.Future[Any]]] = queue.SimpleQueue()
        self.out: deque[Report] = deque()
        self.solo: int | None = None  # the index of a suspect running alone
        self.killed: set[int] = set()  # generations of our pool that we killed ourselves
        self.outage: float | None = None  # since when the executor loses our tasks
        self.backoff = Backoff(opts.backoff)

    # -- the engine's face -------------------------------------------------------------

    def submit(self, index: int, item: Any) -> None:
        task = _Task(index, self.target.prepare(index, item))
        self.tasks[index] = task
        self._queue(task, 0.0)
        self._dispatch(time.monotonic())

    def report(self, wait: float) -> Report | None:
        end = time.monotonic() + wait
        while True:
            while True:
                try:
                    serial, fut = self.finished.get_nowait()
                except queue.Empty:
                    break
                self._complete(serial, fut)
            now = time.monotonic()
            self._check_timeouts(now)
            self._check_outage(now)
            self._dispatch(now)
            if self.out:
                return self.out.popleft()
            if now >= end:
                return None
            until = end
            if self.heap and self._head_may_start():
                until = min(until, self.heap[0][0])
            if self.timeout is not None and self.inflight:
                until = min(until, min(t.deadline for t in self.inflight.values()))
            try:
                serial, fut = self.finished.get(timeout=max(0.0, until - now))
            except queue.Empty:
                continue
            self._complete(serial, fut)

    def abandon(self) -> list[int]:
        """After the grace: stop what can be stopped; the indices that no longer run (not done)."""
        gone: list[int] = []
        if self.target.kind == "own":
            self.killed.add(self.target.generation)
            self.target.kill()
        for serial, task in list(self.inflight.items()):
            assert task.future is not None
            if self.target.kind in ("own", "dask") or task.future.cancel():
                task.future.cancel()
                del self.inflight[serial]
                del self.tasks[task.index]
                gone.append(task.index)
        return gone

    def shutdown(self) -> None:
        self.stop.set()
        busy = bool(self.inflight)
        for task in self.inflight.values():
            if task.future is not None:
                task.future.cancel()  # not started yet: never starts; Dask: the task is dropped
        self.inflight.clear()
        self.target.close(busy=busy)

    # -- submitting ----------------------------------------------------------------------

    def _queue(self, task: _Task, delay: float) -> None:
        heapq.heappush(self.heap, (time.monotonic() + delay, next(self.seq), task.index))

    def _head_may_start(self) -> bool:
        if self.solo is not None:  # a suspect runs alone: nothing starts beside it
            return False
        return not (self.tasks[self.heap[0][2]].alone and self.inflight)

    def _dispatch(self, now: float) -> None:
        heap = self.heap
        if self.stop.is_set():  # stopping: what waits (a retry, a rate slot, a suspect) is not done
            for _, _, index in heap:
                task = self.tasks.pop(index)
                self.out.append((index, ABANDONED, None, task.attempts))
            heap.clear()
            return
        while heap and heap[0][0] <= now and self._head_may_start():
            index = heap[0][2]
            task = self.tasks[index]
            if self.bucket is not None and not task.reserved:
                task.reserved = True
                delay = self.bucket.reserve()
                if delay > 0:
                    heapq.heapreplace(heap, (now + delay, next(self.seq), index))
                    continue
            heapq.heappop(heap)
            task.reserved = False
            self._start(task, now)

    def _start(self, task: _Task, now: float) -> None:
        target = self.target
        task.generation = target.generation
        try:
            fut = target.submit(task.prepared)
        except BrokenProcessPool:  # broken before we saw it fail a future
            self._broken(task, culprit=False)
            return
        except Exception as exc:
            if target.kind != "dask":
                raise TemporaryError(
                    f"{target.what}: the executor refused item {task.index} ({type(exc).__name__}: {exc}); "
                    "was it shut down? The checkpoint is kept: rerun with a working executor"
                ) from exc
            self._lost(task, f"{type(exc).__name__}: {exc}", now)
            return
        task.serial = serial = next(self.serials)
        task.future = fut
        task.deadline = now + self.timeout if self.timeout is not None else float("inf")
        self.inflight[serial] = task
        if task.alone:
            self.solo = task.index
        fut.add_done_callback(functools.partial(self._finished, serial))

    def _finished(self, serial: int, fut: cf.Future[Any]) -> None:  # the executor's thread: only hand over
        self.finished.put((serial, fut))

    # -- outcomes --------------------------------------------------------------------------

    def _complete(self, serial: int, fut: cf.Future[Any]) -> None:
        task = self.inflight.pop(serial, None)
        if task is None:  # timed out, abandoned or killed by us: its outcome is already decided
            return
        if self.solo == task.index:
            self.solo = None
        task.future = None
        now = time.monotonic()
        if fut.cancelled():
            if self.target.kind == "own":  # cancelled by us when a broken pool was replaced: it never ran
                self._queue(task, 0.0)
                return
            # Not by us (we forget a task before we cancel it): the executor lost it.
            self._lost(task, "its future was cancelled by the executor", now)
            return
        exc = fut.exception()
        if exc is None:
            self.outage = None
            del self.tasks[task.index]
            self.out.append((task.index, OK, fut.result(), task.attempts + 1))
            return
        if isinstance(exc, BrokenProcessPool):
            self._broken(task, culprit=None)
            return
        if isinstance(exc, InitializerFailed):
            raise exc
        self._failed(task, exc, infra=infrastructure(exc))

    def _failed(self, task: _Task, exc: BaseException, *, infra: bool) -> None:
        """One counted attempt failed: retry it (after the backoff) or report the failure."""
        task.attempts += 1
        retry = infra or isinstance(exc, self.opts.retry_on)
        if task.attempts < self.opts.attempts and retry:
            self._queue(task, self.backoff.delay(task.attempts))  # stopping: _dispatch abandons it
            return
        del self.tasks[task.index]
        self.out.append((task.index, FAIL, exc, task.attempts))

    def _broken(self, task: _Task, *, culprit: bool | None) -> None:
        """``task``'s future failed because its process pool broke (a worker process died)."""
        target = self.target
        if target.kind != "own":
            raise TemporaryError(
                f"{target.what}: the ProcessPoolExecutor passed as executor= broke: a worker process died "
                f"(killed, out of memory or crashed) with item {task.index} in flight. restartable cannot "
                "replace an executor it did not create: pass executor='processes' to have broken pools "
                "replaced and the culprit isolated. The checkpoint is kept: rerun to resume"
            )
        generation = task.generation
        if generation == target.generation:  # the first news of this break: a new pool for what follows
            others = sum(1 for t in self.inflight.values() if t.generation == generation)
            if culprit is None:
                culprit = others == 0 and generation not in self.killed  # it ran alone: it broke the pool
            log.warning(
                "%s: a worker process died; the process pool is replaced and %d item(s) in flight are rerun%s",
                target.what,
                others + 1,
                "" if culprit else ", one at a time, to find the one that kills its worker",
            )
            target.replace()
        elif culprit is None:
            culprit = False
        if generation in self.killed:  # we killed it (a timeout elsewhere): this item is innocent
            self._queue(task, 0.0)
        elif culprit:
            task.alone = True  # its retries too run alone: it must not take innocent items down with it
            self._failed(
                task,
                BrokenProcessPool(
                    f"the worker process running item {task.index} died (killed by a signal, out of memory, or crashed)"
                ),
                infra=True,
            )
        else:
            task.alone = True  # a suspect: rerun alone, no attempt counted
            self._queue(task, 0.0)

    def _check_timeouts(self, now: float) -> None:
        if self.timeout is None:
            return
        for serial, task in list(self.inflight.items()):
            if task.deadline > now:
                continue
            del self.inflight[serial]
            if self.solo == task.index:
                self.solo = None
            fut, task.future = task.future, None
            if self.target.kind == "own":
                if task.generation == self.target.generation:
                    self.killed.add(task.generation)
                    self.target.kill()
                    self.target.replace()
            elif fut is not None:
                fut.cancel()
            self._failed(task, ItemTimeout(f"item {task.index} ran longer than timeout={self.timeout:g}s"), infra=True)

    def _lost(self, task: _Task, why: str, now: float) -> None:
        """The executor lost ``task`` (a Dask scheduler gone): resubmit later, no attempt counted."""
        if self.outage is None:
            self.outage = now
            log.warning(
                "%s: the executor lost item %d (%s); resubmitting for up to %gs (the store's retry budget)",
                self.target.what,
                task.index,
                why,
                self.budget,
            )
        self._queue(task, _LOST_RETRY)

    def _check_outage(self, now: float) -> None:
        if self.outage is not None and now - self.outage > self.budget:
            raise TemporaryError(
                f"{self.target.what}: the executor kept losing the submitted items for more than {self.budget:g}s "
                "(a Dask scheduler gone or unreachable). The checkpoint is kept: rerun when the cluster is back; "
                "a longer wait is the store URL's retry= option"
            )
