"""Exactly-once output with job.transaction(): SIGKILLs, fencing, a connection lost at COMMIT.

The kill tests run the job in real processes. To make many kills cheap, a launcher
process imports restartable and psycopg once and forks one worker per attempt (it
holds no connection and no thread, so forking is safe); the test SIGKILLs the worker
at a random moment, then starts another, until the run completes. The output table
has no unique constraint, so a row written twice would show in its count and sum.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from restartable import Job
from restartable._checkpoint import COMPLETED, Owner
from restartable._sqlite.table import SQLiteTable
from restartable.errors import Fenced, UsageError
from restartable.stores import open_store

WORKER = r"""
import json, os, sys, time, traceback
cfg = json.loads(sys.argv[1])
import psycopg  # noqa: F401 - imported once, before forking: each worker starts in milliseconds
from restartable import Job
from restartable.errors import RestartableError
from restartable._postgres.table import PostgresTable
from restartable._sqlite.table import SQLiteTable


def work(batch_size, pause):
    with Job(cfg["job"], store=cfg["store"], progress=False) as job:
        if cfg["kind"] == "postgres":
            table = PostgresTable(cfg["url"], "src", schema=cfg["schema"], columns=["id", "v"], rows="tuple",
                                  batch_size=batch_size)
            insert = 'INSERT INTO "%s".out (id, v) SELECT * FROM unnest(%%s::bigint[], %%s::bigint[])' % cfg["schema"]
            for batch in job.batches(table):
                with job.transaction() as tx:
                    tx.execute(insert, ([r[0] for r in batch], [r[1] for r in batch]))
                    job.state["rows"] = job.state.get("rows", 0) + len(batch)
                    time.sleep(pause)  # a kill then most often lands inside the open transaction
        else:
            table = SQLiteTable(cfg["path"], "src", columns=["id", "v"], rows="tuple", batch_size=batch_size)
            for batch in job.batches(table):
                with job.transaction() as conn:
                    conn.executemany("INSERT INTO out (id, v) VALUES (?, ?)", batch)
                    job.state["rows"] = job.state.get("rows", 0) + len(batch)
                    time.sleep(pause)


for line in sys.stdin:  # "go BATCH_SIZE PAUSE": fork a worker
    words = line.split()
    if not words or words[0] != "go":
        break
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work(int(words[1]), float(words[2]))
        except RestartableError as exc:
            code = exc.exit_code
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class Launcher:
    """The forking launcher: ``start()`` a worker (its pid), ``wait(timeout)`` for its exit code."""

    def __init__(self, tmp_path: Path, cfg: dict) -> None:
        script = tmp_path / "eo_worker.py"
        script.write_text(WORKER)
        self.errfile = tmp_path / "worker.err"
        self._err = open(self.errfile, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def start(self, batch: int, pause: float = 0.0) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"go {batch} {pause}\n")
        self.proc.stdin.flush()
        return int(self.lines.get(timeout=30))

    def wait(self, timeout: float) -> int:
        return int(self.lines.get(timeout=timeout))

    def stderr(self) -> str:
        self._err.flush()
        return self.errfile.read_text()[-3000:]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._err.close()


def run_with_kills(
    launcher: Launcher,
    *,
    kills: int,
    delay: tuple[float, float],
    seed: int,
    batch: int,
    pause: float = 0.0,
    finish_batch: int | None = None,
    finish_timeout: float = 60,
) -> int:
    """Start workers, SIGKILLing each after a random delay, until ``kills`` kills landed; then
    let one run to the end. Returns how many workers ran. Any exit but 0 or SIGKILL fails.

    Workers under kills sleep ``pause`` inside each transaction, which bounds their
    progress (the table outlasts the kills) and makes most kills land in an open
    transaction. The last one runs without pause, in batches of ``finish_batch`` rows
    (the position is a key: any batch size resumes it)."""
    rng = random.Random(seed)
    landed = workers = 0
    while True:
        if landed < kills:
            pid = launcher.start(batch, pause)
        else:
            pid = launcher.start(finish_batch or batch)
        workers += 1
        if landed < kills:
            try:
                code = launcher.wait(rng.uniform(*delay))
            except queue.Empty:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                code = launcher.wait(30)
        else:
            code = launcher.wait(finish_timeout)  # no kill: it must end, not loop forever
        if code == -signal.SIGKILL:
            landed += 1
            continue
        assert code == 0, f"worker exited {code}:\n{launcher.stderr()}"
        if landed >= kills:
            return workers
        # It finished before enough kills landed: the caller sized the work too small.
        pytest.fail(f"the run completed after only {landed} kills; make the table larger")


