"""job.map / job.amap / job.aiterate in one process: order, resume, window, dead letters, rate, limits.

Real threads, real asyncio, the real SQLite store. A "crash" here is leaving the loop
(``break``): the job saves what is done (the result being handled is not), and a new
Job on the same run resumes; the process-level SIGKILL and SIGTERM tests are in
test_concurrent_crash.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from restartable import Job, SkipBudgetExceeded, UsageError, exit_code_for
from restartable._checkpoint import COMPLETED, FAILED, INTERRUPTED, encode_record
from restartable._concurrency.engines import DEFAULT_WINDOW
from restartable._concurrency.window import DoneSet, encoded_bound
from restartable.stores import open_store


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/ckpt.db"


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.getLogger("restartable").setLevel(logging.WARNING)


def job(url: str, run: str = "r") -> Job:
    return Job("conc", run=run, store=url, progress=False)


def load(url: str, run: str = "r"):
    with open_store(url) as store:
        return store.load("conc", run)


def done_of(pos: dict[str, Any]) -> set[int]:
    d = DoneSet.decode(pos["offset"], pos.get("done"), where="test")
    return set(range(d.low)) | d.above


# -- the done set ----------------------------------------------------------------------


def test_done_set_round_trip_and_watermark() -> None:
    d = DoneSet(100)
    for i in (102, 103, 104, 106):
        d.add(i)
    assert d.low == 100 and d.encode() == [2, 3, 1, 1]
    d.add(100)
    d.add(101)
    assert d.low == 105 and d.encode() == [1, 1]
    back = DoneSet.decode(105, [1, 1], where="x")
    assert back.low == 105 and back.above == {106} and 104 in back and 105 not in back


def test_worst_case_done_set_stays_within_its_bound_whatever_the_indices() -> None:
    """Every other item of a full default window done, at an index near 10**15."""
    low = 10**15
    d = DoneSet(low, {i for i in range(low + 1, low + DEFAULT_WINDOW, 2)})
    text = json.dumps(d.encode(), separators=(",", ":"))
    assert len(text) <= encoded_bound(DEFAULT_WINDOW) == 2 * DEFAULT_WINDOW + 2
    assert len(text) > DEFAULT_WINDOW  # it is the worst case: nearly the whole bound


def test_bad_done_set_is_a_clear_error() -> None:
    from restartable.errors import CheckpointCorrupt

    with pytest.raises(CheckpointCorrupt, match="run lengths"):
        DoneSet.decode(0, [1, "x"], where="job x")


# -- order -----------------------------------------------------------------------------


def slow_first(x: int) -> int:
    time.sleep(0.15 if x == 0 else 0.001)
    return x


def test_completion_order_by_default_input_order_on_request(url: str) -> None:
    with job(url) as j:
        got = list(j.map(slow_first, range(30), workers=4))
        assert sorted(got) == list(range(30)) and got[0] != 0 and got.index(0) > 3
        assert list(j.map(slow_first, range(30), workers=4, ordered=True)) == list(range(30))
    assert load(url).status == COMPLETED


def test_amap_orders_like_map(url: str) -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(0.15 if x == 0 else 0.001)
        return x

    async def main() -> tuple[list[int], list[int]]:
        with job(url) as j:
            a = [r async for r in j.amap(slow, range(30), workers=4)]
            b = [r async for r in j.amap(slow, range(30), workers=4, ordered=True)]
        return a, b

    a, b = asyncio.run(main())
    assert sorted(a) == list(range(30)) and a[0] != 0 and b == list(range(30))


# -- resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["range", "generator"])
def test_resume_processes_only_items_not_done(url: str, kind: str) -> None:
    calls: Counter[int] = Counter()
    lock = threading.Lock()

    def fn(x: int) -> int:
        time.sleep(0.02 if x % 7 == 0 else 0.002)  # out of order
        with lock:
            calls[x] += 1
        return x

    def items() -> Any:
        return range(200) if kind == "range" else (i for i in range(200))

    acked: list[int] = []
    with job(url) as j:
        for r in j.map(fn, items(), workers=6):
            if len(acked) == 120:
                break  # r is being handled: not done
            acked.append(r)
    rec = load(url)
    assert rec.status == INTERRUPTED
    pos = rec.positions["0"]
    assert done_of(pos) == set(acked), "the checkpoint holds exactly the acknowledged results"
    assert pos["offset"] < len(acked) or pos["done"] == [], pos  # out of order: a watermark plus a set
    first = Counter(calls)
    with job(url) as j:
        rest = list(j.map(fn, items(), workers=6))
    assert load(url).status == COMPLETED
    assert set(rest) == set(range(200)) - set(acked) and len(rest) == len(set(rest))
    redone = [x for x in first if calls[x] > 1]
    assert len(redone) <= 6, f"redone {redone}: more than the in-flight items"
    assert not set(redone) & set(acked)


def test_window_bounds_how_far_a_straggler_lets_others_run(url: str) -> None:
    release = threading.Event()
    started: list[int] = []

    def fn(x: int) -> int:
        started.append(x)
        if x == 0:
            release.wait(10)
        return x

    with job(url) as j:
        got = []
        for r in j.map(fn, range(100), workers=4, window=20):
            got.append(r)
            if len(got) == 19:  # 1..19 finished, 0 straggling: the window is full
                time.sleep(0.1)
                assert max(started) == 19, "no item may start at or beyond watermark + window"
                j.checkpoint()
                pos = load(url).positions["0"]
                # 1..18 done; 19 (being handled) and 0 (straggling) in flight.
                assert pos["offset"] == 0 and pos["done"] == [1, 18] and pos["in_flight"] == 2, pos
                release.set()
        assert sorted(got) == list(range(100))


def test_full_window_record_stays_within_documented_bound(url: str) -> None:
    """Every even item held back, every odd one done: the window full of one-item runs."""
    window = 200
    workers = window // 2 + 1  # the 100 held even items, plus the odd result being handled
    release = threading.Event()

    def fn(x: int) -> int:
        if x % 2 == 0:
            release.wait(10)
        return x

    with job(url) as j:
        n = 0
        for r in j.map(fn, range(1000), workers=workers, window=window):
            n += 1
            if r == window - 1:  # every item of the window started; 1..197 done, 199 being handled
                time.sleep(0.05)
                j.checkpoint()
                rec = load(url)
                pos = rec.positions["0"]
                assert pos["offset"] == 0 and pos["done"] == [1] * (window - 2), pos
                assert pos["in_flight"] == workers
                # The done set adds at most its documented bound to the record.
                assert len(json.dumps(pos["done"], separators=(",", ":"))) <= encoded_bound(window)
                without = rec.replace(positions={"0": {**pos, "done": []}})
                assert len(encode_record(rec)) - len(encode_record(without)) <= encoded_bound(window)
                # The rest of the cursor's position is a few small fields (no dead letters here).
                assert len(json.dumps(pos)) - len(json.dumps(pos["done"])) < 150
                release.set()
    assert n == 1000


def test_aiterate_sync_and_async_iterables_resume_after_the_item_in_flight(url: str) -> None:
    async def agen():
        for i in range(50):
            await asyncio.sleep(0)
            yield i

    async def first() -> list[int]:
        out = []
        with job(url) as j:
            async with contextlib.aclosing(j.aiterate(agen(), name="a")) as it:
                async for i in it:
                    if i == 20:
                        break
                    out.append(i)
            async for i in j.aiterate(range(10), name="b"):
                out.append(100 + i)
        return out

    async def second() -> list[int]:
        with job(url) as j:
            return [i async for i in j.aiterate(agen(), name="a")] + [i async for i in j.aiterate(range(10), name="b")]

    assert asyncio.run(first()) == list(range(20)) + [100 + i for i in range(10)]
    rec = load(url)
    assert rec.positions["a"]["offset"] == 20 and rec.positions["b"]["finished"]
    assert asyncio.run(second()) == list(range(20, 50))
    assert load(url).status == COMPLETED


def test_amap_over_an_async_iterable_resumes(url: str) -> None:
    async def agen():
        for i in range(40):
            yield i

    async def fn(x: int) -> int:
        await asyncio.sleep(0.01 if x % 3 else 0.03)
        return x

    async def run(stop_after: int | None) -> list[int]:
        out: list[int] = []
        with job(url) as j:
            async with contextlib.aclosing(j.amap(fn, agen(), workers=5)) as it:
                async for r in it:
                    if len(out) == stop_after:
                        break
                    out.append(r)
        return out

    first = asyncio.run(run(15))
    second = asyncio.run(run(None))
    assert not set(first) & set(second) and set(first) | set(second) == set(range(40))


# -- failures ----------------------------------------------------------------------------


class Flaky:
    """Fails for chosen items: ValueError is retried, TypeError is not."""

    def __init__(self, value_errors: set[int], type_errors: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.value_errors, self.type_errors = set(value_errors), set(type_errors)
        self.calls: Counter[int] = Counter()
        self.lock = threading.Lock()

    def __call__(self, x: int) -> int:
        with self.lock:
            self.calls[x] += 1
        if x in self.value_errors:
            raise ValueError(f"bad item {x}")
        if x in self.type_errors:
            raise TypeError(f"wrong type {x}")
        return x


def test_retries_then_dead_letters(url: str) -> None:
    fn = Flaky({3, 17}, {9})
    with job(url) as j:
        got = list(
            j.map(
                fn,
                range(30),
                workers=4,
                attempts=3,
                backoff=0.001,
                retry_on=ValueError,
                on_error="skip",
                key=lambda x: {"id": x},
                name="m",
            )
        )
        assert sorted(got) == sorted(set(range(30)) - {3, 9, 17})
        assert fn.calls[3] == fn.calls[17] == 3 and fn.calls[9] == 1 and fn.calls[4] == 1
    dead = load(url).positions["m"]["dead"]
    assert dead == {
        "3": {"error": "ValueError: bad item 3", "attempts": 3, "key": {"id": 3}},
        "9": {"error": "TypeError: wrong type 9", "attempts": 1, "key": {"id": 9}},
        "17": {"error": "ValueError: bad item 17", "attempts": 3, "key": {"id": 17}},
    }
    assert load(url).status == COMPLETED  # skipped items do not keep a run from completing


def test_dead_letter_of_an_iterator_item_and_long_errors(url: str) -> None:
    def fn(x: int) -> int:
        if x == 2:
            raise RuntimeError("x" * 5000)
        return x

    with job(url) as j:
        assert sorted(j.map(fn, (i for i in range(5)), on_error="skip")) == [0, 1, 3, 4]
    entry = load(url).positions["0"]["dead"]["2"]
    assert entry["key"] == 2 and entry["attempts"] == 1 and len(entry["error"]) == 300


def test_skip_budget_then_reprocess_dead_letters(url: str) -> None:
    fn = Flaky({5, 6, 30})
    with pytest.raises(SkipBudgetExceeded, match="skip budget of 1") as info, job(url) as j:
        for _ in j.map(fn, range(60), workers=3, on_error="skip", skip_budget=1):
            pass
    assert exit_code_for(info.value) == 65
    rec = load(url)
    assert rec.status == FAILED
    pos = rec.positions["0"]
    assert set(pos["dead"]) == {"5", "6"} and pos["dead"]["5"]["error"] == "ValueError: bad item 5"
    assert {5, 6} <= done_of(pos)  # settled: a plain rerun does not retry them

    # The cause is fixed for item 5 only; the rerun reprocesses the dead letters first.
    fn.value_errors = {6}
    before = Counter(fn.calls)
    with job(url) as j:
        got = list(j.map(fn, range(60), workers=3, on_error="skip", skip_budget=5, retry_dead=True))
        j.checkpoint()
        pos = load(url).positions["0"]
    assert 5 in got and 6 not in got and 30 in got  # 30 never failed in the first run
    assert pos["dead"] == {"6": {"error": "ValueError: bad item 6", "attempts": 2, "key": 6}}
    again = {x for x in fn.calls if fn.calls[x] > before.get(x, 0)}
    assert {5, 6} <= again
    assert not again & (done_of(rec.positions["0"]) - {5, 6}), "done items were processed again"


@pytest.mark.parametrize("kind", ["map over a generator", "amap over an async generator"])
def test_retry_dead_reads_dead_letters_back_from_iterators(url: str, kind: str) -> None:
    """Dead letters below the watermark are captured while the iterator is skipped."""
    failing = {2, 40}
    calls: Counter[int] = Counter()

    def sync_fn(x: int) -> int:
        calls[x] += 1
        time.sleep(0.001)
        if x in failing:
            raise ValueError(f"bad item {x}")
        return x

    async def async_fn(x: int) -> int:
        await asyncio.sleep(0.001)
        return sync_fn(x)

    def run(**options: Any) -> list[int]:
        if kind.startswith("map"):
            with job(url) as j:
                return list(j.map(sync_fn, (i for i in range(60)), workers=3, on_error="skip", **options))

        async def agen():
            for i in range(60):
                yield i

        async def main() -> list[int]:
            with job(url) as j:
                return [r async for r in j.amap(async_fn, agen(), workers=3, on_error="skip", **options)]

        return asyncio.run(main())

    with pytest.raises(SkipBudgetExceeded):
        run(skip_budget=1)
    rec = load(url)
    assert rec.status == FAILED and set(rec.positions["0"]["dead"]) == {"2", "40"}
    assert rec.positions["0"]["dead"]["40"]["key"] == 40
    assert rec.positions["0"]["offset"] > 2
    done_before = done_of(rec.positions["0"])
    failing.clear()
    before = Counter(calls)
    got = run(retry_dead=True)
    assert {2, 40} <= set(got) and set(got) == set(range(60)) - done_before | {2, 40}
    rec = load(url)
    assert rec.status == COMPLETED and rec.positions["0"]["dead"] == {} and rec.done == 60
    assert {x for x in calls if calls[x] > before[x]} == set(got)


def test_ordered_results_skip_dead_letters(url: str) -> None:
    with job(url) as j:
        got = list(j.map(Flaky({3, 4, 11}), range(20), workers=4, ordered=True, on_error="skip"))
    assert got == [x for x in range(20) if x not in (3, 4, 11)]


def test_on_error_stop_fails_the_job_and_the_rerun_retries_the_item(url: str) -> None:
    fn = Flaky({4})
    with pytest.raises(ValueError, match="bad item 4") as info, job(url) as j:
        for _ in j.map(fn, range(10), workers=2):
            pass
    assert any("item 4 failed after 1 attempt" in n for n in getattr(info.value, "__notes__", []))
    rec = load(url)
    assert rec.status == FAILED and 4 not in done_of(rec.positions["0"])
    fn.value_errors = set()
    with job(url) as j:
        got = list(j.map(fn, range(10), workers=2))
    assert 4 in got and not set(got) & done_of(rec.positions["0"])


def test_rate_limit_spaces_the_calls(url: str) -> None:
    starts: list[float] = []

    def fn(x: int) -> int:
        starts.append(time.monotonic())
        return x

    with job(url) as j:
        t0 = time.monotonic()
        assert sorted(j.map(fn, range(12), workers=4, rate=40)) == list(range(12))
    # Call k starts no earlier than its slot, t0 + k/40 s (lower bounds only: never a timing ceiling).
    for k, at in enumerate(sorted(starts)):
        assert at - t0 >= k / 40 - 0.001, (k, at - t0)


def test_rate_limit_and_retries_in_amap(url: str) -> None:
    tries: Counter[int] = Counter()

    async def fn(x: int) -> int:
        tries[x] += 1
        if x == 2 and tries[x] < 3:
            raise ConnectionError("flaky")
        return x

    async def main() -> list[int]:
        with job(url) as j:
            return [r async for r in j.amap(fn, range(8), workers=3, rate=200, attempts=3, backoff=0.001)]

    assert sorted(asyncio.run(main())) == list(range(8)) and tries[2] == 3


# -- status, edge cases, usage -------------------------------------------------------------


def test_in_flight_count_is_checkpointed_while_running(url: str) -> None:
    gate = threading.Event()

    def fn(x: int) -> int:
        if x >= 1:
            gate.wait(5)
        return x

    with job(url) as j:
        for r in j.map(fn, range(6), workers=3):
            if r == 0:
                time.sleep(0.05)
                j.checkpoint()
                pos = load(url).positions["0"]
                assert pos["in_flight"] == 3 and pos["total"] == 6, pos  # 0 being handled, 1 and 2 running
                gate.set()
    pos = load(url).positions["0"]
    assert pos["in_flight"] == 0 and pos["offset"] == 6 and pos["finished"] and pos["done"] == []


def test_completed_run_yields_nothing(url: str) -> None:
    with job(url) as j:
        assert len(list(j.map(abs, range(5)))) == 5
    with job(url) as j:
        assert j.completed and list(j.map(abs, range(5))) == []


def test_bad_options_are_usage_errors(url: str) -> None:
    async def agen():
        yield 1

    with job(url) as j:
        for bad in (
            {"workers": 0},
            {"window": 0},
            {"attempts": 0},
            {"on_error": "ignore"},
            {"rate": 0},
            {"retry_on": 3},
            {"skip_budget": -1},
            {"every": 0},
        ):
            with pytest.raises(UsageError):
                j.map(abs, range(3), **bad)
        with pytest.raises(UsageError, match="job.amap"):
            j.map(abs, agen())
        with pytest.raises(UsageError, match="callable"):
            j.map(3, range(3))  # type: ignore[arg-type]


def test_dead_letters_of_a_completed_run_are_reprocessed_after_reopen(tmp_path, capsys):
    from restartable import Job
    from restartable.cli import main as cli_main

    url = f"sqlite:///{tmp_path}/reopen.db"
    flaky = {3, 7}

    def fn(x):
        if x in flaky:
            raise ValueError(f"bad {x}")
        return x

    with Job("reopen", store=url, progress=False) as job:
        first = sorted(job.map(fn, list(range(10)), workers=2, on_error="skip"))
    assert first == [0, 1, 2, 4, 5, 6, 8, 9] and job.record.status == "completed"
    assert job.record.failed == 2
    assert cli_main(["reopen", "reopen", "--store", url]) == 0
    assert "reopened" in capsys.readouterr().out
    flaky.clear()
    with Job("reopen", store=url, progress=False) as job:
        again = sorted(job.map(fn, list(range(10)), workers=2, on_error="skip", retry_dead=True))
    assert again == [3, 7]
    assert job.record.status == "completed" and job.record.failed == 0
