"""One reader of the store for every page: the snapshot cache, and the progress series it keeps.

A :class:`Refresher` thread reads the store once per interval and publishes an
immutable :class:`Snapshot`; every page, API call and scrape is served from the latest
one, so ten open pages cost the store what one does. Only read calls are made
(``now``, ``list_runs``, ``history``), and ``history`` only for a run whose record
changed since the last read (a save changes ``updated`` and appends to the history in
one atomic write, so an unchanged record has an unchanged history).

The stores keep a run's last :data:`~restartable.stores.base.HISTORY_LIMIT` saves only;
for a chart of the whole run the refresher merges every history it reads into a
:class:`Series` per run, kept in this process's memory and downsampled so that it never
holds more than :data:`SERIES_POINTS` points (and at most :data:`SERIES_RUNS` runs): a
page left open over a long run draws all of it, at a resolution that halves as the
run grows. A restarted ``restartable serve`` starts again from the stores' histories.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from restartable import Checkpoint, HistoryEntry
from restartable.cli._report import (
    RunSummary,
    StatusRead,
    status_json,
    status_rows,
)
from restartable.errors import RestartableError
from restartable.stores import Store

#: Saves read per changed run: all a store keeps.
HISTORY_READ = 50
#: The most points a run's series keeps; past it, every other point is dropped.
SERIES_POINTS = 240
#: The most runs with a series; the least recently saved ones are forgotten first.
SERIES_RUNS = 1000

Point = tuple[float, int, int]  # (at, done, epoch)
RunKey = tuple[str, str]


def merge_series(
    points: tuple[Point, ...], history: list[HistoryEntry], *, limit: int = SERIES_POINTS
) -> tuple[Point, ...]:
    """``points`` (oldest first) with the saves of ``history`` (newest first) that are newer, downsampled.

    Downsampling keeps the first and the last point and drops every other one in
    between, until at most ``limit`` remain: the series always spans the whole run seen.
    """
    last = points[-1][0] if points else float("-inf")
    new = [(h.at, h.done, h.epoch) for h in reversed(history) if h.at > last]
    if not new:
        return points
    out = list(points) + new
    while len(out) > limit:
        out = [out[0], *out[1:-1:2], out[-1]] if len(out) > 2 else out[-limit:]
    return tuple(out)


@dataclass(frozen=True)
class Snapshot:
    """What one read of the store saw. Immutable: handlers read it without locks."""

    display: str
    read: StatusRead | None = None  # None until the first successful read
    rows: list[RunSummary] = field(default_factory=list)  # grouped, as ``status`` shows them
    runs: list[RunSummary] = field(default_factory=list)  # one per run, shards apart
    document: dict[str, Any] | None = None  # what ``status --json`` prints
    series: dict[RunKey, tuple[Point, ...]] = field(default_factory=dict)
    read_at: float = 0.0  # time.time() of the last successful read
    error: str | None = None  # why the last read failed (None: it did not)
    error_since: float | None = None  # time.time() of the first failure in a row
    reads: int = 0  # successful reads so far

    def record(self, job: str, run: str) -> Checkpoint | None:
        if self.read is None:
            return None
        return next((r for r in self.read.records if r.job == job and r.run == run), None)

    def history(self, job: str, run: str) -> list[HistoryEntry]:
        return [] if self.read is None else self.read.histories.get((job, run), [])


class Refresher:
    """Reads the store every ``interval`` seconds from one daemon thread; :attr:`snapshot` is the latest read.

    ``open_store`` is called lazily, on the refresher thread, and again after a read
    failed with something other than a library error (the connection may be broken in
    a way the store cannot repair). A library error (a down server, a locked database)
    keeps the store: the drivers reconnect on the next call.
    """

    def __init__(
        self, open_store: Callable[[], Store], *, display: str, interval: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._open = open_store
        self._store: Store | None = None
        self.interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._keys: dict[RunKey, tuple[int, float, int, str]] = {}
        self._started: dict[RunKey, float] = {}
        self.in_flight_since: float | None = None
        self.snapshot = Snapshot(display=display)

    # -- the thread ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="restartable-serve-refresh", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # noqa: BLE001 - closing at exit: nothing left to protect
                pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.refresh()
            self._stop.wait(max(0.05, self.interval - (time.monotonic() - started)))

    # -- one read -------------------------------------------------------------------

    def refresh(self) -> Snapshot:
        """Read the store once and publish the result (a failure is published as an error)."""
        self.in_flight_since = self._clock()
        try:
            snap = self._read()
        except RestartableError as exc:
            snap = self._failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - a page must show a broken store, not die of it
            snap = self._failed(f"{type(exc).__name__}: {exc}")
            self._reopen()
        finally:
            self.in_flight_since = None
        self.snapshot = snap
        return snap

    def _failed(self, message: str) -> Snapshot:
        from restartable._url import redact

        old = self.snapshot
        return Snapshot(
            display=old.display,
            read=old.read,
            rows=old.rows,
            runs=old.runs,
            document=old.document,
            series=old.series,
            read_at=old.read_at,
            error=redact(message),
            error_since=old.error_since if old.error is not None else self._clock(),
            reads=old.reads,
        )

    def _reopen(self) -> None:
        store, self._store = self._store, None
        self._keys.clear()  # histories must be read again from the new connection
        if store is not None:
            try:
                store.close()
            except Exception:  # noqa: BLE001 - it is broken already
                pass

    def _read(self) -> Snapshot:
        if self._store is None:
            self._store = self._open()
        store = self._store
        old = self.snapshot
        now = store.now()
        bad: list[Any] = []
        records = store.list_runs(None, corrupt=bad)
        histories: dict[RunKey, list[HistoryEntry]] = {}
        keys: dict[RunKey, tuple[int, float, int, str]] = {}
        for rec in records:
            key = (rec.job, rec.run)
            keys[key] = (rec.epoch, rec.updated, rec.done, rec.status)
            if self._keys.get(key) == keys[key] and old.read is not None and key in old.read.histories:
                histories[key] = old.read.histories[key]
            else:
                histories[key] = store.history(rec.job, rec.run, limit=HISTORY_READ)
        self._keys = keys
        read = StatusRead(records, histories, bad, now)
        series = self._series(old.series, records, histories)
        rows = status_rows(read)
        runs = status_rows(read, shards=True)
        return Snapshot(
            display=old.display,
            read=read,
            rows=rows,
            runs=runs,
            document=status_json(old.display, rows, bad),
            series=series,
            read_at=self._clock(),
            error=None,
            error_since=None,
            reads=old.reads + 1,
        )

    def _series(
        self,
        old: dict[RunKey, tuple[Point, ...]],
        records: list[Checkpoint],
        histories: dict[RunKey, list[HistoryEntry]],
    ) -> dict[RunKey, tuple[Point, ...]]:
        """Each listed run's series with its new saves merged; runs gone from the store are dropped."""
        recent = sorted(records, key=lambda r: r.updated, reverse=True)[:SERIES_RUNS]
        out: dict[RunKey, tuple[Point, ...]] = {}
        started: dict[RunKey, float] = {}
        for rec in recent:
            key = (rec.job, rec.run)
            started[key] = rec.started
            # Another start time: the run was reset and began again; its old points are another run's.
            points = old.get(key, ()) if self._started.get(key) == rec.started else ()
            out[key] = merge_series(points, histories.get(key, []))
        self._started = started
        return out


