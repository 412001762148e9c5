"""Writing a lost checkpoint back can itself fail: fenced, or the store still unreachable.

A store that lost the run (Redis restarted without persistence) answers a renewal with
CheckpointLost, and the heartbeat writes the record back (``on_lost``, a ``restore``).
That restore is a compare-and-set of its own: another runner may have made the run
again (Fenced), or the store may still be unreachable (StoreUnavailable). Before, the
error escaped the heartbeat thread (a traceback on stderr, no more renewals, the job
never told); and in the job's own save and mark, a fenced restore did not mark the job
fenced. Now a fencing stops the job like any other, anything else is retried sooner.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from restartable import Job, _lease
from restartable._checkpoint import Owner
from restartable._job import run_context
from restartable.errors import CheckpointLost, Fenced, StoreUnavailable
from restartable.stores.memory import MemoryStore

OWNER = Owner(host="h", pid=1)


class _LosingStore(MemoryStore):
    """A memory store that reports the run lost on every renewal (like a Redis that restarted)."""

    def renew(self, job: str, run: str, *, epoch: int, lease_seconds: float) -> float:
        raise CheckpointLost(f"job {job!r} run {run!r}: THE CHECKPOINT WAS LOST (test)")


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """What escapes a thread (threading.excepthook): must stay empty."""
    seen: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    return seen


def _beat(store: MemoryStore, on_lost, on_fenced) -> _lease.Heartbeat:
    rec = store.acquire("job", "r", owner=OWNER, lease_seconds=30)
    return _lease.Heartbeat(
        store, "job", "r", epoch=rec.epoch, lease_seconds=0.3, on_fenced=on_fenced, on_lost=on_lost, label="test"
    )


def _wait_for(cond, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_a_fenced_write_back_stops_the_job_and_ends_the_heartbeat_quietly(thread_errors) -> None:
    fenced: list[Fenced] = []

    def on_lost(exc: CheckpointLost) -> None:
        raise Fenced("job 'job' run 'r': another runner made the run again (test)")

    beat = _beat(_LosingStore(), on_lost, fenced.append)
    beat.start()
    assert _wait_for(lambda: not beat._thread.is_alive()), "the heartbeat kept running after a fencing"
    assert len(fenced) == 1 and "another runner" in str(fenced[0])
    assert thread_errors == []


def test_a_failed_write_back_is_retried_sooner_and_the_heartbeat_goes_on(thread_errors, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="restartable")
    calls: list[float] = []
    fenced: list[Fenced] = []

    def on_lost(exc: CheckpointLost) -> None:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise StoreUnavailable("the store is still unreachable (test)")

    beat = _beat(_LosingStore(), on_lost, fenced.append)
    beat.start()
    try:
        assert _wait_for(lambda: len(calls) >= 4), f"only {len(calls)} write-backs"
        assert beat._thread.is_alive()
    finally:
        assert beat.stop(wait=10)
    assert fenced == [] and thread_errors == []
    assert "writing the lost checkpoint back failed" in caplog.text


class _LostThenTaken(MemoryStore):
    """The run is lost at the next save or mark, and another runner makes it again before our restore."""

    def save(self, record, *, lease_seconds):
        if getattr(self, "lose", False):
            raise CheckpointLost("THE CHECKPOINT WAS LOST (test)")
        return super().save(record, lease_seconds=lease_seconds)

    def mark(self, job, run, cursor, key, value, *, epoch):
        if getattr(self, "lose", False):
            raise CheckpointLost("THE CHECKPOINT WAS LOST (test)")
        return super().mark(job, run, cursor, key, value, epoch=epoch)

    def restore(self, record, *, lease_seconds):
        raise self._fenced(record.job, record.run, record.epoch, record.epoch + 1)


@pytest.mark.parametrize("via", ["save", "mark"])
def test_a_fenced_restore_in_the_job_marks_it_fenced(via: str) -> None:
    store = _LostThenTaken()
    with pytest.raises(Fenced):
        with Job("lost", store=store, progress=False, handle_signals=False) as job:
            store.lose = True
            if via == "save":
                job.checkpoint()
            else:
                run_context(job).mark("c", "k", 1)
    assert run_context(job).fenced is not None  # nothing more is saved: not even the release on the way out


def test_a_renewal_after_the_runners_own_release_ends_the_heartbeat_without_a_fencing(thread_errors) -> None:
    """The job releases its lease with its last save (interrupted, a stage boundary) a moment
    before it stops the heartbeat: a renewal in between is refused (it must not take the lease
    again), and that refusal is no fencing of the job."""
    store = MemoryStore()
    rec = store.acquire("job", "r", owner=OWNER, lease_seconds=30)
    store.save(rec, lease_seconds=None)  # the runner's own release
    fenced: list[Fenced] = []
    beat = _lease.Heartbeat(
        store,
        "job",
        "r",
        epoch=rec.epoch,
        lease_seconds=0.3,
        on_fenced=fenced.append,
        on_lost=lambda exc: None,
        label="test",
    )
    beat.start()
    assert _wait_for(lambda: not beat._thread.is_alive()), "the heartbeat kept renewing a released lease"
    assert fenced == [] and thread_errors == []
    assert store.load("job", "r").lease_expires is None