# -- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture
def pg(postgres_server):
    psycopg = pytest.importorskip("psycopg")
    schema = f"rt_eo_{uuid.uuid4().hex[:10]}"
    conn = psycopg.connect(postgres_server, autocommit=True)
    conn.execute(f'CREATE SCHEMA "{schema}"')

    def run(text: str, params=None):
        cur = conn.execute(text.replace("{s}", f'"{schema}"'), params)
        return cur.fetchall() if cur.description else None

    yield SimpleNamespace(
        url=postgres_server, schema=schema, conn=conn, run=run, store=f"{postgres_server}?schema={schema}"
    )
    conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    conn.close()


def _make_pg_tables(pg, n: int) -> None:
    # One statement for the rows; the primary key built afterwards (faster than row by row).
    pg.run("CREATE TABLE {s}.src (id bigint NOT NULL, v bigint NOT NULL)")
    pg.run(f"INSERT INTO {{s}}.src SELECT g, g * 3 FROM generate_series(1, {n}) g")
    pg.run("ALTER TABLE {s}.src ADD PRIMARY KEY (id)")
    pg.run("ANALYZE {s}.src")
    pg.run("CREATE TABLE {s}.out (id bigint, v bigint)")  # no constraint: duplicates must be countable


def _check_pg_output(pg, n: int, job: str) -> None:
    count, total, distinct, vsum = pg.run("SELECT count(*), sum(id), count(DISTINCT id), sum(v) FROM {s}.out")[0]
    assert (count, distinct) == (n, n), f"{count} rows, {distinct} distinct, expected {n}"
    assert total == n * (n + 1) // 2 and vsum == 3 * total
    with open_store(pg.store) as store:
        rec = store.load(job, "default")
    assert rec is not None and rec.status == COMPLETED and rec.done == n
    assert rec.state["rows"] == n  # job.state committed with each batch's output, once


