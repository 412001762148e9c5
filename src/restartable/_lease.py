"""One writer per run: taking the lease (waiting, or taking over a dead owner's) and renewing it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ._checkpoint import Checkpoint, Owner
from ._proc import owner_is_dead
from .errors import CheckpointLost, Fenced, RunLocked
from .stores.base import Store

log = logging.getLogger("restartable")


def acquire(
    store: Store, job: str, run: str, *, owner: Owner, lease_seconds: float, wait: float, label: str
) -> Checkpoint:
    """Take the run's lease, waiting up to ``wait`` seconds for a live holder.

    A holder that provably no longer exists (same boot and pid namespace, and its
    pid gone or reused) is taken over at once, so a job killed with SIGKILL resumes
    without waiting for its lease to expire. Raises RunLocked after waiting.
    """
    deadline = time.monotonic() + wait
    announced = False
    while True:
        try:
            return store.acquire(job, run, owner=owner, lease_seconds=lease_seconds)
        except RunLocked as exc:
            held = exc
        rec = store.load(job, run)
        if rec is not None and rec.owner is not None and owner_is_dead(rec.owner):
            log.info("%s: the previous runner (%s) is gone: taking its lease over", label, rec.owner.describe())
            try:
                return store.acquire(job, run, owner=owner, lease_seconds=lease_seconds, steal_epoch=rec.epoch)
            except RunLocked as exc:  # someone else was faster: judge the new holder
                held = exc
        left = deadline - time.monotonic()
        if left <= 0:
            if wait > 0:
                raise RunLocked(f"{held} (waited {wait:g}s)", owner=held.owner, lease_age=held.lease_age) from None
            raise held
        if not announced:
            log.info("%s: waiting up to %.0fs for the lease: %s", label, wait, held)
            announced = True
        time.sleep(min(left, 0.5, max(0.05, lease_seconds / 20)))


#: How long ``Heartbeat.stop`` waits for a renewal in flight. A store operation is bounded
#: by its own deadlines (PostgreSQL and Redis retry a transient failure for at most 60 s
#: by default, plus a 30 s socket timeout), so this is only a last resort against a hung one.
STOP_WAIT = 120.0
#: After this long, ``stop`` says what it is waiting for.
_STOP_NOTICE = 5.0


class Heartbeat:
    """Renews the lease every third of its length from a daemon thread.

    A renewal that fails because the store is briefly busy or unreachable is retried
    sooner; only a fencing answer (a newer epoch) stops the job. A store that lost
    the record (CheckpointLost) gets it written back by ``on_lost``; a write-back that
    is fenced (another runner made the run again) calls ``on_fenced``, one that fails
    otherwise is retried sooner, like a failed renewal.

    Ordering contract: once :meth:`stop` returns True, no renewal (nor ``on_lost``
    write-back) is in flight or will start, so the caller may release the lease
    without a late renewal extending it again.
    """

    def __init__(
        self,
        store: Store,
        job: str,
        run: str,
        *,
        epoch: int,
        lease_seconds: float,
        on_fenced: Callable[[Fenced], None],
        on_lost: Callable[[CheckpointLost], None],
        label: str,
    ) -> None:
        self._store = store
        self._job, self._run, self._epoch = job, run, epoch
        self._lease = lease_seconds
        self._on_fenced = on_fenced
        self._on_lost = on_lost
        self._label = label
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"restartable-lease-{job}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, wait: float | None = None) -> bool:
        """Stop renewing; wait (up to ``wait``, default :data:`STOP_WAIT`) for a renewal in flight.

        Returns True when the heartbeat thread has ended. Why wait that long: a renewal
        delayed by a store retry that lands after the caller released the lease would
        extend it again, and the next runner would wait for it or exit 75.
        """
        self._stop.set()
        if not self._thread.is_alive() or self._thread is threading.current_thread():
            return True
        limit = STOP_WAIT if wait is None else wait
        self._thread.join(timeout=min(limit, _STOP_NOTICE))
        if self._thread.is_alive() and limit > _STOP_NOTICE:
            log.warning(
                "%s: waiting up to %.0fs more for the lease renewal in flight before releasing the lease",
                self._label,
                limit - _STOP_NOTICE,
            )
            self._thread.join(timeout=limit - _STOP_NOTICE)
        if self._thread.is_alive():
            log.warning(
                "%s: a lease renewal is still in flight after %.0fs; if it lands after the release, the "
                "next runner waits up to %.0fs for the lease",
                self._label,
                limit,
                self._lease,
            )
            return False
        return True

    def _loop(self) -> None:
        interval = self._lease / 3
        while not self._stop.wait(interval):
            try:
                self._store.renew(self._job, self._run, epoch=self._epoch, lease_seconds=self._lease)
                interval = self._lease / 3
            except Fenced as exc:
                # After stop the job may have released: not a fencing. Nor is a refusal because
                # the lease was released (``released``): only this runner can save at its epoch,
                # so it released the lease itself (its last save) and is on its way out.
                if not self._stop.is_set() and not getattr(exc, "released", False):
                    self._on_fenced(exc)
                return
            except CheckpointLost as exc:
                if self._stop.is_set():  # writing the record back now could land after the release
                    return
                # The write-back is a compare-and-set of its own: it may find another runner
                # (Fenced), or the store still unreachable. Neither may end this thread
                # silently or with a traceback: a fencing stops the job, anything else is
                # retried sooner (the next renewal reports the loss again).
                try:
                    self._on_lost(exc)
                except Fenced as fenced:
                    if not self._stop.is_set():
                        self._on_fenced(fenced)
                    return
                except Exception as err:  # noqa: BLE001 - a busy store must not kill the heartbeat
                    if self._stop.is_set():
                        return
                    log.warning("%s: writing the lost checkpoint back failed (%s); retrying", self._label, err)
                    interval = max(0.05, min(1.0, self._lease / 10))
            except Exception as exc:  # noqa: BLE001 - a busy store must not kill the heartbeat
                if self._stop.is_set():
                    return
                log.warning("%s: lease renewal failed (%s); retrying", self._label, exc)
                interval = max(0.05, min(1.0, self._lease / 10))
