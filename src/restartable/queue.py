"""A dynamic work queue: Kubernetes' "fine parallel processing with a work queue", with leases.

::

    from restartable.queue import WorkQueue, ranges

    with WorkQueue("reindex", store="postgresql://db/app?schema=ckpt") as queue:
        queue.fill(ranges(10_000_000, 50_000))         # every worker may call it: the first one fills
        for claim in queue.claims():                   # until every task is done
            with claim:                                # completed (fenced) when the block succeeds
                reindex(claim.start, claim.stop)

Any number of worker processes (the pods of a Job with ``parallelism: P``) run the same
code against one PostgreSQL or Redis. The contract:

* A task is a string key (``fill(["a", "b"])``) or a range (``fill([(0, 100), ...])``,
  key ``"0-100"``, ``claim.start``/``claim.stop``). ``fill`` is idempotent, an
  insert-if-absent of each task in one transaction (PostgreSQL; chunks of 1000 in Redis),
  then the queue is marked filled: filling again with the same tasks adds nothing, and a
  completed task is never done again. ``claims()`` waits (up to ``fill_wait``) for a
  queue that no worker has filled yet.
* A claim holds its task for ``lease_seconds``, renewed by a heartbeat thread every third
  of it. Each claim bumps the task's ``epoch``, the claim's fencing token: ``complete()``,
  ``checkpoint()`` and ``release()`` compare it in the same statement (PostgreSQL) or
  script (Redis), so a worker whose lease ran out while it was stopped (a zombie: SIGSTOP,
  a long GC pause, a partitioned node) and whose task was claimed again gets Fenced
  (exit 75) and changes nothing.
* PostgreSQL claims with ``FOR UPDATE SKIP LOCKED``: workers never wait for each other's
  rows. Redis claims in one Lua script on the server's clock.
* A task held by a dead worker is claimed again once its lease expires; ``claim.offset``
  then holds the last ``claim.checkpoint(offset)`` of the earlier holder.
* ``with claim:`` completes the task when the block succeeds and releases it (claimable
  at once by anyone, ``attempts`` counted) when the block raises.
  ``claim.transaction()`` (PostgreSQL) is a connection in an open transaction whose
  commit includes the fenced completion: output written there is committed exactly once.
  When its COMMIT's answer is lost, whether it committed is settled on new connections
  (:mod:`restartable._postgres.xact`) before anything else is written for the claim: committed,
  the claim is completed; not committed, StoreUnavailable and the claim is released;
  not settled within the URL's ``retry``, StoreUnavailable and the claim is left to
  expire, never released (a release could let another worker redo the task beside a
  commit still landing).
* ``claims()`` ends when every task is done; while other workers hold the rest it polls,
  so it takes over what a dead worker leaves. SIGTERM/SIGINT (main thread): the claim in
  flight finishes, then Interrupted is raised (exit 143/130) instead of the next claim.

Storage: PostgreSQL tables ``queue_tasks`` and ``queues`` in the store URL's ``schema``
(default ``restartable``); Redis keys ``{prefix}queue:{NAME}:*`` (a hash tag: one slot).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Self

from ._entry import install_excepthook
from ._names import check_name
from ._proc import current_owner
from ._queue_types import Counts, QueueBackend, Row
from ._signals import SignalGuard
from ._url import parse_duration, parse_store_url
from .errors import CheckpointLost, Fenced, Interrupted, StoreUnavailable, UsageError
from .stores import resolve_store_url
from .stores._registry import queue_backend

__all__ = ["Claim", "Counts", "WorkQueue", "ranges"]

log = logging.getLogger("restartable")

DEFAULT_LEASE_SECONDS = 30.0
_MAX_KEY = 512


def ranges(total: int, size: int, *, start: int = 0) -> list[tuple[int, int]]:
    """``[(start, start+size), ...]`` covering ``start..start+total``, the last one shorter."""
    if total < 0 or size < 1:
        raise UsageError(f"ranges needs total >= 0 and size >= 1, not {total}, {size}")
    return [(a, min(a + size, start + total)) for a in range(start, start + total, size)]


class Claim:
    """One claimed task. Use it as a context manager; see the module docstring."""

    def __init__(self, queue: WorkQueue, row: Row) -> None:
        self._queue = queue
        self.key = row.key
        self.payload = row.payload
        #: The fencing token: the task's epoch when this claim took it.
        self.epoch = row.epoch
        #: How many times the task was claimed, this claim included.
        self.attempts = row.attempts
        #: The last checkpointed offset (0 for a fresh task).
        self.offset = row.offset
        self.state = "held"  # held -> completed | released | fenced
        self._lost: Fenced | None = None

    @property
    def start(self) -> int | None:
        return self.payload.get("start") if isinstance(self.payload, dict) else None

    @property
    def stop(self) -> int | None:
        return self.payload.get("stop") if isinstance(self.payload, dict) else None

    def __repr__(self) -> str:
        return f"<Claim {self._queue.name}/{self.key} epoch={self.epoch} {self.state}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            if self.state in ("held", "fenced"):
                self.complete()  # a fenced claim raises its Fenced again: the loop must not go on
        elif isinstance(exc, Fenced):
            self._queue._lose(self, exc)
        elif self.state == "held":
            self.release()

    def complete(self) -> None:
        """Mark the task done. Raises Fenced (nothing changed) if another claim took it over."""
        self._queue._finish(self, "complete")

    def release(self) -> None:
        """Give the task back, claimable at once. A fenced claim releases nothing (no error)."""
        try:
            self._queue._finish(self, "release")
        except Fenced:
            pass

    def checkpoint(self, offset: int) -> None:
        """Save progress inside the task (and renew the lease); a later claim starts from ``offset``."""
        self._queue._checkpoint(self, int(offset))
        self.offset = int(offset)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """PostgreSQL: a connection in a transaction that commits your writes with the completion."""
        with self._queue._transaction(self) as conn:
            yield conn


def _looks_like_store_url(value: object) -> bool:
    """True for what can only be a store URL, never a queue name (names have no ``:`` or ``/``)."""
    return isinstance(value, str) and ("://" in value or ":" in value or "/" in value)


def _name_and_store(first: str | None, second: str | None, store: str | None) -> tuple[str, str | None]:
    """Sort out ``WorkQueue``'s arguments: ``(name, store=url)``, or the deprecated ``(store_url, name)``.

    Two positional arguments are the old order (the first is a store URL or None). A single
    positional argument that looks like a store URL is refused rather than guessed: it
    is either the old order with the name forgotten, or a URL given where the name goes.
    """
    if second is not None:
        if store is not None:
            raise UsageError(
                f"WorkQueue got a store twice ({first!r} and store={store!r}): write WorkQueue(name, store=url)"
            )
        warnings.warn(
            "WorkQueue(store_url, name) is deprecated: write WorkQueue(name, store=store_url), as for Job",
            DeprecationWarning,
            stacklevel=3,  # the caller of WorkQueue(...)
        )
        return second, first
    if first is None:
        raise UsageError("WorkQueue needs the queue's name: WorkQueue(name, store=url)")
    if _looks_like_store_url(first):
        raise UsageError(
            "WorkQueue's first argument is the queue's name, not a store URL: write WorkQueue(name, store=url)"
        )
    return first, store


class WorkQueue:
    """A named queue of tasks in a PostgreSQL or Redis store. See the module docstring.

    :param name: the queue's name (``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``).
    :param store: the store URL (default ``$RESTARTABLE_STORE``); ``postgresql://`` or ``redis://``.
    :param lease_seconds: how long a claim holds its task without a heartbeat (default 30).
    :param poll: seconds between looks while other workers hold the remaining tasks.
    :param fill_wait: how long ``claims()`` waits for some worker to fill the queue.
    :param handle_signals: stop at the next claim on SIGTERM/SIGINT (main thread only).

    ``WorkQueue(name, store=url)`` is the order of ``Job(name, store=url)``. The old order
    ``WorkQueue(store_url, name)`` (two positional arguments) is still accepted, with a
    DeprecationWarning, until 0.3; ``_legacy_name`` exists only for it.
    """

    def __init__(
        self,
        name: str | None = None,
        _legacy_name: str | None = None,
        *,
        store: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll: float | None = None,
        fill_wait: float = 60.0,
        handle_signals: bool = True,
    ) -> None:
        install_excepthook()  # as Job does: an escaping library error ends the script with its code
        name, store = _name_and_store(name, _legacy_name, store)
        self.name = check_name(name, "queue name")
        if lease_seconds <= 0:
            raise UsageError(f"lease_seconds must be positive, not {lease_seconds}")
        self.lease_seconds = float(lease_seconds)
        self.poll = float(poll) if poll is not None else min(1.0, self.lease_seconds / 4)
        self.fill_wait = float(fill_wait)
        self._handle_signals = handle_signals
        owner = current_owner()
        self.owner = f"{owner.describe()} token {owner.token}"
        url = resolve_store_url(store)
        backend_cls = queue_backend(url)  # by URL scheme, from the store registry
        parsed = parse_store_url(url, known_options=backend_cls.options)
        retry = parse_duration(parsed.options.get("retry", 60.0), "retry option")
        self._backend: QueueBackend = backend_cls(parsed, self.name, retry=retry)
        self.display = parsed.display
        self._held: dict[str, Claim] = {}
        self._held_lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._signal: int | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def label(self) -> str:
        return f"queue {self.name!r} on {self.display}"

    def close(self) -> None:
        """Stop the heartbeat (held claims then expire) and close the connections."""
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(timeout=5)
        self._backend.close()

    # -- filling and looking ---------------------------------------------------------

    def fill(self, tasks: Iterable[str | tuple[int, int]]) -> int:
        """Insert the tasks that are not there yet; return how many were added. Idempotent."""
        if self._backend.filled():
            return 0  # the fast path for the workers that start after the first
        rows: list[tuple[str, str]] = []
        for task in tasks:
            if isinstance(task, str):
                key, payload = task, None
            elif isinstance(task, tuple) and len(task) == 2 and all(isinstance(x, int) for x in task):
                key, payload = f"{task[0]}-{task[1]}", {"start": task[0], "stop": task[1]}
            else:
                raise UsageError(f"{self.label}: a task is a string or a (start, stop) pair of ints, not {task!r}")
            if not key or len(key) > _MAX_KEY:
                raise UsageError(f"{self.label}: task keys are 1-{_MAX_KEY} characters, not {key[:40]!r}")
            rows.append((key, json.dumps(payload)))
        added = self._backend.fill(rows)
        self._backend.mark_filled()
        log.info("%s: filled with %d task(s), %d new", self.label, len(rows), added)
        return added

    def counts(self) -> Counts:
        return self._backend.counts()

    def drop(self) -> None:
        """Delete the queue and all its tasks (for tests and re-runs)."""
        self._backend.drop()

    @property
    def stopping(self) -> bool:
        """True once SIGTERM/SIGINT arrived while ``claims()`` ran."""
        return self._signal is not None

    # -- claiming ------------------------------------------------------------------------

    def claim(self) -> Claim | None:
        """Claim the next claimable task (pending, or whose lease expired), or None."""
        row = self._backend.claim(self.owner, self.lease_seconds)
        if row is None:
            return None
        claim = Claim(self, row)
        with self._held_lock:
            self._held[claim.key] = claim
        self._ensure_heartbeat()
        if row.attempts > 1:
            log.info(
                "%s: took over task %r (attempt %d, from offset %d)", self.label, row.key, row.attempts, row.offset
            )
        return claim

    def claims(self, *, wait: bool = True) -> Iterator[Claim]:
        """Yield claims until every task is done (``wait=False``: until none is claimable now)."""
        guard = SignalGuard(self._on_signal, self.label) if self._handle_signals else None
        if guard is not None:
            guard.install()
        previous: Claim | None = None
        try:
            self._wait_filled()
            # The most tasks this worker has seen: a queue that later holds fewer lost its data
            # (a Redis restarted without persistence), and must not be taken for a drained one.
            seen_total = self.counts().total
            while True:
                if previous is not None and previous.state == "held":
                    # Going on would claim it again at once: a loop that never ends.
                    previous.release()
                    raise UsageError(
                        f"{self.label}: task {previous.key!r} was neither completed nor released "
                        "before the next claim (released now): use `with claim:` in the loop"
                    )
                if self._signal is not None:
                    raise self._interrupted()
                claim = self.claim()
                if claim is not None:
                    previous = claim
                    yield claim
                    continue
                counts = self.counts()
                if counts.total < seen_total:
                    raise CheckpointLost(
                        f"{self.label}: the queue held {seen_total} tasks and now holds {counts.total}: the "
                        "store lost its data (a Redis restarted without persistence?). Not taken for a drained "
                        "queue; run Redis with appendonly yes, then refill the queue"
                    )
                seen_total = counts.total
                if counts.done >= counts.total or not wait:
                    return
                delay = self.poll if counts.next_expiry is None else min(self.poll, max(0.01, counts.next_expiry))
                if self._stop.wait(delay) and self._signal is None:
                    return  # closed
        finally:
            if guard is not None:
                guard.restore()

    def _wait_filled(self) -> None:
        deadline = time.monotonic() + self.fill_wait
        announced = False
        while not self._backend.filled():
            if time.monotonic() >= deadline:
                raise UsageError(
                    f"{self.label} was never filled (waited {self.fill_wait:g}s): call "
                    "queue.fill(tasks) first (every worker may: the first one fills it)"
                )
            if not announced:
                log.info("%s: waiting for a worker to fill it", self.label)
                announced = True
            if self._signal is not None:
                raise self._interrupted()
            time.sleep(min(0.5, self.poll))

    def _on_signal(self, signum: int) -> None:
        self._signal = signum

    def _interrupted(self) -> Interrupted:
        import signal

        signum = self._signal or signal.SIGTERM
        msg = f"{self.label}: interrupted by {signal.Signals(signum).name}; the claimed tasks were finished"
        log.warning("%s", msg)
        return Interrupted(msg, signum=signum)

    # -- the fenced operations (called by Claim) ---------------------------------------------

    def _fenced(self, claim: Claim, what: str) -> Fenced:
        epoch, owner, done = self._backend.holder(claim.key)
        now = f"done by claim {epoch}" if done else f"held by claim {epoch}" + (f" ({owner})" if owner else "")
        return Fenced(
            f"{self.label}: cannot {what} task {claim.key!r}: this worker's claim {claim.epoch} lost its "
            f"lease and the task was claimed again (now {now}); this worker's work on it is discarded"
        )

    def _finish(self, claim: Claim, op: str) -> None:
        if claim._lost is not None:  # fenced earlier (by the heartbeat or another call): stays fenced
            self._lose(claim, claim._lost)
            if op == "complete":
                raise claim._lost
            return
        if claim.state != "held":
            if op == "complete" and claim.state != "completed":
                raise UsageError(f"{self.label}: task {claim.key!r} was already {claim.state}")
            return
        ok = getattr(self._backend, op)(claim.key, claim.epoch)
        if not ok:
            raise self._lose(claim, self._fenced(claim, op))
        self._drop(claim)
        claim.state = "completed" if op == "complete" else "released"

    def _lose(self, claim: Claim, exc: Fenced) -> Fenced:
        """Mark ``claim`` fenced for good: every later complete() raises ``exc`` again."""
        if claim._lost is None:
            log.error("%s", exc)  # Fenced is a SystemExit: uncaught, it would exit 75 silently
        claim._lost = exc
        claim.state = "fenced"
        self._drop(claim)
        return exc

    def _checkpoint(self, claim: Claim, offset: int) -> None:
        if claim.state != "held":
            raise UsageError(f"{self.label}: task {claim.key!r} is {claim.state}, not held")
        if claim._lost is not None:
            raise self._lose(claim, claim._lost)
        if not self._backend.checkpoint(claim.key, claim.epoch, offset, self.lease_seconds):
            raise self._lose(claim, self._fenced(claim, "checkpoint"))

    @contextmanager
    def _transaction(self, claim: Claim) -> Iterator[Any]:
        if claim._lost is not None:
            raise self._lose(claim, claim._lost)
        if claim.state != "held":
            raise UsageError(f"{self.label}: task {claim.key!r} is {claim.state}, not held")
        result: dict[str, bool] = {}
        try:
            with self._backend.transaction(claim.key, claim.epoch) as (conn, result):
                yield conn
        except StoreUnavailable:
            if result.get("in_doubt"):
                # The COMMIT may yet land: releasing now could let another worker redo the task
                # beside it. Write nothing more for this claim; its lease expires, and the task is
                # claimable again only if the commit did not happen (done_at stays NULL).
                claim.state = "in doubt"
                self._drop(claim)
            raise
        if not result["ok"]:
            raise self._lose(claim, self._fenced(claim, "complete"))
        self._drop(claim)
        claim.state = "completed"

    def _drop(self, claim: Claim) -> None:
        with self._held_lock:
            if self._held.get(claim.key) is claim:
                del self._held[claim.key]

    # -- the heartbeat ----------------------------------------------------------------------

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None or not self._heartbeat.is_alive():
            self._heartbeat = threading.Thread(target=self._beat, name=f"restartable-queue-{self.name}", daemon=True)
            self._heartbeat.start()

    def _beat(self) -> None:
        interval = self.lease_seconds / 3
        while not self._stop.wait(interval):
            with self._held_lock:
                held = list(self._held.values())
            interval = self.lease_seconds / 3
            for claim in held:
                try:
                    if self._backend.renew(claim.key, claim.epoch, self.lease_seconds) or claim.state != "held":
                        continue
                    epoch, _, done = self._backend.holder(claim.key)
                    if done and epoch == claim.epoch:
                        continue  # completed by this very claim a moment ago, not lost
                    log.error("%s", self._lose(claim, self._fenced(claim, "renew the lease of")))
                except StoreUnavailable as exc:
                    log.warning("%s: lease renewal of task %r failed (%s); retrying", self.label, claim.key, exc)
                    interval = max(0.05, min(1.0, self.lease_seconds / 10))
                except Exception as exc:  # noqa: BLE001 - a flaky store must not kill the heartbeat
                    log.warning("%s: lease renewal of task %r failed (%r); retrying", self.label, claim.key, exc)
                    interval = max(0.05, min(1.0, self.lease_seconds / 10))