@pytest.mark.slow
def test_a_million_rows_with_random_kills(pg, tmp_path):
    n = 1_000_000
    _make_pg_tables(pg, n)
    from restartable._postgres.table import PostgresTable

    table = PostgresTable(pg.url, "src", schema=pg.schema, batch_size=10_000)
    table.open()
    try:
        plan = table.explain((n // 2,))
    finally:
        table.close()
    assert "Index Scan using src_pkey" in plan or "Index Only Scan using src_pkey" in plan, plan
    cfg = {"kind": "postgres", "job": "million", "store": pg.store, "url": pg.url, "schema": pg.schema}
    launcher = Launcher(tmp_path, cfg)
    try:
        t0 = time.monotonic()
        # 0.1 s in each killed worker's transactions: at most ~12 batches of 100 per kill, so the
        # table outlasts the six kills however fast this machine is; the last worker runs free.
        run_with_kills(launcher, kills=6, delay=(0.2, 1.2), seed=1, batch=10_000, pause=0.1)
        _check_pg_output(pg, n, "million")
        # Complete: a rerun does nothing, at once.
        launcher.start(10_000)
        assert launcher.wait(30) == 0
        assert time.monotonic() - t0 < 90
    finally:
        launcher.close()
    _check_pg_output(pg, n, "million")


@pytest.mark.slow
def test_exactly_once_under_fifty_kills(pg, tmp_path):
    n = 100_000  # 2,500 batches of 40; the kills leave at least 2,500 - 50 * 0.3 / 0.005 for the last worker
    _make_pg_tables(pg, n)
    cfg = {"kind": "postgres", "job": "fifty", "store": pg.store, "url": pg.url, "schema": pg.schema}
    launcher = Launcher(tmp_path, cfg)
    try:
        run_with_kills(launcher, kills=50, delay=(0.05, 0.3), seed=2, batch=40, pause=0.005, finish_batch=2000)
    finally:
        launcher.close()
    _check_pg_output(pg, n, "fifty")


def test_a_stale_runner_is_fenced_and_commits_no_output(pg):
    from restartable._postgres.table import PostgresTable

    _make_pg_tables(pg, 100)
    with Job("fence", store=pg.store, progress=False) as job:
        batches = job.batches(PostgresTable(pg.url, "src", schema=pg.schema, batch_size=10))
        first = next(batches)
        with job.transaction() as tx:
            tx.execute(
                f'INSERT INTO "{pg.schema}".out SELECT * FROM unnest(%s::bigint[], %s::bigint[])',
                ([r["id"] for r in first], [r["v"] for r in first]),
            )
        second = next(batches)
        # A newer runner takes the run over (as it would after this one's lease expired).
        with open_store(pg.store) as other:
            newer = other.acquire(
                "fence", "default", owner=Owner(host="elsewhere", pid=1), lease_seconds=60, steal_epoch=job.epoch
            )
        with pytest.raises(Fenced), job.transaction() as tx:
            tx.execute(
                f'INSERT INTO "{pg.schema}".out SELECT * FROM unnest(%s::bigint[], %s::bigint[])',
                ([r["id"] for r in second], [r["v"] for r in second]),
            )
        with pytest.raises(Fenced):
            next(batches)
    assert pg.run("SELECT count(*), min(id), max(id) FROM {s}.out") == [(10, 1, 10)]  # the stale batch rolled back
    with open_store(pg.store) as store:
        rec = store.load("fence", "default")
    assert rec.epoch == newer.epoch and rec.positions["0"]["key"] == (10,)


def test_transaction_misuse_is_refused(pg, tmp_path):
    from restartable._postgres.table import PostgresTable

    _make_pg_tables(pg, 30)
    with Job("misuse", store=pg.store, progress=False) as job:
        with pytest.raises(UsageError, match="inside `for batch in job.batches"):
            job.transaction()
        for batch in job.batches(PostgresTable(pg.url, "src", schema=pg.schema, batch_size=10)):
            with job.transaction() as tx:
                tx.execute(f'INSERT INTO "{pg.schema}".out VALUES (%s, %s)', (batch[0]["id"], 0))
            with pytest.raises(UsageError, match="one transaction per batch"):
                job.transaction()
            break
    with Job("misuse", store=f"memory://{uuid.uuid4().hex}", progress=False) as job:
        for _ in job.batches(PostgresTable(pg.url, "src", schema=pg.schema, batch_size=10)):
            with pytest.raises(UsageError, match="needs a postgresql:// or sqlite:// store"):
                job.transaction()
            break


def test_an_error_in_the_block_rolls_back_output_and_position(pg):
    from restartable._postgres.table import PostgresTable

    _make_pg_tables(pg, 30)
    with pytest.raises(ZeroDivisionError), Job("boom", store=pg.store, progress=False) as job:
        for i, batch in enumerate(job.batches(PostgresTable(pg.url, "src", schema=pg.schema, batch_size=10))):
            with job.transaction() as tx:
                tx.execute(f'INSERT INTO "{pg.schema}".out VALUES (%s, %s)', (batch[0]["id"], 0))
                if i == 1:
                    raise ZeroDivisionError("the caller's own error, after its write")
    assert pg.run("SELECT id FROM {s}.out") == [(1,)]
    with open_store(pg.store) as store:
        assert store.load("boom", "default").positions["0"]["key"] == (10,)


# -- a connection lost at COMMIT (a real TCP proxy that drops it) ----------------------------------


class CommitDropper:
    """A TCP proxy to PostgreSQL that loses a connection at its next COMMIT once armed.

    ``arm("before")``: the COMMIT never reaches the server (it rolls back on the EOF).
    ``arm("after")``: the COMMIT reaches the server and commits, but its answer is
    never relayed: the client sees a lost connection and cannot tell which happened.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode: str | None = None
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, mode: str) -> None:
        self.mode = mode

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)
        mute = threading.Event()

        def answers() -> None:
            try:
                while data := server.recv(65536):
                    if mute.is_set():
                        return
                    client.sendall(data)
            except OSError:
                pass
            finally:
                client.close()

        threading.Thread(target=answers, daemon=True).start()
        reader = client.makefile("rb")
        try:
            head = reader.read(4)  # the startup message has no type byte
            server.sendall(head + reader.read(struct.unpack("!i", head)[0] - 4))
            pending_sync = False
            while True:
                kind = reader.read(1)
                if not kind:
                    break
                size = reader.read(4)
                msg = kind + size + reader.read(struct.unpack("!i", size)[0] - 4)
                if self.mode and kind in (b"Q", b"P") and b"COMMIT" in msg.upper():
                    mode, self.mode = self.mode, None
                    if mode == "before":
                        self.dropped += 1
                        break
                    if kind == b"Q":
                        mute.set()
                        server.sendall(msg)
                        time.sleep(0.5)  # the server commits; its answer is swallowed
                        self.dropped += 1
                        break
                    pending_sync = True
                if pending_sync and kind == b"S":
                    mute.set()
                    server.sendall(msg)
                    time.sleep(0.5)
                    self.dropped += 1
                    break
                server.sendall(msg)
        except OSError:
            pass
        finally:
            for s in (client, server):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("mode", ["after", "before"])
def test_connection_lost_during_commit(pg, mode, caplog):
    from urllib.parse import urlsplit

    from restartable._postgres.table import PostgresTable

    _make_pg_tables(pg, 50)
    parts = urlsplit(pg.url)
    proxy = CommitDropper((parts.hostname, parts.port or 5432))
    # Through the proxy, in plain text (no TLS) so that it can read the protocol.
    via = f"postgresql://{parts.username}@127.0.0.1:{proxy.port}{parts.path}?sslmode=disable&gssencmode=disable"
    store = f"{via}&schema={pg.schema}&retry=5"
    insert = f'INSERT INTO "{pg.schema}".out SELECT * FROM unnest(%s::bigint[], %s::bigint[])'

    def go(arm_at: int | None) -> None:
        with Job("drop", store=store, progress=False) as job:
            for i, batch in enumerate(job.batches(PostgresTable(pg.url, "src", schema=pg.schema, batch_size=10))):
                with job.transaction() as tx:
                    tx.execute(insert, ([r["id"] for r in batch], [r["v"] for r in batch]))
                    if i == arm_at:
                        proxy.arm(mode)

    try:
        go(2)
        if mode == "after":  # the commit happened: the server says so, and the job goes on
            assert "the server shows that it committed" in caplog.text
        else:  # it did not: the batch is handed out again in the same process
            assert "nothing of it was committed: job.state is restored and the batch handed out again" in caplog.text
        assert proxy.dropped == 1
    finally:
        proxy.close()
    count, distinct, total = pg.run("SELECT count(*), count(DISTINCT id), sum(id) FROM {s}.out")[0]
    assert (count, distinct, total) == (50, 50, 50 * 51 // 2)


# -- SQLite: store, input and output in one file -----------------------------------------------


def _make_sqlite(path: Path, n: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE src (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    conn.execute(
        f"WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n}) "
        "INSERT INTO src SELECT i, i * 3 FROM g"
    )
    conn.execute("CREATE TABLE out (id INTEGER, v INTEGER)")
    conn.close()


def _check_sqlite_output(path: Path, n: int, job: str) -> None:
    conn = sqlite3.connect(path)
    count, total, distinct, vsum = conn.execute(
        "SELECT count(*), sum(id), count(DISTINCT id), sum(v) FROM out"
    ).fetchone()
    conn.close()
    assert (count, distinct) == (n, n), f"{count} rows, {distinct} distinct, expected {n}"
    assert total == n * (n + 1) // 2 and vsum == 3 * total
    with open_store(f"sqlite:///{path}") as store:
        rec = store.load(job, "default")
    assert rec is not None and rec.status == COMPLETED and rec.done == n
    assert rec.state["rows"] == n


def test_sqlite_exactly_once_under_kills(tmp_path):
    n = 40_000  # 2,000 batches of 20; the kills leave at least 2,000 - 30 * 0.3 / 0.005 for the last worker
    path = tmp_path / "app.db"
    _make_sqlite(path, n)
    cfg = {"kind": "sqlite", "job": "lite", "store": f"sqlite:///{path}", "path": str(path)}
    launcher = Launcher(tmp_path, cfg)
    try:
        run_with_kills(launcher, kills=30, delay=(0.05, 0.3), seed=3, batch=20, pause=0.005, finish_batch=2000)
    finally:
        launcher.close()
    _check_sqlite_output(path, n, "lite")


def test_sqlite_stale_runner_is_fenced(tmp_path):
    path = tmp_path / "app.db"
    _make_sqlite(path, 40)
    store = f"sqlite:///{path}"
    with Job("fence", store=store, progress=False) as job:
        batches = job.batches(SQLiteTable(path, "src", batch_size=10))
        first = next(batches)
        with job.transaction() as conn:
            conn.executemany("INSERT INTO out VALUES (:id, :v)", first)
        second = next(batches)
        with open_store(store) as other:
            other.acquire(
                "fence", "default", owner=Owner(host="elsewhere", pid=1), lease_seconds=60, steal_epoch=job.epoch
            )
        with pytest.raises(Fenced), job.transaction() as conn:
            conn.executemany("INSERT INTO out VALUES (:id, :v)", second)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*), max(id) FROM out").fetchone() == (10, 10)
    conn.close()
