"""``job.map(..., executor="processes")`` and friends, in real worker processes.

In-process tests run ``job.map`` in the test process with the functions of
:mod:`procfns` (importable by name in the workers); the signal and SIGKILL tests run
a driver script in a process group of its own. What is checked:

* the same results and checkpoints as threads; a CPU-bound ``fn`` uses more than one core;
* ``fn`` or an item that cannot be pickled: a UsageError naming the item and the fix,
  before anything about it is saved;
* a worker SIGKILLed by its item once: the pool is replaced, the run completes, and no
  item burns an attempt (the culprit is isolated by rerunning the items in flight one
  at a time); an item that always kills its worker: a dead letter after ``attempts``;
* ``timeout``: the attempt fails and the hung worker process is killed;
* ``initializer``: runs in every worker; one that raises stops the run;
* a user's executor (threads, processes) and ``amap`` with an executor;
* the driver SIGKILLed a few times: resumes with nothing lost (the heavy kill tests are
  in test_process_kills.py); SIGTERM / SIGINT to the whole process group: one clean
  exit 143 / 130 with the checkpoint, and no process of the group left (``/proc``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import procfns
import pytest

from ci_env import IN_CI
from restartable import Job, UsageError
from restartable._checkpoint import COMPLETED, INTERRUPTED
from restartable._concurrency.window import DoneSet
from restartable.errors import InitializerFailed
from restartable.stores import open_store


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/ckpt.db"


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.getLogger("restartable").setLevel(logging.ERROR)


def job(url: str, name: str = "p") -> Job:
    return Job(name, store=url, progress=False, handle_signals=False)


def position(url: str, name: str = "p") -> dict[str, Any]:
    with open_store(url) as store:
        rec = store.load(name, "default")
    assert rec is not None
    return rec.positions["0"]


def test_processes_give_the_same_results_and_checkpoint_as_threads(url: str) -> None:
    got = {}
    for ex in ("threads", "processes"):
        with job(url, ex) as j:
            got[ex] = list(j.map(procfns.square, range(40), executor=ex, workers=3, ordered=True, every=7))
        pos = position(url, ex)
        got[ex + "-pos"] = (pos["offset"], pos.get("done"), pos.get("dead"))
    assert got["processes"] == got["threads"] == [x * x for x in range(40)]
    assert got["processes-pos"] == got["threads-pos"] == (40, [], None)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_a_cpu_bound_fn_uses_more_than_one_core(url: str) -> None:
    """CPU seconds the items spent per wall second, from the first start to the last end: one core gives 1."""
    with job(url) as j:
        runs = list(j.map(procfns.burn, [0.1] * 16, executor="processes", workers=2))
    wall = max(r[3] for r in runs) - min(r[2] for r in runs)
    cpu = sum(r[1] for r in runs)
    assert len({r[0] for r in runs}) >= 2
    if cpu / wall <= 1.2 and not IN_CI and os.getloadavg()[0] > (os.cpu_count() or 1):
        pytest.skip(f"the machine is busy (load {os.getloadavg()[0]:.1f}): {cpu:.2f} CPU s in {wall:.2f} s")
    assert cpu / wall > 1.2, f"{cpu:.2f} CPU seconds in {wall:.2f} s of wall time"


def test_an_unpicklable_fn_or_item_is_a_usage_error_naming_the_fix(url: str) -> None:
    with job(url) as j:
        with pytest.raises(UsageError, match=r"cannot be pickled.*module level"):
            j.map(lambda x: x, range(3), executor="processes")
    items: list[Any] = [1, 2, threading.Lock(), 4]
    with job(url, "items") as j:
        with pytest.raises(UsageError, match=r"item 2 \(lock\) cannot be pickled.*module level"):
            list(j.map(procfns.square, items, executor="processes", workers=1, on_error="skip"))
    pos = position(url, "items")
    assert 2 not in DoneSet.decode(pos["offset"], pos.get("done"), where="t") and not pos.get("dead")


def _calls(directory: Path) -> list[int]:
    return [int(line.split()[0]) for line in (directory / "calls.log").read_text().splitlines()]


def test_a_worker_killed_once_replaces_the_pool_and_burns_no_attempt(url: str, tmp_path: Path) -> None:
    items = [(str(tmp_path), 7, x) for x in range(30)]
    with job(url) as j:
        # attempts=1: an innocent item in flight in the broken pool, or the victim itself
        # (killed once, then fine), must not fail for lack of attempts.
        out = sorted(j.map(procfns.kill_once, items, executor="processes", workers=3))
    assert out == list(range(30))
    calls = _calls(tmp_path)
    assert calls.count(7) == 2  # killed once, then rerun (alone) with success
    assert position(url)["offset"] == 30 and not position(url).get("dead")


def test_an_item_that_always_kills_its_worker_becomes_a_dead_letter(url: str, tmp_path: Path) -> None:
    items = [(str(tmp_path), 5, x) for x in range(20)]
    with job(url) as j:
        out = sorted(j.map(procfns.kill_always, items, executor="processes", workers=3, attempts=2, on_error="skip"))
    assert out == [x for x in range(20) if x != 5]
    dead = position(url)["dead"]
    assert set(dead) == {"5"} and dead["5"]["attempts"] == 2
    assert dead["5"]["error"].startswith("BrokenProcessPool: the worker process running item 5 died")
    # Every innocent item ran once or (in flight beside the victim) twice; none a third time.
    calls = _calls(tmp_path)
    assert max(calls.count(x) for x in range(20) if x != 5) <= 2


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def test_timeout_fails_the_attempt_and_kills_the_hung_worker(url: str, tmp_path: Path) -> None:
    items = [(str(tmp_path), 3, x) for x in range(10)]
    start = time.monotonic()
    with job(url) as j:
        out = sorted(j.map(procfns.hang_on, items, executor="processes", workers=2, timeout=1.0, on_error="skip"))
    assert out == [x for x in range(10) if x != 3]
    assert time.monotonic() - start < 30  # not the minute item 3 sleeps
    dead = position(url)["dead"]
    assert dead["3"]["error"] == "ItemTimeout: item 3 ran longer than timeout=1s"
    assert _gone(int((tmp_path / "hung.pid").read_text()))


def test_timeout_with_threads_fails_the_attempt(url: str, tmp_path: Path) -> None:
    items = [(str(tmp_path), 3, x) for x in range(6)]
    with job(url) as j:
        out = sorted(j.map(procfns.hang_on, items, workers=2, timeout=0.5, on_error="skip"))
    assert out == [0, 1, 2, 4, 5] and "ItemTimeout" in position(url)["dead"]["3"]["error"]


def test_initializer_runs_in_every_worker_and_its_failure_stops_the_run(url: str) -> None:
    with job(url) as j:
        out = list(
            j.map(
                procfns.initialized,
                range(20),
                executor="processes",
                workers=2,
                initializer=procfns.init,
                initargs=("x",),
            )
        )
    assert {tag for _, tag, _ in out} == {"x"} and all(pid != os.getpid() for _, _, pid in out)
    with job(url, "threads") as j:
        out = list(j.map(procfns.initialized, range(4), workers=2, initializer=procfns.init, initargs=("t",)))
    assert {tag for _, tag, _ in out} == {"t"}
    for ex in ("processes", "threads"):
        with job(url, f"fails-{ex}") as j:
            with pytest.raises(InitializerFailed, match="RuntimeError: cannot initialize y"):
                list(
                    j.map(
                        procfns.initialized,
                        range(5),
                        executor=ex,
                        workers=2,
                        on_error="skip",
                        initializer=procfns.init_fails,
                        initargs=("y",),
                    )
                )
        assert not position(url, f"fails-{ex}").get("dead")


def test_a_users_executor_is_used_as_given_and_not_shut_down(url: str) -> None:
    with cf.ProcessPoolExecutor(2) as pool, cf.ThreadPoolExecutor(2) as threads:
        for ex in (pool, threads):
            with job(url, type(ex).__name__) as j:
                assert sorted(j.map(procfns.square, range(12), executor=ex, workers=4)) == [x * x for x in range(12)]
            assert ex.submit(procfns.square, 3).result() == 9  # still usable: not ours to shut down
    with job(url, "bad") as j:
        with pytest.raises(UsageError, match="executor must be"):
            j.map(procfns.square, range(3), executor="dask")
        with pytest.raises(UsageError, match="give your own executor its initializer"):
            j.map(procfns.square, range(3), executor=cf.ThreadPoolExecutor(1), initializer=procfns.init)


def test_amap_runs_a_plain_function_in_an_executor(url: str) -> None:
    async def collect(j: Job, **kw: Any) -> list[int]:
        return sorted([r async for r in j.amap(procfns.square, range(15), workers=3, **kw)])

    for ex in ("processes", "threads"):
        with job(url, f"a-{ex}") as j:
            assert asyncio.run(collect(j, executor=ex)) == [x * x for x in range(15)]
        assert position(url, f"a-{ex}")["offset"] == 15


# -- the driver in a process of its own ----------------------------------------------------

DRIVER = r"""
import json, os, sys, time
from restartable import Job


