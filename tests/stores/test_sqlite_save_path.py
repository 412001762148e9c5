"""The SQLite save path: one statement per save, a history row now and then, the same fencing.

Statements are counted with ``Connection.set_trace_callback`` (it reports every statement
SQLite runs for us, BEGIN and COMMIT included). Before the save path was reworked a save
ran 4.06 of them on average: BEGIN IMMEDIATE, the UPDATE, the history INSERT, COMMIT, and
the history prune every 16th save. Everything runs on real SQLite files under tmp_path.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time

import pytest

from restartable._checkpoint import COMPLETED, FAILED, INTERRUPTED, Owner
from restartable._sqlite.store import HISTORY_EVERY, SQLiteStore, history_every_option
from restartable.errors import ConfigError, Fenced
from restartable.stores import open_store

ME = Owner(host="host-a", pid=111)
OTHER = Owner(host="host-b", pid=222)


class Clock:
    """A store clock the test moves by hand."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def db(tmp_path):
    return tmp_path / "ckpt.db"


def _store(db, query: str = "") -> SQLiteStore:
    s = open_store(f"sqlite:///{db}{query}")
    assert isinstance(s, SQLiteStore)
    return s


def _traced(store: SQLiteStore) -> list[str]:
    seen: list[str] = []
    store._c.set_trace_callback(seen.append)
    return seen


def _rows(db, run: str = "r") -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT done, status FROM history WHERE job = 'job' AND run = ? ORDER BY seq", (run,)
        ).fetchall()


def test_a_save_is_one_statement_by_default(db):
    store = _store(db)
    store.now = Clock()  # the clock stands still: no second passes, no row is due
    rec = store.acquire("job", "r", owner=ME, lease_seconds=30)
    seen = _traced(store)
    for i in range(100):
        rec = store.save(rec.replace(done=i + 1), lease_seconds=30)
    assert len(seen) == 100, seen[:6]
    assert all(s.startswith("UPDATE runs SET") for s in seen)
    assert store.load("job", "r").done == 100
    store.close()


def test_history_every_1_is_the_old_save_in_one_transaction(db):
    store = _store(db, "?history_every=1")
    rec = store.acquire("job", "r", owner=ME, lease_seconds=30)
    seen = _traced(store)
    for i in range(32):
        rec = store.save(rec.replace(done=i + 1), lease_seconds=30)
    # BEGIN, UPDATE, INSERT, COMMIT per save, and a prune every 16 rows.
    assert len(seen) == 32 * 4 + 2
    assert seen[:4] == ["BEGIN IMMEDIATE", seen[1], seen[2], "COMMIT"]
    assert [d for d, _ in _rows(db)] == list(range(33))
    store.close()


def test_a_row_every_n_saves_and_always_for_the_last_save(db):
    store = _store(db, "?history_every=10")
    rec = store.acquire("job", "r", owner=ME, lease_seconds=30)
    for i in range(1, 26):
        rec = store.save(rec.replace(done=i), lease_seconds=30)
    assert [d for d, _ in _rows(db)] == [0, 10, 20]
    # The newest entry is always the checkpoint as it stands, row or no row.
    hist = store.history("job", "r", limit=3)
    assert [h.done for h in hist] == [25, 20, 10]
    rec = store.save(rec.replace(done=26, status=COMPLETED), lease_seconds=None)
    assert _rows(db)[-1] == (26, COMPLETED)
    assert [h.done for h in store.history("job", "r", limit=2)] == [26, 20]
    store.close()


@pytest.mark.parametrize("status", [FAILED, INTERRUPTED])
def test_a_failing_or_interrupted_save_always_writes_its_row(db, status):
    store = _store(db)
    store.now = Clock()
    rec = store.acquire("job", "r", owner=ME, lease_seconds=30)
    rec = store.save(rec.replace(done=5), lease_seconds=30)
    store.save(rec.replace(done=6, status=status), lease_seconds=None)
    assert _rows(db) == [(0, "running"), (6, status)]
    store.close()


