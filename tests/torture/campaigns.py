"""One torture cell: campaigns of a workload under one kind of fault, and the invariants checked after each.

A *campaign* is one run id processed to completion by a succession of worker
processes (``workloads.SCRIPT`` through :class:`procs.Worker`). While a worker runs,
the campaign sleeps a random time from a seeded generator and injects the cell's
fault; then it starts the next worker, until a worker completes the run. Faults
therefore land anywhere: inside checkpoint writes (the ``blob`` campaigns make saves
slow; the victim's last logged event tells), between them, at start, at the end.

A :class:`Sampler` thread reads the checkpoint from the store every few
milliseconds the whole time. The invariants, each failure one *violation*:

* readable: no read of the record (sampler, after each fault, at the end) fails;
* never backwards: the sampled ``done`` and ``epoch`` never decrease;
* nothing claimed that was not done: after each fault the items the checkpoint
  claims are all in the workers' logs;
* nothing lost: at the end every item was processed (the ``dst`` table for
  batches, the outputs for files), the record is ``completed`` with ``done == n``;
* duplicates within the bound: the items a worker processed that a later worker
  processed again are at most ``every`` (iterate, stages), the in-flight bound
  ``workers + every`` (map), one file (files), none after SIGTERM; ``dst`` holds no
  row twice (batches: a transactional sink is exactly-once whatever happens);
* clean exits: every worker ends with the code its fault allows (75 fenced, locked,
  disk full or store unavailable, 77 permission, 143 SIGTERM, -9 SIGKILL, 0 done),
  never a traceback, and never hangs (a worker still running after 60 s is a
  violation "hung": a read without a deadline on a silent connection);
* the run completes.

Network faults (``net-*``) put a tests/faultproxy.py between the workers and the
server; the sampler and the checks read the server directly. Workers then run with a
short retry budget (``retry=3s``) and a short read deadline (``read_timeout=2``, the
stores' and PostgresTable's option), so a fault ends them with 75 or is ridden out.
``restart-keep`` restarts a server that persists (PostgreSQL; Redis with
``appendonly``) in one of three ways: plainly (the record must survive as it was),
followed by ``restartable reset --force`` from another process (the runner must be
fenced, exit 75, and must not write the record back; the campaign then starts over),
or followed by a second runner (the lease survived the restart: it must be refused,
exit 75 naming the holder).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faults import NET, fill, read_only, unlink
from report import Row
from workloads import JOB, Workload, claimed

from faultproxy import PG_COMMIT, PG_SAVE, REDIS_CAS
from procs import Spawner, Worker, clean_env, fields, read_log
from restartable._checkpoint import COMPLETED, INTERRUPTED
from restartable.errors import CheckpointCorrupt, RestartableError
from restartable.stores import open_store

__all__ = ["Cell", "CellEnv", "run_cell", "SIZES"]

LONG = os.environ.get("RESTARTABLE_TORTURE", "").lower() == "long"
SEED = os.environ.get("RESTARTABLE_TORTURE_SEED", "1")

#: Faults per cell: quick (every pytest run) and long (RESTARTABLE_TORTURE=long, by hand).
TARGETS = {
    False: {
        "kill": 3,
        "term": 2,
        "stop": 1,
        "dup": 2,
        "enospc": 1,
        "readonly": 1,
        "restart": 2,
        "restart-keep": 2,
        "net-reset": 3,
        "net-blackhole": 1,
        "net-commit": 2,
        "net-delay": 2,
    },
    True: {
        "kill": 80,
        "term": 20,
        "stop": 4,
        "dup": 16,
        "enospc": 6,
        "readonly": 6,
        "restart": 10,
        "restart-keep": 15,
        "net-reset": 500,
        "net-blackhole": 20,
        "net-commit": 400,
        "net-delay": 120,
    },
}

#: Per mode: items, checkpoint interval, work per item (s), and mode-specific settings.
SIZES: dict[str, dict[str, Any]] = {
    "iterate": {"n": 240, "every": 6, "sleep": 0.0015},
    "stages": {"n": 240, "every": 6, "sleep": 0.0015},
    "files": {"n": 60, "every": 4, "sleep": 0.004},
    "map": {"n": 240, "every": 3, "sleep": 0.006, "workers": 4},
    "batches": {"n": 200, "every": 1, "sleep": 0.0015, "batch": 5},
}
#: Seconds between a worker's start and its fault (and between two faults on one worker).
DELAY = (0.03, 0.45)
#: The same for the network faults of the long mode: a worker rides out many of them.
NET_DELAY = (0.01, 0.12)
#: Worker settings of the network cells: a short retry budget and read deadline (seconds).
NET_RETRY, NET_READ_TIMEOUT = "3s", 2
#: net-commit on PostgreSQL batches: seconds each COMMIT spends on the server (a deferred trigger).
SLOW_COMMIT = 0.15
LEASE = 30.0  # dead workers are taken over at once (dead-owner detection), whatever the lease
STOP_LEASE = 1.0  # a frozen worker's lease must run out before a second runner takes over
LOCK_TIMEOUT = 2.0  # a local store's wait for a frozen lock holder
BLOB = 100_000


@dataclass(frozen=True)
class Cell:
    store: str
    mode: str
    fault: str


@dataclass
class CellEnv:
    """Where a cell's campaigns keep their store, and what its faults act on."""

    root: Path  # inputs, outputs, logs (a normal disk)
    spawner: Spawner
    script: Path
    pg_url: str | None = None  # PostgreSQL server URL (shared, or private for restarts)
    redis_url: str | None = None
    server: Any = None  # PgServer / RedisServer restarted by the "restart" and "restart-keep" faults
    proxy: Any = None  # the FaultProxy between the workers and the server (net-* faults)
    tmpfs: Path | None = None  # the small filesystem of the "enospc" fault
    cleanups: list[Any] = field(default_factory=list)


