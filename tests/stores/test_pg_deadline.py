"""A PostgreSQL connection that goes silent must not hang the job (the ``read_timeout`` option).

A silent connection, without a proxy: SIGSTOP on one backend process (its pid from the
connection) freezes exactly that connection while new connections work, which is what
a partition, a dropped NAT entry or a middlebox that ACKs does to a client: no error
ever arrives. SIGSTOP on the whole private server freezes every connection, new ones
included. Each blocking call runs in a thread with a bound, so a regression shows as a
failed test, not a hung suite; every frozen process is continued in ``finally``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("psycopg")

import psycopg

import pgserver
from pgserver import PgServer
from restartable import Job
from restartable._checkpoint import Owner
from restartable._postgres import conn as _pgconn
from restartable._postgres.table import PostgresTable
from restartable.errors import ConfigError, StoreUnavailable
from restartable.stores import open_store

private_postgres = pgserver.private_postgres  # a fixture: a private server of the test's own

OWNER = Owner(host="deadline-test", pid=1)


@contextmanager
def frozen(*pids: int) -> Iterator[None]:
    """SIGSTOP ``pids`` (in order) for the block; SIGCONT them (in reverse) whatever happens."""
    stopped: list[int] = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in reversed(stopped):
            os.kill(pid, signal.SIGCONT)


def server_pids(server: PgServer) -> list[int]:
    """The postmaster first (so it forks nothing new), then every process it started."""
    postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(entry))
    return [postmaster, *children]


class Outcome:
    """What a call run by :func:`bounded` did: its value or error, how long it took, whether it hung."""

    value: Any = None
    error: BaseException | None = None
    elapsed: float = float("inf")
    hung: bool = True


def bounded(fn: Callable[[], Any], limit: float) -> tuple[Outcome, threading.Thread]:
    """Start ``fn()`` in a daemon thread and wait ``limit`` seconds for it (longer: ``hung``)."""
    out = Outcome()

    def run() -> None:
        t0 = time.monotonic()
        try:
            out.value = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out.error = exc
        out.elapsed = time.monotonic() - t0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    out.hung = thread.is_alive()
    return out, thread


# -- the option ---------------------------------------------------------------------------


_PARAM = st.sampled_from(["sslmode", "application_name", "connect_timeout", "options", "x-y", "read_timeoutx"])
_VALUE = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    query=st.lists(st.tuples(_PARAM, _VALUE), max_size=6),
    at=st.integers(min_value=0, max_value=6),
    seconds=st.integers(min_value=0, max_value=10**6),
    plus=st.booleans(),
)
def test_read_timeout_is_taken_out_of_the_url_and_nothing_else(
    query: list[tuple[str, str]], at: int, seconds: int, plus: bool
) -> None:
    # The other parameters as a user may write them ('+' and '%20' mean different things
    # to libpq): what remains must be exactly that text, in order.
    others = [f"{k}={quote(v, safe='+' if plus else '')}" for k, v in query]
    mine = f"read_timeout={seconds}s"
    segments = [*others[:at], mine, *others[at:]]
    url = "postgresql://u:pw@db.example:5433/app?" + "&".join(segments)
    rest, found = _pgconn.split_read_timeout(url, "shown")
    assert found == float(seconds)
    parts = urlsplit(rest)
    assert parts.query == "&".join(others)
    assert (parts.scheme, parts.netloc, parts.path) == ("postgresql", "u:pw@db.example:5433", "/app")
    assert _pgconn.split_read_timeout(rest, "shown") == (rest, None)


@pytest.mark.parametrize("value", ["-1", "abc", "1e3", "", "10x", "nan", "-0.5s"])
def test_a_bad_read_timeout_is_a_config_error_naming_the_option(value: str) -> None:
    url = f"postgresql://postgres:s3cret@127.0.0.1:1/postgres?read_timeout={value}"
    with pytest.raises(ConfigError, match="read_timeout") as store_err:
        open_store(url)  # refused before any connection: port 1 is never tried
    table = PostgresTable(url, "t", key="id", retry=0)
    with pytest.raises(ConfigError, match="read_timeout") as table_err:
        table.open()
    for err in (store_err.value, table_err.value):
        assert "s3cret" not in str(err)


def test_read_timeout_reaches_every_connection_and_the_display_is_unchanged(private_postgres: PgServer) -> None:
    # Trust authentication ignores the password, so the URL can carry one to check redaction.
    url = private_postgres.url(password="s3cret") + "?schema=rt&read_timeout=2.5s"
    with open_store(url) as store:
        assert store.display == url.replace("s3cret", "***")  # the option stays visible, the password not
        store.load("j", "r")
        assert isinstance(store._conn, _pgconn.DeadlineConnection)
        assert store._conn.read_timeout == 2.5
        tx = store._connect()  # the connection job.transaction() gets
        try:
            assert isinstance(tx, _pgconn.DeadlineConnection) and tx.read_timeout == 2.5
            assert not tx.autocommit
        finally:
            tx.close()
    with open_store(private_postgres.url() + "?schema=rt") as store:
        store.load("j", "r")
        assert store._conn.read_timeout == _pgconn.DEFAULT_READ_TIMEOUT == 60.0


# -- a silent connection ---------------------------------------------------------------


def test_a_frozen_backend_is_given_up_and_the_save_goes_on_on_a_new_connection(
    private_postgres: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="restartable")
    url = private_postgres.url(password="s3cret") + "?schema=rt&read_timeout=1&retry=30s"
    with open_store(url) as store:
        rec = store.acquire("j", "r", owner=OWNER, lease_seconds=60)
        rec = store.save(rec.replace(state={"n": 1}), lease_seconds=60)
        old = store._conn.info.backend_pid
        with frozen(old):
            out, _ = bounded(lambda: store.save(rec.replace(state={"n": 2}), lease_seconds=60), 20)
            assert not out.hung, "save hung on a silent connection"
            assert out.error is None, out.error
            assert 0.9 <= out.elapsed < 10, out.elapsed  # the deadline, then one reconnect
            assert store._conn.info.backend_pid != old
            loaded = store.load("j", "r")
            assert loaded is not None and loaded.state == {"n": 2}
    assert "read_timeout" in caplog.text
    assert "s3cret" not in caplog.text


def test_a_frozen_server_fails_within_the_deadline_and_the_budget(private_postgres: PgServer) -> None:
    # Every connection silent, new ones too (they hang in the startup until connect_timeout,
    # libpq's minimum 2 s): the load must give up after read_timeout + retry + the connects.
    url = private_postgres.url() + "?schema=rt&read_timeout=1&retry=1s&connect_timeout=2"
    with open_store(url) as store:
        rec = store.acquire("j", "r", owner=OWNER, lease_seconds=60)
        store.save(rec.replace(state={"n": 1}), lease_seconds=60)
        with frozen(*server_pids(private_postgres)):
            out, _ = bounded(lambda: store.load("j", "r"), 30)
            assert not out.hung, "load hung on a frozen server"
            assert isinstance(out.error, StoreUnavailable), out.error
            assert "retry" in str(out.error)  # the message names the fix
            assert out.elapsed < 20, out.elapsed
        # The server goes on with its data: so does the store, on a new connection.
        loaded = store.load("j", "r")
        assert loaded is not None and loaded.state == {"n": 1} and loaded.epoch == rec.epoch


def test_read_timeout_0_waits_for_a_frozen_backend(private_postgres: PgServer) -> None:
    url = private_postgres.url() + "?schema=rt&read_timeout=0"
    with open_store(url) as store:
        rec = store.acquire("j", "r", owner=OWNER, lease_seconds=60)
        pid = store._conn.info.backend_pid
        with frozen(pid):
            out, thread = bounded(lambda: store.save(rec.replace(state={"n": 2}), lease_seconds=60), 2.5)
            assert out.hung, f"read_timeout=0 must not give up: {out.error!r}"
        thread.join(20)  # continued: the same connection answers
        assert not thread.is_alive() and out.error is None, out.error
        assert store._conn.info.backend_pid == pid


def test_a_commit_without_answer_is_outcome_unknown(private_postgres: PgServer) -> None:
    url = private_postgres.url() + "?schema=rt&read_timeout=1"
    with open_store(url) as store:
        tx = store._connect()
        try:
            tx.execute("CREATE TABLE t (x int)")
            tx.commit()
            tx.execute("INSERT INTO t VALUES (1)")
            with frozen(tx.info.backend_pid):
                out, _ = bounded(tx.commit, 10)
                assert not out.hung, "COMMIT hung on a silent connection"
                # What transaction.py tells apart: a psycopg error AND a broken connection
                # (the outcome is unknown), not a definite failure on a live connection.
                assert isinstance(out.error, psycopg.OperationalError), out.error
                assert isinstance(out.error, _pgconn.ReadTimeout)
                assert tx.broken and tx.closed
                assert "read_timeout" in str(out.error)
                assert 0.9 <= out.elapsed < 5, out.elapsed
        finally:
            tx.close()


def test_postgres_table_rides_out_a_frozen_backend(private_postgres: PgServer) -> None:
    url = private_postgres.url()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("CREATE TABLE src (id int PRIMARY KEY)")
        admin.execute("INSERT INTO src SELECT generate_series(1, 10)")
    table = PostgresTable(url + "?read_timeout=1&retry=30", "src", key="id", batch_size=4)
    table.open()
    try:
        first = table.fetch(None)
        conn = table._conn
        assert isinstance(conn, _pgconn.DeadlineConnection) and conn.read_timeout == 1.0
        with frozen(conn.info.backend_pid):
            out, _ = bounded(lambda: table.fetch(first.last_key), 20)
            assert not out.hung, "PostgresTable hung on a silent connection"
            assert out.error is None, out.error
            assert [r["id"] for r in out.value.rows] == [5, 6, 7, 8]
            assert table._conn is not conn
    finally:
        table.close()


def test_a_job_transaction_on_a_frozen_backend_ends_and_the_rerun_finishes(private_postgres: PgServer) -> None:
    # The reported job: batches + transaction() on PostgreSQL, whose transaction's
    # connection goes silent mid-batch while new connections (and the heartbeat's) work.
    # Without a deadline the main thread waited for good while the lease stayed renewed.
    url = private_postgres.url()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("CREATE TABLE src (id int PRIMARY KEY)")
        admin.execute("INSERT INTO src SELECT generate_series(1, 12)")
        admin.execute("CREATE TABLE dst (id int NOT NULL)")
    store_url = url + "?schema=rt&read_timeout=1&retry=20"
    stopped: list[int] = []

    def run(*, freeze: bool) -> None:
        with Job("deadline", run="r", store=store_url, progress=False, handle_signals=False) as job:
            table = PostgresTable(url, "src", key="id", batch_size=3)
            for batch in job.batches(table, every=1):
                ids = [r["id"] for r in batch]
                with job.transaction() as tx, tx.cursor() as cur:
                    cur.executemany("INSERT INTO dst VALUES (%s)", [(i,) for i in ids])
                    if freeze and not stopped and 7 in ids:  # silent from here: the checkpoint's write gets no answer
                        stopped.append(tx.info.backend_pid)
                        os.kill(stopped[-1], signal.SIGSTOP)

    try:
        out, _ = bounded(lambda: run(freeze=True), 30)
        assert stopped, "the test never froze the transaction's backend"
        assert not out.hung, "the job hung on a silent transaction connection"
        # The batch's transaction failed after read_timeout with nothing committed: the job
        # either redid it on a new connection (within retry) or ended with exit 75.
        assert out.error is None or isinstance(out.error, StoreUnavailable), out.error
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    if out.error is not None:
        out, _ = bounded(lambda: run(freeze=False), 30)
        assert not out.hung and out.error is None, out.error
    with psycopg.connect(url, autocommit=True) as admin:
        rows = [r[0] for r in admin.execute("SELECT id FROM dst ORDER BY id")]
    assert rows == list(range(1, 13))  # every row once: the frozen batch was rolled back and redone


def test_a_work_queue_connection_carries_the_deadline(postgres_url: str) -> None:
    from restartable.queue import WorkQueue

    url = postgres_url + "&read_timeout=7"  # not passed on to libpq, which would refuse it
    with WorkQueue("deadline-q", store=url, handle_signals=False) as q:
        q.fill(["a"])
        assert q.counts().total == 1
        conn = q._backend._conn
        assert isinstance(conn, _pgconn.DeadlineConnection) and conn.read_timeout == 7.0
        q.drop()
