"""The Store contract as a model: a hypothesis state machine run against every store.

Three simulated runners, each with a Store object of its own on the same URL (like three
processes), and an operator with a fourth, interleave acquire (with and without
``steal_epoch``), save (running / completed / interrupted / failed, keeping or releasing
the lease), renew, mark, delete (with the current epoch, a stale one, or none) on two
runs of one job. After every step the store, read through the operator's object, must
agree with a small reference model of the contract in ``restartable.stores.base``:

* epochs never go back for a live record, and a record created again after a delete
  starts above every epoch the run ever had (a stale runner can never match it);
* a runner whose epoch is not the stored one is fenced: save, renew and mark raise
  Fenced and the store is unchanged (never two writers); renew also raises Fenced once
  the lease was released (a late renewal never takes a released lease again);
* a deleted run stays deleted: no stale save, renew or mark brings it back, and its
  markers and history are gone;
* acquire keeps ``completed``; RunLocked while another owner holds a live lease;
  the lease is free once released, expired, stolen with the right epoch, or retaken
  by its own owner.

Local stores (memory, sqlite, file) judge leases by ``Store.now``, which is patched to a
fake clock the machine advances, so expiry is modelled exactly (to the float). Server
stores use their own clock: there leases are long (never expire in a test) and only a
release or a steal frees them. Each example uses a fresh job name; the stores are
opened once per test function. A step now and then checks the state through a FRESH
store object too (the file store's write cache cannot hide anything).
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from restartable._checkpoint import COMPLETED, RUNNING, STATUSES, Checkpoint, Owner
from restartable.errors import Fenced, RunLocked
from restartable.stores import Store, open_store
from restartable.stores.base import EPOCH_STEP

RUNS = ("r0", "r1")
CURSORS = ("c0", "c1")
OWNERS = tuple(Owner(host=f"host-{i}", pid=100 + i, token=f"t{i}") for i in range(3))
SETTINGS = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
_JOBS = itertools.count()


class FakeClock:
    """The ``now`` of the local stores: whole seconds, so the model's sums are exact."""

    def __init__(self) -> None:
        self.t = 1_900_000_000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Env:
    """What one test function shares between its examples."""

    url: str
    local: bool
    runners: list[Store]
    operator: Store
    clock: FakeClock


@dataclass
class Run:
    """The model of one stored record."""

    epoch: int
    status: str
    owner: Owner
    lease_expires: float | None
    done: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    markers: dict[str, dict[str, int]] = field(default_factory=dict)
    #: (epoch, status, done) of the newest history entry, None when unknown (acquire may or
    #: may not add one: postgres does not).
    hist_top: tuple[int, str, int] | None = None


