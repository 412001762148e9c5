"""SIGTERM and SIGINT on real worker processes: finish the item in flight, checkpoint, exit 143/130.

The workers (``procs.py``) process slow items and log each one; the log shows that the
item in flight when the signal arrived was finished, and that the rerun redoes none.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procs import Spawner, local_store_url, mark_segment, read_log, wait_items, write_worker
from restartable._checkpoint import INTERRUPTED, RUNNING
from restartable.stores import open_store

JOB = "sig"


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    with Spawner(write_worker(tmp_path)) as s:
        yield s


def _cfg(url: str, log: Path, **extra: Any) -> dict[str, Any]:
    # every=50: no count checkpoint is due before the signal, so the interrupt checkpoint
    # alone must hold the exact position.
    cfg: dict[str, Any] = {
        "store": url,
        "job": JOB,
        "run": "r1",
        "log": str(log),
        "n": 60,
        "every": 50,
        "sleep": 0.02,
        "lease_seconds": 60,
    }
    cfg.update(extra)
    return cfg


def _load(url: str, run: str = "r1"):
    with open_store(url) as store:
        return store.load(JOB, run)


def _rerun_completes(spawn: Spawner, cfg: dict[str, Any], log: Path, *, resume_at: int) -> None:
    """Rerun the job: it resumes at ``resume_at`` and completes with exit 0."""
    mark_segment(log, "rerun")
    w = spawn(cfg)
    info = w.started()
    assert info["resumed"] == "True" and int(info["done"]) == resume_at, info
    assert w.finish() == 0, w.stderr
    segs = read_log(log)
    assert segs[-1].begun[:1] == [resume_at], "the rerun did not resume at the checkpoint"


@pytest.mark.parametrize("store_kind", ["sqlite", "file"])
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"])
def test_signal_finishes_item_in_flight_and_rerun_redoes_nothing(
    spawn: Spawner, tmp_path: Path, store_kind: str, signum: int, code: int
) -> None:
    url = local_store_url(store_kind, tmp_path)
    log = tmp_path / "items.log"
    cfg = _cfg(url, log)
    mark_segment(log, "first")
    w = spawn(cfg)
    w.started()
    wait_items(log, 5)
    w.signal(signum)
    assert w.finish() == code, w.stderr
    name = signal.Signals(signum).name
    assert f"{name} received" in w.stderr and f"interrupted by {name}" in w.stderr, w.stderr
    assert "Traceback" not in w.stderr, w.stderr

    first = read_log(log)[0]
    # The item in flight finished: every item handed out was processed, once.
    assert first.begun == first.items and len(first.items) >= 5, first.events
    rec = _load(url)
    assert rec is not None and rec.status == INTERRUPTED, rec
    assert rec.lease_expires is None, "an interrupted run must release its lease"
    assert rec.done == len(first.items), f"checkpoint at {rec.done}, {len(first.items)} items processed"

    _rerun_completes(spawn, cfg, log, resume_at=rec.done)
    counts = Counter(i for seg in read_log(log) for i in seg.items)
    assert sorted(counts) == list(range(cfg["n"])), "some item was never processed"
    assert max(counts.values()) == 1, f"items redone after a signal: {[i for i, c in counts.items() if c > 1]}"


def test_sigterm_before_the_first_item(spawn: Spawner, tmp_path: Path) -> None:
    """A signal right after the lease was taken: at most the item in flight is done, nothing redone."""
    url = local_store_url("sqlite", tmp_path)
    log = tmp_path / "items.log"
    cfg = _cfg(url, log)
    mark_segment(log, "first")
    w = spawn(cfg)
    w.started()
    w.signal(signal.SIGTERM)
    assert w.finish() == 143, w.stderr
    first = read_log(log)[0]
    assert first.begun == first.items and len(first.items) <= 1, first.events
    rec = _load(url)
    assert rec is not None and rec.status == INTERRUPTED and rec.lease_expires is None, rec
    assert rec.done == len(first.items)
    _rerun_completes(spawn, cfg, log, resume_at=rec.done)
    counts = Counter(i for seg in read_log(log) for i in seg.items)
    assert sorted(counts) == list(range(cfg["n"])) and max(counts.values()) == 1


def test_second_sigterm_during_the_save_exits_at_once(spawn: Spawner, tmp_path: Path) -> None:
    """The first SIGTERM's checkpoint is held in an on_checkpoint callback; a second SIGTERM exits 143 at once."""
    url = local_store_url("sqlite", tmp_path)
    log = tmp_path / "items.log"
    # hold_stopping: the callback sleeps 60 s when the job is stopping, i.e. in the interrupt save.
    cfg = _cfg(url, log, every=5, hold_stopping=60)
    mark_segment(log, "first")
    w = spawn(cfg)
    w.started()
    wait_items(log, 8)
    w.signal(signal.SIGTERM)
    w.expect("holding")
    w.signal(signal.SIGTERM)
    # Far less than the 60 s hold: the second signal did not wait for the save.
    assert w.finish(timeout=15) == 143, w.stderr
    assert "second SIGTERM: exiting at once" in w.stderr, w.stderr
    assert "Traceback" not in w.stderr, w.stderr

    # The interrupt checkpoint was never written: the last periodic one stands, readable,
    # with the lease of a now dead owner, which a rerun takes over at once (wait=0).
    first = read_log(log)[0]
    rec = _load(url)
    assert rec is not None and rec.status == RUNNING and rec.lease_expires is not None, rec
    assert rec.done % 5 == 0 and 0 <= len(first.items) - rec.done <= 5, (rec.done, first.items)
    _rerun_completes(spawn, cfg | {"hold_stopping": 0}, log, resume_at=rec.done)
    done = [i for seg in read_log(log) for i in seg.items]
    assert set(done) == set(range(cfg["n"]))
    assert len(done) - cfg["n"] <= 5, "more than `every` items redone"


