"""Issue 13 point 4: a typed public API, one name for one idea, every public exception in errors.py."""

from __future__ import annotations

import asyncio
import inspect
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import restartable
from restartable import Job, WorkQueue, errors
from restartable._concurrency import engines
from restartable._sources import batches, files, transaction

#: Each public method of Job that forwards to an implementation, and that implementation.
FORWARDS: dict[str, Callable[..., Any]] = {
    "map": engines.map_threads,
    "amap": engines.amap,
    "aiterate": engines.aiterate,
    "files": files.iterate_files,
    "batches": batches.iterate_batches,
    "output": files.atomic_output,
    "transaction": transaction.transaction,
}


def _keywords(fn: Callable[..., Any]) -> dict[str, Any]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}


@pytest.mark.parametrize("method", sorted(FORWARDS))
def test_each_job_method_spells_out_the_keywords_of_what_it_calls(method: str) -> None:
    params = inspect.signature(getattr(Job, method)).parameters.values()
    assert not [p for p in params if p.kind is p.VAR_KEYWORD], f"Job.{method} still takes **options"
    # Same names and same defaults: a default changed in one place only would be a silent fork.
    assert _keywords(getattr(Job, method)) == _keywords(FORWARDS[method])
    assert all(p.annotation is not inspect.Parameter.empty for p in params if p.name != "self")


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/ckpt.db"


async def _amap_all(job: Job, **kw: Any) -> list[int]:
    async def double(x: int) -> int:
        return 2 * x

    return sorted([r async for r in job.amap(double, range(5), **kw)])


def test_amap_takes_workers_and_still_accepts_concurrency_with_a_deprecation_warning(tmp_path: Path) -> None:
    with Job("a", store=_store(tmp_path), progress=False, handle_signals=False) as job:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the new spelling warns about nothing
            assert asyncio.run(_amap_all(job, workers=2)) == [0, 2, 4, 6, 8]
    with Job("b", store=_store(tmp_path), progress=False, handle_signals=False) as job:
        with pytest.warns(DeprecationWarning, match="workers=") as caught:
            assert asyncio.run(_amap_all(job, concurrency=2)) == [0, 2, 4, 6, 8]
        assert caught[0].filename == __file__  # points at the caller's line, not at the library
    with Job("c", store=_store(tmp_path), progress=False, handle_signals=False) as job:
        with pytest.raises(restartable.UsageError, match="give workers= only"):
            asyncio.run(_amap_all(job, workers=3, concurrency=2))
        with pytest.raises(restartable.UsageError, match="workers must be"):
            asyncio.run(_amap_all(job, workers=0))


@pytest.mark.parametrize("every", [True, False, 0, -1, 1.5, "3"])
def test_every_is_refused_the_same_way_by_every_loop(tmp_path: Path, every: Any) -> None:
    """``every=True`` was accepted by iterate (as 1) and refused by batches: now one rule, one message."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f.txt").write_text("x")
    table = restartable.SQLiteTable(f"{tmp_path}/data.db", "t", key="id")
    messages = set()
    with Job("e", store=_store(tmp_path), progress=False, handle_signals=False) as job:
        loops: list[Callable[[], Any]] = [
            lambda: next(iter(job.iterate(range(3), every=every))),
            lambda: next(iter(job.batches(table, every=every))),
            lambda: next(iter(job.files(str(tmp_path / "in" / "*.txt"), every=every))),
            lambda: next(iter(job.map(str, range(3), every=every))),
            lambda: job.aiterate(range(3), every=every),
            lambda: job.amap(_amap_all, range(3), every=every),
        ]
        for loop in loops:
            with pytest.raises(restartable.UsageError) as err:
                loop()
            messages.add(str(err.value))
    assert messages == {f"every must be a positive int (a count of done items) or None, not {every!r}"}


def test_workqueue_takes_its_name_first_like_job(tmp_path: Path) -> None:
    params = list(inspect.signature(WorkQueue).parameters.values())
    assert params[0].name == "name"
    assert inspect.signature(WorkQueue).parameters["store"].kind is inspect.Parameter.KEYWORD_ONLY
    # A sqlite store has no queue backend: the error proves the URL reached the store, the name the queue.
    url = _store(tmp_path)
    with pytest.raises(restartable.ConfigError) as new_order:
        WorkQueue("q", store=url)
    with pytest.warns(DeprecationWarning, match=r"WorkQueue\(name, store=store_url\)") as caught:
        with pytest.raises(restartable.ConfigError) as old_order:
            WorkQueue(url, "q")
    assert caught[0].filename == __file__
    assert str(old_order.value) == str(new_order.value)


@pytest.mark.parametrize("first", ["postgresql://db/app", "redis://localhost:6379/0", "sqlite:///x.db", "/tmp/x.db"])
def test_workqueue_refuses_a_store_url_where_the_name_goes(first: str) -> None:
    with pytest.raises(restartable.UsageError, match=r"not a store URL: write WorkQueue\(name, store=url\)"):
        WorkQueue(first)


def test_workqueue_refuses_two_stores_and_no_name() -> None:
    with pytest.raises(restartable.UsageError, match="store twice"):
        WorkQueue("redis://a", "q", store="redis://b")
    with pytest.raises(restartable.UsageError, match="needs the queue's name"):
        WorkQueue()


def test_every_public_exception_lives_in_errors_and_is_exported() -> None:
    public_errors = {
        name
        for name in restartable.__all__
        if isinstance(getattr(restartable, name), type) and issubclass(getattr(restartable, name), BaseException)
    }
    assert {"StagesChanged", "CommandFailed"} <= public_errors
    for name in public_errors:
        assert name in errors.__all__ and getattr(errors, name) is getattr(restartable, name), name
    # Their old homes still give the same classes (one minor version of compatibility).
    from restartable._concurrency.processes import CommandFailed
    from restartable._pipeline import StagesChanged
    from restartable.cli.each_file import CommandFailed as FromCli

    assert StagesChanged is errors.StagesChanged and CommandFailed is FromCli is errors.CommandFailed
    assert errors.StagesChanged.exit_code == errors.EXIT_DATA and errors.CommandFailed.exit_code == errors.EXIT_FAILED
