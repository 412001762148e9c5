"""Two runners of one run: one writer at a time, takeover of a stopped or dead runner, fencing.

Real worker processes (``procs.py``) on real SQLite files and file stores:

* started at the same instant, exactly one runs; the other exits 75 naming the owner;
* a runner frozen with SIGSTOP past its lease is taken over by a second one, and when
  it is continued it is fenced: it exits 75 and never writes after the takeover;
* a runner killed with SIGKILL is taken over at once on the same machine, whatever
  its lease length (dead-owner detection), reaped or still a zombie.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procs import Spawner, Worker, local_store_url, read_log, wait_items, write_worker
from restartable._checkpoint import COMPLETED, RUNNING
from restartable.stores import open_store

JOB = "runners"
RUN = "r1"
STORES = ["sqlite", "file"]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    with Spawner(write_worker(tmp_path)) as s:
        yield s


def _cfg(url: str, log: Path, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "store": url,
        "job": JOB,
        "run": RUN,
        "log": str(log),
        "n": 30,
        "every": 2,
        "sleep": 0.05,
        "lease_seconds": 60,
    }
    cfg.update(extra)
    return cfg


def _load(url: str):
    with open_store(url) as store:
        return store.load(JOB, RUN)


def _started(w: Worker) -> bool:
    return any(line.startswith("started") for line in w.seen)


@pytest.mark.parametrize("store_kind", STORES)
def test_two_runners_at_once_exactly_one_runs(spawn: Spawner, tmp_path: Path, store_kind: str) -> None:
    for attempt in range(3):
        # A fresh store each time: the two processes also race to create it.
        root = tmp_path / f"round{attempt}"
        root.mkdir()
        url = local_store_url(store_kind, root)
        log = root / "items.log"
        cfg = _cfg(url, log, n=20, handshake=True)
        a, b = spawn(cfg), spawn(cfg)
        a.expect("ready")
        b.expect("ready")
        a.go()
        b.go()
        rc = {a: a.finish(), b: b.finish()}
        winners = [w for w in (a, b) if _started(w)]
        assert len(winners) == 1, f"round {attempt}: {len(winners)} runners started; " + "\n".join(
            f"pid {w.pid} exit {rc[w]}: {w.seen}\n{w.stderr}" for w in (a, b)
        )
        winner = winners[0]
        loser = b if winner is a else a
        assert rc[winner] == 0, winner.stderr
        assert rc[loser] == 75, loser.stderr
        # The refusal names the owner (pid and host) and the age of its lease.
        assert f"pid {winner.pid} on host {socket.gethostname()}" in loser.stderr, loser.stderr
        assert re.search(r"lease renewed \d+\.\ds ago", loser.stderr), loser.stderr
        assert "Traceback" not in loser.stderr, loser.stderr
        # Only the winner processed items: each exactly once.
        counts = Counter(read_log(log)[0].items)
        assert sorted(counts) == list(range(cfg["n"])) and set(counts.values()) == {1}, counts


def _writes_blocked(store_kind: str, root: Path) -> bool:
    """Whether a (stopped) process holds the store's write lock for our run right now."""
    if store_kind == "sqlite":
        conn = sqlite3.connect(root / "ckpt.db", timeout=0.2, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
    fd = os.open(root / "ckpt" / JOB / f"{RUN}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _freeze(w: Worker, store_kind: str, root: Path) -> None:
    """SIGSTOP ``w`` outside a write: a process frozen inside one would block every writer
    (SQLite's write lock, the file store's flock) until the lock timeout, which is not
    what this test is about."""
    for _ in range(50):
        w.signal(signal.SIGSTOP)
        time.sleep(0.02)
        if not _writes_blocked(store_kind, root):
            return
        w.signal(signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("could not freeze the runner outside a write")


@pytest.mark.parametrize("store_kind", STORES)
def test_stopped_runner_is_taken_over_then_fenced(spawn: Spawner, tmp_path: Path, store_kind: str) -> None:
    url = local_store_url(store_kind, tmp_path)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = spawn(_cfg(url, log_a, n=40, lease_seconds=1))
    epoch_a = int(a.started()["epoch"])
    wait_items(log_a, 4)
    _freeze(a, store_kind, tmp_path)
    done_before = len(read_log(log_a)[0].items)

    # B waits for A's lease (1 s) to expire: A's process exists, so it is not taken over early.
    b = spawn(_cfg(url, log_b, n=40, lease_seconds=5, wait=10))
    info_b = b.started(timeout=20)
    epoch_b = int(info_b["epoch"])
    assert epoch_b > epoch_a
    took_over_at = int(info_b["done"])
    assert took_over_at <= done_before

    a.signal(signal.SIGCONT)  # A wakes up while B runs: its next renew or save is fenced
    rc_a = a.finish()
    assert rc_a == 75, a.stderr
    assert "fenced off" in a.stderr, a.stderr
    assert "Traceback" not in a.stderr, a.stderr
    assert b.finish() == 0, b.stderr
    assert "waiting up to" in b.stderr, b.stderr

    # B's checkpoint survives, and completes the run.
    rec = _load(url)
    assert rec is not None and rec.status == COMPLETED and rec.done == 40, rec
    assert rec.epoch == epoch_b and rec.owner is not None and rec.owner.pid == b.pid, rec
    # A never wrote after B took over: in the history (oldest first) no save of A's epoch
    # follows B's first entry.
    with open_store(url) as store:
        history = list(reversed(store.history(JOB, RUN, limit=50)))
    epochs = [h.epoch for h in history]
    assert epoch_b in epochs, epochs
    first_b = epochs.index(epoch_b)
    assert all(e == epoch_b for e in epochs[first_b:]), f"a stale save after the takeover: {epochs}"
    # Every item was processed; B resumed at A's last checkpoint.
    items_b = read_log(log_b)[0].items
    assert items_b[:1] == [took_over_at]
    assert set(read_log(log_a)[0].items) | set(items_b) == set(range(40))


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
@pytest.mark.parametrize("store_kind", STORES)
def test_killed_runner_is_taken_over_at_once(spawn: Spawner, tmp_path: Path, store_kind: str, reaped: bool) -> None:
    url = local_store_url(store_kind, tmp_path)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = spawn(_cfg(url, log_a, lease_seconds=60))
    a.started()
    wait_items(log_a, 3)
    a.signal(signal.SIGKILL)
    if reaped:
        assert a.finish() == -signal.SIGKILL
    else:
        # Not yet reaped by its parent (this test): a zombie has done all it will ever do.
        deadline = time.monotonic() + 10
        while not _is_zombie(a.pid):
            assert time.monotonic() < deadline, "the killed runner never became a zombie"
            time.sleep(0.01)
    rec = _load(url)
    assert rec is not None and rec.status == RUNNING and rec.owner is not None and rec.owner.pid == a.pid
    assert rec.lease_expires is not None and rec.lease_expires > time.time() + 30, "the lease is still held"

    # wait=0: had B needed the lease to expire, it would exit 75 at once.
    b = spawn(_cfg(url, log_b, lease_seconds=60, wait=0))
    info = b.started()
    assert int(info["done"]) == rec.done
    assert b.finish() == 0, b.stderr
    assert f"the previous runner (pid {a.pid} on host {socket.gethostname()}) is gone" in b.stderr, b.stderr
    if not reaped:
        assert a.finish() == -signal.SIGKILL
    final = _load(url)
    assert final is not None and final.status == COMPLETED and final.done == 30, final
    assert set(read_log(log_a)[0].items) | set(read_log(log_b)[0].items) == set(range(30))


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] == "Z"


@pytest.mark.parametrize("store_kind", STORES)
def test_waiting_runner_finds_the_run_completed(spawn: Spawner, tmp_path: Path, store_kind: str) -> None:
    """A runner that waited for the lease while the holder finished does no work and exits 0."""
    url = local_store_url(store_kind, tmp_path)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    b = spawn(_cfg(url, log_b, n=10, wait=20, handshake=True))
    b.expect("ready")  # imported: it asks for the lease at once when told to go
    a = spawn(_cfg(url, log_a, n=10, sleep=0.15))
    a.started()
    b.go()
    info = b.started(timeout=30)
    assert a.finish() == 0, a.stderr
    assert b.finish() == 0, b.stderr
    assert info["completed"] == "True", f"{info}; A's stderr:\n{a.stderr}\nB's stderr:\n{b.stderr}"
    assert "finished yielded=0" in b.seen and not b.seen.count("started") > 1
    assert "waiting up to" in b.stderr, b.stderr
    assert read_log(log_b) == [] or read_log(log_b)[0].items == []
    rec = _load(url)
    assert rec is not None and rec.status == COMPLETED and rec.done == 10 and rec.lease_expires is None, rec


@pytest.mark.parametrize("store_kind", STORES)
def test_two_reruns_after_a_kill_exactly_one_takes_over(spawn: Spawner, tmp_path: Path, store_kind: str) -> None:
    """Both reruns see a dead owner and try to take its lease at once: the takeover is one atomic step."""
    for attempt in range(3):
        root = tmp_path / f"round{attempt}"
        root.mkdir()
        url = local_store_url(store_kind, root)
        log = root / "items.log"
        b = spawn(_cfg(url, log, n=12, handshake=True))
        c = spawn(_cfg(url, log, n=12, handshake=True))
        b.expect("ready")
        c.expect("ready")
        a = spawn(_cfg(url, log, n=12))
        a.started()
        wait_items(log, 2)
        a.signal(signal.SIGKILL)
        assert a.finish() == -signal.SIGKILL
        b.go()
        c.go()
        rc = {b: b.finish(), c: c.finish()}
        winners = [w for w in (b, c) if _started(w)]
        assert len(winners) == 1, f"round {attempt}: {len(winners)} reruns started; " + "\n".join(
            f"pid {w.pid} exit {rc[w]}: {w.seen}\n{w.stderr}" for w in (b, c)
        )
        winner = winners[0]
        loser = c if winner is b else b
        assert rc[winner] == 0, winner.stderr
        assert rc[loser] == 75, loser.stderr
        assert f"pid {winner.pid} on host" in loser.stderr, loser.stderr
        rec = _load(url)
        assert rec is not None and rec.status == COMPLETED and rec.owner is not None and rec.owner.pid == winner.pid
