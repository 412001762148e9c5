"""Shards: one deterministic slice of the input per worker of a Kubernetes Indexed Job.

A shard is ``(index, count)``. Inside an Indexed Job, ``JOB_COMPLETION_INDEX`` gives
the index and the manifest's ``RESTARTABLE_SHARDS`` the count. Each shard keeps its
own checkpoint: the job's record is stored under the run ``<run>.shard-<i>-of-<n>``,
so the pods of one Job never contend for one lease. ``restartable status`` shows the
shards of a run as one line, ``show`` each of them.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import UsageError

Shard = tuple[int, int]

_SHARD_RUN = re.compile(r"^(?P<base>.+)\.shard-(?P<i>\d+)-of-(?P<n>\d+)$")


def _check(index: int, count: int) -> Shard:
    if not (isinstance(index, int) and isinstance(count, int)) or count < 1 or not 0 <= index < count:
        raise UsageError(f"invalid shard ({index!r}, {count!r}): use (index, count) with 0 <= index < count")
    return index, count


def from_env() -> Shard | None:
    """The shard Kubernetes assigns, or None outside an Indexed Job."""
    index = os.environ.get("JOB_COMPLETION_INDEX")
    if index is None or index == "":
        return None
    count = os.environ.get("RESTARTABLE_SHARDS")
    if not count:
        raise UsageError(
            "JOB_COMPLETION_INDEX is set but RESTARTABLE_SHARDS is not: set it to the Job's completions "
            "(`restartable k8s indexed-job` does), or pass shard=(index, count)"
        )
    try:
        return _check(int(index), int(count))
    except ValueError:
        raise UsageError(f"JOB_COMPLETION_INDEX={index!r} / RESTARTABLE_SHARDS={count!r} are not integers") from None


def resolve(spec: Any) -> Shard | None:
    """``None`` (no shard), ``"auto"`` (from the environment, None outside Kubernetes) or ``(i, n)``."""
    if spec is None:
        return None
    if spec == "auto":
        return from_env()
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return _check(spec[0], spec[1])
    raise UsageError(f"invalid shard {spec!r}: use 'auto', (index, count) or None")


def shard_run(run: str, shard: Shard) -> str:
    return f"{run}.shard-{shard[0]}-of-{shard[1]}"


def parse_shard_run(run: str) -> tuple[str, Shard] | None:
    """``("2026-11-27", (3, 8))`` for ``"2026-11-27.shard-3-of-8"``, else None."""
    m = _SHARD_RUN.match(run)
    if not m:
        return None
    return m.group("base"), (int(m.group("i")), int(m.group("n")))


class _View(Sequence[Any]):
    """A contiguous slice of a sequence, without copying it."""

    def __init__(self, seq: Sequence[Any], start: int, stop: int) -> None:
        self._seq, self._start, self._len = seq, start, max(0, stop - start)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._len))]
        if not -self._len <= i < self._len:
            raise IndexError(i)
        return self._seq[self._start + (i % self._len)]


def slice_for(iterable: Iterable[Any], shard: Shard) -> Iterable[Any]:
    """Shard ``i`` of ``n``: a contiguous block of a sequence, every n-th item of an iterator."""
    i, n = shard
    if isinstance(iterable, (list, tuple, range, str)):
        length = len(iterable)
        return iterable[length * i // n : length * (i + 1) // n]
    if isinstance(iterable, Sequence):
        length = len(iterable)
        return _View(iterable, length * i // n, length * (i + 1) // n)
    return itertools.islice(iterable, i, None, n)