class StoreMachine(RuleBasedStateMachine):
    env: ClassVar[Env]

    def __init__(self) -> None:
        super().__init__()
        self.job = f"m{next(_JOBS)}-{uuid.uuid4().hex[:8]}"
        self.model: dict[str, Run | None] = dict.fromkeys(RUNS)
        #: (runner, run) -> the record that runner last got back: its view, possibly stale.
        self.held: dict[tuple[int, str], Checkpoint] = {}
        #: The highest epoch each run ever had, deleted records included.
        self.top_epoch: dict[str, int] = dict.fromkeys(RUNS, 0)
        self.steps = 0

    # -- the clock ------------------------------------------------------------------

    def now(self) -> float:
        # Server stores: leases are LONG_LEASE seconds on the server's clock, so by the
        # model's frozen clock a held lease never expires.
        return self.env.clock.t if self.env.local else 0.0

    @initialize()
    def start(self) -> None:
        self.env.clock.t += 1000.0  # far past every lease of the previous example

    @precondition(lambda self: self.env.local)
    @rule(seconds=st.sampled_from([1.0, 4.0, 5.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.env.clock.t += seconds

    def lease(self, short: int) -> float:
        return float(short) if self.env.local else 3600.0

    # -- the runners' operations ------------------------------------------------------

    @rule(
        who=st.integers(0, 2),
        run=st.sampled_from(RUNS),
        steal=st.sampled_from([None, "current", "stale"]),
        short=st.sampled_from([5, 10]),
    )
    def acquire(self, who: int, run: str, steal: str | None, short: int) -> None:
        m, now, lease = self.model[run], self.now(), self.lease(short)
        steal_epoch = None
        if steal is not None:
            steal_epoch = (m.epoch if steal == "current" else m.epoch - 1) if m else 1
        free = (
            m is None
            or m.lease_expires is None
            or m.lease_expires <= now
            or steal_epoch == m.epoch
            or m.owner == OWNERS[who]
        )
        store = self.env.runners[who]
        if not free:
            with pytest.raises(RunLocked):
                store.acquire(self.job, run, owner=OWNERS[who], lease_seconds=lease, steal_epoch=steal_epoch)
            return
        rec = store.acquire(self.job, run, owner=OWNERS[who], lease_seconds=lease, steal_epoch=steal_epoch)
        if m is None:
            # A new record starts above every epoch this run ever had (it was seeded from the clock).
            assert rec.epoch > self.top_epoch[run], f"new record's epoch {rec.epoch} <= old {self.top_epoch[run]}"
            m = self.model[run] = Run(rec.epoch, RUNNING, OWNERS[who], None)
        else:
            assert 0 < rec.epoch - m.epoch <= EPOCH_STEP, "acquire must raise the epoch by a step of 1 to EPOCH_STEP"
            m.epoch = rec.epoch
            m.status = COMPLETED if m.status == COMPLETED else RUNNING
            m.owner = OWNERS[who]
        m.lease_expires = now + lease
        m.hist_top = None
        self.top_epoch[run] = rec.epoch
        assert (rec.status, rec.owner, rec.done, rec.state) == (m.status, m.owner, m.done, m.state)
        self._check_lease(rec.lease_expires, m.lease_expires)
        self.held[(who, run)] = rec

    def _holder(self, data: st.DataObject) -> tuple[int, str, Checkpoint]:
        who, run = data.draw(st.sampled_from(sorted(self.held)), label="runner, run")
        return who, run, self.held[(who, run)]

    def _current(self, run: str, epoch: int) -> Run | None:
        """The model record when ``epoch`` is its epoch, else None (the caller must be fenced)."""
        m = self.model[run]
        return m if m is not None and m.epoch == epoch else None

    @precondition(lambda self: self.held)
    @rule(data=st.data(), status=st.sampled_from(STATUSES), release=st.booleans(), short=st.sampled_from([5, 10]))
    def save(self, data: st.DataObject, status: str, release: bool, short: int) -> None:
        who, run, held = self._holder(data)
        self.steps += 1
        record = held.replace(status=status, done=held.done + 1, state={"by": who, "step": self.steps})
        lease = None if release else self.lease(short)
        m = self._current(run, held.epoch)
        store = self.env.runners[who]
        if m is None:
            with pytest.raises(Fenced):
                store.save(record, lease_seconds=lease)
            return
        saved = store.save(record, lease_seconds=lease)
        m.status, m.done, m.state = status, record.done, record.state
        m.lease_expires = None if lease is None else self.now() + lease
        m.hist_top = (m.epoch, status, m.done)
        assert (saved.epoch, saved.status, saved.done, saved.state) == (m.epoch, status, m.done, m.state)
        self._check_lease(saved.lease_expires, m.lease_expires)
        self.held[(who, run)] = saved

    @precondition(lambda self: self.held)
    @rule(data=st.data(), short=st.sampled_from([5, 10]))
    def renew(self, data: st.DataObject, short: int) -> None:
        who, run, held = self._holder(data)
        lease = self.lease(short)
        m = self._current(run, held.epoch)
        store = self.env.runners[who]
        # A released lease is never renewed (a late renewal must not take it again).
        if m is None or m.lease_expires is None:
            with pytest.raises(Fenced):
                store.renew(self.job, run, epoch=held.epoch, lease_seconds=lease)
            return
        expires = store.renew(self.job, run, epoch=held.epoch, lease_seconds=lease)
        m.lease_expires = self.now() + lease
        self._check_lease(expires, m.lease_expires)

    @precondition(lambda self: self.held)
    @rule(
        data=st.data(),
        cursor=st.sampled_from(CURSORS),
        key=st.sampled_from(["k0", "k1", "k2"]),
        value=st.integers(0, 9),
    )
    def mark(self, data: st.DataObject, cursor: str, key: str, value: int) -> None:
        who, run, held = self._holder(data)
        m = self._current(run, held.epoch)
        store = self.env.runners[who]
        if m is None:
            with pytest.raises(Fenced):
                store.mark(self.job, run, cursor, key, value, epoch=held.epoch)
            return
        store.mark(self.job, run, cursor, key, value, epoch=held.epoch)
        m.markers.setdefault(cursor, {})[key] = value

    # -- the operator ----------------------------------------------------------------

    @rule(run=st.sampled_from(RUNS), which=st.sampled_from([None, "current", "stale", "ahead"]))
    def delete(self, run: str, which: str | None) -> None:
        m = self.model[run]
        epoch = None
        if which is not None:
            base = m.epoch if m else self.top_epoch[run]
            epoch = base + {"current": 0, "stale": -1, "ahead": 1}[which]
        expect = m is not None and (epoch is None or epoch == m.epoch)
        assert self.env.operator.delete(self.job, run, epoch=epoch) is expect
        if expect:
            self.model[run] = None

    # -- what must always hold ---------------------------------------------------------

    def _check_lease(self, got: float | None, want: float | None) -> None:
        if self.env.local:
            assert got == want, f"lease_expires {got!r}, the model says {want!r}"
        else:
            assert (got is None) == (want is None), f"lease_expires {got!r}, the model says {want!r}"

    def _agree(self, store: Store) -> None:
        for run in RUNS:
            m, rec = self.model[run], store.load(self.job, run)
            if m is None:
                assert rec is None, f"{run} was deleted (or never made) but loads: {rec!r}"
                assert store.history(self.job, run) == []
                assert all(store.markers(self.job, run, c) == {} for c in CURSORS)
                continue
            assert rec is not None, f"{run} is gone from the store; the model has epoch {m.epoch}"
            assert (rec.epoch, rec.status, rec.owner, rec.done, rec.state) == (
                m.epoch,
                m.status,
                m.owner,
                m.done,
                m.state,
            )
            self._check_lease(rec.lease_expires, m.lease_expires)
            for c in CURSORS:
                assert store.markers(self.job, run, c) == m.markers.get(c, {})
            if m.hist_top is not None:
                top = store.history(self.job, run, limit=1)
                assert [(h.epoch, h.status, h.done) for h in top] == [m.hist_top]
        assert [r.run for r in store.list_runs(self.job)] == [r for r in RUNS if self.model[r]]

    @invariant()
    def store_agrees_with_the_model(self) -> None:
        self._agree(self.env.operator)

    @invariant()
    def at_most_one_writer(self) -> None:
        for run in RUNS:
            m = self.model[run]
            writers = [w for (w, r), h in self.held.items() if r == run and m and h.epoch == m.epoch]
            assert len(writers) <= 1, f"runners {writers} all hold the current epoch of {run}"

    @rule()
    def a_fresh_store_agrees(self) -> None:
        """The state as a fresh store object (a new process) sees it: no cache hides anything."""
        with open_store(self.env.url) as fresh:
            if self.env.local:
                fresh.now = self.env.clock  # type: ignore[method-assign]
            self._agree(fresh)

    def teardown(self) -> None:
        for run in RUNS:  # a clean slate (the stores are shared by the examples)
            self.env.operator.delete(self.job, run)


@pytest.fixture
def env(store_url: str):
    clock = FakeClock()
    stores = [open_store(store_url) for _ in range(4)]
    local = stores[0].local or store_url.startswith("memory:")
    if local:
        for s in stores:
            s.now = clock  # type: ignore[method-assign]
    yield Env(store_url, local, stores[:3], stores[3], clock)
    for s in stores:
        s.close()


def test_the_store_follows_the_model(env: Env) -> None:
    machine = type("Machine", (StoreMachine,), {"env": env})
    run_state_machine_as_test(machine, settings=SETTINGS)
