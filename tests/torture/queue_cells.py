"""Torture cells for the work queue (``WorkQueue``): several workers drain one queue under one fault.

A *queue campaign* is one queue of ``N`` tasks (``"0" .. "N-1"``) drained by worker
processes (:data:`QUEUE_SCRIPT`), ``SET`` of them at once. Every worker fills the queue
(idempotent: the first one fills it) and then takes claims until every task is done.
Each claim's output goes to a sink:

* PostgreSQL: a row ``(id, epoch, worker)`` in ``dst``, written inside
  ``claim.transaction()``: the row commits with the fenced completion, exactly once;
* Redis: a member ``id:epoch:pid`` of a set, written before ``with claim:`` completes
  the task: at least once (idempotent per claim), duplicates only from claims lost.

While the workers run, the campaign injects the cell's fault at random moments (a
seeded generator): SIGKILL or SIGTERM of one worker, a second set of workers started
at once (``dup``), a server restart with or without its data, and the network faults
of tests/faultproxy.py between the workers and the server (the sampler and the checks
read the server directly). A worker that ends early is replaced, so the queue drains.

Invariants, each failure a *violation* (see docs/torture.md):

* every task is done (the store: ``N`` tasks, ``N`` done);
* PostgreSQL: ``dst`` holds every id exactly once, written by the claim that
  completed the task (its epoch is the task's final epoch);
* Redis: the sink holds every task's completing claim; any other entry comes from a
  worker that did not exit 0, at most one per such worker (it held one claim at a time);
* a completed task is never claimed again: no worker logged a claim of a task after
  the claim that completed it, and at most one claim completed each task;
* the number of tasks done never moves backwards (a sampler reads it every 15 ms);
* ``fill`` is idempotent: the workers together added ``N`` tasks (at most ``N`` when
  an answer may have been lost on the network);
* clean exits: 0 (drained), 75 (a fault it could not ride out), 143 (SIGTERM: its claim
  in flight finished first, nothing left to redo), -9 (SIGKILL); never a traceback,
  never a hang (60 s; a hung worker prints every thread's stack into the report).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faults import NET
from report import Row

from procs import Spawner, Worker, fields

__all__ = ["QUEUE_FAULTS", "QUEUE_SCRIPT", "QUEUE_TARGETS", "QueueCampaign", "write_queue_script"]

#: The faults of the queue cells (``stop``/``enospc``/``readonly`` are not among them: no local store).
QUEUE_FAULTS = (
    "kill",
    "term",
    "dup",
    "restart",
    "restart-keep",
    "net-reset",
    "net-blackhole",
    "net-commit",
    "net-delay",
)
#: Faults per queue cell: quick (every pytest run: one campaign each) and long (by hand).
QUEUE_TARGETS = {
    False: {
        "kill": 2,
        "term": 1,
        "dup": 1,
        "restart": 1,
        "restart-keep": 1,
        "net-reset": 2,
        "net-blackhole": 1,
        "net-commit": 2,
        "net-delay": 1,
    },
    True: {
        "kill": 80,
        "term": 20,
        "dup": 16,
        "restart": 10,
        "restart-keep": 15,
        "net-reset": 500,
        "net-blackhole": 20,
        "net-commit": 400,
        "net-delay": 120,
    },
}
N = 120  # tasks per queue
SET = 2  # workers draining at once
SLEEP = 0.004  # work per task (seconds)
QUEUE = "tq"
#: Lease of a claim (seconds): short, so a dead worker's task is taken over soon. net-delay adds up to
#: 0.8 s per round trip while the heartbeat renews every third of the lease: it gets a longer one.
LEASE, DELAY_LEASE = 2.0, 4.0
#: A cap on the workers one campaign launches: past it, the queue "never drained".
MAX_WORKERS = 120
#: At most this many faults of a process or a server per campaign (the long mode's budget is spread over
#: campaigns, so that every campaign drains its queue in a few seconds).
PER_CAMPAIGN = 25
#: net-commit on PostgreSQL: seconds a COMMIT spends on the server while the harness arms a cut.
SLOW_COMMIT = 0.15

QUEUE_SCRIPT = r"""
import json, os, sys, time

