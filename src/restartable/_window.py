"""Which items of a concurrent iteration are done, when they finish out of order.

Items are numbered by their index in the input. A :class:`DoneSet` is a *low
watermark* ``low`` (every index below it is done) plus the set of done indices
above it. The concurrent drivers start items only below ``low + window``, so the
set always lies in ``(low, low + window)``: its size, and the checkpoint's, is
bounded whatever the order of completion.

In the checkpoint the watermark is the cursor's ``offset`` and the set is
``extra["done"]``, a flat list of run lengths relative to the watermark::

    offset 100, done [2, 3, 1, 1]   ->  100-101 not done, 102-104 done,
                                        105 not done, 106 done

(alternately the length of a run of not-done items, then of done ones). Every
number is at least 1 and they sum to less than ``window``, and a number ``x``
takes at most ``x`` digits, so the JSON of the list never exceeds
``2 * window + 2`` bytes (:func:`encoded_bound`), however large the indices are:
20 KB at the default window of 10,000.
"""

from __future__ import annotations

from typing import Any

from .errors import CheckpointCorrupt

__all__ = ["DoneSet", "encoded_bound"]


def encoded_bound(window: int) -> int:
    """The most bytes the JSON of ``DoneSet.encode()`` can take under ``window``."""
    return 2 * window + 2


class DoneSet:
    """A low watermark plus the done indices above it. Not thread-safe: one thread owns it."""

    __slots__ = ("low", "above")

    def __init__(self, low: int = 0, above: set[int] | None = None) -> None:
        self.low = low
        self.above: set[int] = set()
        for i in above or ():
            self.add(i)

    def __contains__(self, index: int) -> bool:
        return index < self.low or index in self.above

    def __len__(self) -> int:
        """Done indices above the watermark (those the checkpoint lists one by one)."""
        return len(self.above)

    def add(self, index: int) -> None:
        """Mark ``index`` done; the watermark moves up over every contiguous done index."""
        if index == self.low:
            low = index + 1
            above = self.above
            if above:
                while low in above:
                    above.remove(low)
                    low += 1
            self.low = low
        elif index > self.low:
            self.above.add(index)

    def span(self) -> int:
        """How far above the watermark the highest done index lies (0 when none)."""
        return max(self.above) - self.low + 1 if self.above else 0

    def drop_from(self, end: int) -> None:
        """Forget done indices at or above ``end`` (an input that became shorter)."""
        self.above = {i for i in self.above if i < end}

    def encode(self) -> list[int]:
        """The run lengths from the watermark: not-done, done, not-done, done, ..."""
        out: list[int] = []
        pos = self.low  # the first index the list does not describe yet
        start = prev = -2
        for i in sorted(self.above):
            if i != prev + 1:  # a new run of done indices starts at i
                if start >= 0:
                    out += [start - pos, prev + 1 - start]
                    pos = prev + 1
                start = i
            prev = i
        if start >= 0:
            out += [start - pos, prev + 1 - start]
        return out

    @classmethod
    def decode(cls, low: int, runs: Any, *, where: str) -> DoneSet:
        """The inverse of :meth:`encode`; ``where`` names the cursor in error messages."""
        if runs is None:
            return cls(low)
        if not isinstance(runs, list) or not all(type(x) is int and x >= 0 for x in runs):
            raise CheckpointCorrupt(f"{where}: the done set {str(runs)[:80]!r} is not a list of run lengths")
        done = cls(low)
        pos = low
        for k, length in enumerate(runs):
            if k % 2:
                for i in range(pos, pos + length):
                    done.add(i)
            pos += length
        return done