def test_at_most_one_row_a_second_by_default(db):
    assert HISTORY_EVERY == 1.0
    store = _store(db)
    clock = store.now = Clock()
    rec = store.acquire("job", "r", owner=ME, lease_seconds=30)
    for i in range(1, 41):
        clock.t += 0.1  # ten saves a second
        rec = store.save(rec.replace(done=i), lease_seconds=30)
    # A row at acquire, then one each time a second has passed since the last row
    # (the float sums land a hair on either side of 10 steps).
    dones = [d for d, _ in _rows(db)]
    assert dones[0] == 0 and len(dones) in (4, 5), dones
    assert all(9 <= b - a <= 11 for a, b in itertools.pairwise(dones)), dones
    assert store.history("job", "r", limit=1)[0].done == 40
    clock.t -= 60  # a clock stepped back writes a row rather than none for a minute
    store.save(rec.replace(done=41), lease_seconds=30)
    assert _rows(db)[-1][0] == 41
    store.close()


def test_a_new_store_object_and_a_new_owner_each_start_with_a_row(db):
    a = _store(db, "?history_every=100")
    rec = a.acquire("job", "r", owner=ME, lease_seconds=30)
    rec = a.save(rec.replace(done=1), lease_seconds=30)
    a.close()
    b = _store(db, "?history_every=100")
    rec = b.save(rec.replace(done=2), lease_seconds=30)  # this object's first save of the run
    stolen = b.acquire("job", "r", owner=OTHER, lease_seconds=30, steal_epoch=rec.epoch)
    b.save(stolen.replace(done=3), lease_seconds=30)
    rows = _rows(db)
    assert [d for d, _ in rows] == [0, 2, 2]  # acquire, first save here, the takeover's acquire
    hist = b.history("job", "r", limit=5)
    assert [(h.done, h.epoch) for h in hist[:2]] == [(3, stolen.epoch), (2, stolen.epoch)]
    b.close()


def test_a_one_statement_save_is_fenced_exactly_as_before(db):
    store = _store(db)
    store.now = Clock()
    rec = store.acquire("job", "r", owner=ME, lease_seconds=30)
    rec = store.save(rec.replace(done=1), lease_seconds=30)
    thief = _store(db)  # another runner took the run over
    newer = thief.acquire("job", "r", owner=OTHER, lease_seconds=30, steal_epoch=rec.epoch)
    thief.close()
    seen = _traced(store)
    with pytest.raises(Fenced) as info:
        store.save(rec.replace(done=2, state={"stale": True}), lease_seconds=30)
    assert str(newer.epoch) in str(info.value)
    # The UPDATE matched no row, and only the stored epoch was read for the message.
    assert len(seen) == 2 and seen[1].startswith("SELECT epoch FROM runs")
    got = store.load("job", "r")
    assert (got.epoch, got.done, got.state) == (newer.epoch, 1, {})
    assert not store._c.in_transaction
    assert store.delete("job", "r")
    with pytest.raises(Fenced):
        store.save(newer.replace(done=3), lease_seconds=30)
    assert store.load("job", "r") is None
    store.close()


def test_a_one_statement_save_waits_for_another_writer_like_begin_immediate(db):
    store = _store(db)
    store.now = Clock()
    rec = store.acquire("job", "r", owner=ME, lease_seconds=30)
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    threading.Timer(0.4, lambda: other.execute("COMMIT")).start()
    t0 = time.monotonic()
    store.save(rec.replace(done=7), lease_seconds=30)  # waits busy_timeout, not SQLITE_BUSY
    assert time.monotonic() - t0 >= 0.3
    assert store.load("job", "r").done == 7
    other.close()
    store.close()


def test_inside_transaction_the_save_joins_it_and_rolls_back_with_it(db):
    store = _store(db)
    store.now = Clock()
    rec = store.acquire("job", "r", owner=ME, lease_seconds=30)
    with store.transaction() as conn:
        conn.execute("CREATE TABLE out (v INTEGER)")
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("INSERT INTO out VALUES (1)")
        store.save(rec.replace(done=9), lease_seconds=30)
        raise RuntimeError("the caller's block fails")
    assert store.load("job", "r").done == 0
    store.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, HISTORY_EVERY), ("1", 1), ("100", 100), ("1s", 1.0), ("250ms", 0.25), ("2m", 120.0)],
)
def test_history_every_option(value, expected):
    got = history_every_option(value, "sqlite:///x.db")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value", ["0", "1.5", "-1", "soon", ""])
def test_history_every_option_refuses_with_the_forms(value):
    with pytest.raises(ConfigError, match="whole number of saves"):
        history_every_option(value, "sqlite:///x.db")


def test_history_every_in_the_url_and_other_options_refused(db):
    s = _store(db, "?history_every=7")
    assert s.history_every == 7
    s.close()
    with pytest.raises(ConfigError, match="takes no query options but history_every"):
        open_store(f"sqlite:///{db}?foo=1")