cfg = json.loads(sys.argv[1])

import faulthandler, signal
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the harness asks a hung worker where it waits

import restartable
from restartable import WorkQueue
from restartable.errors import StoreUnavailable


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if cfg.get("handshake"):
    say("ready")
    line = sys.stdin.readline().split(None, 1)
    if not line or line[0] != "go":
        sys.exit(3)
    if len(line) > 1:
        cfg.update(json.loads(line[1]))


def pg_sink():
    insert = 'INSERT INTO "%s".dst (id, epoch, worker) VALUES (%%s, %%s, %%s)' % cfg["schema"]

    def write(claim):
        # The output commits with the fenced completion, or not at all.
        with claim.transaction() as conn:
            conn.execute(insert, (int(claim.key), claim.epoch, os.getpid()))
    return write


def redis_sink():
    import redis

    client = redis.Redis.from_url(cfg["sink"], socket_timeout=2, socket_connect_timeout=2)

    def write(claim):
        # Idempotent per claim (a set member), retried for 3 s like the queue's own calls.
        deadline = time.monotonic() + 3
        while True:
            try:
                client.sadd(cfg["sink_key"], f"{claim.key}:{claim.epoch}:{os.getpid()}")
                return
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"the sink on {cfg['sink_display']} failed ({exc}): try again") from exc
                time.sleep(0.05)
    return write


def main():
    fd = os.open(cfg["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def log(line):
        os.write(fd, (line + "\n").encode())

    sink = pg_sink() if cfg["kind"] == "postgresql" else redis_sink()
    with WorkQueue(cfg["queue"], store=cfg["store"], lease_seconds=cfg["lease"], fill_wait=30) as q:
        added = q.fill([str(i) for i in range(cfg["n"])])
        say(f"started pid={os.getpid()} added={added}")
        for claim in q.claims():
            with claim:
                log(f"b {claim.key} {claim.epoch}")
                time.sleep(cfg["sleep"])
                sink(claim)
            log(f"c {claim.key} {claim.epoch}")  # completed by this claim
    say("finished")


restartable.entrypoint(main)()
"""


def write_queue_script(directory: Path) -> Path:
    """Write the queue worker script into ``directory`` and return its path."""
    path = directory / "torture_queue_worker.py"
    path.write_text(QUEUE_SCRIPT)
    return path


def _with_option(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


def _lua_sha(script: str) -> bytes:
    from restartable._redis.queue import _LUA

    return hashlib.sha1(_LUA[script].encode()).hexdigest().encode()


#: The PostgreSQL queue's claim (an autocommit UPDATE): its answer lost, the task is held by a ghost.
PG_CLAIM = re.compile(rb"UPDATE\s+\S+\.queue_tasks\s+t\s+SET\s+epoch")


@dataclass
class _Log:
    """One worker's items log: claims begun ``(key, epoch)`` and completed."""

    begun: list[tuple[int, int]] = field(default_factory=list)
    completed: list[tuple[int, int]] = field(default_factory=list)


def _read(log: Path) -> _Log:
    out = _Log()
    if not log.exists():
        return out
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("b", "c"):
            (out.begun if parts[0] == "b" else out.completed).append((int(parts[1]), int(parts[2])))
    return out


class _Sampler:
    """Reads the number of tasks done every 15 ms, directly from the server."""

    def __init__(self, read: Any) -> None:
        import threading

        self.read = read
        self.samples: list[int] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="queue-sampler")

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                self.samples.append(self.read())
            except Exception:  # noqa: BLE001 - unreachable for a moment (a restart): sample later
                pass
            self._halt.wait(0.015)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=15)

    def violations(self) -> list[str]:
        return [f"tasks done went back from {a} to {b}" for a, b in zip(self.samples, self.samples[1:]) if b < a][:3]


