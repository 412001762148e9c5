"""Per-item cost of ``job.iterate`` against a bare ``for`` loop and a bare generator.

Targets: iterate's hot path at most 1.5x the bare generator ``def g(it): for x in it: yield x``.
The job uses the memory store and no checkpoint policy that would fire during the
measurement (``seconds=3600``), so this measures the hot path alone; a second case
uses the default policy on the embedded SQLite store, checkpoints included.

    python bench/bench_iterate.py [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved, parser, report  # noqa: E402

from restartable import Job  # noqa: E402


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    n = 300_000 if args.quick else 3_000_000
    repeat = args.repeat or (3 if args.quick else 7)
    data = list(range(n))
    tmp = tempfile.mkdtemp(prefix="bench-iterate-", dir=".")

    def bare_for(n: int) -> None:
        for _ in data:
            pass

    def g(it):
        for x in it:
            yield x

    def bare_gen(n: int) -> None:
        for _ in g(data):
            pass

    def bare_gen_range(n: int) -> None:
        for _ in g(range(n)):
            pass

    def job_memory(n: int) -> None:
        with Job(f"b{uuid.uuid4().hex[:8]}", store="memory://", progress=False) as job:
            for _ in job.iterate(data, seconds=3600):
                pass

    def job_memory_range(n: int) -> None:
        with Job(f"b{uuid.uuid4().hex[:8]}", store="memory://", progress=False) as job:
            for _ in job.iterate(range(n), seconds=3600):
                pass

    def gen_source():
        yield from data

    def bare_gen_over_gen(n: int) -> None:
        for _ in g(gen_source()):
            pass

    def job_generator_source(n: int) -> None:
        with Job(f"b{uuid.uuid4().hex[:8]}", store="memory://", progress=False) as job:
            for _ in job.iterate(gen_source(), seconds=3600):
                pass

    def job_sqlite_default(n: int) -> None:
        with Job(f"b{uuid.uuid4().hex[:8]}", store=f"sqlite:///{tmp}/b.db", progress=False) as job:
            for _ in job.iterate(data):
                pass

    import logging

    logging.getLogger("restartable").setLevel(logging.WARNING)
    t = interleaved(
        {
            "bare for": bare_for,
            "bare generator": bare_gen,
            "iterate (list, memory)": job_memory,
            "bare generator over a range": bare_gen_range,
            "iterate (range, memory)": job_memory_range,
            "bare generator over a generator": bare_gen_over_gen,
            "iterate (generator source)": job_generator_source,
            "iterate (list, sqlite, default policy)": job_sqlite_default,
        },
        n,
        repeat=repeat,
    )
    report(
        f"iterate hot path, {n:,} items, median of {repeat}",
        [
            ("iterate (list, memory store)", t["iterate (list, memory)"], "bare generator", t["bare generator"], 1.5),
            ("iterate (range, memory store)", t["iterate (range, memory)"], "bare generator over a range",
             t["bare generator over a range"], 1.5),
            ("iterate (generator source)", t["iterate (generator source)"], "bare generator over a generator",
             t["bare generator over a generator"], 1.5),
            ("iterate (list, sqlite, default 5 s policy)", t["iterate (list, sqlite, default policy)"],
             "bare generator", t["bare generator"], 1.5),
            ("bare generator", t["bare generator"], "bare for", t["bare for"], None),
        ],
    )


if __name__ == "__main__":
    main()
