"""A lease that proves progress: the stall watchdog behind ``Job(stall_timeout=...)``.

The heartbeat proves only that the process lives: a job whose main thread waits
forever (a silent connection, a deadlock, an item that never returns) keeps its lease
renewed, so no other runner can take the run over. Temporal's answer is the activity
heartbeat timeout; ours is this watchdog. While an iteration is active, every time
the loop comes back for more (once per chunk, batch, file or result; never per item)
the job stamps :meth:`StallWatchdog.progressed`. When no stamp came for
``stall_timeout`` seconds, the watchdog logs one line, dumps every thread's stack to
stderr (the place it hangs is the first thing an operator needs), stops renewing the
lease and ends the process with exit 75 (``os._exit``: the main thread is stuck, so
nothing it would run on the way out can be trusted to return). The checkpoint is the
last one saved; a commit in doubt is resolved by the next runner, which takes a new
epoch. On this machine the next runner takes over at once (the owner is provably
dead); elsewhere once the lease expires.

Time outside iterations (set-up before the first loop, work after the last) is not
judged: nothing is expected to finish there.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from .errors import EXIT_TEMPORARY

log = logging.getLogger("restartable")

__all__ = ["StallWatchdog"]


class StallWatchdog:
    """Ends the process with exit 75 when an active iteration makes no progress for ``timeout`` seconds."""

    def __init__(
        self,
        *,
        timeout: float,
        label: str,
        on_stall: Callable[[], None],
        exit: Callable[[int], None] = os._exit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self._label = label
        self._on_stall = on_stall
        self._exit = exit
        self._clock = clock
        self._last = clock()
        self._active = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="restartable-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def progressed(self) -> None:
        """The loop came back for more: a plain attribute store, cheap enough for every chunk."""
        self._last = self._clock()

    def enter(self) -> None:
        """An iteration started: its time counts from now."""
        self._last = self._clock()
        self._active += 1

    def leave(self) -> None:
        self._active = max(0, self._active - 1)

    def _loop(self) -> None:
        # Checking four times per timeout bounds the lateness to a quarter of it.
        interval = max(0.05, min(self.timeout / 4, 5.0))
        while not self._stop.wait(interval):
            if self.check():
                return

    def check(self) -> bool:
        """Judge now: end the process (through ``exit``) and return True when stalled."""
        if self._active and self._clock() - self._last > self.timeout:
            self._stalled()
            return True
        return False

    def _stalled(self) -> None:
        idle = self._clock() - self._last
        log.error(
            "%s: no item finished for %.0fs (stall_timeout=%gs): dumping every thread's stack and exiting %d so "
            "that another runner can take over; the last checkpoint is kept",
            self._label,
            idle,
            self.timeout,
            EXIT_TEMPORARY,
        )
        try:
            self._on_stall()  # stop renewing the lease before anything that could block
        except Exception as exc:  # noqa: BLE001 - exiting matters more than a clean stop
            log.error("%s: stopping the lease renewal failed: %s", self._label, exc)
        try:
            sys.stderr.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or not a real file: the exit still matters
            pass
        self._exit(EXIT_TEMPORARY)
