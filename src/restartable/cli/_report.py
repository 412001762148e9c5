"""What ``status`` and ``show`` compute from a record and its history: rate, ETA, lease health."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from .._progress import human_duration
from .._proc import owner_is_dead
from ..checkpoint import RUNNING, Checkpoint, HistoryEntry, encode_value


@dataclass(frozen=True)
class RunSummary:
    job: str
    run: str
    status: str
    done: int
    total: int | None
    rate: float | None
    eta: float | None
    updated: float
    age: float
    owner: str
    lease: str  # "held", "stale", "dead owner", "free"

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "run": self.run,
            "status": self.status,
            "done": self.done,
            "total": self.total,
            "rate_per_second": None if self.rate is None else round(self.rate, 3),
            "eta_seconds": None if self.eta is None else round(self.eta, 1),
            "updated": iso(self.updated),
            "seconds_since_update": round(self.age, 1),
            "owner": self.owner,
            "lease": self.lease,
        }


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).isoformat(timespec="seconds")


def total_of(rec: Checkpoint) -> int | None:
    totals = [p.get("total") for p in rec.positions.values()]
    if not totals or any(not isinstance(t, int) for t in totals):
        return None
    return sum(totals)  # type: ignore[arg-type]


def rate_of(history: list[HistoryEntry]) -> float | None:
    """Items per second over the recent saves of the current epoch (history is newest first)."""
    if len(history) < 2:
        return None
    newest = history[0]
    oldest = newest
    for h in history[1:]:
        if h.epoch != newest.epoch or h.done > oldest.done:
            break
        oldest = h
    span = newest.at - oldest.at
    if span <= 0 or newest.done <= oldest.done:
        return None
    return (newest.done - oldest.done) / span


def lease_state(rec: Checkpoint, now: float) -> str:
    if rec.lease_expires is None:
        return "free"
    if rec.owner is not None and owner_is_dead(rec.owner):
        return "dead owner"
    if rec.lease_expires <= now:
        return "stale"
    return "held"


def summarize(rec: Checkpoint, history: list[HistoryEntry], now: float) -> RunSummary:
    total = total_of(rec)
    rate = rate_of(history) if rec.status == RUNNING else None
    eta = (total - rec.done) / rate if (rate and total is not None and total >= rec.done) else None
    return RunSummary(
        job=rec.job,
        run=rec.run,
        status=rec.status,
        done=rec.done,
        total=total,
        rate=rate,
        eta=eta,
        updated=rec.updated,
        age=max(0.0, now - rec.updated),
        owner=rec.owner.describe() if rec.owner else "",
        lease=lease_state(rec, now),
    )


def group_shards(rows: list[RunSummary]) -> list[RunSummary]:
    """One summary per sharded run (``<run>.shard-<i>-of-<n>``), the others unchanged."""
    from .._shard import parse_shard_run

    out: list[RunSummary] = []
    groups: dict[tuple[str, str, int], list[RunSummary]] = {}
    for r in rows:
        parsed = parse_shard_run(r.run)
        if parsed is None:
            out.append(r)
        else:
            groups.setdefault((r.job, parsed[0], parsed[1][1]), []).append(r)
    for (job, base, n), shards in groups.items():
        statuses = {s.status for s in shards}
        if statuses == {"completed"} and len(shards) == n:
            status = "completed"
        elif "failed" in statuses:
            status = "failed"
        elif "running" in statuses:
            status = "running"
        else:
            status = "interrupted" if statuses - {"completed"} else "running"
        totals = [s.total for s in shards]
        rates = [s.rate for s in shards if s.rate]
        done = sum(s.done for s in shards)
        total = sum(totals) if len(shards) == n and all(t is not None for t in totals) else None  # type: ignore[misc]
        rate = sum(rates) if rates else None
        eta = max((s.eta for s in shards if s.eta is not None), default=None)
        stale = [s.lease for s in shards if s.lease in ("stale", "dead owner")]
        out.append(RunSummary(
            job=job, run=f"{base} [{sum(s.status == 'completed' for s in shards)}/{n} shards done]",
            status=status, done=done, total=total, rate=rate, eta=eta,
            updated=max(s.updated for s in shards), age=min(s.age for s in shards),
            owner=f"{sum(s.lease == 'held' for s in shards)} live shard(s)",
            lease=stale[0] if stale else ("held" if any(s.lease == "held" for s in shards) else "free"),
        ))
    return sorted(out, key=lambda r: (r.job, r.run))


def progress_text(s: RunSummary) -> str:
    if s.total:
        return f"{s.done:,}/{s.total:,} ({100.0 * s.done / s.total:.1f}%)"
    return f"{s.done:,}"


def record_json(rec: Checkpoint) -> dict[str, Any]:
    """The record as JSON data (typed values tagged, as stored)."""
    return {
        "job": rec.job,
        "run": rec.run,
        "status": rec.status,
        "epoch": rec.epoch,
        "done": rec.done,
        "failed": rec.failed,
        "positions": encode_value(rec.positions),
        "state": encode_value(rec.state),
        "owner": rec.owner.to_dict() if rec.owner else None,
        "started": iso(rec.started) if rec.started else None,
        "updated": iso(rec.updated) if rec.updated else None,
        "lease_expires": iso(rec.lease_expires) if rec.lease_expires else None,
        "fingerprints": rec.fingerprints,
        "version": rec.version,
    }


__all__ = ["RunSummary", "summarize", "group_shards", "progress_text", "record_json", "iso", "human_duration"]