def chart(points: tuple[Point, ...], *, width: int = 640, height: int = 220) -> dict[str, Any]:
    """The SVG geometry of a run's chart: progress (items done) and rate (items/s) over time.

    Everything is numbers and plain text, computed here once for the page and for its
    script (``/api/runs/JOB/RUN/view``), which only sets attributes: no markup travels.
    A restart (a new epoch) is a vertical line; the rate is the slope between two saves
    of the same epoch.
    """
    left, right, top, bottom = 64, 64, 12, 28
    w, h = width - left - right, height - top - bottom
    geometry: dict[str, Any] = {
        "width": width,
        "height": height,
        "plot": {"x": left, "y": top, "w": w, "h": h},
        "progress": "",
        "rate": "",
        "restarts": [],
        "labels": {"done_max": "", "rate_max": "", "start": "", "end": "", "span": ""},
        "points": len(points),
    }
    if len(points) < 2:
        return geometry
    from restartable.cli._report import human_duration, iso

    t0, t1 = points[0][0], points[-1][0]
    span = max(t1 - t0, 1e-9)
    # Scaled to the run's own progress, not its total: a long run's first hours stay readable (the bar
    # above the chart gives the share of the total).
    ymax = max(max(p[1] for p in points), 1)

    def x(t: float) -> float:
        return round(left + w * (t - t0) / span, 1)

    def y(v: float, vmax: float) -> float:
        return round(top + h - h * v / vmax, 1)

    geometry["progress"] = " ".join(f"{x(t)},{y(d, ymax)}" for t, d, _ in points)
    rates: list[tuple[float, float]] = []
    for (ta, da, ea), (tb, db, eb) in itertools.pairwise(points):
        if ea == eb and tb > ta:
            rates.append((tb, max(0.0, (db - da) / (tb - ta))))
        elif ea != eb:
            geometry["restarts"].append(x(tb))
    rmax = max((r for _, r in rates), default=0.0)
    if rates and rmax > 0:
        geometry["rate"] = " ".join(f"{x(t)},{y(r, rmax)}" for t, r in rates)
        geometry["labels"]["rate_max"] = f"{rmax:,.1f}/s"
    geometry["labels"].update(
        done_max=f"{ymax:,}", start=iso(t0)[11:19], end=iso(t1)[11:19], span=human_duration(t1 - t0)
    )
    return geometry


__all__ = ["Refresher", "Snapshot", "chart", "merge_series", "SERIES_POINTS", "SERIES_RUNS", "HISTORY_READ"]
