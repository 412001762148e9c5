"""The store contract (restartable.stores.base), run against every store."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading
import time
import uuid
from decimal import Decimal

import pytest

from restartable._checkpoint import COMPLETED, FAILED, INTERRUPTED, RUNNING, Owner
from restartable.errors import Fenced, RunLocked
from restartable.stores import open_store
from restartable.stores.base import EPOCH_STEP, HISTORY_LIMIT

ME = Owner(host="host-a", pid=111)
OTHER = Owner(host="host-b", pid=222)


def test_load_missing_is_none(store):
    assert store.load("job", "run") is None
    assert store.list_runs() == []


def test_acquire_creates_running_record(store):
    before = store.now()
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    assert rec.status == RUNNING and rec.owner == ME
    assert rec.epoch > 1_600_000_000_000_000  # seeded from the clock (µs)
    assert rec.lease_expires is not None and rec.lease_expires >= before + 29
    loaded = store.load("job", "r1")
    assert loaded is not None and loaded.epoch == rec.epoch and loaded.owner == ME
    assert loaded.started == pytest.approx(rec.started, abs=1)


def test_live_lease_refuses_second_runner(store):
    store.acquire("job", "r1", owner=ME, lease_seconds=30)
    with pytest.raises(RunLocked) as info:
        store.acquire("job", "r1", owner=OTHER, lease_seconds=30)
    assert info.value.owner == ME
    assert info.value.lease_age is not None and info.value.lease_age < 5
    assert "host-a" in str(info.value)


def test_expired_lease_is_taken_over_with_a_new_epoch(store):
    first = store.acquire("job", "r1", owner=ME, lease_seconds=0.3)
    time.sleep(0.5)
    second = store.acquire("job", "r1", owner=OTHER, lease_seconds=30)
    assert 0 < second.epoch - first.epoch <= EPOCH_STEP and second.owner == OTHER


def test_steal_epoch_takes_over_at_once(store):
    first = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    with pytest.raises(RunLocked):
        store.acquire("job", "r1", owner=OTHER, lease_seconds=30, steal_epoch=first.epoch - 1)
    second = store.acquire("job", "r1", owner=OTHER, lease_seconds=30, steal_epoch=first.epoch)
    assert 0 < second.epoch - first.epoch <= EPOCH_STEP


def test_save_round_trips_typed_values(store):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    state = {
        "rows": 3,
        "ratio": 0.5,
        "tags": ["a", "b"],
        "key": (1, "x"),
        "when": dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC),
        "day": dt.date(2026, 11, 27),
        "amount": Decimal("12.50"),
        "id": uuid.UUID(int=7),
        "blob": b"\x00\xff",
        "$weird": {"$tuple": 1},
        "ünïcode": "✓",
    }
    positions = {"0": {"offset": 10, "finished": False, "key": (5, dt.date(2026, 1, 1))}}
    saved = store.save(rec.replace(state=state, positions=positions, done=10, failed=1), lease_seconds=30)
    assert saved.done == 10
    loaded = store.load("job", "r1")
    assert loaded.state == state
    assert loaded.positions == positions
    assert (loaded.done, loaded.failed, loaded.status) == (10, 1, RUNNING)
    assert loaded.updated >= rec.updated


def test_stale_save_is_fenced_and_newer_checkpoint_survives(store):
    old = store.acquire("job", "r1", owner=ME, lease_seconds=0.2)
    time.sleep(0.4)
    new = store.acquire("job", "r1", owner=OTHER, lease_seconds=30)
    store.save(new.replace(done=50, state={"by": "new"}), lease_seconds=30)
    with pytest.raises(Fenced):
        store.save(old.replace(done=7, state={"by": "old"}), lease_seconds=30)
    with pytest.raises(Fenced):
        store.renew("job", "r1", epoch=old.epoch, lease_seconds=30)
    loaded = store.load("job", "r1")
    assert loaded.done == 50 and loaded.state == {"by": "new"} and loaded.epoch == new.epoch


def test_fenced_is_not_an_exception():
    assert not issubclass(Fenced, Exception)


def test_release_frees_the_lease(store):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    saved = store.save(rec.replace(status=INTERRUPTED), lease_seconds=None)
    assert saved.lease_expires is None
    assert store.load("job", "r1").lease_expires is None
    again = store.acquire("job", "r1", owner=OTHER, lease_seconds=30)
    assert 0 < again.epoch - rec.epoch <= EPOCH_STEP and again.status == RUNNING


def test_renew_extends_the_lease(store):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=1)
    expiry = store.renew("job", "r1", epoch=rec.epoch, lease_seconds=60)
    assert expiry >= store.now() + 50
    loaded = store.load("job", "r1")
    assert loaded.lease_expires == pytest.approx(expiry, abs=0.01)
    with pytest.raises(RunLocked):
        store.acquire("job", "r1", owner=OTHER, lease_seconds=30)


@pytest.mark.parametrize("status", [INTERRUPTED, COMPLETED, FAILED])
def test_renew_after_the_release_is_refused_and_leaves_the_lease_free(store, status):
    """A renewal delayed past the release (the heartbeat's last one, held up by a retry)
    must not take the lease again: the next runner would wait a whole lease for nothing."""
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    store.save(rec.replace(status=status), lease_seconds=None)
    with pytest.raises(Fenced, match="released"):
        store.renew("job", "r1", epoch=rec.epoch, lease_seconds=30)
    assert store.load("job", "r1").lease_expires is None
    # The lease stays free: another runner takes it at once.
    again = store.acquire("job", "r1", owner=OTHER, lease_seconds=30)
    assert 0 < again.epoch - rec.epoch <= EPOCH_STEP and again.owner == OTHER
    # Renewing the new holder's lease works; the old epoch is fenced as usual.
    assert store.renew("job", "r1", epoch=again.epoch, lease_seconds=30) >= store.now() + 25
    with pytest.raises(Fenced):
        store.renew("job", "r1", epoch=rec.epoch, lease_seconds=30)


def test_renew_of_an_expired_lease_nobody_took_still_works(store):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=0.2)
    time.sleep(0.4)
    assert store.renew("job", "r1", epoch=rec.epoch, lease_seconds=30) >= store.now() + 25


def test_renew_of_a_deleted_record_is_fenced(store):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    assert store.delete("job", "r1")
    with pytest.raises(Fenced):
        store.renew("job", "r1", epoch=rec.epoch, lease_seconds=30)
    with pytest.raises(Fenced):
        store.save(rec, lease_seconds=30)
    # A new record never reuses the old epoch, so the stale runner stays fenced.
    new = store.acquire("job", "r1", owner=OTHER, lease_seconds=30)
    assert new.epoch != rec.epoch
    with pytest.raises(Fenced):
        store.save(rec, lease_seconds=30)


def test_completed_stays_completed_on_acquire(store):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    store.save(rec.replace(status=COMPLETED), lease_seconds=None)
    again = store.acquire("job", "r1", owner=OTHER, lease_seconds=30)
    assert again.status == COMPLETED


def test_delete_with_epoch_is_conditional(store):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    assert not store.delete("job", "r1", epoch=rec.epoch + 5)
    assert store.load("job", "r1") is not None
    assert store.delete("job", "r1", epoch=rec.epoch)
    assert store.load("job", "r1") is None
    assert not store.delete("job", "r1")


def test_list_runs_sorted_and_filtered(store):
    for job, run in [("b", "2"), ("a", "9"), ("b", "1")]:
        store.acquire(job, run, owner=ME, lease_seconds=30)
    assert [(r.job, r.run) for r in store.list_runs()] == [("a", "9"), ("b", "1"), ("b", "2")]
    assert [(r.job, r.run) for r in store.list_runs("b")] == [("b", "1"), ("b", "2")]


def test_history_newest_first_and_capped(store):
    if hasattr(store, "history_every"):  # SQLite samples its history (at most a row a second): ask for every save
        store.history_every = 1
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    for i in range(HISTORY_LIMIT + 5):
        rec = store.save(rec.replace(done=i), lease_seconds=30)
    hist = store.history("job", "r1", limit=1000)
    assert 1 <= len(hist) <= HISTORY_LIMIT + 1
    assert hist[0].done == HISTORY_LIMIT + 4
    assert [h.done for h in hist[:3]] == [HISTORY_LIMIT + 4, HISTORY_LIMIT + 3, HISTORY_LIMIT + 2]
    assert store.history("job", "r1", limit=2)[1].done == HISTORY_LIMIT + 3
    assert store.history("job", "nope") == []


def test_cleanup_removes_only_old_completed_runs(store):
    for run, status in [("done", COMPLETED), ("failed", FAILED), ("stopped", INTERRUPTED), ("live", RUNNING)]:
        rec = store.acquire("job", run, owner=ME, lease_seconds=30)
        store.save(rec.replace(status=status), lease_seconds=None if status != RUNNING else 30)
    assert store.cleanup(older_than=3600) == []
    removed = store.cleanup(older_than=0)
    assert [r.run for r in removed] == ["done"]
    assert sorted(r.run for r in store.list_runs()) == ["failed", "live", "stopped"]


def test_markers_are_fenced(store):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    try:
        store.mark("job", "r1", "files", "a.csv", {"size": 3}, epoch=rec.epoch)
    except NotImplementedError:
        pytest.skip("markers are not implemented by this store yet")
    store.mark("job", "r1", "files", "b.csv", {"size": 4}, epoch=rec.epoch)
    assert store.markers("job", "r1", "files") == {"a.csv": {"size": 3}, "b.csv": {"size": 4}}
    assert store.markers("job", "r1", "other") == {}
    with pytest.raises(Fenced):
        store.mark("job", "r1", "files", "c.csv", 1, epoch=rec.epoch - 1)
    store.delete("job", "r1")
    assert store.markers("job", "r1", "files") == {}


def test_threads_share_a_store(store):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    errors: list[BaseException] = []

    def renewer() -> None:
        try:
            for _ in range(30):
                store.renew("job", "r1", epoch=rec.epoch, lease_seconds=30)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=renewer)
    t.start()
    cur = rec
    for i in range(30):
        cur = store.save(cur.replace(done=i), lease_seconds=30)
    t.join()
    assert errors == []
    assert store.load("job", "r1").done == 29


def test_survives_reopen(store_url):
    if store_url.startswith("memory://"):
        pytest.skip("the memory store keeps nothing across processes by design")
    with open_store(store_url) as s:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        s.save(rec.replace(done=3, state={"k": [1, 2]}), lease_seconds=None)
    with open_store(store_url) as s:
        loaded = s.load("job", "r1")
        assert loaded.done == 3 and loaded.state == {"k": [1, 2]}


def _race(url: str, barrier, results, idx: int) -> None:
    from restartable.errors import RunLocked as _RunLocked
    from restartable.stores import open_store as _open

    with _open(url) as s:
        barrier.wait()
        try:
            s.acquire("job", "race", owner=Owner(host="h", pid=1000 + idx), lease_seconds=30)
            results.put("won")
        except _RunLocked:
            results.put("locked")


def test_processes_racing_for_a_lease_one_wins(store_url):
    if store_url.startswith("memory://"):
        pytest.skip("the memory store is per process")
    ctx = multiprocessing.get_context("spawn")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(store_url, barrier, results, i)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in range(n))
    assert outcomes == ["locked"] * (n - 1) + ["won"]


def test_display_never_shows_a_password(store_url):
    with open_store(store_url) as s:
        rest = s.display.split("://", 1)[1]
        if "@" in rest:
            userinfo = rest.split("@", 1)[0]
            assert ":" not in userinfo or userinfo.endswith(":***")
