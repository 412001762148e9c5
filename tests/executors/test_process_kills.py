"""``job.map(..., executor="processes")`` in real processes: the driver or a pool worker SIGKILLed.

The same driver as the Dask kill tests (:data:`daskcluster.DRIVER`): a 10 ms ``fn`` over
``range(n)`` on a pool of two worker processes, ``fn`` logging every start and end with
its pid, the loop logging every result it receives.

* **driver killed** at 15 random moments (seeded; the seed is printed): no item lost, a
  checkpointed item never started again, at most ``workers + every`` items redone per
  kill, and the pool dies with the driver: every process below the killed driver (the
  forkserver and the pool's workers) is gone within seconds. Items still running in a
  dying worker after the next driver started are counted and printed;
* **a pool worker killed** mid-run: the pool is replaced, the run completes (``attempts=3``:
  an item alone in flight when its worker dies is taken for the culprit and charged an
  attempt), and every item run twice had its first
  run in a process of the broken pool and its result not yet collected at the kill.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from daskcluster import (
    alive,
    assert_no_traceback_of_ours,
    collected,
    kill_drivers,
    kill_seed,
    mark,
    marker_seq,
    read_events,
    wait_collected,
    wait_gone,
    write_driver,
)
from procs import Spawner, clean_env, local_store_url

N = 300
WORKERS = 2
EVERY = 5
SLEEP = 0.01


@pytest.fixture
def spawn(tmp_path: Path):
    with Spawner(write_driver(tmp_path)) as s:
        yield s


def _cfg(store: str, **extra: Any) -> dict[str, Any]:
    return {
        "executor": "processes",
        "store": store,
        "n": N,
        "workers": WORKERS,
        "every": EVERY,
        "sleep": SLEEP,
        **extra,
    }


def test_driver_sigkill_at_random_moments_loses_nothing_and_leaves_no_worker(
    spawn: Spawner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = kill_seed()
    print(f"\nprocess driver kills: seed {seed} (RESTARTABLE_TORTURE_SEED={seed} repeats it)")
    report = kill_drivers(
        spawn, _cfg(local_store_url("sqlite", tmp_path)), directory=tmp_path, kills=15, seed=seed, delay=(0.05, 0.8)
    )
    pids = {e.pid for log in tmp_path.glob("events-*.log") for e in read_events(log) if e.kind == "s"}
    assert not wait_gone(pids, timeout=10), "a pool worker outlived its driver"
    with capsys.disabled():
        print(f"\nprocesses, {report}")


def test_pool_worker_sigkill_mid_run_replaces_the_pool_and_completes(
    spawn: Spawner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from restartable._checkpoint import COMPLETED
    from restartable.stores import open_store

    store, log = local_store_url("sqlite", tmp_path), tmp_path / "events.log"
    w = spawn(_cfg(store, run="p", log=str(log), gen=1, attempts=3, backoff=0.05), env=clean_env())
    w.expect("ready", timeout=60)
    mark(log, 1)
    w.go()
    wait_collected(log, N // 4, gen=1)
    starts = [e for e in read_events(log) if e.kind == "s"]
    victim = next(e.pid for e in reversed(starts) if alive(e.pid))
    old_pool = {e.pid for e in starts}
    os.kill(victim, signal.SIGKILL)
    mark(log, "kill")
    assert w.finish(timeout=120) == 0, w.stderr
    assert_no_traceback_of_ours(w.stderr)

    events = read_events(log)
    kill = marker_seq(events, "kill")
    assert not [e for e in events if e.pid == victim and e.seq > kill], "the killed worker wrote after its kill"
    assert sorted(collected(events)) == list(range(N)), "each item must reach the loop exactly once"
    new_pool = {e.pid for e in events if e.kind == "s" and e.seq > kill} - old_pool
    assert new_pool, "no new worker process ran an item after the kill: the pool was not replaced"
    runs = Counter(e.item for e in events if e.kind == "s")
    redone = sorted(i for i, c in runs.items() if c > 1)
    for i in redone:
        # In flight in the broken pool: its first run was in one of the old pool's processes (the
        # survivors take items until the driver sees the pool broken, after the kill too).
        first = next(e for e in events if e.item == i and e.kind == "s")
        assert first.pid in old_pool, f"item {i} was run twice, but its first run was not in the broken pool"
        before = [e for e in events if e.item == i and e.seq < kill]
        assert not [e for e in before if e.kind == "c"], f"item {i} was run again after its result was collected"
    assert len(redone) <= 2 * WORKERS + 1, f"{len(redone)} items redone for one lost worker: {redone}"
    with open_store(store) as s:
        rec = s.load("exec", "p")
    assert rec.status == COMPLETED and rec.done == N, rec
    assert not wait_gone({e.pid for e in events if e.kind == "s"}, timeout=10), "a pool worker outlived the driver"
    with capsys.disabled():
        print(f"\nprocesses worker kill: {len(redone)} items run again (in flight in the broken pool): {redone}")