class QueueCampaign:
    """One queue drained by a succession of workers under the cell's faults."""

    def __init__(self, cell: Any, env: Any, index: int, rng: random.Random, row: Row) -> None:
        self.cell, self.env, self.rng, self.row = cell, env, rng, row
        self.index = index
        self.dir = env.root / f"q{index}"
        self.dir.mkdir()
        self.pg = cell.store == "postgresql"
        self.tag = f"t{os.getpid()}_queue_{cell.fault}_{index}".replace("-", "_")
        self.lease = DELAY_LEASE if cell.fault == "net-delay" else LEASE
        self.spawner = Spawner(write_queue_script(self.dir))
        self.workers: list[Worker] = []  # launched, in order
        self.logs: dict[int, Path] = {}
        self.rc: dict[int, int] = {}  # pid -> exit code, once ended
        self.allowed: dict[int, set[int]] = {}  # pid -> the exit codes its faults allow
        self.termed: set[int] = set()
        self.standby: list[Worker] = []
        self.completed = False  # some worker drained the queue (exit 0)
        self.slow: Any = None  # PostgreSQL net-commit: the connection that makes COMMITs slow
        if self.pg:
            assert env.pg_url is not None
            self.schema = f"rt_{self.tag}".lower()
            env.cleanups.append(("pg", env.pg_url, self.schema))
            self.url = _with_option(env.pg_url, f"schema={self.schema}")
        else:
            assert env.redis_url is not None
            env.cleanups.append(("redis", env.redis_url, f"{self.tag}:"))
            self.url = _with_option(env.redis_url, f"prefix={self.tag}:")
            self.keys = {part: f"{self.tag}:queue:{{{QUEUE}}}:{part}" for part in ("epoch", "done")}
            self.sink_key = f"{self.tag}:sink"
        self.cfg: dict[str, Any] = {
            "kind": cell.store,
            "store": self._worker_url(),
            "queue": QUEUE,
            "n": N,
            "lease": self.lease,
            "sleep": SLEEP,
            "handshake": True,
        }
        if self.pg:
            self.cfg["schema"] = self.schema
        else:
            sink = env.redis_url if cell.fault not in NET else env.proxy.url_for(env.redis_url)
            self.cfg.update(sink=sink, sink_key=self.sink_key, sink_display="the sink's Redis")
        self.sampler = _Sampler(self._done_count)

    # -- the store, read directly ---------------------------------------------------------

    def _worker_url(self) -> str:
        """The URL the workers use: through the fault proxy, with short deadlines, in the net cells."""
        url = self.url
        if self.cell.fault in NET:
            url = _with_option(self.env.proxy.url_for(url), "retry=3s&read_timeout=2")
        elif self.cell.fault in ("restart", "restart-keep"):
            url = _with_option(url, "retry=10s&read_timeout=5")
        return url

    def _pg(self) -> Any:
        import psycopg

        return psycopg.connect(self.env.pg_url, autocommit=True, connect_timeout=5)

    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.env.redis_url, socket_timeout=5, socket_connect_timeout=5)

    def _done_count(self) -> int:
        if self.pg:
            from psycopg import sql

            if getattr(self, "_sample_conn", None) is None or self._sample_conn.closed:
                self._sample_conn = self._pg()
            try:
                row = self._sample_conn.execute(
                    sql.SQL(
                        "SELECT count(*) FILTER (WHERE done_at IS NOT NULL) FROM {}.queue_tasks WHERE queue = %s"
                    ).format(sql.Identifier(self.schema)),
                    [QUEUE],
                ).fetchone()
            except Exception:
                self._sample_conn.close()
                raise
            return int(row[0])
        if getattr(self, "_sample_client", None) is None:
            self._sample_client = self._redis()
        return int(self._sample_client.hlen(self.keys["done"]))

    def _tasks(self) -> dict[int, tuple[int, bool]]:
        """Every task's final ``(epoch, done)``."""
        if self.pg:
            from psycopg import sql

            with self._pg() as conn:
                rows = conn.execute(
                    sql.SQL("SELECT key, epoch, done_at IS NOT NULL FROM {}.queue_tasks WHERE queue = %s").format(
                        sql.Identifier(self.schema)
                    ),
                    [QUEUE],
                )
                return {int(k): (int(e), bool(d)) for k, e, d in rows}
        client = self._redis()
        try:
            epochs = client.hgetall(self.keys["epoch"])
            done = client.hgetall(self.keys["done"])
        finally:
            client.close()
        return {int(k): (int(e), k in done) for k, e in epochs.items()}

    def _sink(self) -> list[tuple[int, int, int]]:
        """The outputs ``(id, epoch, worker pid)``."""
        if self.pg:
            from psycopg import sql

            with self._pg() as conn:
                return [
                    tuple(r)
                    for r in conn.execute(  # type: ignore[misc]
                        sql.SQL("SELECT id, epoch, worker FROM {}.dst").format(sql.Identifier(self.schema))
                    )
                ]
        client = self._redis()
        try:
            return [tuple(int(x) for x in m.decode().split(":")) for m in client.smembers(self.sink_key)]  # type: ignore[misc]
        finally:
            client.close()

    def _prepare(self) -> None:
        if not self.pg:
            return
        from psycopg import sql

        s = sql.Identifier(self.schema)
        with self._pg() as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s))
            # No unique constraint: a row written twice must be seen, not refused.
            conn.execute(
                sql.SQL("CREATE TABLE {}.dst (id int NOT NULL, epoch bigint NOT NULL, worker int NOT NULL)").format(s)
            )
            if self.cell.fault == "net-commit":
                # At COMMIT, while the harness has a row in `slow`, each commit spends SLOW_COMMIT
                # on the server before its commit record: a cut lands mid-commit.
                conn.execute(sql.SQL("CREATE TABLE {}.slow (x int)").format(s))
                conn.execute(
                    sql.SQL(
                        "CREATE FUNCTION {s}.slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                        "IF EXISTS (SELECT 1 FROM {s}.slow) THEN PERFORM pg_sleep({pause}); END IF; RETURN NULL; END $$"
                    ).format(s=s, pause=sql.Literal(SLOW_COMMIT))
                )
                conn.execute(
                    sql.SQL(
                        "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON {s}.dst DEFERRABLE "
                        "INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.slow_commit()"
                    ).format(s=s)
                )

    def _set_slow(self, on: bool) -> None:
        from psycopg import sql

        if self.slow is None:
            self.slow = self._pg()
        stmt = "INSERT INTO {}.slow VALUES (1)" if on else "DELETE FROM {}.slow"
        self.slow.execute(sql.SQL(stmt).format(sql.Identifier(self.schema)))

    # -- workers ------------------------------------------------------------------------

    def _launch(self, count: int) -> list[Worker]:
        """``count`` workers let go at the same instant (standbys hide the interpreter's start-up)."""
        ws = []
        while len(self.standby) < count:
            self.standby.append(self.spawner(self.cfg))
        ready = [self.standby.pop(0) for _ in range(count)]
        for w in ready:
            w.expect("ready", timeout=30)
        for w in ready:
            log = self.dir / f"w{len(self.workers)}.log"
            self.logs[w.pid] = log
            w.go(log=str(log))
            self.workers.append(w)
            self.allowed[w.pid] = {0}
            ws.append(w)
        if len(self.workers) < MAX_WORKERS:
            self.standby.append(self.spawner(self.cfg))
        return ws

    def _live(self) -> list[Worker]:
        return [w for w in self.workers if w.pid not in self.rc]

    def _violate(self, what: str) -> None:
        self.row.violations.append(f"q{self.index}: {what}")

    def _finish(self, w: Worker, timeout: float = 60.0) -> int:
        try:
            w.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            w.signal(signal.SIGUSR1)  # its threads' stacks into stderr, then it is killed
            time.sleep(1.0)
        try:
            rc = w.finish(timeout=0.1 if w.proc.poll() is None else timeout)
        except AssertionError:
            rc = -signal.SIGKILL
            self._violate(
                f"worker {w.pid} hung: still running after {timeout:g}s; its threads' stacks and "
                f"stderr:\n{w.stderr[-3000:]}"
            )
        if "Traceback" in w.stderr:
            self._violate(f"worker {w.pid} printed a traceback (rc {rc}):\n{w.stderr[-1500:]}")
        self.rc[w.pid] = rc
        if rc == 0:
            self.completed = True
        if rc not in self.allowed[w.pid]:
            self._violate(
                f"worker {w.pid} exited {rc}, expected one of {sorted(self.allowed[w.pid])}; "
                f"stderr:\n{w.stderr[-1200:]}"
            )
        if w.pid in self.termed and rc != -signal.SIGKILL:
            log = _read(self.logs[w.pid])
            left = set(log.begun) - set(log.completed)
            if left:
                self._violate(f"worker {w.pid} ended by SIGTERM (exit {rc}) left claims {sorted(left)[:5]} unfinished")
        return rc

    def _reap(self) -> None:
        for w in self._live():
            if w.proc.poll() is not None:
                self._finish(w)

    def _allow(self, ws: list[Worker], codes: set[int]) -> None:
        for w in ws:
            self.allowed[w.pid] |= codes

    # -- faults -----------------------------------------------------------------------

    def _inject(self) -> None:
        fault, live = self.cell.fault, self._live()
        if not live:
            return
        if fault == "kill":
            victim = self.rng.choice(live)
            self._allow([victim], {-signal.SIGKILL})
            victim.signal(signal.SIGKILL)
            if self._finish(victim) == -signal.SIGKILL:
                self.row.faults += 1
                log = _read(self.logs[victim.pid])
                if set(log.begun) - set(log.completed):
                    self.row.in_save += 1  # the table's "in-save": killed while holding a claim
        elif fault == "term":
            victim = self.rng.choice(live)
            # 143: its claim in flight finished first; 0: it had drained the queue; -15: it was not
            # in claims() yet (or any more), where no handler is installed: nothing held either way.
            self._allow([victim], {143, -signal.SIGTERM})
            self.termed.add(victim.pid)
            victim.signal(signal.SIGTERM)
            if self._finish(victim) != 0:
                self.row.faults += 1
        elif fault == "dup":
            self._launch(SET)  # a second set of workers, at the same instant, on the same queue
            self.row.faults += 1
        elif fault in ("restart", "restart-keep"):
            self._allow(live, {75})
            server = self.env.server
            if fault == "restart-keep":
                server.restart()  # a clean restart
            elif self.pg:
                server.restart("immediate")  # a crash: the server recovers from its WAL at start
            else:
                server.kill()  # a crash: appendfsync always keeps every acknowledged write
                server.start()
            self.row.faults += 1
        else:
            self._net(live)

    def _net(self, live: list[Worker]) -> None:
        proxy, fault = self.env.proxy, self.cell.fault
        if fault == "net-delay":
            if proxy.connections:
                proxy.delay(self.rng.uniform(50, 400), seconds=self.rng.uniform(0.3, 1.5))
                self.row.faults += 1
            return  # latency under the read deadline is ridden out: exit 0 only
        self._allow(live, {75})
        if fault == "net-reset":
            if proxy.reset_all():
                self.row.faults += 1
        elif fault == "net-blackhole":
            if self.rng.random() < 0.5:
                hit = proxy.blackhole(self.rng.uniform(2.5, 4.0), new=True)  # a partition, past the read deadline
            else:
                hit = proxy.blackhole(None, new=False)  # open connections silent for good (a dropped NAT entry)
            if hit:
                self.row.faults += 1
        elif fault == "net-commit":
            self._net_commit()

    def _net_commit(self) -> None:
        """The answer to a COMMIT, a claim or a completion is lost: the server did it, the worker never hears."""
        proxy, k = self.env.proxy, self.row.faults
        slow = False
        if self.pg:
            # In turn: mid-COMMIT (a slow commit cut 20-105 ms in), a COMMIT answered then cut, a claim lost.
            pattern, when = [(rb"^\s*COMMIT\b", "sent"), (rb"^\s*COMMIT\b", "answered"), (None, "answered")][k % 3]
            pattern = PG_CLAIM if pattern is None else re.compile(pattern, re.IGNORECASE)
            slow = when == "sent"
            after = self.rng.uniform(0.02, SLOW_COMMIT * 0.7) if slow else 0.0
        else:
            # In turn: a completion's compare-and-set, a claim, any of the queue's scripts.
            which = ("complete", "claim", None)[k % 3]
            pattern = re.compile(rb"^EVAL(SHA)?\b" if which is None else rb"^EVALSHA " + _lua_sha(which))
            when, after = "answered", self.rng.uniform(0, 0.02)
        if slow:
            self._set_slow(True)
        landed = proxy.landed["lose-answer"]
        proxy.lose_next_answer_to(pattern, when=when, after=after)
        deadline = time.monotonic() + 5
        while (
            proxy.landed["lose-answer"] == landed
            and any(w.proc.poll() is None for w in self._live())
            and time.monotonic() < deadline
        ):
            time.sleep(0.005)
        if proxy.landed["lose-answer"] > landed:
            self.row.faults += 1
            self.row.notes.append(
                f"net-commit answers lost: {'mid-COMMIT' if slow else when} "
                f"{'claim' if pattern is PG_CLAIM else pattern.pattern[:12]!r}"
            )
        else:
            proxy.disarm()
        if slow:
            time.sleep(SLOW_COMMIT)
            self._set_slow(False)

    def _gap(self) -> tuple[float, float]:
        from campaigns import DELAY, LONG, NET_DELAY

        if LONG and self.cell.fault == "net-reset" and self.pg:
            # A reset inside claim.transaction() ends the worker (75: the queue's transaction is not
            # retried in-process, unlike job.transaction()): resets every 10-120 ms would end every
            # worker before it drains anything.
            return (0.1, 0.6)
        if LONG and self.cell.fault in ("net-reset", "net-commit", "net-delay"):
            return NET_DELAY
        if LONG and self.cell.fault == "net-blackhole":
            return (0.5, 2.5)
        return DELAY

    # -- the campaign -------------------------------------------------------------------

    def run(self, budget: int) -> None:
        if self.cell.fault not in NET:
            budget = min(budget, PER_CAMPAIGN)
        self._prepare()
        self.sampler.start()
        made = self.row.faults
        try:
            self._launch(2 * SET if self.cell.fault == "dup" and self.index % 2 else SET)
            if self.cell.fault == "dup" and self.index % 2:
                self.row.faults += 1  # two sets at the very start: they race to fill the queue
            if self.rng.random() < 0.75:
                # Mostly while tasks are being claimed: from the first worker's "started" (the queue
                # is filled); else from the launch (the workers import, connect, race to fill).
                self.workers[0].expect("started", timeout=30)
            next_fault = time.monotonic() + self.rng.uniform(*self._gap())
            while True:
                self._reap()
                live = self._live()
                if not self.completed and len(live) < SET:
                    if len(self.workers) >= MAX_WORKERS:
                        self._violate(f"the queue never drained: {len(self.workers)} workers launched")
                        break
                    live += self._launch(SET - len(live))
                if not live:
                    break
                if self.row.faults - made < budget and not self.completed:
                    if time.monotonic() >= next_fault:
                        self._inject()
                        next_fault = time.monotonic() + self.rng.uniform(*self._gap())
                    time.sleep(0.005)
                    continue
                for w in live:
                    self._finish(w)
            self._verify()
        finally:
            self.sampler.stop()
            for w in self.workers + self.standby:
                w.stop()
            self.spawner.close()
            if self.slow is not None:
                self.slow.close()
            for name in ("_sample_conn", "_sample_client"):
                if getattr(self, name, None) is not None:
                    getattr(self, name).close()

    def _verify(self) -> None:
        tasks = self._tasks()
        done = sum(1 for _, d in tasks.values() if d)
        if len(tasks) != N or done != N:
            self._violate(f"the queue holds {len(tasks)} tasks, {done} done (n={N})")
        logs = {w.pid: _read(self.logs[w.pid]) for w in self.workers}
        # A completed task is never claimed again; at most one claim completed it, the last one.
        completions: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for pid, log in logs.items():
            for key, epoch in log.completed:
                completions[key].append((epoch, pid))
        for key, seen in sorted(completions.items()):
            final = tasks.get(key, (0, False))[0]
            if len(seen) > 1:
                self._violate(f"task {key} completed by {len(seen)} claims: {seen}")
            if any(epoch != final for epoch, _ in seen):
                self._violate(
                    f"task {key} was claimed again after its completion by claim {seen[0][0]} "
                    f"(its epoch is now {final})"
                )
        for pid, log in logs.items():
            if self.rc.get(pid) == 0:
                left = set(log.begun) - set(log.completed)
                if left:
                    self._violate(f"worker {pid} exited 0 but abandoned claims {sorted(left)[:5]}")
        # The sink.
        sink = self._sink()
        by_key: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for key, epoch, pid in sink:
            by_key[key].append((epoch, pid))
        missing = sorted(
            k for k, (final, done_) in tasks.items() if done_ and not any(e == final for e, _ in by_key[k])
        )
        if missing:
            self._violate(
                f"{len(missing)} tasks done without the output of the claim that completed them: {missing[:10]}"
            )
        if self.pg:
            twice = sorted(k for k, rows in by_key.items() if len(rows) > 1)
            if twice:
                self._violate(
                    f"{len(twice)} rows written twice by the transactional sink: {[(k, by_key[k]) for k in twice[:5]]}"
                )
            self.row.bound = 0
        else:
            extra = Counter(
                pid for key, rows in by_key.items() for epoch, pid in rows if epoch != tasks.get(key, (0, False))[0]
            )
            for pid, count in extra.items():
                if self.rc.get(pid) == 0:
                    self._violate(f"worker {pid} exited 0 but wrote {count} outputs of claims that did not complete")
                elif count > 1:
                    self._violate(
                        f"worker {pid} (exit {self.rc.get(pid)}) wrote {count} outputs of lost claims, "
                        "bound 1 (one claim at a time)"
                    )
            self.row.max_redo = max([self.row.max_redo, *extra.values()])
            self.row.bound = 1
        # fill is idempotent: N added in all (fewer when a lost answer hid an insert that happened).
        added = 0
        for w in self.workers:
            line = next((x for x in w.seen if x.startswith("started")), None)
            if line is not None:
                added += int(fields(line).get("added", 0))
        net = self.cell.fault in NET or self.cell.fault in ("restart", "restart-keep")
        if added > N or (added != N and not net):
            self._violate(f"fill added {added} tasks in all, expected {N}")
        for v in self.sampler.violations():
            self._violate(v)
        # How much the faults did: claims beyond the first (taken over after a lost claim or a lost answer).
        stats = self.row.__dict__.setdefault("queue_stats", Counter())
        stats["claims"] += sum(e for e, _ in tasks.values())
        stats["again"] += sum(e - 1 for e, _ in tasks.values() if e > 1)
        stats["exits"] += len(self.workers)
        stats["lost"] += sum(1 for rc in self.rc.values() if rc != 0)
        self.row.notes[:] = [n for n in self.row.notes if not n.startswith("queue:")]
        self.row.notes.append(
            f"queue: {stats['claims']} claims, {stats['again']} of them of a task claimed before; "
            f"{stats['exits']} workers, {stats['lost']} ended by the fault (not exit 0)"
        )
