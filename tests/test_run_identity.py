"""Run identity on real worker processes: which checkpoint a job resumes, and when it starts over.

A run is ``(job, run)``: a new ``run`` starts fresh, the same ``run`` resumes,
``$RESTARTABLE_RUN`` is the default run, and a completed run does nothing when rerun
until ``restartable reset JOB --run RUN``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procs import Spawner, clean_env, local_store_url, mark_segment, read_log, wait_items, write_worker
from restartable._checkpoint import COMPLETED, INTERRUPTED
from restartable.cli import main as cli_main
from restartable.stores import open_store

JOB = "nightly"
N = 12


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    with Spawner(write_worker(tmp_path)) as s:
        yield s


@pytest.fixture
def url(tmp_path: Path) -> str:
    return local_store_url("sqlite", tmp_path)


def _cfg(url: str, log: Path, run: str | None, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"store": url, "job": JOB, "log": str(log), "n": N, "every": 3, "kind": "list"}
    if run is not None:
        cfg["run"] = run
    cfg.update(extra)
    return cfg


def _run(
    spawn: Spawner, cfg: dict[str, Any], log: Path, *, env: dict[str, str] | None = None, code: int = 0
) -> tuple[dict[str, str], list[int]]:
    """Run the worker to its end; return its ``started`` fields and the items it processed."""
    mark_segment(log, len(read_log(log)))
    w = spawn(cfg, env=env)
    info = w.started()
    assert w.finish() == code, w.stderr
    return info, read_log(log)[-1].items


def _runs(url: str) -> dict[str, str]:
    with open_store(url) as store:
        return {r.run: r.status for r in store.list_runs(JOB)}


def test_new_run_starts_fresh_and_the_same_run_resumes(spawn: Spawner, tmp_path: Path, url: str) -> None:
    log = tmp_path / "items.log"
    info, items = _run(spawn, _cfg(url, log, "2026-11-26"), log)
    assert info["resumed"] == "False" and info["done"] == "0" and items == list(range(N))

    # The next night: a new run id, a fresh start, although the previous run is kept.
    info, items = _run(spawn, _cfg(url, log, "2026-11-27"), log)
    assert info["run"] == "2026-11-27" and info["resumed"] == "False" and info["done"] == "0", info
    assert items == list(range(N))

    # A run killed halfway resumes under the same run id, and only there.
    cfg = _cfg(url, log, "2026-11-28", sleep=0.05, lease_seconds=60)
    mark_segment(log, "killed")
    w = spawn(cfg)
    w.started()
    wait_items(log, 5)
    w.signal(signal.SIGKILL)
    assert w.finish() == -signal.SIGKILL
    with open_store(url) as store:
        done = store.load(JOB, "2026-11-28").done
    assert done >= 3
    info, items = _run(spawn, _cfg(url, log, "2026-11-29"), log)
    assert info["resumed"] == "False" and items == list(range(N)), "another run id must not resume it"
    info, items = _run(spawn, cfg, log)
    assert info["resumed"] == "True" and int(info["done"]) == done, info
    assert items == list(range(done, N))
    assert _runs(url) == {d: COMPLETED for d in ("2026-11-26", "2026-11-27", "2026-11-28", "2026-11-29")}


def test_restartable_run_is_the_default_run(spawn: Spawner, tmp_path: Path, url: str) -> None:
    log = tmp_path / "items.log"
    # No run id and no $RESTARTABLE_RUN: the run is "default".
    info, _ = _run(spawn, _cfg(url, log, None), log)
    assert info["run"] == "default"

    env = clean_env(RESTARTABLE_RUN="uid-5f2c")
    cfg = _cfg(url, log, None, sleep=0.05)
    mark_segment(log, "interrupted")
    w = spawn(cfg, env=env)
    assert w.started()["run"] == "uid-5f2c"
    wait_items(log, 4)
    w.signal(signal.SIGTERM)
    assert w.finish() == 143, w.stderr
    assert _runs(url) == {"default": COMPLETED, "uid-5f2c": INTERRUPTED}

    # The same $RESTARTABLE_RUN (a retried Kubernetes pod of one Job) resumes it.
    done = len(read_log(log)[-1].items)
    info, items = _run(spawn, cfg, log, env=env)
    assert info["run"] == "uid-5f2c" and info["resumed"] == "True" and int(info["done"]) == done, info
    assert items == list(range(done, N))

    # An explicit run= wins over the environment.
    info, items = _run(spawn, _cfg(url, log, "explicit"), log, env=env)
    assert info["run"] == "explicit" and items == list(range(N))
    assert _runs(url) == {"default": COMPLETED, "uid-5f2c": COMPLETED, "explicit": COMPLETED}


@pytest.mark.parametrize("run", ["2026-11-27", None], ids=["named", "default"])
def test_completed_run_does_nothing_until_reset(
    spawn: Spawner, tmp_path: Path, url: str, run: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "items.log"
    cfg = _cfg(url, log, run)
    run_id = run or "default"
    _, items = _run(spawn, cfg, log)
    assert items == list(range(N))
    with open_store(url) as store:
        before = store.load(JOB, run_id)
    assert before is not None and before.status == COMPLETED

    # Rerun: completed at start, the loop yields nothing, exit 0, and nothing is written.
    mark_segment(log, "rerun")
    w = spawn(cfg)
    info = w.started()
    assert info["completed"] == "True" and info["status"] == COMPLETED, info
    assert w.finish() == 0, w.stderr
    assert "finished yielded=0" in w.seen, w.seen
    assert read_log(log)[-1].items == []
    hint = f"`restartable reset {JOB}{'' if run is None else f' --run {run}'}` runs it again"
    assert "is already complete" in w.stderr and hint in w.stderr, w.stderr
    with open_store(url) as store:
        after = store.load(JOB, run_id)
    assert after == before, "a rerun of a completed run must not write"

    # The CLI's reset (in-process, it returns the exit code) lets the run start over.
    argv = ["reset", JOB, "--store", url] + ([] if run is None else ["--run", run])
    assert cli_main(argv) == 0
    assert f"reset job {JOB} run {run_id} (was completed, {N} saved)" in capsys.readouterr().out
    assert _runs(url) == {}
    info, items = _run(spawn, cfg, log)
    assert info["completed"] == "False" and info["resumed"] == "False" and info["done"] == "0", info
    assert items == list(range(N))
    assert _runs(url) == {run_id: COMPLETED}


@pytest.mark.parametrize("store_kind", ["sqlite", "file"])
def test_reset_refuses_a_live_run_and_force_fences_it(
    spawn: Spawner, tmp_path: Path, store_kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = local_store_url(store_kind, tmp_path)
    log = tmp_path / "items.log"
    cfg = _cfg(url, log, "live", n=100, sleep=0.02, lease_seconds=60)
    mark_segment(log, "live")
    w = spawn(cfg)
    w.started()
    wait_items(log, 3)
    argv = ["reset", JOB, "--run", "live", "--store", url]
    assert cli_main(argv) == 75  # held by a live runner: refused
    assert f"pid {w.pid}" in capsys.readouterr().err
    assert cli_main(argv + ["--force"]) == 0
    # The runner is fenced at its next save or renewal and stops without recreating the record.
    assert w.finish() == 75, w.stderr
    assert "fenced off" in w.stderr and "Traceback" not in w.stderr, w.stderr
    assert _runs(url) == {}
    info, items = _run(spawn, cfg | {"sleep": 0}, log)
    assert info["resumed"] == "False" and info["done"] == "0" and items == list(range(100)), info
