"""Progress: a rich bar on a terminal, one log line per checkpoint elsewhere (Kubernetes logs).

Two words keep the two counts apart. The bar counts items **done** in this process
(``91,621/200,000 done``): processed, but not all saved yet. Log lines, ``restartable
status`` and ``show`` count items **saved** (``saved 73,958/200,000 items``): what the
last checkpoint holds, where a rerun resumes. Both use thousands separators.

While the bar is drawn, our log lines (a SIGINT or SIGTERM notice, a warning from the
heartbeat thread) are printed above it by the bar's own console, so a message always
starts on its own line and the bar is redrawn once below it, never broken mid-word.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

log = logging.getLogger("restartable")

#: Log lines (no terminal) come at most this often, however often checkpoints are.
LOG_INTERVAL = 1.0


def human_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def done_text(done: int, total: int | None) -> str:
    """The bar's count: ``91,621/200,000 done`` (items processed here, saved or not)."""
    return f"{done:,}/{total:,} done" if total is not None else f"{done:,} done"


def _stderr_handlers(stream: IO[str]) -> list[logging.StreamHandler[Any]]:
    """The handlers that would print our log records on ``stream`` (ours, and the root's via propagation)."""
    found: list[logging.StreamHandler[Any]] = []
    logger: logging.Logger | None = log
    while logger is not None:
        for h in logger.handlers:
            # A FileHandler is a StreamHandler too, but writes to its file: leave it alone.
            if type(h) is logging.StreamHandler and h.stream is stream:
                found.append(h)
        logger = logger.parent if logger.propagate else None
    return found


#: Columns the bar leaves free at the right of the terminal. A line that fills the last column
#: leaves the cursor waiting to wrap, so the ``^C`` a terminal echoes for Ctrl-C would start a
#: new line, and the next redraw would erase that line instead of the bar: the bar would stay
#: on screen twice, and a message written after it would begin mid-line.
MARGIN = 2


def _bar_console() -> Any:
    """A rich console on stderr, :data:`MARGIN` columns narrower than the terminal (followed as it resizes)."""
    from rich.console import Console, ConsoleDimensions

    class _Console(Console):
        @property  # type: ignore[misc]  # read-only here: nothing sets the bar's size
        def size(self) -> ConsoleDimensions:
            width, height = Console.size.fget(self)  # type: ignore[attr-defined]
            return ConsoleDimensions(max(20, width - MARGIN), height)

    return _Console(stderr=True)


class Progress:
    """Shows one cursor's progress. ``update`` is cheap enough to call at every chunk."""

    def __init__(self, *, label: str, enabled: bool | None) -> None:
        self.label = label
        self.tty = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._task: Any = None
        self._last_draw = 0.0
        self._last_log = 0.0
        #: The (iteration, count) of the last log line: a final save at the count a periodic
        #: save just logged (the loop ended right on a checkpoint) is not logged again.
        self._last_logged: tuple[str, int] | None = None
        self._rerouted: list[tuple[logging.StreamHandler[Any], IO[str]]] = []
        self._t0 = time.monotonic()
        self._done0 = 0
        self._total: int | None = None

    def start(self, name: str, done: int, total: int | None) -> None:
        self._t0 = time.monotonic()
        self._done0 = done
        self._total = total
        if not self.tty:
            return
        from rich.progress import (
            BarColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=_bar_console(),
            auto_refresh=False,
        )
        before = sys.stderr
        self._bar.start()
        if sys.stderr is not before:  # rich now prints stderr writes above the bar: route our log lines there
            for h in _stderr_handlers(before):
                self._rerouted.append((h, before))
                h.setStream(sys.stderr)
        what = self.label if name == "0" else f"{self.label} [{name}]"
        self._task = self._bar.add_task(what, total=total, completed=done, rate="", count=done_text(done, total))

    def rate(self, done: int) -> float:
        elapsed = time.monotonic() - self._t0
        return (done - self._done0) / elapsed if elapsed > 0 else 0.0

    def _draw(self, done: int) -> None:
        rate = f"{self.rate(done):,.0f}/s"
        self._bar.update(self._task, completed=done, rate=rate, count=done_text(done, self._total))
        self._bar.refresh()

    def update(self, done: int) -> None:
        if self._bar is None:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self._draw(done)

    def checkpointed(self, name: str, done: int, total: int | None, *, force: bool = False) -> None:
        """A checkpoint was saved: without a terminal, say so in one line (throttled, never twice)."""
        if self._bar is not None:
            return
        if self._last_logged == (name, done):
            return  # the same save point as the last line: the final save of a loop that ended on one
        where = self.label if name == "0" else f"{self.label} iteration {name!r}"
        now = time.monotonic()
        if not force and now - self._last_log < LOG_INTERVAL:
            return
        self._last_log = now
        self._last_logged = (name, done)
        rate = self.rate(done)
        if total:
            eta = (total - done) / rate if rate > 0 else None
            log.info(
                "%s: saved %s/%s items (%.1f%%), %s items/s, ETA %s",
                where,
                f"{done:,}",
                f"{total:,}",
                100.0 * done / total,
                f"{rate:,.0f}",
                human_duration(eta),
            )
        else:
            log.info("%s: saved %s items, %s items/s", where, f"{done:,}", f"{rate:,.0f}")

    def stop(self, done: int) -> None:
        """Draw the bar a last time and end it on its own line; log lines go to stderr again."""
        if self._bar is None:
            return
        try:
            self._draw(done)
        finally:
            bar, self._bar = self._bar, None
            bar.stop()  # the last frame stays, followed by a new line
            for h, stream in self._rerouted:
                h.setStream(stream)
            self._rerouted.clear()
