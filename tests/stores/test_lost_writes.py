"""A store that forgets its last acknowledged writes must never give one epoch to two runners.

Acknowledged writes are lost more often than a store's contract admits: PostgreSQL fails
over to a replica that lagged (asynchronous replication), Redis with ``appendfsync
everysec`` (the documented compromise) loses its last second in a crash, a volume is
restored from last night's snapshot, a replica is promoted by an operator. The store then
answers as it did before those writes: a takeover it acknowledged is forgotten while
the runner that made it is still running.

The fault here: runner B takes the run over (acknowledged), then the store forgets
everything since just before (each store's own snapshot and restore below), then runner
C takes the run over from the same state B did. With ``epoch + 1`` both would hold one
epoch, pass every compare-and-set, and write over each other's checkpoints and outputs;
a takeover's epoch is raised by a random step instead (``stores.base.next_epoch``), so
B is fenced at its next write, and C writes alone. The work queue's claims likewise.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from procs import store_url_for
from restartable._checkpoint import Owner
from restartable.errors import Fenced
from restartable.stores import open_store

A = Owner(host="host-a", pid=1, token="a")
B = Owner(host="host-b", pid=2, token="b")
C = Owner(host="host-c", pid=3, token="c")
JOB, RUN = "job", "r1"

Restore = Callable[[], None]


def _snapshot(kind: str, url: str, store: Any) -> Restore:
    """Remember the store's state now; the returned function makes the store forget what came after."""
    if kind == "memory":
        d = store._d
        with d.lock:
            records, floor = dict(d.records), d.epoch_floor

        def restore_memory() -> None:
            with d.lock:
                d.records.clear()
                d.records.update(records)
                d.epoch_floor = floor

        return restore_memory
    if kind == "sqlite":
        path = urlsplit(url).path
        saved = sqlite3.connect(":memory:")
        with sqlite3.connect(path) as live:
            live.backup(saved)

        def restore_sqlite() -> None:
            with sqlite3.connect(path) as live:
                saved.backup(live)

        return restore_sqlite
    if kind == "file":
        run_dir = os.path.join(urlsplit(url).path, JOB)
        copy = run_dir + ".snapshot"
        shutil.copytree(run_dir, copy)

        def restore_file() -> None:
            # As a restored volume: the files are other inodes with the old bytes.
            for name in os.listdir(copy):
                shutil.copy2(os.path.join(copy, name), os.path.join(run_dir, name + ".restoring"))
                os.replace(os.path.join(run_dir, name + ".restoring"), os.path.join(run_dir, name))

        return restore_file
    if kind == "postgresql":
        import psycopg
        from psycopg import sql

        base, query = url.split("?", 1)
        schema = sql.Identifier(parse_qs(query)["schema"][0])
        tables = [sql.Identifier(t) for t in ("runs", "queue_tasks")]
        copies = [sql.Identifier(f"lost_{t}") for t in ("runs", "queue_tasks")]
        with psycopg.connect(base, autocommit=True) as conn:
            for t, copy in zip(tables, copies, strict=True):
                conn.execute(sql.SQL("CREATE TABLE {s}.{c} AS SELECT * FROM {s}.{t}").format(s=schema, c=copy, t=t))

        def restore_postgresql() -> None:
            with psycopg.connect(base, autocommit=True) as conn:
                for t, copy in zip(tables, copies, strict=True):
                    conn.execute(sql.SQL("DELETE FROM {s}.{t}").format(s=schema, t=t))
                    conn.execute(
                        sql.SQL("INSERT INTO {s}.{t} OVERRIDING SYSTEM VALUE SELECT * FROM {s}.{c}").format(
                            s=schema, t=t, c=copy
                        )
                    )

        return restore_postgresql
    if kind == "redis":
        import redis

        base, query = url.split("?", 1)
        prefix = parse_qs(query)["prefix"][0]
        client = redis.Redis.from_url(base)
        saved = {k: (client.dump(k), max(0, client.pttl(k))) for k in client.scan_iter(match=f"{prefix}*")}

        def restore_redis() -> None:
            for k in client.scan_iter(match=f"{prefix}*"):
                client.delete(k)
            for k, (dumped, ttl) in saved.items():
                client.restore(k, ttl, dumped, replace=True)

        return restore_redis
    raise AssertionError(kind)


@pytest.fixture(params=["memory", "sqlite", "file", "postgresql", "redis"])
def kind_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[tuple[str, str]]:
    yield request.param, store_url_for(request.param, request, tmp_path)


def test_a_forgotten_takeover_never_shares_its_epoch_with_the_next(kind_url: tuple[str, str]) -> None:
    kind, url = kind_url
    with open_store(url) as a_store, open_store(url) as b_store, open_store(url) as c_store:
        held = a_store.acquire(JOB, RUN, owner=A, lease_seconds=60)
        held = a_store.save(held.replace(done=10), lease_seconds=60)
        forget = _snapshot(kind, url, a_store)
        # A is presumed dead (its pod evicted): B takes over, and it is acknowledged.
        b = b_store.acquire(JOB, RUN, owner=B, lease_seconds=60, steal_epoch=held.epoch)
        b = b_store.save(b.replace(done=15), lease_seconds=60)
        forget()  # the failover: the store answers as before B
        assert c_store.load(JOB, RUN).epoch == held.epoch
        c = c_store.acquire(JOB, RUN, owner=C, lease_seconds=60, steal_epoch=held.epoch)
        assert c.epoch > held.epoch and c.epoch != b.epoch, "two runners hold one epoch"
        with pytest.raises(Fenced):  # B, still running, is fenced at its next write...
            b_store.save(b.replace(done=20), lease_seconds=60)
        with pytest.raises(Fenced):
            b_store.renew(JOB, RUN, epoch=b.epoch, lease_seconds=60)
        c = c_store.save(c.replace(done=11), lease_seconds=60)  # ...and C writes alone
        got = c_store.load(JOB, RUN)
        assert (got.epoch, got.owner, got.done) == (c.epoch, C, 11)


@pytest.mark.parametrize("kind", ["postgresql", "redis"])
def test_a_forgotten_claim_never_shares_its_epoch_with_the_next(
    kind: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    from restartable.queue import WorkQueue

    url = store_url_for(kind, request, tmp_path)
    with WorkQueue("lost", store=url, handle_signals=False) as q:
        q.fill(["t1"])
        first = q._backend.claim("worker-1", 0.5)
        assert first is not None
        forget = _snapshot(kind, url, None)
        time.sleep(0.7)  # worker-1 presumed dead
        second = q._backend.claim("worker-2", 30)
        assert second is not None and second.key == "t1"
        forget()  # worker-2's claim is forgotten, worker-2 still works on the task
        time.sleep(0.7)
        third = q._backend.claim("worker-3", 30)
        assert third is not None and third.key == "t1"
        assert third.epoch != second.epoch, "two workers hold one claim"
        assert not q._backend.complete("t1", second.epoch)
        assert q._backend.complete("t1", third.epoch)
