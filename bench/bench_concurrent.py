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
import logging
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved, parser, report

from restartable import Job

WORKERS = 32
SLEEP = 0.010


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    n = 1_600 if args.quick else 8_000  # 0.5 s / 2.5 s of ideal work: the full run crosses checkpoints
    repeat = args.repeat or (3 if args.quick else 5)
    tmp = tempfile.mkdtemp(prefix="bench-concurrent-")
    store = f"sqlite:///{tmp}/b.db"
    logging.getLogger("restartable").setLevel(logging.WARNING)

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

    def job_threads(n: int) -> None:
        with Job(f"b{uuid.uuid4().hex[:8]}", store=store, progress=False) as job:
            for _ in job.map(work, range(n), workers=WORKERS):
                pass

    def bare_gather(n: int) -> None:
        async def run() -> None:
            sem = asyncio.Semaphore(WORKERS)

            async def one(x: int) -> int:
                async with sem:
                    return await awork(x)

            await asyncio.gather(*(one(x) for x in range(n)))

        asyncio.run(run())

    def job_amap(n: int) -> None:
        async def run() -> None:
            with Job(f"b{uuid.uuid4().hex[:8]}", store=store, progress=False) as job:
                async for _ in job.amap(awork, range(n), concurrency=WORKERS):
                    pass

        asyncio.run(run())

    t = interleaved(
        {
            "bare ThreadPoolExecutor.map": bare_threads,
            "job.map (sqlite, default checkpoints)": job_threads,
            "bare asyncio.gather + Semaphore": bare_gather,
            "job.amap (sqlite, default checkpoints)": job_amap,
        },
        n,
        repeat=repeat,
    )
    target = round(1 / 0.9, 2)
    report(
        f"{n:,} items of {SLEEP * 1e3:g} ms, {WORKERS} workers: time per item (lower is better), "
        f"target >= 0.9x throughput (time ratio <= {target}x)",
        [
            ("job.map (sqlite, default checkpoints)", t["job.map (sqlite, default checkpoints)"],
             "bare ThreadPoolExecutor.map", t["bare ThreadPoolExecutor.map"], target),
            ("job.amap (sqlite, default checkpoints)", t["job.amap (sqlite, default checkpoints)"],
             "bare asyncio.gather + Semaphore", t["bare asyncio.gather + Semaphore"], target),
        ],
    )
    for case, base in (("job.map (sqlite, default checkpoints)", "bare ThreadPoolExecutor.map"),
                       ("job.amap (sqlite, default checkpoints)", "bare asyncio.gather + Semaphore")):
        print(f"throughput {case}: {t[base] / t[case]:.3f}x of {base}")


if __name__ == "__main__":
    main()
