"""``Job(stall_timeout=...)``: a runner that stops making progress stops holding the lease.

The scripts run in real subprocesses: the watchdog ends the process with ``os._exit``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from restartable import Job
from restartable._watchdog import StallWatchdog
from restartable.errors import EXIT_TEMPORARY, UsageError
from restartable.stores import open_store

SCRIPT = textwrap.dedent("""
    import json, sys, time
    from restartable import Job

    cfg = json.loads(sys.argv[1])
    with Job("stall", store=cfg["store"], progress=False, stall_timeout=cfg.get("stall")) as job:
        time.sleep(cfg.get("setup", 0))
        for i in job.iterate(range(cfg["n"]), every=1):
            if i == cfg.get("hang_at"):
                time.sleep(600)          # a read that never returns
            time.sleep(cfg.get("work", 0))
            job.state["seen"] = job.state.get("seen", 0) + 1
        time.sleep(cfg.get("after", 0))
    print("finished", job.state.get("seen"))
""")


def _run(tmp_path: Path, timeout: float = 60, **cfg: object) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "stall_job.py"
    script.write_text(SCRIPT)
    cfg.setdefault("store", f"sqlite:///{tmp_path}/ckpt.db")
    return subprocess.run(
        [sys.executable, str(script), json.dumps(cfg)], capture_output=True, text=True, timeout=timeout
    )


def test_a_hung_item_exits_75_with_every_stack_and_the_rerun_resumes(tmp_path: Path) -> None:
    t0 = time.monotonic()
    done = _run(tmp_path, n=10, hang_at=4, stall=1)
    took = time.monotonic() - t0
    assert done.returncode == EXIT_TEMPORARY, done.stderr
    assert took < 20, f"the watchdog took {took:.1f}s for a 1s stall_timeout"
    assert "no item finished for" in done.stderr
    assert "stall_timeout=1s" in done.stderr
    # faulthandler's dump names the line the main thread hangs on, and the lease thread.
    assert "stall_job.py" in done.stderr and "Current thread" in done.stderr or "Thread 0x" in done.stderr
    assert "Traceback (most recent call last)" not in done.stderr
    with open_store(f"sqlite:///{tmp_path}/ckpt.db") as store:
        rec = store.load("stall", "default")
    assert rec is not None and rec.done == 4 and rec.state == {"seen": 4}
    rerun = _run(tmp_path, n=10, stall=1)
    assert rerun.returncode == 0, rerun.stderr
    assert "finished 10" in rerun.stdout  # resumed at item 4 at once: the dead owner's lease is taken over


def test_the_lease_is_not_renewed_once_stalled(tmp_path: Path) -> None:
    # A long lease would be renewed every 1/3 of it by a healthy heartbeat; after the exit the
    # record's heartbeat must stand still.
    done = _run(tmp_path, n=5, hang_at=1, stall=1)
    assert done.returncode == EXIT_TEMPORARY
    with open_store(f"sqlite:///{tmp_path}/ckpt.db") as store:
        first = store.load("stall", "default")
        time.sleep(1.2)
        second = store.load("stall", "default")
    assert first is not None and second is not None and first.heartbeat == second.heartbeat


def test_slow_items_that_progress_are_not_a_stall(tmp_path: Path) -> None:
    done = _run(tmp_path, n=5, work=0.4, stall=1)
    assert done.returncode == 0, done.stderr
    assert "finished 5" in done.stdout


def test_time_outside_iterations_is_not_judged(tmp_path: Path) -> None:
    done = _run(tmp_path, n=3, setup=1.6, after=1.6, stall=0.5)
    assert done.returncode == 0, done.stderr


def test_stall_timeout_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTARTABLE_STALL_TIMEOUT", "2m")
    job = Job("env-stall", store="memory://")
    assert job.stall_timeout == 120.0
    monkeypatch.delenv("RESTARTABLE_STALL_TIMEOUT")
    assert Job("env-stall", store="memory://").stall_timeout is None


@pytest.mark.parametrize("bad", [0, -1, "soon"])
def test_bad_stall_timeout_is_refused(bad: object) -> None:
    with pytest.raises(Exception) as info:
        Job("bad-stall", store="memory://", stall_timeout=bad)  # type: ignore[arg-type]
    assert "stall_timeout" in str(info.value)
    assert isinstance(info.value, UsageError) or type(info.value).__name__ == "ConfigError"


def test_watchdog_with_a_fake_clock() -> None:
    now = [100.0]
    exits: list[int] = []
    stopped: list[bool] = []
    dog = StallWatchdog(
        timeout=10, label="t", on_stall=lambda: stopped.append(True), exit=exits.append, clock=lambda: now[0]
    )
    assert not dog.check()  # no iteration yet: not judged
    dog.enter()
    now[0] += 9
    dog.progressed()
    now[0] += 9
    assert not dog.check()
    dog.leave()
    now[0] += 100  # outside an iteration: not judged
    assert not dog.check()
    dog.enter()
    now[0] += 10
    assert not dog.check() and exits == []
    now[0] += 0.5
    assert dog.check()
    assert exits == [EXIT_TEMPORARY] and stopped == [True]
