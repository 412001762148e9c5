"""``restartable demo``: a real-size job to interrupt and resume, with exactly-once output.

It turns 200,000 generated customer records into an output file of one line each,
about 40 seconds of work on the embedded default store. Press Ctrl-C (or kill it)
and run it again: it resumes where it stopped, and the output has no duplicate
and no missing line, because the output file's length is saved in the checkpoint
after an fsync and a resume truncates the file back to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import click

from .._job import Job

#: PBKDF2 rounds per record: about 250 µs of CPU here, so the whole demo takes ~40 s.
WORK_ROUNDS = 400


class Customers(Sequence[dict[str, Any]]):
    """A generated dataset: record ``i`` is computed from ``i``, so seeking is O(1)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {"id": i, "name": f"customer-{i:06d}", "cents": (i * 7919) % 100_000}


def process(record: dict[str, Any], rounds: int) -> bytes:
    """The 'work': a keyed digest of the record, as one CSV line."""
    data = json.dumps(record, sort_keys=True).encode()
    digest = hashlib.pbkdf2_hmac("sha256", data, b"restartable-demo", rounds).hex()[:16]
    return f"{record['id']},{record['name']},{record['cents'] / 100:.2f},{digest}\n".encode()


def verify(path: Path, n: int) -> tuple[int, int, int]:
    """(lines, duplicate ids, missing ids) of the output file."""
    seen = bytearray(n)
    lines = dups = 0
    with open(path, "rb") as f:
        for line in f:
            lines += 1
            i = int(line.split(b",", 1)[0])
            if seen[i]:
                dups += 1
            seen[i] = 1
    return lines, dups, n - sum(seen)


@click.command()
@click.option(
    "--store",
    "store_url",
    envvar="RESTARTABLE_STORE",
    default=None,
    metavar="URL",
    help="Store URL (default: $RESTARTABLE_STORE, else the embedded SQLite default).",
)
@click.option("--items", default=200_000, show_default=True, help="How many records to process.")
@click.option(
    "--output", default=".restartable/demo/output.csv", show_default=True, type=click.Path(), help="The output file."
)
@click.option("--fresh", is_flag=True, help="Forget the previous demo run and start over.")
@click.option("--rounds", default=WORK_ROUNDS, show_default=True, help="Work per record (PBKDF2 rounds).")
def demo(store_url: str | None, items: int, output: str, fresh: bool, rounds: int) -> None:
    """Process 200,000 records with exactly-once output; interrupt it and run it again.

    Press Ctrl-C at any time (or kill -9 it): the rerun resumes where it stopped and
    the output file ends with every record exactly once.
    """
    out_path = Path(output)
    out_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    run = f"items-{items}"
    if fresh:
        from ..stores import open_store

        with open_store(store_url) as store:
            store.delete("demo", run)
        out_path.unlink(missing_ok=True)
    t0 = time.monotonic()
    with Job("demo", run=run, store=store_url) as job:
        if job.completed:
            lines, dups, missing = verify(out_path, items) if out_path.exists() else (0, 0, items)
            click.echo(
                f"The demo already completed: {out_path} has {lines:,} lines, {dups} duplicates, "
                f"{missing} missing. Run `restartable demo --fresh` to start over."
            )
            return
        if job.resumed:
            job.state["resumes"] = job.state.get("resumes", 0) + 1
        fd = os.open(out_path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+b") as out:
            # Exactly-once: drop whatever was written after the last checkpoint.
            out.truncate(job.state.get("output_bytes", 0))
            out.seek(0, os.SEEK_END)

            def make_durable() -> None:
                if out.closed:  # the final save at block exit: the loop already made it durable
                    return
                out.flush()
                os.fsync(out.fileno())
                job.state["output_bytes"] = out.tell()

            job.on_checkpoint(make_durable)
            start = job.record.done if job.record else 0
            for record in job.iterate(Customers(items), seconds=1.0):
                out.write(process(record, rounds))
        elapsed = time.monotonic() - t0
        job.state["seconds"] = job.state.get("seconds", 0.0) + elapsed
    lines, dups, missing = verify(out_path, items)
    click.echo(
        f"\nDemo complete: {items:,} items ({items - start:,} in this run, {elapsed:.1f}s), "
        f"{job.state.get('resumes', 0)} resume(s).\n"
        f"Output {out_path}: {lines:,} lines, {dups} duplicates, {missing} missing."
    )