def work(x):
    time.sleep(0.02)
    return x


if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    fd = os.open(cfg["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with Job("drv", store=cfg["store"], progress=False) as job:
        print("started", flush=True)
        for x in job.map(work, range(cfg["n"]), executor="processes", workers=2, every=1, grace=cfg["grace"]):
            os.write(fd, f"{x}\n".encode())
    print("finished", flush=True)
"""


def _driver(tmp_path: Path, url: str, n: int, grace: float = 5.0) -> subprocess.Popen[str]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    cfg = {"store": url, "n": n, "log": str(tmp_path / "results.log"), "grace": grace}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTARTABLE_")}
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: the signal goes to the group, as a terminal's Ctrl-C
    )


def _group(pgid: int) -> set[int]:
    """The live processes of process group ``pgid``, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.add(int(entry.name))
    return found


def _wait_results(log: Path, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} results in {timeout}s")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_group_exits_once_with_the_checkpoint_and_no_worker_left(
    url: str, tmp_path: Path, signum: int
) -> None:
    proc = _driver(tmp_path, url, n=400)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    _wait_results(tmp_path / "results.log", 20)
    members = _group(proc.pid)
    assert len(members) >= 3  # the driver, the forkserver and its workers
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum], err
    assert "Traceback" not in err and err.count("interrupted by") == 1, err
    deadline = time.monotonic() + 10
    while _group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group(proc.pid), "processes of the driver's group outlived it"
    with open_store(url) as store:
        rec = store.load("drv", "default")
    assert rec is not None and rec.status == INTERRUPTED
    pos = rec.positions["0"]
    done = DoneSet.decode(pos["offset"], pos.get("done"), where="t")
    results = {int(x) for x in (tmp_path / "results.log").read_text().split()}
    assert {i for i in range(400) if i in done} <= results  # the checkpoint claims only collected items


def test_driver_sigkilled_a_few_times_resumes_with_nothing_lost(url: str, tmp_path: Path) -> None:
    rng = random.Random(16)
    n, log = 150, tmp_path / "results.log"
    for kill in range(3):
        proc = _driver(tmp_path, url, n=n)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.3, 1.2))
        members = _group(proc.pid)
        os.killpg(
            proc.pid, signal.SIGKILL
        ) if kill == 0 else proc.kill()  # the whole group once, the driver alone after
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while any(not _gone(p, 0) for p in members) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(p, 0) for p in members), "a worker outlived its SIGKILLed driver"
    proc = _driver(tmp_path, url, n=n)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "finished" in out
    results = [int(x) for x in log.read_text().split()]
    assert set(results) == set(range(n))
    with open_store(url) as store:
        rec = store.load("drv", "default")
    assert rec is not None and rec.status == COMPLETED
