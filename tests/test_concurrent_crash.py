"""Concurrent jobs in real processes: SIGKILL at random moments, SIGTERM with items in flight.

The worker script (:data:`SCRIPT`) runs ``job.map`` (threads) or ``job.amap`` (asyncio)
over ``range(n)``. Each item sleeps a random time of its own (seeded by its index, so
a rerun takes the same), so items finish out of order. The items log (``procs.py``
format, ``O_APPEND``, one ``write(2)`` per line) gets ``I`` from the worker when item
``I`` is finished and ``b I`` from the loop body when its result arrives.

After every SIGKILL the checkpoint must be readable and must claim only finished
items (watermark plus done set), and the items finished by the killed worker but not
in the checkpoint (the redo this kill causes) are at most the in-flight bound:
``workers`` unsettled items, plus the one acknowledged but not yet saved (``every=1``).
The next worker redoes none of the checkpointed items. At the end every item was
processed. ``$RESTARTABLE_TORTURE_KILLS`` raises the kill count for a long run by hand.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from procs import Spawner, Worker, local_store_url, mark_segment, read_log, wait_items
from restartable._checkpoint import COMPLETED, INTERRUPTED, RUNNING
from restartable._concurrency.window import DoneSet
from restartable.stores import open_store

SCRIPT = r"""
import asyncio, json, os, random, sys, threading, time

cfg = json.loads(sys.argv[1])

import restartable
from restartable import Job


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


