"""Clock faults for the stores that judge leases by this machine's clock (memory, sqlite, file).

A lease is a promise made on a wall clock, and wall clocks jump: NTP steps them, a VM
resumes from a snapshot, an operator sets the date. What must survive any jump:

* never two writers: a runner whose clock runs ahead may see a live lease as expired and
  take it over, and a holder whose clock runs behind writes lease expiries that are
  already past for everyone else; either way the takeover bumps the epoch, and from
  then on every save, renew and mark of the old holder raises Fenced and changes nothing;
* durations (the wait for a lease, the flock wait, the heartbeat's interval) are measured
  on ``time.monotonic``, so a jump makes them neither endless nor zero;
* a record created again after ``reset`` starts above every epoch the deleted one ever
  had, even when the wall clock, from which first epochs are seeded, went back.

Each runner gets its own Store object whose ``now`` (the store's clock hook) is this
machine's clock plus that runner's skew; the epoch seed is moved by patching
``time.time_ns``, the clock ``first_epoch`` reads.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from procs import store_url_for
from restartable import _lease
from restartable._checkpoint import COMPLETED, Owner
from restartable.errors import Fenced, RunLocked, StoreUnavailable
from restartable.stores import Store, open_store
from restartable.stores.base import EPOCH_STEP, first_epoch
from restartable.stores.file import FileStore

A = Owner(host="host-a", pid=111, token="a")
B = Owner(host="host-b", pid=222, token="b")
LEASE = 30.0
_RUNS = itertools.count()
YEAR = 365 * 86400.0


@pytest.fixture(params=["memory", "sqlite", "file"])
def url(request, tmp_path) -> str:
    return store_url_for(request.param, request, tmp_path)


@pytest.fixture(params=["memory", "sqlite", "file", "postgresql", "redis"])
def any_url(request, tmp_path) -> str:
    return store_url_for(request.param, request, tmp_path)


def _skewed(url: str, skew: float) -> Store:
    """A store object (one runner, as if in its own process) whose clock is off by ``skew`` seconds."""
    store = open_store(url)
    store.now = lambda: time.time() + skew  # type: ignore[method-assign]
    return store


def _writes(store: Store, rec, tag: str) -> dict[str, bool]:
    """Try every write a runner makes with ``rec``; which ones the store accepted."""
    out = {}
    for op, call in (
        ("renew", lambda: store.renew(rec.job, rec.run, epoch=rec.epoch, lease_seconds=LEASE)),
        ("mark", lambda: store.mark(rec.job, rec.run, "c", tag, tag, epoch=rec.epoch)),
        ("save", lambda: store.save(rec.replace(state={"by": tag}, done=len(tag)), lease_seconds=LEASE)),
    ):
        try:
            call()
            out[op] = True
        except Fenced:
            out[op] = False
    return out


SKEWS = st.one_of(
    st.sampled_from([0.0, LEASE - 1, LEASE + 1, -LEASE - 1, 3600.0, -3600.0, 30 * YEAR, -30 * YEAR]),
    st.floats(-YEAR, YEAR, allow_nan=False),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(holder_skew=SKEWS, taker_skew=SKEWS, holder_renews=st.booleans())
@example(holder_skew=0.0, taker_skew=3600.0, holder_renews=False)  # the taker's clock jumped forward
@example(holder_skew=-3600.0, taker_skew=0.0, holder_renews=True)  # the holder's clock jumped back
def test_a_clock_jump_allows_a_takeover_but_never_two_writers(url, holder_skew, taker_skew, holder_renews):
    run = f"r{next(_RUNS)}"
    holder, taker = _skewed(url, holder_skew), _skewed(url, taker_skew)
    try:
        mine = holder.acquire("job", run, owner=A, lease_seconds=LEASE)
        if holder_renews:  # with its clock behind, it writes an expiry already past for others
            holder.renew("job", run, epoch=mine.epoch, lease_seconds=LEASE)
        expires = holder.load("job", run).lease_expires
        try:
            theirs = taker.acquire("job", run, owner=B, lease_seconds=LEASE)
        except RunLocked:
            theirs = None
        # By the taker's clock the lease was free or live; a second of slack for the test's own pace.
        if taker.now() - expires > 1:
            assert theirs is not None, "an expired lease (by the taker's clock) was not taken over"
        elif expires - taker.now() > 1:
            assert theirs is None, "a live lease (by the taker's clock) was taken over"
        if theirs is None:
            assert _writes(holder, mine, "holder") == {"renew": True, "mark": True, "save": True}
            return
        assert 0 < theirs.epoch - mine.epoch <= EPOCH_STEP and theirs.owner == B
        # The old holder is fenced on every write, and the store keeps the new holder's record.
        assert _writes(holder, mine, "holder") == {"renew": False, "mark": False, "save": False}
        stored = taker.load("job", run)
        assert (stored.epoch, stored.owner, stored.state, stored.done) == (theirs.epoch, B, {}, 0)
        assert taker.markers("job", run, "c") == {}
        assert _writes(taker, theirs, "taker") == {"renew": True, "mark": True, "save": True}
        assert taker.load("job", run).state == {"by": "taker"}
    finally:
        holder.close()
        taker.close()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    takeovers=st.integers(0, 5),
    step_back_us=st.one_of(st.integers(0, 10), st.integers(0, 10**7), st.just(30 * 10**6 * 86400 * 365)),
    after=st.integers(0, 5),
)
@example(takeovers=0, step_back_us=0, after=0)  # the clock shows the first record's moment again
@example(takeovers=3, step_back_us=2, after=3)  # the new epochs climb through the old ones
def test_a_record_made_again_after_a_reset_never_meets_a_stale_epoch(
    any_url, monkeypatch, takeovers, step_back_us, after
):
    """``reset`` deletes a run; the wall clock steps back; the run is created again.

    Seeded from the clock alone, the new record's epochs (seed, seed+1, ...) could meet
    the epoch a stale runner of the deleted record still holds, and that runner's next
    save would overwrite the new run. They must all lie above it.
    """
    run = f"r{next(_RUNS)}"
    store = open_store(any_url)
    try:
        held = [store.acquire("job", run, owner=A, lease_seconds=LEASE)]
        for _ in range(takeovers):
            held.append(store.acquire("job", run, owner=A, lease_seconds=LEASE, steal_epoch=held[-1].epoch))
        assert store.delete("job", run)  # restartable reset
        # The clock steps back: first_epoch() now answers a moment at or before the first record's.
        seed_us = held[0].epoch - step_back_us
        monkeypatch.setattr(time, "time_ns", lambda: seed_us * 1000)
        new = [store.acquire("job", run, owner=B, lease_seconds=LEASE)]
        for _ in range(after):
            new.append(store.acquire("job", run, owner=B, lease_seconds=LEASE, steal_epoch=new[-1].epoch))
        monkeypatch.undo()
        stale = {r.epoch for r in held}
        for old in held:  # no stale runner of the deleted record writes to the new one
            with pytest.raises(Fenced):
                store.save(old.replace(state={"stale": True}), lease_seconds=LEASE)
                pytest.fail(
                    f"a stale runner of the deleted record (epoch {old.epoch}) saved over the new one "
                    f"(epochs {[r.epoch for r in new]})"
                )
        assert min(r.epoch for r in new) > max(stale), (
            f"the new record's epochs {[r.epoch for r in new]} reach the deleted one's {sorted(stale)}"
        )
        assert store.load("job", run).epoch == new[-1].epoch and store.load("job", run).state == {}
        # A fresh store object (another process) seeds above the deleted record too.
        assert store.delete("job", run)
        monkeypatch.setattr(time, "time_ns", lambda: seed_us * 1000)
        with open_store(any_url) as fresh:
            again = fresh.acquire("job", run, owner=B, lease_seconds=LEASE)
        monkeypatch.undo()
        assert again.epoch > new[-1].epoch
    finally:
        store.close()


def test_first_epoch_is_the_clock_in_microseconds_above_a_floor(monkeypatch):
    monkeypatch.setattr(time, "time_ns", lambda: 1_800_000_000_123_456_789)
    assert first_epoch() == 1_800_000_000_123_456
    assert first_epoch(1_800_000_000_123_455) == 1_800_000_000_123_456
    assert first_epoch(1_800_000_000_123_456) == 1_800_000_000_123_457
    assert first_epoch(1_900_000_000_000_000) == 1_900_000_000_000_001


# -- durations are monotonic ------------------------------------------------------------


class _JumpingClock:
    """``time.time`` that steps by ``step`` seconds on every call (backwards when negative)."""

    def __init__(self, step: float) -> None:
        self.t = time.time()
        self.step = step
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.t += self.step
            return self.t


@pytest.mark.parametrize("step", [-3600.0, 0.0])
def test_the_wait_for_a_lease_ends_on_time_whatever_the_wall_clock_does(url, monkeypatch, step):
    """``wait=`` is measured on the monotonic clock: a wall clock running backwards or
    standing still neither makes the wait endless nor cuts it short."""
    holder, waiter = open_store(url), open_store(url)
    try:
        holder.acquire("job", "r", owner=A, lease_seconds=3600)
        clock = _JumpingClock(step)
        waiter.now = clock  # type: ignore[method-assign]
        monkeypatch.setattr(time, "time", clock)
        t0 = time.monotonic()
        with pytest.raises(RunLocked):
            _lease.acquire(waiter, "job", "r", owner=B, lease_seconds=30, wait=0.6, label="test")
        elapsed = time.monotonic() - t0
        monkeypatch.undo()
        assert 0.55 <= elapsed < 10, f"waited {elapsed:.2f}s for wait=0.6"
    finally:
        holder.close()
        waiter.close()


@pytest.mark.parametrize("step", [-3600.0, 3600.0])
def test_the_flock_wait_ends_on_time_whatever_the_wall_clock_does(tmp_path, monkeypatch, step):
    store = FileStore(tmp_path / "ckpt", lock_timeout=0.5)
    rec = store.acquire("job", "r", owner=A, lease_seconds=30)
    # Another open file description holds the run's flock (as another process would).
    import fcntl

    fd = os.open(tmp_path / "ckpt" / "job" / "r.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        monkeypatch.setattr(time, "time", _JumpingClock(step))
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.save(rec, lease_seconds=30)
        elapsed = time.monotonic() - t0
        monkeypatch.undo()
        assert 0.45 <= elapsed < 10, f"the flock wait took {elapsed:.2f}s for lock_timeout=0.5"
    finally:
        os.close(fd)
        store.close()


@pytest.mark.parametrize("step", [-3600.0, 0.0])
def test_the_heartbeat_keeps_its_interval_whatever_the_wall_clock_does(monkeypatch, step):
    """The heartbeat sleeps on Event.wait (monotonic): renewals keep coming every third of the lease."""
    store = open_store("memory://")  # the interval is the heartbeat's, not the store's
    rec = store.acquire("job", "r", owner=A, lease_seconds=30)
    renewals: list[float] = []
    real_renew = store.renew

    def counting_renew(*args, **kwargs):
        renewals.append(time.monotonic())
        return real_renew(*args, **kwargs)

    store.renew = counting_renew  # type: ignore[method-assign]
    monkeypatch.setattr(time, "time", _JumpingClock(step))
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
    time.sleep(1.0)
    beat.stop()
    monkeypatch.undo()
    store.close()
    assert not fenced
    # Every 0.1 s for 1 s: about 10; a loaded machine may fall behind, never stop nor spin.
    assert 3 <= len(renewals) <= 12, f"{len(renewals)} renewals in 1s with a 0.3s lease"


def test_a_completed_run_stays_completed_when_a_runner_with_a_fast_clock_takes_it(url):
    holder, taker = _skewed(url, 0.0), _skewed(url, 3600.0)
    try:
        rec = holder.acquire("job", "done", owner=A, lease_seconds=LEASE)
        holder.save(rec.replace(status=COMPLETED), lease_seconds=LEASE)  # completed, lease still held
        theirs = taker.acquire("job", "done", owner=B, lease_seconds=LEASE)
        assert theirs.status == COMPLETED and 0 < theirs.epoch - rec.epoch <= EPOCH_STEP
    finally:
        holder.close()
        taker.close()
