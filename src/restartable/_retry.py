"""The one retry policy: how long to wait before trying again, for every retry we make.

Every retry of the library waits by ONE formula, whoever retries: a store riding out
a server restart, ``job.map``/``job.amap`` retrying an item, ``job.files`` and
``restartable each-file`` retrying a file, a transactional batch given back after a
lost connection. After the ``n``-th failed attempt (n = 1, 2, ...) it waits::

    delay(n) = min(cap, backoff * 2**(n-1) * (1 + U(0, jitter)))

that is: at least ``backoff`` seconds doubling with each failure (``backoff *
2**(n-1)``, never less: a caller can count on that minimum), plus up to ``jitter``
(a fraction, default one half) of it again, at random, so that workers that failed
together do not retry together; never more than ``cap`` seconds. The nominal part is
tenacity's ``wait_exponential``; :class:`wait_backoff` is a tenacity wait strategy, so
the same formula drives :func:`tenacity.Retrying` (the stores' retries) and our own
loops, which must also wake on a signal and checkpoint between attempts and so call
:meth:`Backoff.delay` themselves.

:func:`call_with_retry` is the stores' (and the work queue's) use of it: an operation
retried while its error is transient, for at most the store's ``retry`` budget
(URL option, default :data:`DEFAULT_RETRY_SECONDS`), then
:class:`~restartable.errors.StoreUnavailable` (exit 75) naming the store (redacted)
and how long it tried.

The policies in use:

* :data:`DEFAULT_BACKOFF` (``backoff=1.0``, cap 60 s): ``job.map``, ``job.amap``,
  ``job.files`` and ``each-file --backoff`` (one default for all four);
* :data:`STORE_BACKOFF` (50 ms, cap 5 s): a network store's operations and a
  transactional batch's retries, within the store's ``retry`` budget.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .errors import StoreUnavailable

if TYPE_CHECKING:
    import tenacity

__all__ = [
    "Backoff",
    "DEFAULT_BACKOFF",
    "DEFAULT_BACKOFF_SECONDS",
    "DEFAULT_RETRY_SECONDS",
    "STORE_BACKOFF",
    "call_with_retry",
    "one_line",
    "wait_backoff",
]

T = TypeVar("T")

log = logging.getLogger("restartable")

#: The ``backoff`` default of ``job.map``, ``job.amap``, ``job.files`` and ``each-file``.
DEFAULT_BACKOFF_SECONDS = 1.0
#: The longest wait between two attempts of an item or a file.
MAX_BACKOFF_SECONDS = 60.0


@dataclass(frozen=True)
class Backoff:
    """The wait after the ``n``-th failure: ``min(cap, backoff * 2**(n-1) * (1 + U(0, jitter)))``.

    ``backoff`` 0 means no wait at all. ``rng`` is for tests (a seeded ``random.Random``).
    """

    backoff: float
    cap: float = MAX_BACKOFF_SECONDS
    jitter: float = 0.5

    def nominal(self, failures: int) -> float:
        """The wait without jitter: tenacity's exponential, ``backoff * 2**(n-1)``, capped."""
        import tenacity  # at the first retry, not at `import restartable` (it pulls in asyncio)

        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, failures)
        return float(tenacity.wait_exponential(multiplier=self.backoff, max=self.cap)(state))

    def delay(self, failures: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1 for the first)."""
        nominal = self.nominal(failures)
        if nominal <= 0:
            return 0.0
        draw = (rng or random).uniform(0.0, self.jitter)
        return min(self.cap, nominal * (1.0 + draw))

    def wait(self) -> wait_backoff:
        """This policy as a tenacity wait strategy (``tenacity.Retrying(wait=policy.wait())``)."""
        return wait_backoff(self)


class wait_backoff:  # noqa: N801 - named like tenacity's own strategies
    """A tenacity wait strategy (any callable of the retry state) that waits :meth:`Backoff.delay`
    of the attempt number."""

    def __init__(self, policy: Backoff) -> None:
        self.policy = policy

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.policy.delay(retry_state.attempt_number)


#: Items, files and commands: ``backoff`` 1 s doubling, at most a minute.
DEFAULT_BACKOFF = Backoff(DEFAULT_BACKOFF_SECONDS)
#: A network store's operations and a transactional batch: 50 ms doubling, at most 5 s.
STORE_BACKOFF = Backoff(0.05, cap=5.0)


def one_line(exc: BaseException | str) -> str:
    """A driver's message on one line: libpq ends its own in a newline and indents hints
    ("\n\tIs the server running..."), which would split a log line or the CLI's error line."""
    return " ".join(str(exc).split())


#: Default budget for riding out a server restart, in seconds (URL option ``retry``).
DEFAULT_RETRY_SECONDS = 60.0


def call_with_retry(
    fn: Callable[[], T],
    *,
    seconds: float,
    transient: tuple[type[BaseException], ...],
    display: str,
    what: str,
    before_retry: Callable[[BaseException], None] | None = None,
    quick: bool = False,
) -> T:
    """Call ``fn()``; on a ``transient`` error retry with backoff for up to ``seconds``.

    ``before_retry`` runs before each new attempt (for example to reconnect, or to
    reload a record whose commit may have succeeded before the connection dropped).

    ``quick`` is for a read a person waits for (``status``, ``show``, a status page
    refresh, see ``open_store(retry=)``): the budget counts from the first attempt, not
    from its failure, so the call ends within ``seconds`` plus the attempt in flight;
    and the retries are logged at DEBUG, not as warnings, so the StoreUnavailable that
    ends the wait is the one line a terminal shows. A job's retries stay warnings: its
    log must say why it paused.
    """
    started = time.monotonic()
    try:  # the common case costs one call: tenacity is set up only after a failure
        return fn()
    except transient as exc:
        first = exc
    import tenacity

    level = logging.DEBUG if quick else logging.WARNING
    budget = seconds
    if quick:
        budget = seconds - (time.monotonic() - started)
        if budget <= 0:  # one attempt (a connect or read deadline) took the whole budget
            raise _gave_up(what, display, seconds, first, quick=True) from first

    def _log(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.log(
            level,
            "%s on %s failed (%s); retrying (attempt %d)",
            what,
            display,
            one_line(exc or ""),
            state.attempt_number,
        )
        if before_retry is not None and exc is not None:
            try:
                before_retry(exc)
            except transient:
                pass

    backoff = STORE_BACKOFF.wait()

    def _wait(state: tenacity.RetryCallState) -> float:
        delay = backoff(state)
        if quick:  # never sleep past the budget: the last attempt comes at its end, not seconds after
            delay = max(0.0, min(delay, started + seconds - time.monotonic()))
        return delay

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(budget),
        wait=_wait,
        retry=tenacity.retry_if_exception_type(transient),
        before_sleep=_log,
        reraise=True,
    )
    log.log(level, "%s on %s failed (%s); retrying for up to %gs", what, display, one_line(first), seconds)
    if before_retry is not None:
        try:
            before_retry(first)
        except transient:
            pass
    try:
        return retrying(fn)
    except transient as exc:
        raise _gave_up(what, display, seconds, exc, quick=quick) from exc


def _gave_up(what: str, display: str, seconds: float, exc: BaseException, *, quick: bool = False) -> StoreUnavailable:
    """The StoreUnavailable that ends a retry budget, naming how to raise it."""
    how = "the command's --retry SECONDS (open_store's retry=)" if quick else "the URL option ?retry=SECONDS"
    return StoreUnavailable(
        f"{what} failed: {display} stayed unreachable for {seconds:g}s ({one_line(exc)}); check that the "
        f"server is up, or raise the budget with {how}"
    )
