"""Keyset batches across a PostgreSQL restart or outage (a private server of each test's own).

The job and its input, output and checkpoints all live on the private server, which
the test restarts or stops from inside the loop, so the outage lands mid-run.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

pytest.importorskip("psycopg")

import psycopg

import pgserver
from pgserver import PgServer
from restartable import Job
from restartable._checkpoint import COMPLETED
from restartable._postgres.table import PostgresTable
from restartable.errors import StoreUnavailable, TemporaryError
from restartable.stores import open_store

private_postgres = pgserver.private_postgres  # a fixture: a private server of the test's own

N = 20_000
BATCH = 200


def _setup(server: PgServer) -> str:
    url = server.url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE src (id bigint NOT NULL, v bigint NOT NULL)")
        conn.execute(f"INSERT INTO src SELECT g, g * 3 FROM generate_series(1, {N}) g")
        conn.execute("ALTER TABLE src ADD PRIMARY KEY (id)")
        conn.execute("CREATE TABLE out (id bigint, v bigint)")
    return url


def _output(url: str) -> tuple[int, int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT id), coalesce(sum(id), 0) FROM out").fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def _copy(job: Job, table: PostgresTable, *, on_batch=None) -> None:
    """The exactly-once loop: each batch's rows into ``out``, committed with its checkpoint."""
    for i, batch in enumerate(job.batches(table)):
        with job.transaction() as tx:
            tx.execute(
                "INSERT INTO out SELECT * FROM unnest(%s::bigint[], %s::bigint[])",
                ([r["id"] for r in batch], [r["v"] for r in batch]),
            )
        if on_batch is not None:
            on_batch(i)


def test_batches_ride_out_a_restart(private_postgres: PgServer, caplog):
    """Without transactions: the source's queries and the checkpoints retry, the loop never notices."""
    caplog.set_level(logging.WARNING, logger="restartable")
    url = _setup(private_postgres)
    seen: list[int] = []
    restarter = threading.Thread(target=private_postgres.restart)
    with Job("ride", store=f"{url}?retry=30s", progress=False) as job:
        for i, batch in enumerate(job.batches(PostgresTable(url, "src", batch_size=BATCH, retry=30))):
            seen.extend(r["id"] for r in batch)
            if i == 10:
                restarter.start()
                time.sleep(0.3)  # the server is going down while the loop asks for more
        restarter.join()
    assert seen == list(range(1, N + 1))
    assert job.completed
    assert "retrying" in caplog.text


def test_exactly_once_across_a_restart(private_postgres: PgServer):
    """The job rides the restart out in ONE process (a batch whose transaction lost its connection
    is handed out again): nothing lost or doubled."""
    url = _setup(private_postgres)
    restarter = threading.Thread(target=private_postgres.restart)

    def restart_once(i: int) -> None:
        if i == 10 and not restarter.is_alive() and restarter.ident is None:
            restarter.start()
            time.sleep(0.3)

    outcomes = []
    for _ in range(4):
        try:
            with Job("eo", store=f"{url}?retry=30s", progress=False, lease_seconds=2, wait=10) as job:
                _copy(job, PostgresTable(url, "src", batch_size=BATCH, retry=30), on_batch=restart_once)
            outcomes.append("completed")
            break
        except TemporaryError as exc:
            assert exc.exit_code == 75
            outcomes.append("exit 75")
    restarter.join()
    assert restarter.ident is not None  # the restart did land mid-run
    assert outcomes == ["completed"], outcomes
    assert _output(url) == (N, N, N * (N + 1) // 2)


def test_a_long_outage_fails_with_75_and_the_checkpoint_stands(private_postgres: PgServer):
    url = _setup(private_postgres)
    store_url = f"{url}?retry=2s"

    def stop_after_20(i: int) -> None:
        if i == 20:
            private_postgres.stop()

    t0 = time.monotonic()
    with (
        pytest.raises(StoreUnavailable) as info,
        Job("outage", store=store_url, progress=False, lease_seconds=2) as job,
    ):
        _copy(job, PostgresTable(url, "src", batch_size=BATCH, retry=2), on_batch=stop_after_20)
    assert info.value.exit_code == 75
    assert time.monotonic() - t0 < 30  # the retry budgets, not forever
    private_postgres.start()
    assert _output(url) == (21 * BATCH, 21 * BATCH, 21 * BATCH * (21 * BATCH + 1) // 2)
    with open_store(store_url) as store:
        assert store.load("outage", "default").positions["0"]["key"] == (21 * BATCH,)
    with Job("outage", store=store_url, progress=False, lease_seconds=2, wait=10) as job:
        _copy(job, PostgresTable(url, "src", batch_size=BATCH))
    assert job.completed and job.record.status == COMPLETED
    assert _output(url) == (N, N, N * (N + 1) // 2)
