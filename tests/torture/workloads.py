"""The torture suite's workloads: one worker script, five ways of processing, and their ground truth.

The worker script (:data:`SCRIPT`) is run by :class:`procs.Worker` (``tests/procs.py``)
with a JSON config, and speaks its protocol: ``ready`` (imported; with ``handshake``
it waits for ``go [JSON]`` on stdin), ``started key=value ...`` once the job holds
its lease, ``finished`` after its work. It writes an *items log* in the format
:func:`procs.read_log` parses (one ``write(2)`` per line on an ``O_APPEND`` file, so
a line survives a SIGKILL the moment it is written): ``b I`` when item ``I`` is handed
out, ``I`` once it is processed, ``s K`` just before the K-th checkpoint of this
process is written (an ``on_checkpoint`` callback). Every worker gets a log of its
own, so the suite knows exactly which process did what, even when a frozen runner
wakes up while its successor works.

The modes (``mode``), each over the items ``0 .. n-1``:

``iterate``  ``job.iterate(range(n), every=E)``.
``stages``   a :class:`~restartable.sources.stages.Pipeline` of three stages, each
             iterating a third of the items.
``files``    ``job.files(input_dir)`` over ``n`` small files, each converted to an
             output with ``job.output`` (atomic).
``map``      ``job.map(fn, range(n), workers=W, every=E)``; ``fn`` logs the item.
``batches``  ``job.batches(SQLiteTable | PostgresTable)`` over a table ``src`` of ``n``
             rows, each batch written to ``dst`` inside ``job.transaction()``: the
             store's database is the sink, so ``dst`` is exactly-once.

Settings besides ``mode``: ``store``, ``job``, ``run``, ``log``, ``n``, ``every``,
``sleep`` (work per item, seconds), ``lease``, ``wait``, ``workers`` (map), ``batch``
(rows per batch), ``input``/``output`` (files), ``conninfo``/``schema`` (PostgreSQL
batches), ``blob`` (size of a ``job.state`` string rewritten at every checkpoint, so
that saves take time and kills land inside them), ``grow`` (bytes ``job.state``
grows by at every checkpoint: a store on a full disk then needs new space),
``lock_timeout`` (a local store's wait for another process's lock), ``drop_dac``
(re-exec through ``setpriv`` without CAP_DAC_OVERRIDE, so that file modes bind this
root process and a read-only directory really is read-only).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from restartable._checkpoint import Checkpoint
from restartable._concurrency.window import DoneSet

__all__ = ["JOB", "MODES", "SCRIPT", "Workload", "claimed", "write_script"]

JOB = "torture"
MODES = ("iterate", "batches", "files", "stages", "map")
STAGES = 3

SCRIPT = r"""
import json, os, sys, time

