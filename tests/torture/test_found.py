"""Bugs the torture suite found, each reduced to a deterministic test (xfail strict until fixed in src/)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from restartable import Job
from restartable._window import DoneSet
from restartable.errors import Interrupted, TemporaryError
from restartable.stores import open_store


def test_map_sigterm_during_a_save_drains_in_flight_items(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    finished: list[int] = []
    lock = threading.Lock()

    def fn(i: int) -> int:
        time.sleep(0.05)
        with lock:
            finished.append(i)
        return i

    with pytest.raises(Interrupted):
        with Job("m", store=url, progress=False, lease_seconds=30) as job:
            sent = False

            def during_save() -> None:
                nonlocal sent
                if not sent:
                    sent = True  # SIGTERM arrives while the first periodic checkpoint is written
                    os.kill(os.getpid(), signal.SIGTERM)

            job.on_checkpoint(during_save)
            for _ in job.map(fn, range(40), workers=4, every=3):
                pass
    time.sleep(0.3)  # items the drain did not wait for finish now, in their daemon threads
    with open_store(url) as store:
        rec = store.load("m", "default")
    assert rec is not None
    pos = rec.positions["0"]
    done = DoneSet.decode(int(pos["offset"]), pos.get("done"), where="test")
    checkpointed = set(range(done.low)) | done.above
    with lock:
        lost = sorted(set(finished) - checkpointed)
    assert not lost, f"items {lost} finished around the SIGTERM but are not in the interrupt checkpoint"


def test_files_go_on_after_a_redis_restart(torture_private_redis: Any, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(30):
        (inputs / f"{i:03d}.txt").write_text(str(i))
    url = f"{torture_private_redis.url}?prefix=found-{os.getpid()}:"
    seen: list[str] = []
    try:
        with Job("files", store=url, progress=False, lease_seconds=30) as job:
            for f in job.files(inputs, every=1000):
                seen.append(f.name)
                if len(seen) == 10:
                    torture_private_redis.restart()  # every key is gone; the job holds the record in memory
    except TemporaryError as exc:
        pytest.fail(f"the job stopped after the restart: {exc}")
    assert sorted(set(seen)) == sorted(p.name for p in inputs.iterdir())
    with open_store(url) as store:
        rec = store.load("files", "default")
    assert rec is not None and rec.status == "completed" and rec.done == 30, rec


def test_a_runner_that_finds_the_run_completed_writes_nothing(tmp_path: Path) -> None:
    """Found by the long run (file/stages/readonly): a runner killed between ``job.complete()``
    and releasing its lease leaves a completed record with a lease; the next runner found the
    run complete, then wrote on exit to release that lease, and failed (77) on a read-only store."""
    url = f"sqlite:///{tmp_path}/c.db"
    with open_store(url) as store:
        from restartable._proc import current_owner

        held = store.acquire("j", "r", owner=current_owner(), lease_seconds=30)
        store.save(held.replace(status="completed", done=5), lease_seconds=30)  # killed before the release
        before = store.load("j", "r")
        assert before is not None and before.lease_expires is not None
    with Job("j", run="r", store=url, progress=False, handle_signals=False) as job:
        assert job.completed
        assert list(job.iterate(range(5))) == []
    with open_store(url) as store:
        assert store.load("j", "r") == before, "the runner that found the run completed wrote to the store"
