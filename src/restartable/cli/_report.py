"""What ``status``, ``show`` and ``restartable serve`` compute from records: state, rate, ETA, lease health.

One place computes what an operator sees, so the table, ``status --json``, the web page
and its ``/api/runs`` can never disagree: :func:`read_status` reads the store,
:func:`status_rows` turns records into :class:`RunSummary` rows and
:func:`status_json` is the document ``status --json`` prints and ``/api/runs`` serves;
:func:`show_json` is ``show --json`` and ``/api/runs/JOB/RUN``.

The *state* of a run is what is true now, as opposed to the *status* its last save
wrote: a record saved as ``running`` whose owner is provably dead (same machine, its
pid gone or reused) or whose lease expired by the store's clock is ``stalled``. Nobody
is working on it, so it has no rate and no ETA; what it has is the age of its last
save. A runner waiting for a lease writes nothing to the store (one writer per run),
so it cannot be seen here; the run it waits for shows as ``running`` (held by a live
owner) or ``stalled`` (about to be taken over).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._checkpoint import RUNNING, Checkpoint, HistoryEntry, encode_value
from .._proc import owner_is_dead
from .._progress import human_duration

if TYPE_CHECKING:
    from ..stores.base import Store, Unreadable

#: The saves ``status`` reads per run to compute a rate (the web page reads more for its
#: chart, and passes the newest this many here, so both compute the same rate).
STATUS_HISTORY = 10

#: What a run is now (see the module docstring). ``partial``: a shard set with some
#: shards completed and none working.
STATES = ("running", "stalled", "interrupted", "failed", "completed", "partial")


@dataclass(frozen=True)
class RunSummary:
    """One line of ``status``: a run, or a shard set grouped into one line (``shards`` set)."""

    job: str
    run: str
    status: str  # as last saved
    done: int
    total: int | None
    rate: float | None  # None unless someone is working on it now
    eta: float | None
    updated: float
    age: float  # seconds since the last save, by the store's clock
    owner: str
    lease: str  # "held", "stale", "dead owner", "free"
    state: str = ""  # one of STATES; "" means the same as status
    lease_age: float | None = None  # seconds since the lease was last renewed (None: no lease)
    lease_left: float | None = None  # seconds until the lease expires (negative: expired)
    dead_letters: int = 0
    failed_files: int = 0
    shards_done: int | None = None
    shards_total: int | None = None
    shards: tuple[RunSummary, ...] = field(default=())

    @property
    def now_state(self) -> str:
        return self.state or self.status

    def to_json(self) -> dict[str, Any]:
        """The run as ``status --json`` prints it (times in seconds, ``*_seconds`` named)."""
        out: dict[str, Any] = {
            "job": self.job,
            "run": self.run,
            "status": self.status,
            "state": self.now_state,
            "done": self.done,
            "total": self.total,
            "rate_per_second": None if self.rate is None else round(self.rate, 3),
            "eta_seconds": None if self.eta is None else round(self.eta, 1),
            "updated": iso(self.updated),
            "seconds_since_update": round(self.age, 1),
            "last_save_age_seconds": round(self.age, 1),
            "owner": self.owner,
            "lease": self.lease,
            "lease_age_seconds": None if self.lease_age is None else round(self.lease_age, 1),
            "lease_expires_in_seconds": None if self.lease_left is None else round(self.lease_left, 1),
            "dead_letters": self.dead_letters,
            "failed_files": self.failed_files,
        }
        if self.shards_total is not None:
            out["shards_done"] = self.shards_done
            out["shards_total"] = self.shards_total
            out["shards"] = [s.to_json() for s in self.shards]
        return out


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="seconds")


def total_of(rec: Checkpoint) -> int | None:
    totals = [p.get("total") for p in rec.positions.values()]
    if not totals or any(not isinstance(t, int) for t in totals):
        return None
    return sum(totals)  # type: ignore[arg-type]


def skipped_of(rec: Checkpoint) -> tuple[int, int]:
    """``(dead letters, failed files)``: the items a run skipped, kept per cursor by its sources."""
    dead = failed = 0
    for p in rec.positions.values():
        if isinstance(p.get("dead"), dict):
            dead += len(p["dead"])
        if isinstance(p.get("failed"), dict):
            failed += len(p["failed"])
    return dead, failed


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


def run_state(rec: Checkpoint, lease: str) -> str:
    """What the run is now: a ``running`` record that nobody holds (dead owner, expired or no lease) is stalled."""
    if rec.status != RUNNING:
        return rec.status
    return "running" if lease == "held" else "stalled"


def summarize(rec: Checkpoint, history: list[HistoryEntry], now: float) -> RunSummary:
    """One run's line. ``history`` is newest first; only its current epoch's saves give the rate."""
    total = total_of(rec)
    lease = lease_state(rec, now)
    state = run_state(rec, lease)
    # A stalled run has no rate: its last saves were fast, but nobody is working on it now.
    rate = rate_of(history) if state == "running" else None
    eta = (total - rec.done) / rate if (rate and total is not None and total >= rec.done) else None
    dead, failed = skipped_of(rec)
    held = rec.lease_expires is not None
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
        lease=lease,
        state=state,
        lease_age=max(0.0, now - rec.heartbeat) if held and rec.heartbeat else None,
        lease_left=(rec.lease_expires - now) if rec.lease_expires is not None else None,
        dead_letters=dead,
        failed_files=failed,
    )


def _group_state(shards: list[RunSummary], n: int) -> str:
    """One state for a shard set: working if any shard works, else the worst news first."""
    states = [s.now_state for s in shards]
    done = states.count("completed")
    if done == n:
        return "completed"
    if "running" in states:
        return "running"
    if "failed" in states:
        return "failed"
    if "stalled" in states:
        return "stalled"
    return "partial" if done else "interrupted"


def _group_status(statuses: set[str], count: int, n: int) -> str:
    """The saved status of a shard set, as ``status`` always reported it."""
    if statuses == {"completed"} and count == n:
        return "completed"
    if "failed" in statuses:
        return "failed"
    if "running" in statuses:
        return "running"
    return "interrupted" if statuses - {"completed"} else "running"


def group_shards(rows: list[RunSummary]) -> list[RunSummary]:
    """One summary per sharded run (``<run>.shard-<i>-of-<n>``), with its shards kept in ``shards``."""
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
        shards.sort(key=lambda s: s.run)
        totals = [s.total for s in shards]
        rates = [s.rate for s in shards if s.rate]
        done = sum(s.done for s in shards)
        total = sum(t or 0 for t in totals) if len(shards) == n and all(t is not None for t in totals) else None
        rate = sum(rates) if rates else None
        eta = max((s.eta for s in shards if s.eta is not None), default=None)
        stale = [s.lease for s in shards if s.lease in ("stale", "dead owner")]
        completed = sum(s.status == "completed" for s in shards)
        leases = [s.lease_age for s in shards if s.lease_age is not None]
        lefts = [s.lease_left for s in shards if s.lease_left is not None]
        out.append(
            RunSummary(
                job=job,
                run=f"{base} [{completed}/{n} shards done]",
                status=_group_status({s.status for s in shards}, len(shards), n),
                done=done,
                total=total,
                rate=rate,
                eta=eta,
                updated=max(s.updated for s in shards),
                age=min(s.age for s in shards),
                owner=f"{sum(s.lease == 'held' for s in shards)} live shard(s)",
                lease=stale[0] if stale else ("held" if any(s.lease == "held" for s in shards) else "free"),
                state=_group_state(shards, n),
                lease_age=max(leases) if leases else None,
                lease_left=min(lefts) if lefts else None,
                dead_letters=sum(s.dead_letters for s in shards),
                failed_files=sum(s.failed_files for s in shards),
                shards_done=completed,
                shards_total=n,
                shards=tuple(shards),
            )
        )
    return sorted(out, key=lambda r: (r.job, r.run))


def number(n: int, *, plain: bool = False) -> str:
    """``12,345`` for a person at a terminal; ``12345`` (``plain``) for ``grep``, ``awk`` and ``sort``."""
    return str(n) if plain else f"{n:,}"


def progress_text(s: RunSummary, *, plain: bool = False) -> str:
    """Items **saved** (what the last checkpoint holds): ``73,958/200,000 (37.0%)``; ``plain``: ``73958/200000``."""
    if plain:
        return f"{s.done}/{s.total}" if s.total else str(s.done)
    if s.total:
        return f"{s.done:,}/{s.total:,} ({100.0 * s.done / s.total:.1f}%)"
    return f"{s.done:,}"


def _notes(s: RunSummary, *, plain: bool) -> list[str]:
    """What needs a glance besides the state: shards, dead letters, failed files."""
    parts = []
    if s.shards_total is not None and s.now_state != "completed":
        parts.append(f"{s.shards_done}/{s.shards_total} shards done")
        stalled = sum(x.now_state == "stalled" for x in s.shards)
        if stalled and s.now_state != "stalled":
            parts.append(f"{stalled} stalled")
    if s.dead_letters:
        parts.append(f"{number(s.dead_letters, plain=plain)} dead letter{'s' if s.dead_letters != 1 else ''}")
    if s.failed_files:
        parts.append(f"{number(s.failed_files, plain=plain)} failed file{'s' if s.failed_files != 1 else ''}")
    return parts


def state_text(s: RunSummary) -> str:
    """The status column as plain text: the state, and what else needs a glance."""
    head = s.now_state
    if s.now_state == "stalled":
        head = f"stalled (last save {human_duration(s.age)} ago)"  # why: the lease column says
    return " · ".join([head, *_notes(s, plain=False)])


#: The columns of ``status`` when its output is not a terminal: one run per line, tab-separated.
PLAIN_COLUMNS = (
    "job",
    "run",
    "state",
    "saved",
    "total",
    "rate_per_second",
    "eta_seconds",
    "last_save_age_seconds",
    "lease",
    "owner",
    "notes",
)


def _cell(value: object) -> str:
    """One field of a tab-separated line: no tab or line break may split it (a name never has one)."""
    return " ".join(str(value).split()) if value is not None else ""


def _seconds(value: float | None) -> str:
    return "" if value is None else str(round(value))


def plain_status(rows: list[RunSummary], unreadable: list[Unreadable]) -> list[str]:
    """``status`` for pipes: a header, then one tab-separated line per run, whatever its length.

    Numbers are plain integers (no thousands separators, no percentage), times are whole
    seconds, and a field with nothing to say is empty, so ``grep NAME``, ``awk -F'\t'``
    and ``sort -t$'\t' -k4n`` work. The columns are :data:`PLAIN_COLUMNS`; ``state`` is
    one word of :data:`STATES` (or ``unreadable``), ``notes`` the rest of what the table's
    status column says (``1/3 shards done; 4 dead letters``).
    """
    lines = ["\t".join(PLAIN_COLUMNS)]
    for s in rows:
        fields = (
            s.job,
            s.run,
            s.now_state,
            s.done,
            s.total,
            "" if s.rate is None else f"{s.rate:.1f}",  # a slow run's 0.4/s must not read 0
            _seconds(s.eta),
            _seconds(s.age),
            s.lease,
            s.owner if s.lease != "free" else "",
            "; ".join(_notes(s, plain=True)),
        )
        lines.append("\t".join(_cell(f) for f in fields))
    for job, run, _ in unreadable:
        lines.append("\t".join(_cell(f) for f in (job, run, "unreadable", *[""] * (len(PLAIN_COLUMNS) - 3))))
    return lines


def lease_text(s: RunSummary) -> str:
    """Lease health in words: ``renewed 3s ago, expires in 27s``, ``expired 4s ago``, ``owner dead``."""
    if s.lease == "free" or s.lease_left is None:
        return "free"
    if s.lease == "dead owner":
        return "owner dead"
    renewed = f"renewed {human_duration(s.lease_age)} ago, " if s.lease_age is not None else ""
    if s.lease_left <= 0:
        return f"{renewed}expired {human_duration(-s.lease_left)} ago"
    return f"{renewed}expires in {human_duration(s.lease_left)}"


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


# -- the documents shared by the CLI and the web page -----------------------------------------


@dataclass(frozen=True)
class StatusRead:
    """One read of a store for ``status``: records, their recent saves, the unreadable runs, the clock."""

    records: list[Checkpoint]
    histories: dict[tuple[str, str], list[HistoryEntry]]
    unreadable: list[Unreadable]
    now: float


def read_status(store: Store, *, job: str | None = None, history: int = STATUS_HISTORY) -> StatusRead:
    """Read what ``status`` shows, with read-only calls only (``now``, ``list_runs``, ``history``)."""
    now = store.now()
    bad: list[Unreadable] = []
    records = store.list_runs(job, corrupt=bad)
    histories = {(r.job, r.run): store.history(r.job, r.run, limit=history) for r in records}
    return StatusRead(records, histories, bad, now)


def status_rows(read: StatusRead, *, shards: bool = False) -> list[RunSummary]:
    """The rows of ``status``: one per run, shard sets grouped unless ``shards``."""
    rows = [
        summarize(rec, read.histories.get((rec.job, rec.run), [])[:STATUS_HISTORY], read.now) for rec in read.records
    ]
    return rows if shards else group_shards(rows)


def status_json(display: str, rows: list[RunSummary], unreadable: list[Unreadable]) -> dict[str, Any]:
    """The document ``status --json`` prints and ``/api/runs`` serves."""
    return {
        "store": display,
        "runs": [r.to_json() for r in rows],
        "unreadable": [{"job": j, "run": r, "error": str(e)} for j, r, e in unreadable],
    }


def show_json(rec: Checkpoint, history: list[HistoryEntry], now: float, *, limit: int = 10) -> dict[str, Any]:
    """The document ``show --json`` prints and ``/api/runs/JOB/RUN`` serves (``history`` newest first)."""
    data: dict[str, Any] = record_json(rec)
    data["summary"] = summarize(rec, history[:STATUS_HISTORY], now).to_json()
    data["history"] = [
        {"at": iso(h.at), "epoch": h.epoch, "status": h.status, "done": h.done, "failed": h.failed}
        for h in history[:limit]
    ]
    return data


def iterations(rec: Checkpoint) -> list[dict[str, Any]]:
    """Each iteration's position, for the run page: name, stage, offset, total, finished, skips."""
    from .._pipeline import PIPELINE_CURSOR

    pipeline = rec.positions.get(PIPELINE_CURSOR)
    stages = pipeline.get("stages") if isinstance(pipeline, dict) else None
    out = []
    for name, pos in rec.positions.items():
        if name == PIPELINE_CURSOR or not isinstance(pos, dict):
            continue
        stage = next((s for s in stages or [] if isinstance(s, str) and name.startswith(f"{s}:")), None)
        out.append(
            {
                "name": name,
                "stage": stage,
                "offset": pos.get("offset", 0),
                "total": pos.get("total"),
                "finished": bool(pos.get("finished")),
                "dead": len(pos["dead"]) if isinstance(pos.get("dead"), dict) else 0,
                "failed": len(pos["failed"]) if isinstance(pos.get("failed"), dict) else 0,
            }
        )
    return out


