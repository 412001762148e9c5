"""SIGTERM and SIGINT: finish the item in flight, then checkpoint and stop.

Handlers can only be installed from the main thread (Python's rule); a job started
from another thread runs without them and says so. The first signal asks the job
to stop; a second one exits at once (``os._exit(128 + signum)``): every checkpoint
write is atomic, so an abrupt exit loses at most the work since the last one.
"""

from __future__ import annotations

import logging
import os
import select
import signal
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
            _exit_now(f"restartable: second {name}: exiting at once\n", 128 + signum)
        self.received = signum
        log.warning("%s: %s received: finishing the item in flight, then checkpointing", self._label, name)
        self._on_signal(signum)


def _exit_now(message: str, code: int) -> None:
    """Say ``message`` on fd 2 if possible, then ``os._exit(code)`` whatever happens.

    Not ``sys.stderr.write``: this handler runs between two bytecodes of whatever the
    main thread was doing, often a write to ``sys.stderr`` itself (the first signal's
    log line, a progress bar), and re-entering its ``BufferedWriter`` raises
    RuntimeError ("reentrant call"), which would propagate out of the handler instead
    of exiting. ``os.write`` takes no Python-level lock; a failure to write (stderr
    closed) must not prevent the exit either, nor a full pipe nobody reads (a blocking
    write would hang: the message is skipped unless fd 2 is writable now).
    """
    try:
        if select.select([], [2], [], 0)[1]:
            os.write(2, message.encode("utf-8", "replace"))
    except BaseException:  # noqa: BLE001 - nothing may stand between a second signal and the exit
        pass
    finally:
        os._exit(code)
