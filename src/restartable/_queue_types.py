"""What the work queue's front end (:mod:`restartable.queue`) and its storages share.

The storages (``restartable._postgres.queue``, ``restartable._redis.queue``) return
these and implement :class:`QueueBackend`; they never import the front end, and the
front end finds them through the store registry (:func:`restartable.stores.queue_backend`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

__all__ = ["Counts", "QueueBackend", "Row"]


@dataclass(frozen=True)
class Counts:
    """``total`` tasks, ``done``, ``leased`` (live leases), ``pending`` (claimable now)."""

    total: int
    done: int
    leased: int
    next_expiry: float | None = None  # seconds until the earliest live lease expires

    @property
    def pending(self) -> int:
        return self.total - self.done - self.leased


@dataclass
class Row:
    """One claimed task as its storage returns it."""

    key: str
    payload: Any
    epoch: int
    attempts: int
    offset: int


class QueueBackend(Protocol):
    """A queue's storage: every change one fenced statement or script, times the server's."""

    #: The URL options this storage understands (others are refused).
    options: ClassVar[frozenset[str]]
    display: str

    def filled(self) -> bool: ...
    def mark_filled(self) -> None: ...
    def fill(self, rows: list[tuple[str, str]]) -> int: ...
    def claim(self, owner: str, lease: float) -> Row | None: ...
    def renew(self, key: str, epoch: int, lease: float) -> bool: ...
    def complete(self, key: str, epoch: int) -> bool: ...
    def release(self, key: str, epoch: int) -> bool: ...
    def checkpoint(self, key: str, epoch: int, offset: int, lease: float) -> bool: ...
    def holder(self, key: str) -> tuple[int, str | None, bool]: ...
    def counts(self) -> Counts: ...
    def drop(self) -> None: ...
    def transaction(self, key: str, epoch: int) -> AbstractContextManager[tuple[Any, dict[str, bool]]]: ...
    def close(self) -> None: ...