def stages_of(rec: Checkpoint) -> list[dict[str, str]]:
    """A pipeline's stages and their status (done, in progress, pending); empty for other runs."""
    from .._pipeline import PIPELINE_CURSOR

    pos = rec.positions.get(PIPELINE_CURSOR)
    if not isinstance(pos, dict) or not isinstance(pos.get("stages"), list):
        return []
    done = set(pos.get("done") or [])
    current = pos.get("current")
    return [
        {"name": str(s), "status": "done" if s in done else "in progress" if s == current else "pending"}
        for s in pos["stages"]
    ]


def skipped_items(rec: Checkpoint, *, limit: int = 100) -> list[dict[str, Any]]:
    """Dead letters and failed files, at most ``limit``: cursor, kind, key and the error as JSON data."""
    out: list[dict[str, Any]] = []
    for name, pos in rec.positions.items():
        if not isinstance(pos, dict):
            continue
        for kind, label in (("dead", "dead letter"), ("failed", "failed file")):
            entries = pos.get(kind)
            if isinstance(entries, dict):
                for key, value in entries.items():
                    if len(out) >= limit:
                        return out
                    out.append({"iteration": name, "kind": label, "key": str(key), "value": encode_value(value)})
    return out


__all__ = [
    "RunSummary",
    "StatusRead",
    "STATES",
    "STATUS_HISTORY",
    "summarize",
    "group_shards",
    "number",
    "progress_text",
    "state_text",
    "PLAIN_COLUMNS",
    "plain_status",
    "lease_text",
    "record_json",
    "iso",
    "human_duration",
    "read_status",
    "status_rows",
    "status_json",
    "show_json",
    "iterations",
    "stages_of",
    "skipped_items",
    "lease_state",
]
