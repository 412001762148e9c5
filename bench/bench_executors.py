"""Throughput of ``job.map`` on CPU-bound items over processes and a Dask cluster, against the bare equivalents.

Each item is about 2 ms of pure-Python CPU (a loop calibrated at start-up), so threads
share one core (the GIL) and a pool of processes can use both cores of this machine.
Measured side by side in the same run, alternating the cases (A B A B, medians):

``job.map, threads``          ``job.map(fn, items, workers=2)``: the GIL-bound reference;
``job.map, processes``        ``executor="processes", workers=2`` (a pool started by ``spawn``,
                              created and shut down in each run, included in its time), and
                              ``workers=4`` (no target: two items per core in flight, so a
                              worker does not wait for the driver between items);
``bare ProcessPoolExecutor``  ``ProcessPoolExecutor(2, mp_context=spawn).map(fn, items)``,
                              the same start method, pool start-up included;
``job.map, Dask``             ``executor=client`` on a local cluster this script starts (a
                              scheduler and two single-thread workers, separate processes);
``bare Dask``                 ``client.map(fn, items)`` then ``distributed.as_completed``.

Every job runs on the embedded SQLite store with the default checkpoint policy (every
5 s and at the end). Targets (throughput): processes at least 1.7x threads and 0.9x the
bare pool; Dask at least 0.85x the bare ``client.map``. The report shows time per item
and time ratios (a throughput target t is a time ratio of at most 1/t).

    python bench/bench_executors.py [--quick] [--repeat N] [--no-dask]
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved, parser, report

from restartable import Job

WORKERS = 2
ITEM_SECONDS = 0.002


def burn(x: int, *, loops: int) -> int:
    """About ``ITEM_SECONDS`` of pure-Python CPU (``loops`` is calibrated by :func:`calibrate`)."""
    s = x
    for i in range(loops):
        s = (s * 31 + i) & 0xFFFFFFFF
    return s


def calibrate() -> int:
    """The ``loops`` that make :func:`burn` last about ``ITEM_SECONDS`` here (best of 5)."""
    probe = 20_000
    best = min(_timed(functools.partial(burn, 1, loops=probe)) for _ in range(5))
    return max(1, round(probe * ITEM_SECONDS / best))


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@contextmanager
def local_cluster(directory: str, *, workers: int = WORKERS) -> Iterator[str]:
    """A scheduler and ``workers`` single-thread workers (no nanny, no dashboard), each its own
    process in its own session; yields the scheduler's address, kills them all at exit."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, args: list[str]) -> str:
        path = os.path.join(directory, f"{name}.log")
        with open(path, "ab") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        return path

    def wait_for(path: str, pattern: str) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open(path, errors="replace") as f:
                m = re.search(pattern, f.read())
            if m:
                return m.group(1)
            time.sleep(0.05)
        raise RuntimeError(f"{path}: no {pattern!r} after 60 s")

    try:
        log = spawn(
            "scheduler", ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
        )
        address = wait_for(log, r"Scheduler at:\s+(tcp://\S+)")
        logs = [
            spawn(
                f"worker{i}",
                ["distributed.cli.dask_worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny"]
                + ["--no-dashboard", "--memory-limit", "0", "--local-directory", os.path.join(directory, f"w{i}")],
            )
            for i in range(workers)
        ]
        for path in logs:
            wait_for(path, r"(Registered to):")
        yield address
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--no-dask", action="store_true", help="leave out the Dask cases")
    args = p.parse_args()
    n = 1_000 if args.quick else 6_000  # 2 s (quick: 1 s) of CPU per case on 2 cores
    repeat = args.repeat or 3
    tmp = tempfile.mkdtemp(prefix="bench-executors-")
    store = f"sqlite:///{tmp}/b.db"
    logging.basicConfig(level=logging.WARNING)  # a configured root: the jobs' INFO lines stay quiet
    loops = calibrate()
    fn = functools.partial(burn, loops=loops)
    one = min(_timed(functools.partial(fn, 7)) for _ in range(20))
    print(f"item: {loops:,} loop turns, {one * 1e3:.2f} ms here; {n:,} items per case; {WORKERS} workers")

    def job_map(n: int, **options: Any) -> None:
        with Job(f"b{uuid.uuid4().hex[:8]}", store=store, progress=False) as job:
            for _ in job.map(fn, range(n), **options):
                pass

    def bare_pool(n: int) -> None:
        with ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("spawn")) as pool:
            for _ in pool.map(fn, range(n)):
                pass

    cases: dict[str, Callable[[int], None]] = {
        "job.map, threads": functools.partial(job_map, workers=WORKERS),
        "job.map, processes": functools.partial(job_map, workers=WORKERS, executor="processes"),
        "job.map, processes (workers=4)": functools.partial(job_map, workers=2 * WORKERS, executor="processes"),
        "bare ProcessPoolExecutor.map": bare_pool,
    }
    rows: list[tuple[str, str, float | None]] = [
        ("job.map, processes", "job.map, threads", round(1 / 1.7, 3)),
        ("job.map, processes", "bare ProcessPoolExecutor.map", round(1 / 0.9, 2)),
        ("job.map, processes (workers=4)", "bare ProcessPoolExecutor.map", None),
    ]

    with nullcontext(None) if args.no_dask else local_cluster(tmp) as address:
        client = None
        if address is not None:
            from distributed import Client, as_completed

            client = Client(address, set_as_default=False)

            def bare_dask(n: int) -> None:
                assert client is not None
                for future in as_completed(client.map(fn, range(n), pure=False), loop=client.loop):
                    future.result()

            cases["job.map, Dask (workers=8)"] = functools.partial(job_map, executor=client)
            cases["job.map, Dask (workers=32)"] = functools.partial(job_map, executor=client, workers=32)
            cases["bare client.map + as_completed"] = bare_dask
            rows += [
                ("job.map, Dask (workers=8)", "bare client.map + as_completed", round(1 / 0.85, 2)),
                ("job.map, Dask (workers=32)", "bare client.map + as_completed", None),
            ]
        try:
            t = interleaved(cases, n, repeat=repeat)
        finally:
            if client is not None:
                client.close()

    report(
        f"{n:,} CPU-bound items of ~{ITEM_SECONDS * 1e3:g} ms, {WORKERS} workers: time per item (lower is better); "
        "target: a time ratio at most 1/throughput target",
        [(case, t[case], base, t[base], target) for case, base, target in rows],
    )
    for case, base, _ in rows:
        print(f"throughput {case}: {t[base] / t[case]:.3f}x of {base}")


if __name__ == "__main__":
    main()