class _Abort(Exception):
    """A campaign cannot go on (a violation was recorded)."""


class Sampler(threading.Thread):
    """Reads the record every few ms: the positions seen, in order, and any read that failed."""

    def __init__(self, url: str, run: str) -> None:
        super().__init__(daemon=True, name=f"sampler-{run}")
        self.url, self.run_id = url, run
        self.samples: list[tuple[int, int, str]] = []  # (epoch, done, status)
        self.corrupt: list[str] = []
        self.resets: list[int] = []  # sample indexes where a `restartable reset` started the run anew
        self._halt = threading.Event()

    def run(self) -> None:
        store = None
        try:
            while not self._halt.is_set():
                try:
                    if store is None:
                        store = open_store(self.url)
                    rec = store.load(JOB, self.run_id)
                    if rec is not None:
                        self.samples.append((rec.epoch, rec.done, rec.status))
                except CheckpointCorrupt as exc:
                    self.corrupt.append(str(exc))
                except RestartableError:
                    pass  # unreachable or refused for a moment (a restart, a full disk): sample later
                self._halt.wait(0.015)
        finally:
            if store is not None:
                store.close()

    def last_done(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=15)

    def mark_reset(self) -> None:
        """The run was reset on purpose: the positions after this start again from nothing."""
        self.resets.append(len(self.samples))

    def violations(self) -> list[str]:
        out = [f"unreadable checkpoint: {c}" for c in self.corrupt[:3]]
        pairs = list(zip(self.samples, self.samples[1:]))
        for k, ((e0, d0, _), (e1, d1, s1)) in enumerate(pairs):
            if any(k + 1 == r for r in self.resets):
                continue  # across a deliberate reset

            if e1 < e0:
                out.append(f"epoch went back from {e0} to {e1}")
            if d1 < d0:
                out.append(f"position moved backwards from {d0} to {d1} (epoch {e0} -> {e1}, {s1})")
        return out