cfg = json.loads(sys.argv[1])
if cfg.get("drop_dac") and not os.environ.get("RT_TORTURE_NO_DAC"):
    # Root ignores file modes; without these capabilities it obeys them like anyone.
    os.environ["RT_TORTURE_NO_DAC"] = "1"
    caps = "-dac_override,-dac_read_search,-fowner,-linux_immutable"
    os.execvp("setpriv", ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", sys.executable, *sys.argv])

import faulthandler, signal
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the harness asks a hung worker where it waits

import restartable
from restartable import Job


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

N = cfg["n"]
E = cfg.get("every")
W = cfg.get("sleep", 0.0)


def work():
    if W:
        time.sleep(W)


def store_arg():
    url, t = cfg["store"], cfg.get("lock_timeout")
    if t and url.startswith("sqlite:///"):
        from restartable._sqlite.store import SQLiteStore
        return SQLiteStore(url[len("sqlite:///"):], display=url, busy_timeout=t)
    if t and url.startswith("file://"):
        from restartable.stores.file import FileStore
        return FileStore(url[len("file://"):], display=url, lock_timeout=t)
    return url


def m_iterate(job, log):
    for i in job.iterate(range(N), every=E):
        log(f"b {i}")
        work()
        log(str(i))


def m_stages(job, log):
    from restartable._pipeline import Pipeline

    pipe = Pipeline(cfg["job"])
    k = cfg.get("stages", 3)
    cuts = [N * s // k for s in range(k + 1)]

    def make(lo, hi):
        def part(sj):
            for i in sj.iterate(range(lo, hi), every=E):
                log(f"b {i}")
                work()
                log(str(i))
            return hi - lo
        return part

    for s in range(k):
        pipe.stage(f"part{s}")(make(cuts[s], cuts[s + 1]))
    pipe.run_in(job)


def m_files(job, log):
    for f in job.files(cfg["input"], every=E):
        i = int(f.stem)
        log(f"b {i}")
        with job.output(os.path.join(cfg["output"], f.name)) as tmp:
            work()
            with open(f, "rb") as src, open(tmp, "wb") as dst:
                dst.write(src.read() + b" done\n")
        log(str(i))


def m_map(job, log):
    def fn(i):
        work()
        log(str(i))
        return i

    for i in job.map(fn, range(N), workers=cfg.get("workers", 4), every=E):
        log(f"b {i}")


def m_batches(job, log):
    url, size = cfg["store"], cfg.get("batch", 5)
    pg = not url.startswith("sqlite:///")
    if pg:
        from restartable._postgres.table import PostgresTable
        table = PostgresTable(cfg["conninfo"], "src", key="id", batch_size=size, schema=cfg["schema"])
        insert = 'INSERT INTO "%s".dst (id, worker) VALUES (%%s, %%s)' % cfg["schema"]
    else:
        from restartable._sqlite.table import SQLiteTable
        table = SQLiteTable(url[len("sqlite:///"):], "src", key="id", batch_size=size)
        insert = "INSERT INTO dst (id, worker) VALUES (?, ?)"
    for batch in job.batches(table, every=1):
        ids = [r["id"] for r in batch]
        for i in ids:
            log(f"b {i}")
            work()
        with job.transaction() as conn:
            rows = [(i, os.getpid()) for i in ids]
            if pg:
                with conn.cursor() as cur:
                    cur.executemany(insert, rows)
            else:
                conn.executemany(insert, rows)
        for i in ids:
            log(str(i))


MODES = {"iterate": m_iterate, "stages": m_stages, "files": m_files, "map": m_map, "batches": m_batches}


def main():
    fd = os.open(cfg["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def log(line):
        os.write(fd, (line + "\n").encode())

    with Job(cfg["job"], run=cfg["run"], store=store_arg(), progress=False, lease_seconds=cfg.get("lease", 30),
             wait=cfg.get("wait", 0)) as job:
        say(f"started pid={os.getpid()} epoch={job.epoch} done={job.record.done} completed={job.completed}")
        saves = 0

        def before_save():
            nonlocal saves
            saves += 1
            log(f"s {saves}")
            if cfg.get("blob"):
                k = job.state.get("saves", 0) + 1
                job.state["saves"] = k
                job.state["blob"] = chr(97 + k % 26) * cfg["blob"]
            if cfg.get("grow"):
                job.state["pad"] = "x" * (len(job.state.get("pad", "")) + cfg["grow"])

        job.on_checkpoint(before_save)
        MODES[cfg["mode"]](job, log)
    say("finished")


restartable.entrypoint(main)()
"""


def write_script(directory: Path) -> Path:
    """Write the worker script into ``directory`` and return its path."""
    path = directory / "torture_worker.py"
    path.write_text(SCRIPT)
    return path


@dataclass
class Workload:
    """One campaign's inputs and outputs for a mode, and the ground truth read back from them."""

    mode: str
    n: int
    root: Path  # where inputs and outputs live (never on the faulty filesystem)
    store_url: str
    pg_conninfo: str | None = None
    pg_schema: str | None = None
    #: PostgreSQL batches: seconds a deferred constraint trigger adds to each COMMIT that writes a
    #: row with ``id % slow_every == 0`` (one per batch), so a lost answer can land mid-commit.
    slow_commit: float = 0.0
    slow_every: int = 5

    def settings(self) -> dict[str, Any]:
        """Worker settings that describe this workload."""
        out: dict[str, Any] = {"mode": self.mode, "n": self.n}
        if self.mode == "files":
            out.update(input=str(self.root / "in"), output=str(self.root / "out"))
        if self.mode == "batches" and self.pg_conninfo:
            out.update(conninfo=self.pg_conninfo, schema=self.pg_schema)
        return out

    def prepare(self) -> None:
        """Create the inputs: files to convert, or the source and sink tables in the store's database."""
        if self.mode == "files":
            (self.root / "in").mkdir(parents=True, exist_ok=True)
            (self.root / "out").mkdir(exist_ok=True)
            for i in range(self.n):
                (self.root / "in" / f"{i:05d}.txt").write_text(f"item {i}")
        if self.mode != "batches":
            return
        if self.pg_conninfo:
            import psycopg
            from psycopg import sql

            s = sql.Identifier(self.pg_schema or "public")
            with psycopg.connect(self.pg_conninfo, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s))
                conn.execute(sql.SQL("CREATE TABLE {}.src (id int PRIMARY KEY, v text NOT NULL)").format(s))
                conn.execute(sql.SQL("CREATE TABLE {}.dst (id int NOT NULL, worker int NOT NULL)").format(s))
                conn.execute(
                    sql.SQL("INSERT INTO {}.src SELECT g, 'v' || g FROM generate_series(0, %s) g").format(s),
                    [self.n - 1],
                )
                if self.slow_commit:
                    # Runs at COMMIT, before the commit record: the transaction is "in progress" meanwhile.
                    conn.execute(
                        sql.SQL(
                            "CREATE FUNCTION {s}.slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                            "IF NEW.id % {every} = 0 THEN PERFORM pg_sleep({pause}); END IF; RETURN NULL; END $$"
                        ).format(s=s, every=sql.Literal(self.slow_every), pause=sql.Literal(self.slow_commit))
                    )
                    conn.execute(
                        sql.SQL(
                            "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON {s}.dst DEFERRABLE "
                            "INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.slow_commit()"
                        ).format(s=s)
                    )
        else:
            path = self.store_url[len("sqlite:///") :]
            Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(path)
            try:
                conn.execute("CREATE TABLE src (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
                conn.execute("CREATE TABLE dst (id INTEGER NOT NULL, worker INTEGER NOT NULL)")
                conn.executemany("INSERT INTO src VALUES (?, ?)", [(i, f"v{i}") for i in range(self.n)])
                conn.commit()
            finally:
                conn.close()
            os.chmod(path, 0o600)

    def sink(self) -> list[int] | None:
        """The ids written to ``dst`` (batches; None for other modes): the exactly-once ground truth."""
        if self.mode != "batches":
            return None
        if self.pg_conninfo:
            import psycopg
            from psycopg import sql

            with psycopg.connect(self.pg_conninfo, autocommit=True) as conn:
                rows = conn.execute(sql.SQL("SELECT id FROM {}.dst").format(sql.Identifier(self.pg_schema or "public")))
                return [r[0] for r in rows]
        conn = sqlite3.connect(self.store_url[len("sqlite:///") :])
        try:
            return [r[0] for r in conn.execute("SELECT id FROM dst")]
        finally:
            conn.close()

    def outputs_ok(self) -> list[str]:
        """Problems with the converted files (files mode): missing or wrong outputs, stray temps."""
        if self.mode != "files":
            return []
        problems = []
        out = self.root / "out"
        for i in range(self.n):
            p = out / f"{i:05d}.txt"
            if not p.exists():
                problems.append(f"output {p.name} missing")
            elif p.read_text() != f"item {i} done\n":
                problems.append(f"output {p.name} holds {p.read_text()[:40]!r}")
        return problems


def claimed(mode: str, rec: Checkpoint, n: int) -> set[int] | None:
    """The items a checkpoint claims done (None when the mode's claim is not an item set)."""
    pos = rec.positions
    if mode == "iterate":
        return set(range(int(pos.get("0", {}).get("offset", 0))))
    if mode == "map":
        p = pos.get("0", {})
        d = DoneSet.decode(int(p.get("offset", 0)), p.get("done"), where="torture")
        return set(range(d.low)) | d.above
    if mode == "stages":
        pipe = pos.get("pipeline", {})
        done_stages = set(pipe.get("done") or [])
        cuts = [n * s // STAGES for s in range(STAGES + 1)]
        out: set[int] = set()
        for s in range(STAGES):
            lo, hi = cuts[s], cuts[s + 1]
            if f"part{s}" in done_stages:
                out |= set(range(lo, hi))
            else:
                out |= set(range(lo, lo + int(pos.get(f"part{s}:0", {}).get("offset", 0))))
        return out
    return None