def test_signal_during_a_periodic_save_hands_out_no_further_item(spawn: Spawner, tmp_path: Path) -> None:
    url = local_store_url("sqlite", tmp_path)
    log = tmp_path / "items.log"
    # Fast items, every=1000: the first periodic save (after item 999) is held 1 s by the callback.
    w = spawn(_cfg(url, log, n=5000, every=1000, sleep=0, hold_save=1.0))
    w.started()
    w.expect("in-save")
    w.signal(signal.SIGTERM)  # lands inside the save: no item is in flight
    assert w.finish() == 143, w.stderr
    events = read_log(log)[0].events
    first_save = events.index(("s", 1))
    after = [n for kind, n in events[first_save:] if kind == "b"]
    # The loop had already come back for item 1000 when the save began; the signal arrived
    # before it was handed out, so nothing more should run: the next event is the interrupt save.
    assert after == [], f"{len(after)} items handed out after the signal (items {after[:1]}..{after[-1:]})"
    rec = _load(url)
    assert rec is not None and rec.status == INTERRUPTED and rec.done == 1000, rec


def test_uncaught_interrupted_exits_143_without_traceback(spawn: Spawner, tmp_path: Path) -> None:
    """Without restartable.entrypoint, Interrupted (a SystemExit) still ends the process with 143."""
    url = local_store_url("sqlite", tmp_path)
    log = tmp_path / "items.log"
    w = spawn(_cfg(url, log, entrypoint=False))
    w.started()
    wait_items(log, 3)
    w.signal(signal.SIGTERM)
    assert w.finish() == 143, w.stderr
    assert "Traceback" not in w.stderr, w.stderr
    assert "interrupted by SIGTERM" in w.stderr, w.stderr
    rec = _load(url)
    assert rec is not None and rec.status == INTERRUPTED and rec.lease_expires is None, rec
    assert rec.done == len(read_log(log)[0].items)


def test_job_in_a_thread_runs_without_handlers_and_warns(spawn: Spawner, tmp_path: Path) -> None:
    """A job started outside the main thread installs no handlers: SIGTERM keeps its default action."""
    url = local_store_url("sqlite", tmp_path)
    log = tmp_path / "items.log"
    w = spawn(_cfg(url, log, thread=True, n=500))
    w.started()
    handler = w.expect("handler=")
    assert "SIG_DFL" in handler, handler  # seen from the main thread while the job runs
    wait_items(log, 3)
    w.signal(signal.SIGTERM)
    assert w.finish() == -signal.SIGTERM, w.stderr  # killed by the default action, no handler ran
    assert "runs outside the main thread: SIGTERM/SIGINT are not handled by restartable" in w.stderr, w.stderr
    rec = _load(url)
    assert rec is not None and rec.status == RUNNING, rec  # nothing was saved on the way out


def test_job_in_a_thread_completes(spawn: Spawner, tmp_path: Path) -> None:
    url = local_store_url("sqlite", tmp_path)
    log = tmp_path / "items.log"
    w = spawn(_cfg(url, log, thread=True, n=20, sleep=0))
    assert w.finish() == 0, w.stderr
    assert "runs outside the main thread" in w.stderr, w.stderr
    assert sorted(read_log(log)[0].items) == list(range(20))
    rec = _load(url)
    assert rec is not None and rec.status == "completed", rec