def _with_option(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


class Campaign:
    """One run id processed to completion under the cell's faults."""

    def __init__(self, cell: Cell, env: CellEnv, index: int, rng: random.Random, row: Row) -> None:
        self.cell, self.env, self.rng, self.row = cell, env, rng, row
        self.run_id = f"c{index}"
        self.dir = env.root / self.run_id
        self.dir.mkdir()
        size = SIZES[cell.mode]
        self.n = size["n"]
        self.every = size["every"]
        url, conninfo, schema = self._store_url(index)
        self.url = url  # the server itself: the sampler and the checks never go through the proxy
        self.workload = Workload(cell.mode, self.n, self.dir, url, conninfo, schema)
        if cell.fault == "net-commit" and cell.mode == "batches" and conninfo is not None:
            # Every batch's COMMIT takes SLOW_COMMIT on the server: a lost answer lands mid-commit.
            self.workload.slow_commit, self.workload.slow_every = SLOW_COMMIT, size["batch"]
        self.cfg: dict[str, Any] = {
            "store": self._worker_url(url),
            "job": JOB,
            "run": self.run_id,
            "handshake": True,
            "lock_timeout": LOCK_TIMEOUT,
            "lease": STOP_LEASE if cell.fault == "stop" else LEASE,
            **size,
            **self.workload.settings(),
        }
        if cell.fault in NET and cell.mode == "batches" and conninfo is not None:
            # The batches' source reads through the proxy too (PostgresTable), with the same deadlines.
            source = _with_option(conninfo, f"connect_timeout=2&read_timeout={NET_READ_TIMEOUT}")
            self.cfg["conninfo"] = env.proxy.url_for(source)
        if cell.fault == "kill" and index % 2:
            self.cfg["blob"] = BLOB  # slow saves: kills land inside them
        if cell.fault == "enospc":
            self.cfg["grow"] = 512  # each save needs a little more room than the last
        if cell.fault == "readonly":
            self.cfg["drop_dac"] = True
        self.launched: list[tuple[Worker, Path]] = []
        self.started: list[Worker] = []  # workers that took the lease, in order
        self.ended: dict[int, str] = {}  # pid -> the fault that ended it (or "ok")
        self.standby: list[Worker] = []
        self.completed = False  # a worker exited 0: the run is complete
        self.reset_at = 0  # index into `launched` of the first worker after the last deliberate reset
        self.sampler = Sampler(self._sampler_url(), self.run_id)

    # -- stores ---------------------------------------------------------------------

    def _store_url(self, index: int) -> tuple[str, str | None, str | None]:
        kind, tag = self.cell.store, f"t{os.getpid()}_{self.cell.mode}_{self.cell.fault}_{index}"
        if kind in ("sqlite", "file"):
            base = self.dir
            if self.cell.fault == "enospc":
                assert self.env.tmpfs is not None
                base = self.env.tmpfs / self.run_id
                base.mkdir()
            self.store_root = base / "store"
            if kind == "sqlite":
                return f"sqlite:///{self.store_root}/ckpt.db", None, None
            return f"file://{self.store_root}", None, None
        if kind == "postgresql":
            assert self.env.pg_url is not None
            schema = f"rt_{tag}".lower()
            self.env.cleanups.append(("pg", self.env.pg_url, schema))
            return _with_option(self.env.pg_url, f"schema={schema}"), self.env.pg_url, schema
        assert self.env.redis_url is not None
        self.env.cleanups.append(("redis", self.env.redis_url, f"{tag}:"))
        return _with_option(self.env.redis_url, f"prefix={tag}:"), None, None

    def _worker_url(self, url: str) -> str:
        """The URL the workers use: through the fault proxy, with short deadlines, in the net cells."""
        if self.cell.fault not in NET:
            return url
        url = _with_option(self.env.proxy.url_for(url), f"retry={NET_RETRY}")
        if self.cell.store == "postgresql":
            url = _with_option(url, "connect_timeout=2")
        # The stores' own read deadline (restartable's option, on every connection they open).
        return _with_option(url, f"read_timeout={NET_READ_TIMEOUT}")

    def _sampler_url(self) -> str:
        return _with_option(self.url, "retry=1s") if self.cell.store in ("postgresql", "redis") else self.url

    # -- workers ----------------------------------------------------------------------

    def _spawn(self) -> Worker:
        return self.env.spawner(self.cfg)

    def _launch(self, **late: Any) -> Worker:
        """A worker let go (``go``) with a fresh log; standbys hide the interpreter's start-up."""
        w = self.standby.pop(0) if self.standby else self._spawn()
        w.expect("ready", timeout=30)
        log = self.dir / f"w{len(self.launched)}.log"
        w.go(log=str(log), **late)
        self.launched.append((w, log))
        while len(self.standby) < (2 if self.cell.fault == "dup" else 1):
            self.standby.append(self._spawn())
        return w

    def _wait_started(self, w: Worker, timeout: float = 30.0) -> str:
        """ "started", "complete" (started on a completed run), "exited" (before taking the lease) or "timeout"."""
        try:
            line = w.expect("started", timeout=timeout)
        except AssertionError:
            return "exited" if w.proc.poll() is not None else "timeout"
        self.started.append(w)
        return "complete" if fields(line).get("completed") == "True" else "started"

    def _finish(self, w: Worker, timeout: float = 60.0) -> int:
        try:
            w.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Hung: have it print every thread's stack (faulthandler, see workloads.SCRIPT) before
            # it is killed, so the violation says where it waits (a read with no deadline...).
            w.signal(signal.SIGUSR1)
            time.sleep(1.0)
        try:
            rc = w.finish(timeout=0.1 if w.proc.poll() is None else timeout)
        except AssertionError:
            self._violate(
                f"worker {w.pid} hung: still running after {timeout:g}s; its threads' stacks and "
                f"stderr:\n{w.stderr[-3000:]}"
            )
            raise _Abort from None
        if "Traceback" in w.stderr:
            self._violate(f"worker {w.pid} printed a traceback (rc {rc}):\n{w.stderr[-1500:]}")
        if rc == 0:
            self.completed = True
        return rc

    def _violate(self, what: str) -> None:
        self.row.violations.append(f"{self.run_id}: {what}")

    def _expect_rc(self, w: Worker, rc: int, allowed: set[int], why: str) -> None:
        if rc not in allowed:
            self._violate(
                f"worker {w.pid} ({why}) exited {rc}, expected one of {sorted(allowed)}; stderr:\n{w.stderr[-1200:]}"
            )

    def _start(self) -> Worker:
        """Start the next runner (two at the same instant in the dup cell): exactly one takes the lease."""
        count = 2 if self.cell.fault == "dup" else 1
        ws = [self._launch() for _ in range(count)]
        outcomes = [self._wait_started(w) for w in ws]
        # A runner that found the run completed (the winner finished first) holds no lease.
        winners = [w for w, o in zip(ws, outcomes) if o == "started"]
        keep = winners[0] if winners else next((w for w, o in zip(ws, outcomes) if o == "complete"), None)
        for w, o in zip(ws, outcomes):
            if w is keep or o == "started":
                continue
            if o == "complete":
                self._expect_rc(w, self._finish(w), {0}, "started on a completed run")
                continue
            if o == "timeout":
                self._violate(f"worker {w.pid} neither started nor exited")
                w.stop()
                raise _Abort
            rc = self._finish(w)
            self.ended[w.pid] = "dup-loser"
            if count == 1:
                self._violate(f"worker {w.pid} could not start: exit {rc}; stderr:\n{w.stderr[-1200:]}")
                raise _Abort
            self._expect_rc(w, rc, {75}, "a duplicate runner")
            if rc == 75 and "held by" not in w.stderr:
                self._violate(f"duplicate runner {w.pid} exited 75 without naming the holder: {w.stderr[-400:]}")
        if count > 1:
            self.row.faults += 1
        if len(winners) > 1 or keep is None:
            seen = "; ".join(
                f"{w.pid}: {[x for x in w.seen if x.startswith('started')]} {w.stderr.strip().splitlines()[-3:]}"
                for w in ws
            )
            self._violate(f"{len(winners)} of {count} runners started at the same instant took the lease: {seen}")
            raise _Abort
        return keep

    # -- checks -----------------------------------------------------------------------

    def _load(self) -> Any:
        try:
            with open_store(self.url) as store:
                return store.load(JOB, self.run_id)
        except CheckpointCorrupt as exc:
            self._violate(f"unreadable checkpoint: {exc}")
            raise _Abort from None

    def _processed(self) -> list[list[int]]:
        """Items each launched worker processed, in launch order."""
        return [[i for seg in read_log(log) for i in seg.items] for _, log in self.launched]

    def _after_fault(self, victim: Worker, floor: int | None = None) -> None:
        """The checkpoint is readable, claims only processed items, and has not gone below ``floor``."""
        rec = self._load()
        if rec is None:
            if self.cell.store != "redis" or self.cell.fault != "restart":
                self._violate(f"no record after the fault on worker {victim.pid}")
            return
        if floor is not None and rec.done < floor:
            self._violate(f"the checkpoint went back from {floor} to {rec.done} done items")
        claim = claimed(self.cell.mode, rec, self.n)
        if claim is not None:
            done = {i for items in self._processed() for i in items}
            if not claim <= done:
                self._violate(
                    f"the checkpoint claims {len(claim - done)} items never processed: {sorted(claim - done)[:10]}"
                )
        if "blob" in self.cfg and "saves" in rec.state:
            k = rec.state["saves"]
            if rec.state.get("blob") != chr(97 + k % 26) * BLOB:
                self._violate(f"torn state at save {k}")

    def _gap(self, *, first: bool) -> tuple[float, float]:
        """Seconds between a worker's start and its first fault (``first``), or between two faults."""
        if LONG and self.cell.fault in ("net-reset", "net-commit", "net-delay"):
            return NET_DELAY  # cheap to ride out: many per worker
        if LONG and self.cell.fault == "net-blackhole" and not first:
            return (0.5, 2.5)  # each silence lasts seconds: let the worker recover between them
        return DELAY

    def _bound(self, end: str) -> int | None:
        mode = self.cell.mode
        if end == "term" and mode != "map":
            return 0  # the item in flight finishes and is checkpointed
        # map after SIGTERM: in-flight items are drained within grace; a hung one is redone,
        # so the in-flight bound is what holds.
        if mode == "files":
            if self.cell.store == "redis" and self.cell.fault == "restart":
                return None  # a Redis without persistence loses the markers (documented)
            return 1
        if mode == "map":
            return SIZES["map"]["workers"] + self.every
        return self.every

    def _verify(self) -> None:
        rec = self._load()
        n = self.n
        if self.reset_at:
            self.row.notes.append("campaigns reset by `restartable reset` started over and completed")
        if rec is None and self.cell.store == "redis" and self.cell.fault == "restart" and self.completed:
            # A restart after the last worker completed: a Redis without persistence forgets
            # even a completed run (documented); the workers' logs below still prove the work.
            self.row.notes.append("a restart after completion lost the completed record (no persistence)")
        elif rec is None or rec.status != COMPLETED or rec.done != n:
            self._violate(f"the run did not complete: {rec and (rec.status, rec.done)} (n={n})")
        per_worker = self._processed()
        everything = Counter(i for items in per_worker for i in items)
        sink = self.workload.sink()
        if sink is not None:
            counts = Counter(sink)
            dups = sorted(i for i, c in counts.items() if c > 1)
            if dups:
                self._violate(f"{len(dups)} rows written twice by the transactional sink: {dups[:10]}")
            lost = sorted(set(range(n)) - set(counts))
            if lost:
                self._violate(f"{len(lost)} rows never written: {lost[:10]}")
        else:
            lost = sorted(set(range(n)) - set(everything))
            if lost:
                self._violate(f"{len(lost)} items never processed: {lost[:10]}")
        for problem in self.workload.outputs_ok()[:5]:
            self._violate(problem)
        # Redo: what a worker processed that a later one processed again.
        later: set[int] = set()
        for (w, _), items in reversed(list(zip(self.launched, per_worker))[self.reset_at :]):
            redo = len(set(items) & later)
            later |= set(items)
            if sink is not None:
                # The log is written after the `with job.transaction()` block, which also ends
                # normally for a batch given back after a lost connection (handed out again by
                # the loop): dst is the truth, checked above.
                continue
            repeats = [i for i, c in Counter(items).items() if c > 1]
            if repeats:
                self._violate(f"worker {w.pid} processed items twice itself: {repeats[:10]}")
            end = self.ended.get(w.pid, "ok")
            bound = self._bound(end)
            self.row.max_redo = max(self.row.max_redo, redo)
            if bound is not None and redo > bound:
                self._violate(f"worker {w.pid} (ended by {end}) left {redo} items to be redone, bound {bound}")
        self.row.bound = 0 if sink is not None else self._bound(self.cell.fault)
        for v in self.sampler.violations()[:5]:
            self._violate(v)

    # -- faults -----------------------------------------------------------------------

    def _inject(self, w: Worker) -> tuple[Worker | None, set[int]]:
        """Inject the cell's fault into the running worker ``w``; return the worker to go on with."""
        fault = self.cell.fault
        if fault in ("kill", "dup"):
            w.signal(signal.SIGKILL)
            rc = self._finish(w)
            self._expect_rc(w, rc, {-signal.SIGKILL, 0}, "SIGKILL")
            if rc != 0:
                self.ended[w.pid] = "kill"
                if fault == "kill":
                    self.row.faults += 1
                segs = read_log(next(p for x, p in self.launched if x is w))
                if segs and segs[-1].last == "s":
                    self.row.in_save += 1
                self._after_fault(w)
            return None, {0}
        if fault == "term":
            w.signal(signal.SIGTERM)
            rc = self._finish(w)
            if rc == -signal.SIGTERM and (rec := self._load()) is not None and rec.status == COMPLETED:
                # The job had completed (or found the run complete) and left its handlers: the
                # default action ended the process after the work, which is all it had to do.
                rc, self.completed = 0, True
            self._expect_rc(w, rc, {143, 0}, "SIGTERM")
            if rc == 143:
                self.ended[w.pid] = "term"
                self.row.faults += 1
                rec = self._load()
                if rec is None or rec.status != INTERRUPTED or rec.lease_expires is not None:
                    self._violate(
                        f"after SIGTERM the record is {rec and (rec.status, rec.lease_expires)}, "
                        "expected interrupted with the lease released"
                    )
                self._after_fault(w)
            return None, {0}
        if fault == "stop":
            return self._stop(w)
        if fault == "enospc":
            return self._enospc(w)
        if fault == "readonly":
            return self._readonly(w)
        if fault == "restart":
            self.env.server.restart()
            self.row.faults += 1
            return w, {0, 75}
        if fault == "restart-keep":
            return self._restart_keep(w)
        if fault in NET:
            return self._net(w)
        raise AssertionError(fault)

    def _net(self, w: Worker) -> tuple[Worker | None, set[int]]:
        """One network fault between ``w`` and the server; ``w`` rides it out or exits 75."""
        proxy, fault = self.env.proxy, self.cell.fault
        if fault == "net-reset":
            if proxy.reset_all():
                self.row.faults += 1
        elif fault == "net-delay":
            if proxy.connections:
                proxy.delay(self.rng.uniform(50, 400), seconds=self.rng.uniform(0.3, 1.5))
                self.row.faults += 1
            return w, {0}  # latency under the read deadline is ridden out: no exit 75
        elif fault == "net-blackhole":
            # A partition (new connections held too) longer than the read deadline, or old
            # connections gone silent for good while new ones work (a dropped NAT entry).
            if self.rng.random() < 0.5:
                hit = proxy.blackhole(self.rng.uniform(NET_READ_TIMEOUT + 0.5, NET_READ_TIMEOUT + 2.0), new=True)
            else:
                hit = proxy.blackhole(None, new=False)
            if hit:
                self.row.faults += 1
        elif fault == "net-commit":
            if self.cell.store == "redis":
                pattern = REDIS_CAS
            else:
                pattern = PG_COMMIT if self.cell.mode == "batches" else PG_SAVE
            landed = proxy.landed["lose-answer"]
            # In turn: cut once the server has answered, or while it still works on the request
            # (mid-commit on the batches' slow COMMITs: the outcome is then truly unknown).
            when = ("sent", "answered")[self.row.faults % 2]
            after = (
                self.rng.uniform(0.02, SLOW_COMMIT * 0.7) if self.workload.slow_commit else self.rng.uniform(0, 0.02)
            )
            proxy.lose_next_answer_to(pattern, when=when, after=after)
            deadline = time.monotonic() + 5
            while proxy.landed["lose-answer"] == landed and w.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            if proxy.landed["lose-answer"] > landed:
                self.row.faults += 1
            else:
                proxy.disarm()  # the worker ended (or never wrote) first
        return w, {0, 75}

    def _restart_keep(self, w: Worker) -> tuple[Worker | None, set[int]]:
        """Restart a server that keeps its data; then nothing more, a reset, or a second runner."""
        flavours = ("plain", "second") if self.cell.mode == "batches" else ("plain", "reset", "second")
        # In turn (from a different start in each mode), so that a few faults cover every flavour.
        flavour = flavours[(self.row.faults + len(self.cell.mode)) % len(flavours)]
        self.row.notes.append(f"restart-keep flavours seen: {flavour}")
        before = self._load()
        self.env.server.restart()
        self.row.faults += 1
        after = self._load()
        if before is not None and (after is None or after.epoch < before.epoch or after.done < before.done):
            self._violate(
                f"a restart with persistence lost or rolled back the record: {before.epoch}/"
                f"{before.done} -> {after and (after.epoch, after.done)}"
            )
        if flavour == "second":
            w2 = self._launch()
            outcome = self._wait_started(w2)
            if outcome == "started":
                if w.proc.poll() is None:
                    self._violate(
                        f"worker {w2.pid} took the lease of the live worker {w.pid} after a restart that kept the data"
                    )
                    raise _Abort
                rc = self._finish(w)  # w had ended (75 after the restart): w2 took over legitimately
                self._expect_rc(w, rc, {0, 75}, "runner during a restart")
                self.ended.setdefault(w.pid, f"exit {rc}")
                return w2, {0, 75}
            rc2 = self._finish(w2)
            self.ended[w2.pid] = "dup-loser"
            if outcome == "complete":
                self._expect_rc(w2, rc2, {0}, "started on a completed run")
            else:
                self._expect_rc(w2, rc2, {75}, "a second runner after a restart")
                if rc2 == 75 and "held by" not in w2.stderr:
                    self._violate(f"the second runner {w2.pid} exited 75 without naming the holder: {w2.stderr[-400:]}")
            return w, {0, 75}
        if flavour == "reset":
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "restartable",
                    "reset",
                    "--store",
                    self.url,
                    "--force",
                    JOB,
                    "--run",
                    self.run_id,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=clean_env(),
            )
            if done.returncode != 0:
                if "no run" in done.stderr:
                    return w, {0, 75}  # nothing to reset yet (the first save had not landed)
                self._violate(f"`restartable reset --force` exited {done.returncode}: {done.stderr[-400:]}")
                raise _Abort
            rc = self._finish(w)
            self._expect_rc(w, rc, {0, 75}, "runner whose run was reset")
            self.ended[w.pid] = "reset"
            if rc == 75 and not any(k in w.stderr.lower() for k in ("reset", "deleted", "fenced")):
                self._violate(
                    f"the runner {w.pid} of a reset run exited 75 without saying the run was reset: {w.stderr[-400:]}"
                )
            rec = self._load()
            if rec is not None:
                self._violate(
                    f"the reset was undone: worker {w.pid} (exit {rc}) wrote the run back "
                    f"({rec.status}, {rec.done} done, epoch {rec.epoch})"
                )
                raise _Abort
            # The run starts over: the next runner begins at nothing, as after any reset.
            self.reset_at = len(self.launched)
            self.sampler.mark_reset()
            self.completed = False
            return None, {0}
        return w, {0, 75}

    def _stop(self, victim: Worker) -> tuple[Worker | None, set[int]]:
        victim.signal(signal.SIGSTOP)
        self.row.faults += 1
        w2 = self._launch(wait=STOP_LEASE * 4 + 5)
        outcome = self._wait_started(w2, timeout=STOP_LEASE * 4 + LOCK_TIMEOUT + 10)
        if outcome == "timeout":
            # The frozen worker holds a lock the newcomer waits on (a PostgreSQL transaction
            # of the batches sink): let it go; the newcomer takes over once it commits.
            victim.signal(signal.SIGCONT)
            self.row.notes.append("the newcomer waited for the frozen runner's open transaction")
            outcome = self._wait_started(w2, timeout=60)
        if outcome == "started":
            time.sleep(self.rng.uniform(0.05, 0.2))
        victim.signal(signal.SIGCONT)
        if outcome in ("started", "complete"):
            rc = self._finish(victim)
            self.ended[victim.pid] = "stop"
            # "complete": the victim was frozen after its last save, on its way out.
            self._expect_rc(victim, rc, {75} if outcome == "started" else {0}, "frozen past its lease, then continued")
            if rc == 75 and "fenced" not in victim.stderr:
                self._violate(f"the woken worker {victim.pid} exited 75 without saying it was fenced")
            self._after_fault(victim)
            return w2, {0}
        rc2 = self._finish(w2)
        self.ended[w2.pid] = "blocked"
        # The victim was frozen inside a write holding the store's lock: the newcomer gives up
        # after the lock timeout, cleanly, and the victim goes on when continued.
        self._expect_rc(w2, rc2, {75}, "waiting for a frozen lock holder")
        self.row.notes.append("frozen inside a write: the newcomer gave up on the lock (exit 75), as documented")
        return victim, {0}

    def _enospc(self, w: Worker) -> tuple[Worker | None, set[int]]:
        assert self.env.tmpfs is not None
        floor = self.sampler.last_done()
        filler = fill(self.env.tmpfs)
        try:
            rc = self._finish(w, timeout=30)
        finally:
            unlink(filler)
        self._expect_rc(w, rc, {75, 0}, "disk full")
        if rc == 75:
            self.ended[w.pid] = "enospc"
            self.row.faults += 1
            last = [line for line in w.stderr.splitlines() if line.strip()][-1:]
            if not last or not any(k in last[0] for k in ("disk full", "No space left")):
                self._violate(f"disk full ended worker {w.pid} without a clear last line: {last}")
            self._after_fault(w, floor)
        return None, {0}

    def _readonly(self, w: Worker) -> tuple[Worker | None, set[int]]:
        floor = self.sampler.last_done()
        read_only(self.store_root, True)
        try:
            try:
                # Short: the longer this wait, the more often the run completes within it
                # (SQLite writes on through the files it has open) and the fault is lost.
                w.proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                # Still running: SQLite keeps writing the files it has open, as it may. The
                # fault is then what a new runner meets: kill this one and start another.
                w.signal(signal.SIGKILL)
            rc = self._finish(w)
            self._expect_rc(w, rc, {75, 77, 0, -signal.SIGKILL}, "store made read-only")
            if rc == 0:
                return None, {0}
            self.ended[w.pid] = "readonly"
            self.row.faults += 1
            # A runner started on the read-only store must refuse cleanly and leave the checkpoint alone.
            probe = self._launch()
            outcome = self._wait_started(probe)
            if outcome == "started":
                self._violate(f"worker {probe.pid} ran on a read-only store")
                probe.signal(signal.SIGKILL)
            rc = self._finish(probe)
            self.ended[probe.pid] = "readonly-probe"
            if outcome == "complete":  # the victim completed the run just before it was killed
                self._expect_rc(probe, rc, {0}, "started on a completed run on a read-only store")
                return None, {0}
            self._expect_rc(probe, rc, {75, 77}, "started on a read-only store")
            last = [line for line in probe.stderr.splitlines() if line.strip()][-1:]
            if not last or not any(k in last[0].lower() for k in ("permission", "read-only", "readonly", "writ")):
                self._violate(f"a runner on a read-only store exited without a clear last line: {last}")
        finally:
            read_only(self.store_root, False)
        self._after_fault(w, floor)
        return None, {0}

    # -- the campaign -------------------------------------------------------------------

    def run(self, budget: int) -> None:
        self.workload.prepare()
        self.sampler.start()
        current: Worker | None = None
        allowed = {0}
        made_before = self.row.faults
        try:
            while True:
                if current is None:
                    if self.completed:
                        break
                    current = self._start()
                    allowed = {0}
                    hits = 0
                if self.row.faults - made_before < budget:
                    time.sleep(self.rng.uniform(*self._gap(first=hits == 0)))
                    if current.proc.poll() is None:
                        before = current
                        current, allowed = self._inject(current)
                        hits = hits + 1 if current is before else 0
                        continue
                rc = self._finish(current)
                self._expect_rc(current, rc, allowed, "last runner")
                if rc == 0:
                    break
                if rc not in allowed:
                    raise _Abort
                self.ended.setdefault(current.pid, f"exit {rc}")
                current = None
            self._verify()
        except _Abort:
            pass
        finally:
            self.sampler.stop()
            for w, _ in self.launched:
                w.stop()
            for w in self.standby:
                w.stop()