fd = os.open(cfg["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def log(line):
    os.write(fd, (line + "\n").encode())


def duration(i):
    return random.Random(cfg["seed"] * 1_000_003 + i).uniform(0, cfg["max_sleep"])


def main():
    with Job("conc", run=cfg["run"], store=cfg["store"], progress=False, lease_seconds=60) as job:
        say(f"started pid={os.getpid()} done={job.record.done} status={job.record.status}")
        n, width, stuck = cfg["n"], cfg["workers"], cfg.get("stuck")
        opts = {"every": cfg.get("every"), "grace": cfg.get("grace", 25.0)}
        if cfg["mode"] == "threads":
            def fn(i):
                if i == stuck:
                    threading.Event().wait()  # never returns: the process must not hang on it
                time.sleep(duration(i))
                log(str(i))
                return i

            for i in job.map(fn, range(n), workers=width, **opts):
                log(f"b {i}")
        else:
            async def afn(i):
                if i == stuck:
                    await asyncio.Event().wait()
                await asyncio.sleep(duration(i))
                log(str(i))
                return i

            async def amain():
                async for i in job.amap(afn, range(n), workers=width, **opts):
                    log(f"b {i}")

            asyncio.run(amain())
        say("finished")


if cfg.get("handshake"):
    say("ready")
    if sys.stdin.readline().strip() != "go":
        sys.exit(3)
restartable.entrypoint(main)()
"""

KILLS = int(os.environ.get("RESTARTABLE_TORTURE_KILLS", "0"))
N = 160
WORKERS = 4


@pytest.fixture
def spawn(tmp_path: Path):
    script = tmp_path / "conc_worker.py"
    script.write_text(SCRIPT)
    s = Spawner(script)
    yield s
    s.close()


def _record(url: str, run: str):
    with open_store(url) as store:
        return store.load("conc", run)


def _done_set(rec: Any) -> set[int]:
    pos = rec.positions.get("0", {})
    d = DoneSet.decode(int(pos.get("offset", 0)), pos.get("done"), where="test")
    return set(range(d.low)) | d.above


@pytest.mark.parametrize("mode", ["threads", "asyncio"])
def test_sigkill_at_random_moments_loses_nothing_and_redoes_at_most_in_flight(
    spawn: Spawner, tmp_path: Path, mode: str
) -> None:
    url = local_store_url("sqlite", tmp_path)
    target = max(KILLS, 15)
    rng = random.Random(f"concurrent-{mode}-{os.environ.get('RESTARTABLE_TORTURE_SEED', '1')}")
    bound = WORKERS + 1  # unsettled items, plus one acknowledged and not yet saved

    def worker(run: str, log: Path, seed: int) -> Worker:
        return spawn(
            {
                "store": url,
                "run": run,
                "log": str(log),
                "n": N,
                "workers": WORKERS,
                "mode": mode,
                "seed": seed,
                "max_sleep": 0.02,
                "every": 1,
                "handshake": True,
            }
        )

    kills = campaigns = 0
    worst = 0
    while kills < target:
        campaigns += 1
        run, log = f"c{campaigns}", tmp_path / f"items-{campaigns}.log"
        done_at_kill: list[set[int]] = []
        standby: Worker | None = None
        while True:
            w = standby or worker(run, log, campaigns)
            standby = None
            w.expect("ready")
            mark_segment(log, len(done_at_kill))
            w.go()
            w.started()
            if kills < target:
                standby = worker(run, log, campaigns)  # imports while this one runs
                time.sleep(rng.uniform(0.05, 0.35))
                w.signal(signal.SIGKILL)
            rc = w.finish()
            if rc == 0:
                break
            assert rc == -signal.SIGKILL, f"worker exited {rc}; stderr:\n{w.stderr}"
            kills += 1
            rec = _record(url, run)
            assert rec is not None and rec.status in (RUNNING, COMPLETED), rec
            segs = read_log(log)
            finished = {i for seg in segs for i in seg.items}
            done = _done_set(rec)
            # The checkpoint claims only finished items: nothing is lost.
            assert done <= finished, f"run {run}: checkpoint claims unfinished items {sorted(done - finished)}"
            # What this kill makes the next run redo: finished by the killed worker, not checkpointed.
            redo = set(segs[-1].items) - done
            assert len(redo) <= bound, f"kill {kills}: {len(redo)} finished items not checkpointed: {sorted(redo)}"
            worst = max(worst, len(redo))
            done_at_kill.append(done)
        if standby is not None:
            standby.stop()
        assert "Traceback" not in w.stderr, w.stderr
        rec = _record(url, run)
        assert rec is not None and rec.status == COMPLETED and rec.done == N, rec
        segs = read_log(log)
        counts = Counter(i for seg in segs for i in seg.items)
        assert sorted(counts) == list(range(N)), "some item was never processed"
        for j, done in enumerate(done_at_kill):
            # A checkpointed item is never processed again, whatever order it finished in.
            again = set(segs[j + 1].items) & done
            assert not again, f"run {run}: items {sorted(again)} were checkpointed at kill {j + 1} and redone"
        assert sum(c - 1 for c in counts.values()) <= bound * len(done_at_kill)
    print(f"\n{mode}: {kills} kills in {campaigns} run(s); worst redo per kill {worst} (bound {bound})")


@pytest.mark.parametrize("mode", ["threads", "asyncio"])
def test_sigterm_finishes_in_flight_items_and_does_not_hang_on_a_stuck_one(
    spawn: Spawner, tmp_path: Path, mode: str
) -> None:
    """Item 12 never returns; SIGTERM: the other in-flight items finish, exit 143 after the grace."""
    url = local_store_url("sqlite", tmp_path)
    log = tmp_path / "items.log"
    cfg = {
        "store": url,
        "run": "r",
        "log": str(log),
        "n": 60,
        "workers": WORKERS,
        "mode": mode,
        "seed": 7,
        "max_sleep": 0.08,
        "every": 1000,
        "stuck": 12,
        "grace": 1.0,
    }
    mark_segment(log, "first")
    w = spawn(cfg)
    w.started()
    wait_items(log, 20)
    w.signal(signal.SIGTERM)
    # Without the daemon threads / cancellation it would hang forever on item 12.
    assert w.finish(timeout=20) == 143, w.stderr
    assert "still running after the 1s grace" in w.stderr, w.stderr
    assert "Traceback" not in w.stderr, w.stderr
    first = read_log(log)[0]
    # Every item that finished reached the loop: the in-flight ones were drained, not dropped.
    assert sorted(first.items) == sorted(first.begun), first.events
    assert 12 not in first.items
    rec = _record(url, "r")
    assert rec is not None and rec.status == INTERRUPTED, rec
    # A thread cannot be killed: while the stuck item may still run, the lease stays held (it ends with
    # the process, and the rerun below takes the dead owner's lease over at once). A cancelled asyncio
    # task has ended, so that lease is released.
    assert (rec.lease_expires is not None) == (mode == "threads"), rec
    assert _done_set(rec) == set(first.items), "the interrupt checkpoint must hold exactly the finished items"
    # The stuck item: still running in its thread, or cancelled and ended (asyncio).
    assert rec.positions["0"]["in_flight"] == (1 if mode == "threads" else 0)

    mark_segment(log, "rerun")
    w = spawn({**cfg, "stuck": None})
    w.started()
    assert w.finish() == 0, w.stderr
    rerun = read_log(log)[1]
    assert not set(rerun.items) & set(first.items), "finished items were redone after SIGTERM"
    assert sorted(first.items + rerun.items) == list(range(60))
