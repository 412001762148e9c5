"""Progress: a rich bar on a terminal, one log line per checkpoint elsewhere (Kubernetes logs)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

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


class Progress:
    """Shows one cursor's progress. ``update`` is cheap enough to call at every chunk."""

    def __init__(self, *, label: str, enabled: bool | None) -> None:
        self.label = label
        self.tty = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._task: Any = None
        self._last_draw = 0.0
        self._last_log = 0.0
        self._t0 = time.monotonic()
        self._done0 = 0

    def start(self, name: str, done: int, total: int | None) -> None:
        self._t0 = time.monotonic()
        self._done0 = done
        if not self.tty:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
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
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            auto_refresh=False,
        )
        self._bar.start()
        what = self.label if name == "0" else f"{self.label} [{name}]"
        self._task = self._bar.add_task(what, total=total, completed=done, rate="")

    def rate(self, done: int) -> float:
        elapsed = time.monotonic() - self._t0
        return (done - self._done0) / elapsed if elapsed > 0 else 0.0

    def update(self, done: int) -> None:
        if self._bar is None:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self._bar.update(self._task, completed=done, rate=f"{self.rate(done):,.0f}/s")
        self._bar.refresh()

    def checkpointed(self, name: str, done: int, total: int | None, *, force: bool = False) -> None:
        """A checkpoint was saved: without a terminal, say so in one line (throttled)."""
        if self._bar is not None:
            return
        where = self.label if name == "0" else f"{self.label} iteration {name!r}"
        now = time.monotonic()
        if not force and now - self._last_log < LOG_INTERVAL:
            return
        self._last_log = now
        rate = self.rate(done)
        if total:
            eta = (total - done) / rate if rate > 0 else None
            log.info(
                "%s: checkpoint at %s/%s items (%.1f%%), %s items/s, ETA %s",
                where,
                f"{done:,}",
                f"{total:,}",
                100.0 * done / total,
                f"{rate:,.0f}",
                human_duration(eta),
            )
        else:
            log.info("%s: checkpoint at %s items, %s items/s", where, f"{done:,}", f"{rate:,.0f}")

    def stop(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, rate=f"{self.rate(done):,.0f}/s")
            self._bar.refresh()
            self._bar.stop()
            self._bar = None
