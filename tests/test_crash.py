"""SIGKILL at random moments, rerun until complete: no finished work lost, no checkpoint corrupted.

A worker process iterates with ``every=E`` and appends each processed item to an
items log (see ``procs.py``). The test kills it with SIGKILL at a random moment
50-400 ms after it took its lease, at least ``KILLS`` times (``$RESTARTABLE_TORTURE_KILLS``
raises it for a long run by hand), and reruns it each time. After every kill it loads
the checkpoint (it must be readable and consistent), and the next worker must resume
exactly there. When the run completes (exit 0 through ``restartable.entrypoint``) the
log proves that every item was processed and that each kill made at most ``E`` items
be redone.

The ``big`` variant puts 200 KB in ``job.state``, changed at every checkpoint, with a
small ``every``: most of a worker's time is then spent saving, and the log's ``s``
markers (written by an ``on_checkpoint`` callback just before each save) show how
many kills landed inside a save. The ``small`` variant iterates a generator (resume
by skipping) with a larger ``every``.

A campaign is one run id iterated to completion; campaigns repeat until enough kills
were made, so the kill count does not depend on how fast this machine's disk is.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from procs import Segment, Spawner, Worker, local_store_url, mark_segment, read_log, write_worker
from restartable._checkpoint import COMPLETED, RUNNING
from restartable.stores import open_store

KILLS = int(os.environ.get("RESTARTABLE_TORTURE_KILLS", "0"))
BLOB = 200_000
JOB = "crash"


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    with Spawner(write_worker(tmp_path)) as s:
        yield s


@dataclass(frozen=True)
class Variant:
    every: int
    n: int
    sleep: float
    kind: str
    blob: int
    kills: int  # default kill count (per store)


VARIANTS = {
    # Saves dominate: every second item writes ~200 KB (an fsync'ed transaction or file), and an
    # item does no work of its own, so even the file store's one pwrite + fdatasync of 200 KB on
    # a fast, idle disk outlasts the two items between saves. (With 0.5 ms of work per item the
    # file store's fast save took only a fifth of a worker's time, and CI saw 11 of 50 kills in it.)
    "big": Variant(every=2, n=3000, sleep=0.0, kind="range", blob=BLOB, kills=50),
    # A non-seekable source, redo bound well above 1.
    "small": Variant(every=7, n=400, sleep=0.003, kind="gen", blob=0, kills=12),
}


@dataclass
class Kill:
    """What the store held right after one kill, and where the log stood."""

    pid: int
    done: int  # the checkpointed position
    logged: int  # distinct items in the log so far
    status: str
    last: str | None  # the killed worker's last log event: s (inside a save), b, item or None


def _check_after_kill(url: str, run: str, variant: Variant, worker: Worker, log: Path) -> Kill:
    # The checkpoint must be readable after every kill: a CheckpointCorrupt here fails the test.
    with open_store(url) as store:
        rec = store.load(JOB, run)
    assert rec is not None, f"run {run}: no record after kill of pid {worker.pid}"
    segs = read_log(log)
    logged = sorted({i for seg in segs for i in seg.items})
    # Items are processed in order and a rerun resumes at the checkpoint, so the log is a prefix.
    assert logged == list(range(len(logged))), f"run {run}: the processed items are not a prefix of the input"
    assert rec.status in (RUNNING, COMPLETED), rec.status
    # The checkpoint never claims an item that was not processed, and lags by at most `every`.
    assert 0 <= len(logged) - rec.done <= variant.every, (
        f"run {run}: checkpoint at {rec.done} but {len(logged)} items processed (every={variant.every})"
    )
    if rec.status == RUNNING:
        assert rec.owner is not None and rec.owner.pid == worker.pid, "the killed worker held the lease"
    if variant.blob and "saves" in rec.state:
        # Never a torn state: the blob is the one written with its counter.
        n = rec.state["saves"]
        assert rec.state["blob"] == chr(97 + n % 26) * variant.blob, f"run {run}: torn state at save {n}"
    return Kill(worker.pid, rec.done, len(logged), rec.status, segs[-1].last if segs else None)


def _check_campaign(url: str, run: str, variant: Variant, log: Path, kills: list[Kill]) -> list[int]:
    """Check a completed run's log against the kills; return the items redone after each kill."""
    with open_store(url) as store:
        rec = store.load(JOB, run)
    assert rec is not None and rec.status == COMPLETED, rec
    assert rec.done == variant.n and rec.lease_expires is None, rec
    segs: list[Segment] = read_log(log)
    assert len(segs) == len(kills) + 1, f"{len(segs)} segments for {len(kills)} kills"
    assert {i for seg in segs for i in seg.items} == set(range(variant.n)), "some item was never processed"
    redone: list[int] = []
    seen: set[int] = set()
    for j, seg in enumerate(segs):
        # Each worker processes consecutive items from where it started.
        if seg.items:
            assert seg.items == list(range(seg.items[0], seg.items[0] + len(seg.items))), f"segment {j} skips"
        if j > 0:
            k = kills[j - 1]
            if seg.begun:
                assert seg.begun[0] == k.done, f"segment {j} resumed at {seg.begun[0]}, checkpoint was {k.done}"
            again = seen & set(seg.items)
            assert len(again) <= variant.every, f"kill {j} made {len(again)} items be redone (every={variant.every})"
            assert len(again) <= k.logged - k.done
            redone.append(len(again))
        seen |= set(seg.items)
    return redone


