"""Retrying a network store's operations through a brief outage (tenacity).

Used by the PostgreSQL and Redis stores. An operation is retried with exponential
backoff and jitter while its error is transient, for at most ``seconds``; then it
fails with :class:`~restartable.errors.StoreUnavailable` (exit 75), which names the
store (redacted) and how long it tried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from ..errors import StoreUnavailable

T = TypeVar("T")

log = logging.getLogger("restartable")


def one_line(exc: BaseException | str) -> str:
    """A driver's message on one line: libpq ends its own in a newline and indents hints
    ("\n\tIs the server running..."), which would split a log line or the CLI's error line."""
    return " ".join(str(exc).split())


def _wait() -> object:
    """Exponential backoff with jitter from 50 ms up to 5 s (tenacity 9.2 renamed ``initial``)."""
    import inspect

    import tenacity

    if "multiplier" in inspect.signature(tenacity.wait_exponential_jitter.__init__).parameters:
        return tenacity.wait_exponential_jitter(multiplier=0.05, max=5.0, jitter=0.1)
    return tenacity.wait_exponential_jitter(initial=0.05, max=5.0, jitter=0.1)

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
) -> T:
    """Call ``fn()``; on a ``transient`` error retry with backoff for up to ``seconds``.

    ``before_retry`` runs before each new attempt (for example to reconnect, or to
    reload a record whose commit may have succeeded before the connection dropped).
    """
    try:  # the common case costs one call: tenacity is set up only after a failure
        return fn()
    except transient as exc:
        first = exc
    import tenacity

    def _log(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s on %s failed (%s); retrying (attempt %d)", what, display, one_line(exc or ""),
                    state.attempt_number)
        if before_retry is not None and exc is not None:
            try:
                before_retry(exc)
            except transient:
                pass

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(seconds),
        wait=_wait(),
        retry=tenacity.retry_if_exception_type(transient),
        before_sleep=_log,
        reraise=True,
    )
    log.warning("%s on %s failed (%s); retrying for up to %gs", what, display, one_line(first), seconds)
    if before_retry is not None:
        try:
            before_retry(first)
        except transient:
            pass
    try:
        return retrying(fn)
    except transient as exc:
        raise StoreUnavailable(
            f"{what} failed: {display} stayed unreachable for {seconds:g}s ({one_line(exc)}); check that the "
            "server is up, or raise the budget with the URL option ?retry=SECONDS"
        ) from exc
