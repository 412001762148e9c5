"""Throughput of ``job.map`` / ``job.amap`` on I/O-bound items against the bare equivalents.

Each item sleeps 10 ms (``time.sleep`` on 32 threads, ``asyncio.sleep`` in 32 tasks).
Baselines, measured side by side in the same run: ``ThreadPoolExecutor(32).map`` over
the same items, and ``asyncio.gather`` of every item under a ``Semaphore(32)``. The
job runs on the embedded SQLite store with the default checkpoint policy (every 5 s,
and at the end), so the checkpoints are included. Target: at least 0.9x the baseline's
throughput, i.e. a time ratio of at most 1/0.9 = 1.11x.

    python bench/bench_concurrent.py [--quick]
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved, parser, report

from restartable import Job

WORKERS = 32
SLEEP = 0.010


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    # A full run lasts about 6.5 s: it crosses one periodic save of the default policy (5 s) and ends
    # with the final one. The "every 0.1 s" rows show what frequent checkpoints cost (no target).
    n = 1_600 if args.quick else 20_000
    repeat = args.repeat or 3
    tmp = tempfile.mkdtemp(prefix="bench-concurrent-")
    store = f"sqlite:///{tmp}/b.db"
    logging.basicConfig(level=logging.WARNING)  # a configured root: the jobs' INFO lines stay quiet

    def work(x: int) -> int:
        time.sleep(SLEEP)
        return x

    async def awork(x: int) -> int:
        await asyncio.sleep(SLEEP)
        return x

    def bare_threads(n: int) -> None:
        with ThreadPoolExecutor(WORKERS) as pool:
            for _ in pool.map(work, range(n)):
                pass

    def job_threads(n: int, **policy: Any) -> None:
        with Job(f"b{uuid.uuid4().hex[:8]}", store=store, progress=False) as job:
            for _ in job.map(work, range(n), workers=WORKERS, **policy):
                pass

    def bare_gather(n: int) -> None:
        async def run() -> None:
            sem = asyncio.Semaphore(WORKERS)

            async def one(x: int) -> int:
                async with sem:
                    return await awork(x)

            await asyncio.gather(*(one(x) for x in range(n)))

        asyncio.run(run())

    def job_amap(n: int, **policy: Any) -> None:
        async def run() -> None:
            with Job(f"b{uuid.uuid4().hex[:8]}", store=store, progress=False) as job:
                async for _ in job.amap(awork, range(n), workers=WORKERS, **policy):
                    pass

        asyncio.run(run())

    cases = {
        "bare ThreadPoolExecutor.map": bare_threads,
        "job.map (sqlite, default checkpoints)": job_threads,
        "job.map (sqlite, every 0.1 s)": functools.partial(job_threads, seconds=0.1),
        "bare asyncio.gather + Semaphore": bare_gather,
        "job.amap (sqlite, default checkpoints)": job_amap,
        "job.amap (sqlite, every 0.1 s)": functools.partial(job_amap, seconds=0.1),
    }
    t = interleaved(cases, n, repeat=repeat)
    target = round(1 / 0.9, 2)
    threads, aio = "bare ThreadPoolExecutor.map", "bare asyncio.gather + Semaphore"
    rows = [
        ("job.map (sqlite, default checkpoints)", threads, target),
        ("job.map (sqlite, every 0.1 s)", threads, None),
        ("job.amap (sqlite, default checkpoints)", aio, target),
        ("job.amap (sqlite, every 0.1 s)", aio, None),
    ]
    report(
        f"{n:,} items of {SLEEP * 1e3:g} ms, {WORKERS} workers: time per item (lower is better); target: "
        f">= 0.9x the throughput, i.e. a time ratio <= {target}x",
        [(case, t[case], base, t[base], tgt) for case, base, tgt in rows],
    )
    for case, base, _ in rows:
        print(f"throughput {case}: {t[base] / t[case]:.3f}x of {base}")


if __name__ == "__main__":
    main()