_CASES = [(store, v) for store in ("sqlite", "file") for v in sorted(VARIANTS)] + [
    # The network stores get the quick variant: their kills are the same code path.
    ("postgresql", "small"),
    ("redis", "small"),
]


@pytest.mark.parametrize("store_kind,variant_name", _CASES)
def test_sigkill_at_random_moments(
    spawn: Spawner, tmp_path: Path, store_kind: str, variant_name: str, request: pytest.FixtureRequest
) -> None:
    variant = VARIANTS[variant_name]
    if store_kind == "postgresql":
        url = request.getfixturevalue("postgres_url")
    elif store_kind == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = local_store_url(store_kind, tmp_path)
    target = max(KILLS, variant.kills)
    seed = f"{store_kind}-{variant_name}-{os.environ.get('RESTARTABLE_TORTURE_SEED', '1')}"
    rng = random.Random(seed)

    cfg: dict[str, Any] = {
        "store": url,
        "job": JOB,
        "n": variant.n,
        "every": variant.every,
        "sleep": variant.sleep,
        "kind": variant.kind,
        "blob": variant.blob,
        # A long lease: a rerun must take the dead worker's lease over at once, never wait.
        "lease_seconds": 60,
        "handshake": True,
    }
    total_kills = 0
    where: Counter[str] = Counter()
    redone_all: list[int] = []
    campaigns = 0
    # Standby workers, already imported and waiting for `go`: a rerun starts without the
    # interpreter's startup time, so the kills, not the imports, fill the test's time.
    standbys: list[Worker] = []
    while total_kills < target:
        campaigns += 1
        run = f"campaign-{campaigns}"
        log = tmp_path / f"items-{campaigns}.log"
        kills: list[Kill] = []
        while True:
            w = standbys.pop(0) if standbys else spawn(cfg)
            w.expect("ready")
            mark_segment(log, len(kills))
            w.go(run=run, log=str(log))
            # Every rerun must start: a CheckpointCorrupt (exit 65) or a wait for the lease (exit 75)
            # ends the worker before "started" and fails here with its stderr.
            w.started()
            if total_kills < target:
                while len(standbys) < 2:
                    standbys.append(spawn(cfg))
                time.sleep(rng.uniform(0.05, 0.4))
                w.signal(signal.SIGKILL)
            rc = w.finish()
            if rc == 0:
                break  # completed (perhaps just before the kill)
            assert rc == -signal.SIGKILL, f"worker exited {rc}; stderr:\n{w.stderr}"
            total_kills += 1
            kill = _check_after_kill(url, run, variant, w, log)
            where["save" if kill.last == "s" else kill.last or "start"] += 1
            kills.append(kill)
        assert "Traceback" not in w.stderr, w.stderr
        redone_all += _check_campaign(url, run, variant, log, kills)
    for extra in standbys:
        extra.stop()

    in_save = where["save"]
    print(
        f"\n{store_kind}/{variant_name}: {total_kills} kills in {campaigns} run(s), seed {seed!r}; "
        f"last event before the kill: {dict(where)}; items redone per kill: max {max(redone_all, default=0)}, "
        f"total {sum(redone_all)}"
    )
    if variant.blob:
        # Prove the kills do land inside checkpoint writes, not only between them.
        assert in_save >= total_kills // 4, f"only {in_save} of {total_kills} kills landed inside a save"