def run_cell(cell: Cell, env: CellEnv, row: Row, budget: int | None = None) -> None:
    """Run campaigns of ``cell`` until its fault target is met (or a campaign is aborted)."""
    make: Any = Campaign
    targets = TARGETS[LONG]
    if cell.mode == "queue":  # several workers drain one WorkQueue: queue_cells.py
        from queue_cells import QUEUE_TARGETS, QueueCampaign

        make, targets = QueueCampaign, QUEUE_TARGETS[LONG]
    target = budget if budget is not None else targets[cell.fault]
    rng = random.Random(f"{SEED}-{cell.store}-{cell.mode}-{cell.fault}")
    t0 = time.monotonic()
    index = 0
    while row.faults < target and len(row.violations) < 5:
        index += 1
        before = row.faults
        try:
            make(cell, env, index, rng, row).run(target - row.faults)
        except Exception:  # noqa: BLE001 - a harness failure is reported in the table, with its traceback
            row.violations.append(f"c{index}: the campaign crashed:\n{traceback.format_exc(limit=6)}")
        row.campaigns += 1
        if row.faults == before and index >= 3 * target + 3:
            # The harness gives up: its faults keep missing (the run completes first). A cell
            # that injected some still checked the invariants after each; one that injected
            # none checked nothing, and that is reported as a failure.
            if row.faults == 0:
                row.violations.append(f"no fault could be injected in {index} campaigns")
            else:
                row.notes.append(
                    f"{row.faults} of {target} faults injected: the harness gave up after "
                    f"{index} campaigns (its faults kept landing after the run completed)"
                )
            break
    row.seconds = time.monotonic() - t0
