"""SIGTERM and SIGINT: finish the item in flight, then checkpoint and stop.

Handlers can only be installed from the main thread (Python's rule); a job started
from another thread runs without them and says so. The first signal asks the job
to stop; a second one exits at once (``os._exit(128 + signum)``): every checkpoint
write is atomic, so an abrupt exit loses at most the work since the last one.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("restartable")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalGuard:
    """Installs handlers for the lifetime of a job and restores the previous ones."""

    def __init__(self, on_signal: Callable[[int], None], label: str) -> None:
        self._on_signal = on_signal
        self._label = label
        self._previous: dict[int, Any] = {}
        self.received: int | None = None

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            log.warning("%s runs outside the main thread: SIGTERM/SIGINT are not handled by restartable", self._label)
            return False
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return True

    def restore(self) -> None:
        for sig, prev in self._previous.items():
            try:
                signal.signal(sig, prev)
            except (ValueError, TypeError):  # not main thread any more, or a None handler
                pass
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            sys.stderr.write(f"restartable: second {name}: exiting at once\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.received = signum
        log.warning("%s: %s received: finishing the item in flight, then checkpointing", self._label, name)
        self._on_signal(signum)
