"""The iteration engine behind ``Job.iterate``: chunks, exact positions, O(1) seeks.

The hot path is ``yield from`` over a chunk's built-in iterator (list, tuple,
range or str): no Python code runs per item, so iterating costs about what a bare
generator costs. Our code runs once per chunk. Chunks adapt their size so that one
takes about :data:`TARGET_CHUNK_SECONDS` of the caller's time (one item when items
are slow), and end on the ``every`` boundaries, so count-based checkpoints land
exactly and time-based ones at most one chunk late.

Positions stay exact because built-in iterators expose their index
(``__reduce__``): while the caller is inside the loop body with item ``k`` of a
chunk, the chunk iterator's index is ``k + 1`` and the item in flight is not done.
A signal handler, which runs in the main thread between bytecodes, ends the chunk
early by moving that index to the end (``__setstate__``) after noting it, so the
loop stops right after the item in flight and not one item later.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, cast

from ._fingerprint import Fingerprinter, sample_indices

#: Wall time one chunk should take; also the worst lateness of a time-based checkpoint.
TARGET_CHUNK_SECONDS = 0.02
#: Upper bound on a chunk's length (memory for iterator sources, which are buffered).
MAX_CHUNK = 1 << 16


class Hooks(Protocol):
    """What the engine calls between chunks; see :func:`run_chunks`."""

    def boundary(self, cursor: Cursor, count_due: bool) -> None: ...

    def end(self, cursor: Cursor) -> None: ...

    def close(self, cursor: Cursor) -> None: ...


class Source:
    """Where a cursor's items come from: ``take(start, n)`` returns the next chunk.

    Sequences (``len`` and indexing) seek in O(1): ``take`` slices from ``start``.
    Other iterables are consumed in order; a resume skips the done items by
    reading them (O(position), documented).
    """

    def __init__(self, iterable: Iterable[Any]) -> None:
        self.seq: Sequence[Any] | None = None
        self.it: Iterator[Any] | None = None
        if isinstance(iterable, (list, tuple, range, str)):
            self.seq = iterable
            self._slice = True
        elif isinstance(iterable, Sequence) or (
            hasattr(iterable, "__len__")
            and hasattr(iterable, "__getitem__")
            and not isinstance(iterable, (dict, set, frozenset))
        ):
            self.seq = iterable  # type: ignore[assignment]
            self._slice = False
        else:
            self.it = iter(iterable)

    @property
    def length(self) -> int | None:
        return len(self.seq) if self.seq is not None else None

    @property
    def seekable(self) -> bool:
        return self.seq is not None

    def take(self, start: int, n: int) -> Sequence[Any]:
        if self.seq is not None:
            if self._slice:
                return self.seq[start : start + n]
            return [self.seq[i] for i in range(start, min(start + n, len(self.seq)))]
        assert self.it is not None
        return list(itertools.islice(self.it, n))


class Cursor:
    """One named iteration of a job, and its position.

    ``offset`` counts the items done before the current chunk; ``position()`` adds
    the done items of the chunk in flight.
    """

    def __init__(
        self, name: str, *, offset: int, total: int | None, finished: bool, extra: dict[str, Any] | None = None
    ) -> None:
        self.name = name
        self.offset = offset
        self.total = total
        self.finished = finished
        #: Source-specific position data saved with the cursor (a keyset source keeps its
        #: last key here, a concurrent one its done set). JSON values through the codec.
        self.extra: dict[str, Any] = dict(extra or {})
        self.started = False
        self.chunk: Iterator[Any] | None = None  # the built-in iterator being yielded from
        self.stop_index: int | None = None  # set by a signal: how many chunk items were handed out
        self.stop_pending = False  # a signal came between chunks: hand out nothing more

    def position(self) -> int:
        """Items done: the item in flight (handed out, loop not yet back) is not done."""
        chunk = self.chunk
        if chunk is None:
            return self.offset
        # The index first, then stop_index: a signal handler (stop_soon) that runs between
        # the two lines records the real index in stop_index before it moves the iterator
        # to its end, so the second read sees it. The other order could read the moved
        # index and save a position past the item in flight.
        red = cast("tuple[Any, ...]", chunk.__reduce__())  # (type, (start,), index): the index is red[2]
        stop = self.stop_index
        if stop is not None:
            return self.offset + max(0, stop - 1)
        if len(red) < 3:  # exhausted: every item was handed out and the loop came back
            return self.offset
        return self.offset + max(0, red[2] - 1)

    def stop_soon(self) -> None:
        """End the current chunk after the item in flight (signal-handler safe)."""
        chunk = self.chunk
        if chunk is None:
            self.stop_pending = True  # between chunks: the next chunk hands out nothing
            return
        if self.stop_index is not None:
            return
        red = cast("tuple[Any, ...]", chunk.__reduce__())
        if len(red) < 3:
            return
        self.stop_index = red[2]
        chunk.__setstate__(1 << 62)  # type: ignore[attr-defined]

    def as_position(self) -> dict[str, Any]:
        return {**self.extra, "offset": self.position(), "finished": self.finished, "total": self.total}


def run_chunks(
    cursor: Cursor,
    source: Source,
    fingerprint: Fingerprinter,
    *,
    every: int | None,
    hooks: Hooks,
) -> Iterator[Any]:
    """Yield the items of ``source`` from ``cursor.offset`` on, chunk by chunk.

    ``hooks.boundary(cursor, count_due)`` runs before the first chunk and between
    chunks (never per item); it checkpoints when due and raises to stop the loop
    (Interrupted, Fenced). ``count_due`` is True when ``every`` items were done since
    the last checkpoint. ``hooks.end(cursor)`` runs once the source is exhausted, and
    ``hooks.close(cursor)`` always runs last (after a break, an exception or the end).
    The caller gets this generator itself: a wrapping generator would cost a frame
    switch per item.
    """
    on_boundary = hooks.boundary
    n = 1
    next_count = cursor.offset + every if every else 1 << 62
    monotonic = time.monotonic
    try:
        on_boundary(cursor, False)
        while True:
            want = min(n, next_count - cursor.offset) if every else n
            t0 = monotonic()
            chunk = source.take(cursor.offset, want)
            if not chunk:
                break
            if fingerprint.enabled and sample_indices(cursor.offset, cursor.offset + len(chunk)):
                fingerprint.see(cursor.offset, chunk)
            it = iter(chunk)
            cursor.stop_index = None
            cursor.chunk = it
            if cursor.stop_pending:  # a signal arrived at the boundary: nothing more goes out
                cursor.stop_index = 0
                it.__setstate__(1 << 62)  # type: ignore[attr-defined]
            # An explicit loop, not ``yield from it``: on CPython 3.11 delegating to a list
            # iterator costs ~3 ns more per item than resuming this frame (measured), and the
            # position is the same either way (``it`` is advanced before each item goes out).
            for item in it:  # noqa: UP028 - measured faster than `yield from` (see above)
                yield item
            # The loop came back for the item after the chunk's last one: all of it is done,
            # unless a signal ended the chunk early.
            handed = cursor.stop_index if cursor.stop_index is not None else len(chunk)
            cursor.chunk = None
            cursor.stop_index = None
            cursor.offset += handed
            # (Items of an iterator source read ahead but not handed out, because a signal
            # ended the chunk, are dropped: we are stopping, and a resume skips exactly.)
            elapsed = monotonic() - t0
            if elapsed < TARGET_CHUNK_SECONDS / 2 and n < MAX_CHUNK:
                n *= 2
            elif elapsed > TARGET_CHUNK_SECONDS * 2 and n > 1:
                n = max(1, n // 2)
            count_due = cursor.offset >= next_count
            if count_due:
                next_count = cursor.offset + every if every else 1 << 62
            on_boundary(cursor, count_due)
            if len(chunk) < want and not source.seekable:
                break  # an iterator that gave fewer items than asked is exhausted
        hooks.end(cursor)
    finally:
        # A break or a close: fix the position at the items done, drop the chunk.
        if cursor.chunk is not None:
            cursor.offset = cursor.position()
            cursor.chunk = None
            cursor.stop_index = None
        hooks.close(cursor)


def skip(source: Source, count: int, fingerprint: Fingerprinter) -> int:
    """Move a non-seekable source past ``count`` done items, checking the fingerprint.

    Returns how many items were skipped (fewer when the input is shorter).
    """
    skipped = 0
    while skipped < count:
        chunk = source.take(skipped, min(MAX_CHUNK, count - skipped))
        if not chunk:
            break
        fingerprint.see(skipped, chunk)
        skipped += len(chunk)
    return skipped
