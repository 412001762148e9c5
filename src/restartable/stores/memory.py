"""``memory://NAME``: an in-process store for tests and examples. Nothing survives the process.

Stores opened with the same name in one process share their data, so a test can
play two runners against one store.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Self

from .._checkpoint import Checkpoint, HistoryEntry, Owner, decode_record, encode_record
from .._url import StoreURL
from .base import HISTORY_LIMIT, Store, Unreadable

_SHARED: dict[str, _Data] = {}
_SHARED_LOCK = threading.Lock()


class _Data:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.records: dict[tuple[str, str], Checkpoint] = {}
        self.history: dict[tuple[str, str], deque[HistoryEntry]] = {}
        self.markers: dict[tuple[str, str, str], dict[str, Any]] = {}
        #: The highest epoch of any record deleted: new records start above it, whatever
        #: the clock says (see base.first_epoch).
        self.epoch_floor = 0


class MemoryStore(Store):
    """A dict behind a lock. Implements the whole contract except durability."""

    schemes = ("memory",)

    def __init__(self, name: str = "", *, read_only: bool = False) -> None:
        """The store ``name`` (shared in this process; "" for a private one).

        ``read_only``: writes raise UsageError, and a name no store used yet is not
        registered (it reads as empty).
        """
        with _SHARED_LOCK:
            if read_only:
                self._d = _SHARED.get(name) or _Data()
            else:
                self._d = _SHARED.setdefault(name, _Data()) if name else _Data()
        self.display = f"memory://{name}"
        if read_only:
            self._make_read_only()

    @classmethod
    def from_url(cls, url: StoreURL, *, read_only: bool = False) -> Self:
        return cls(url.raw.split("://", 1)[1].strip("/"), read_only=read_only)

    def load(self, job: str, run: str) -> Checkpoint | None:
        with self._d.lock:
            return self._d.records.get((job, run))

    def acquire(
        self, job: str, run: str, *, owner: Owner, lease_seconds: float, steal_epoch: int | None = None
    ) -> Checkpoint:
        with self._d.lock:
            now = self.now()
            rec = self._d.records.get((job, run))
            if rec is None:
                rec = self._new_record(job, run, owner, now, lease_seconds, floor=self._d.epoch_floor)
            else:
                rec = self._take_over(rec, owner, now, lease_seconds, steal_epoch)
            self._put(rec)
            return self._d.records[(job, run)]

    def save(self, record: Checkpoint, *, lease_seconds: float | None) -> Checkpoint:
        with self._d.lock:
            key = (record.job, record.run)
            cur = self._d.records.get(key)
            if cur is None or cur.epoch != record.epoch:
                raise self._fenced(record.job, record.run, record.epoch, cur.epoch if cur else None)
            now = self.now()
            rec = record.replace(
                updated=now, heartbeat=now, lease_expires=None if lease_seconds is None else now + lease_seconds
            )
            self._put(rec)
            return self._d.records[key]

    def _put(self, rec: Checkpoint) -> None:
        # Encode and decode like a real store: refuses non-JSON state before anything
        # changes, and keeps no reference to the caller's dicts.
        rec = decode_record(encode_record(rec))
        key = (rec.job, rec.run)
        self._d.records[key] = rec
        self._d.history.setdefault(key, deque(maxlen=HISTORY_LIMIT)).appendleft(rec.history_entry())

    def renew(self, job: str, run: str, *, epoch: int, lease_seconds: float) -> float:
        with self._d.lock:
            cur = self._d.records.get((job, run))
            if cur is None or cur.epoch != epoch:
                raise self._fenced(job, run, epoch, cur.epoch if cur else None)
            if cur.lease_expires is None:  # released: a late renewal must not take it again
                raise self._released(job, run, epoch)
            now = self.now()
            self._d.records[(job, run)] = cur.replace(heartbeat=now, lease_expires=now + lease_seconds)
            return now + lease_seconds

    def delete(self, job: str, run: str, *, epoch: int | None = None) -> bool:
        with self._d.lock:
            cur = self._d.records.get((job, run))
            if cur is None or (epoch is not None and cur.epoch != epoch):
                return False
            self._d.epoch_floor = max(self._d.epoch_floor, cur.epoch)
            del self._d.records[(job, run)]
            self._d.history.pop((job, run), None)
            for key in [k for k in self._d.markers if k[:2] == (job, run)]:
                del self._d.markers[key]
            return True

    def list_runs(self, job: str | None = None, *, corrupt: list[Unreadable] | None = None) -> list[Checkpoint]:
        # Records are kept decoded: none can be unreadable.
        with self._d.lock:
            return sorted(
                (r for r in self._d.records.values() if job is None or r.job == job), key=lambda r: (r.job, r.run)
            )

    def history(self, job: str, run: str, *, limit: int = 20) -> list[HistoryEntry]:
        with self._d.lock:
            return list(self._d.history.get((job, run), ()))[:limit]

    def mark(self, job: str, run: str, cursor: str, key: str, value: Any, *, epoch: int) -> None:
        with self._d.lock:
            cur = self._d.records.get((job, run))
            if cur is None or cur.epoch != epoch:
                raise self._fenced(job, run, epoch, cur.epoch if cur else None)
            self._d.markers.setdefault((job, run, cursor), {})[key] = value

    def markers(self, job: str, run: str, cursor: str) -> dict[str, Any]:
        with self._d.lock:
            return dict(self._d.markers.get((job, run, cursor), {}))
