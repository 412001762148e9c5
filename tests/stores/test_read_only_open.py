"""Stores opened read-only (``open_store(url, read_only=True)``): they create nothing, write nothing.

What ``status``, ``show`` and ``serve`` rely on (see ``restartable.stores.base``): a
missing store raises StoreNotFound and is not created, an existing one is read with
nothing written (files compared by size and mtime, a PostgreSQL role that can only
SELECT, Redis's command counters), every write method raises UsageError, and
``open_store(retry=)`` gives a quick read whose retries are short and quiet.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from fstree import tree

# tests/ holds the private-server helper; put it on the path whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redisserver
from redisserver import RedisServer
from restartable._checkpoint import COMPLETED, Owner
from restartable._retry import call_with_retry
from restartable.errors import ConfigError, PermissionDenied, StoreNotFound, StoreUnavailable, UsageError
from restartable.stores import open_store
from restartable.stores.base import Store

# pytest finds fixtures by their names in the module.
private_redis = redisserver.private_redis
redis_server_factory = redisserver.redis_server_factory

ME = Owner(host="host-a", pid=111)


def populate(url: str, runs: tuple[str, ...] = ("r1", "r2")) -> None:
    """Write a few runs (two saves each, a marker) through a writable store."""
    with open_store(url) as store:
        for run in runs:
            rec = store.acquire("job", run, owner=ME, lease_seconds=30)
            rec = store.save(rec.replace(positions={"": {"offset": 5}}, done=5), lease_seconds=30)
            store.mark("job", run, "files", "a.csv", {"size": 1}, epoch=rec.epoch)
            store.save(rec.replace(status=COMPLETED, done=9), lease_seconds=None)


def check_reads(store: Store) -> None:
    """The reads a read-only store serves, on the runs :func:`populate` wrote."""
    assert store.read_only
    assert [r.run for r in store.list_runs()] == ["r1", "r2"]
    rec = store.load("job", "r1")
    assert rec is not None and rec.status == COMPLETED and rec.done == 9
    assert store.load("job", "nope") is None
    assert [h.status for h in store.history("job", "r1")][:2] == [COMPLETED, "running"]
    assert store.markers("job", "r1", "files") == {"a.csv": {"size": 1}}
    assert abs(store.now() - time.time()) < 60


# -- every store ---------------------------------------------------------------


def test_a_read_only_store_reads_and_refuses_every_write_before_any_io(store_url: str) -> None:
    populate(store_url)
    with open_store(store_url, read_only=True) as store:
        check_reads(store)
        rec = store.load("job", "r1")
        assert rec is not None
        writes: dict[str, Any] = {
            "acquire": lambda: store.acquire("job", "r3", owner=ME, lease_seconds=30),
            "save": lambda: store.save(rec, lease_seconds=None),
            "renew": lambda: store.renew("job", "r1", epoch=rec.epoch, lease_seconds=30),
            "delete": lambda: store.delete("job", "r1"),
            "mark": lambda: store.mark("job", "r1", "files", "b", 1, epoch=rec.epoch),
            "restore": lambda: store.restore(rec, lease_seconds=30),
            "cleanup": lambda: store.cleanup(older_than=0),
            "transactional": lambda: store.transactional(),
        }
        for name, call in writes.items():
            with pytest.raises(UsageError, match=rf"opened read-only, so {name}\(\) is refused") as err:
                call()
            assert store.display in str(err.value)
        check_reads(store)  # nothing changed
    with open_store(store_url) as writable:
        assert not writable.read_only and writable.load("job", "r3") is None


def test_a_store_object_is_returned_as_it_is(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/x.db") as store:
        assert open_store(store, read_only=True) is store


# -- missing stores --------------------------------------------------------------


@pytest.mark.parametrize(
    "url,names",
    [
        ("sqlite:///{d}/x.db", "{d}/x.db"),
        ("sqlite:///{d}/typo/sub/x.db", "{d}/typo/sub/x.db"),
        ("file://{d}/ckpt", "{d}/ckpt"),
        ("file://{d}/typo/ckpt", "{d}/typo/ckpt"),
    ],
)
def test_a_missing_local_store_is_not_found_and_not_created(tmp_path: Path, url: str, names: str) -> None:
    with pytest.raises(StoreNotFound) as err:
        open_store(url.format(d=tmp_path), read_only=True)
    message = str(err.value)
    assert names.format(d=tmp_path) in message and "a job's first run creates it" in message
    assert "\n" not in message and err.value.exit_code == 78
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_file_without_a_store_is_not_found(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (a)")
    conn.close()
    before = tree(tmp_path)
    with pytest.raises(StoreNotFound, match="holds no restartable tables"):
        open_store(f"sqlite:///{db}", read_only=True)
    assert tree(tmp_path) == before


def test_a_missing_postgres_schema_is_not_found_and_not_created(postgres_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    schema = postgres_url.rsplit("schema=", 1)[1]
    with pytest.raises(StoreNotFound) as err:
        open_store(postgres_url, read_only=True)
    assert repr(schema) in str(err.value) and "a job's first run creates them" in str(err.value)
    with psycopg.connect(postgres_url.split("?")[0]) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema]).fetchone() == (0,)


def test_an_empty_redis_store_is_empty_and_stays_so(private_redis: RedisServer) -> None:
    import redis

    with open_store(private_redis.url, read_only=True) as store:
        assert store.list_runs() == [] and store.load("job", "r1") is None and store.history("job", "r1") == []
    assert redis.Redis.from_url(private_redis.url).dbsize() == 0


def test_a_memory_store_name_is_not_registered_by_a_read_only_open() -> None:
    from restartable.stores import memory

    name = uuid.uuid4().hex
    with open_store(f"memory://{name}", read_only=True) as store:
        assert store.list_runs() == []
    assert name not in memory._SHARED


# -- SQLite ----------------------------------------------------------------------------


def test_sqlite_read_only_creates_no_wal_shm_or_lock_and_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ckpt.db"
    populate(url)
    (tmp_path / "ckpt.db.lock").unlink()  # left by the writable open: a read-only one must not make it
    before = tree(tmp_path)
    assert sorted(before) == ["ckpt.db"]  # the writer's close folded its log in
    with open_store(url, read_only=True) as store:
        check_reads(store)
        assert tree(tmp_path) == before
    assert tree(tmp_path) == before


def test_sqlite_read_only_reads_a_live_writers_commits_and_writes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ckpt.db"
    populate(url)
    with open_store(url, read_only=True) as reader:  # opened immutable: no log yet
        assert reader.load("job", "r9") is None
        with open_store(url) as writer:
            rec = writer.acquire("job", "r9", owner=ME, lease_seconds=30)
            writer.save(rec.replace(done=3), lease_seconds=30)
            files = tree(tmp_path)
            assert {"ckpt.db-wal", "ckpt.db-shm"} <= set(files)
            seen = reader.load("job", "r9")  # the log appeared: the reader reopens and sees the commit
            assert seen is not None and seen.done == 3
            assert [r.run for r in reader.list_runs()] == ["r1", "r2", "r9"]
            assert tree(tmp_path) == files  # the reads wrote to none of the files
            writer.save(rec.replace(done=4), lease_seconds=30)
            seen = reader.load("job", "r9")
            assert seen is not None and seen.done == 4
        # The writer closed: its commits are in the database file, wherever the log went.
        seen = reader.load("job", "r9")
        assert seen is not None and seen.done == 4


def test_sqlite_read_only_sees_commits_made_after_it_opened_on_a_quiet_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ckpt.db"
    populate(url)
    with open_store(url, read_only=True) as reader:
        assert reader.load("job", "r9") is None
        populate(url, runs=("r9",))  # opened, written and closed between two reads
        seen = reader.load("job", "r9")
        assert seen is not None and seen.done == 9


def test_sqlite_a_log_without_its_shm_is_refused_in_one_line_creating_nothing(tmp_path: Path) -> None:
    live, copy = tmp_path / "live", tmp_path / "copy"
    live.mkdir()
    copy.mkdir()
    url = f"sqlite:///{live}/ckpt.db"
    populate(url)
    with open_store(url) as writer:  # holds the database open: its last commit stays in the log
        rec = writer.acquire("job", "r9", owner=ME, lease_seconds=30)
        writer.save(rec.replace(done=3), lease_seconds=30)
        assert (live / "ckpt.db-wal").stat().st_size > 0
        for name in ("ckpt.db", "ckpt.db-wal"):
            shutil.copy2(live / name, copy / name)
    before = tree(copy)
    with pytest.raises(StoreUnavailable) as err:
        open_store(f"sqlite:///{copy}/ckpt.db", read_only=True)
    assert "ckpt.db-shm is missing" in str(err.value) and "\n" not in str(err.value)
    assert tree(copy) == before


def test_sqlite_an_older_schema_is_read_as_it_is_and_a_newer_one_refused(tmp_path: Path) -> None:
    db = tmp_path / "ckpt.db"
    url = f"sqlite:///{db}"
    populate(url)
    with sqlite3.connect(db) as conn:  # back to schema version 1
        conn.execute("DROP TABLE epoch_floor")
        conn.execute("DELETE FROM schema_migrations WHERE version > 1")
    conn.close()
    before = tree(tmp_path)
    with open_store(url, read_only=True) as store:
        check_reads(store)
    assert tree(tmp_path) == before  # not migrated
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)")
    conn.close()
    with pytest.raises(ConfigError, match="schema version 99, newer than this restartable knows"):
        open_store(url, read_only=True)


def test_sqlite_an_unreadable_database_says_so(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    url = f"sqlite:///{tmp_path}/ckpt.db"
    populate(url)
    (tmp_path / "ckpt.db").chmod(0)
    with pytest.raises(PermissionDenied, match="cannot read"):
        open_store(url, read_only=True)


# -- file store ---------------------------------------------------------------------------


def test_file_store_read_only_changes_nothing_even_when_a_read_must_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    from restartable.stores import file as file_store

    url = f"file://{tmp_path}/ckpt"
    populate(url)
    lock = tmp_path / "ckpt" / "job" / "r1.lock"
    assert lock.exists()
    real = file_store._read_generation

    def looks_odd(path: str, where: str, expect: tuple[str, str]) -> Any:
        raise file_store._Bad("a save in progress, say")  # the lock-free read sends every read to the flock

    monkeypatch.setattr(file_store, "_read_generation", looks_odd)
    before = tree(tmp_path)
    with open_store(url, read_only=True) as store:
        check_reads(store)
        assert tree(tmp_path) == before
        # It does take the writers' flock (on the existing file): held elsewhere, the read waits for it.
        store.lock_timeout = 0.3  # type: ignore[attr-defined]
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with pytest.raises(StoreUnavailable, match="stayed locked"):
                store.load("job", "r1")
        finally:
            os.close(fd)
    lock.unlink()  # and with no lock file to take, none is created
    before = tree(tmp_path)
    with open_store(url, read_only=True) as store:
        check_reads(store)
    assert tree(tmp_path) == before
    monkeypatch.setattr(file_store, "_read_generation", real)


# -- PostgreSQL ---------------------------------------------------------------------------


def test_postgres_read_only_needs_nothing_but_select(postgres_url: str) -> None:
    """A role that may only SELECT opens the store read-only; writable, it is refused (it cannot migrate)."""
    psycopg = pytest.importorskip("psycopg")
    from psycopg import sql

    populate(postgres_url)
    base, schema = postgres_url.split("?")[0], postgres_url.rsplit("schema=", 1)[1]
    role = f"rt_ro_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
    try:
        url = postgres_url.replace("postgres@", f"{role}@", 1)
        with open_store(url, read_only=True) as store:
            check_reads(store)
            assert store._conn is not None  # type: ignore[attr-defined]
            shown = store._conn.execute("SHOW default_transaction_read_only").fetchone()  # type: ignore[attr-defined]
            assert shown == ("on",)
        with pytest.raises((PermissionDenied, StoreUnavailable, ConfigError)):
            populate(url, runs=("r9",))  # the same role cannot write: the read-only open wrote nothing
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(
                sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(
                    sql.Identifier(schema), sql.Identifier(role)
                )
            )
            conn.execute(
                sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(sql.Identifier(schema), sql.Identifier(role))
            )
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# -- Redis ------------------------------------------------------------------------------------


#: What a read-only Redis store may send: reads, and the client's own handshake.
REDIS_READS = {
    "hgetall",
    "zrange",
    "lrange",
    "time",
    "client|setinfo",
    "hello",
    "ping",
    "select",
    "info",
    "config|resetstat",
}


def test_redis_read_only_sends_no_write(private_redis: RedisServer) -> None:
    import redis

    populate(private_redis.url)
    admin = redis.Redis.from_url(private_redis.url)
    keys = sorted(admin.keys())
    admin.config_resetstat()
    with open_store(private_redis.url, read_only=True) as store:
        check_reads(store)
    sent = {name.removeprefix("cmdstat_") for name in admin.info("commandstats")}
    assert sent <= REDIS_READS, sent - REDIS_READS
    assert {"hgetall", "zrange", "lrange", "time"} <= sent
    assert sorted(admin.keys()) == keys


# -- quick reads: open_store(retry=) -------------------------------------------------------------


def test_retry_bounds_the_budget_and_the_deadline_and_a_shorter_url_budget_stays() -> None:
    pytest.importorskip("redis")

    def budget(url: str, **kw: Any) -> tuple[float, Any, bool]:
        with open_store(url, **kw) as store:  # Redis connects lazily: no server needed
            kwargs = store._client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
            return store.retry_seconds, kwargs["socket_timeout"], store._quick  # type: ignore[attr-defined]

    assert budget("redis://h:6379/0") == (60.0, 60.0, False)  # a job's store: the URL's, or 60 s
    assert budget("redis://h:6379/0?retry=120s", read_only=True) == (120.0, 60.0, False)
    assert budget("redis://h:6379/0", read_only=True, retry=5) == (5.0, 5.0, True)
    assert budget("redis://h:6379/0?retry=120s&read_timeout=0", retry=5) == (5.0, 5.0, True)
    assert budget("redis://h:6379/0?retry=0.5&read_timeout=2", retry=5) == (0.5, 2.0, True)


def _down() -> None:
    raise ConnectionError("refused")


@pytest.mark.parametrize("quick", [True, False])
def test_a_quick_read_gives_up_within_its_budget_and_logs_no_warning(
    quick: bool, caplog: pytest.LogCaptureFixture
) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="restartable"), pytest.raises(StoreUnavailable) as err:
        call_with_retry(_down, seconds=1.0, transient=(ConnectionError,), display="x://", what="reading", quick=quick)
    took = time.monotonic() - started
    assert "stayed unreachable for 1s" in str(err.value)
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    retried = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retried) > 3
    if quick:
        assert not warned and "--retry SECONDS" in str(err.value)
        assert took < 1.3, took  # the budget counts from the first attempt, and no sleep runs past it
    else:
        assert warned == retried  # a job's retries stay warnings: its log says why it paused
