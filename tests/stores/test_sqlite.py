"""sqlite:// specifics: pragmas, migrations, files and modes, transaction(), error translation.

Everything runs on real SQLite files under tmp_path. Privilege-dependent checks run in
a subprocess that drops to uid/gid 65534 (root ignores file modes).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap

import pytest

from restartable._checkpoint import Owner
from restartable._sqlite.store import _PRUNE_EVERY, SCHEMA_VERSION, SQLiteStore
from restartable.errors import (
    CheckpointCorrupt,
    ConfigError,
    Fenced,
    StoreUnavailable,
)
from restartable.stores import open_store
from restartable.stores.base import HISTORY_LIMIT

ME = Owner(host="host-a", pid=111)
OTHER = Owner(host="host-b", pid=222)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "ckpt.db"


@pytest.fixture
def store(db):
    s = open_store(f"sqlite:///{db}")
    yield s
    s.close()


def test_pragmas_are_applied(store, db):
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    # WAL is a property of the file: another connection sees it too.
    with sqlite3.connect(db) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_schema_migrations_record_the_version_and_reopen_is_idempotent(db):
    for _ in range(3):
        with open_store(f"sqlite:///{db}") as s:
            s.acquire("job", "r1", owner=ME, lease_seconds=30) if s.load("job", "r1") is None else None
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "history", "markers", "schema_migrations"} <= tables
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    conn.close()


def test_a_newer_schema_is_refused(db):
    SQLiteStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises((ConfigError, CheckpointCorrupt)) as info:
        open_store(f"sqlite:///{db}")
    assert "upgrade restartable" in str(info.value)
    assert "sqlite:///" in str(info.value)


def test_a_garbage_file_is_checkpoint_corrupt(db):
    db.write_bytes(os.urandom(8192))
    with pytest.raises(CheckpointCorrupt) as info:
        open_store(f"sqlite:///{db}")
    msg = str(info.value)
    assert str(db) in msg and "restartable reset" in msg
    assert info.value.exit_code == 65
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)  # translated, with the cause chained


def test_a_record_with_bad_json_is_checkpoint_corrupt(store, db):
    store.acquire("job", "r1", owner=ME, lease_seconds=30)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET record = '{not json'")
    with pytest.raises(CheckpointCorrupt) as info:
        store.load("job", "r1")
    assert "'job'" in str(info.value) and str(db) in str(info.value)
    with pytest.raises(CheckpointCorrupt):
        store.list_runs()


def test_files_are_private_and_created_dirs_0700(tmp_path):
    db = tmp_path / "a" / "b" / "c.db"
    with open_store(f"sqlite:///{db}") as s:
        s.acquire("job", "r1", owner=ME, lease_seconds=30)
        for path in (db, f"{db}-wal", f"{db}-shm"):
            assert _mode(path) == 0o600, path
    assert _mode(tmp_path / "a") == 0o700
    assert _mode(tmp_path / "a" / "b") == 0o700


def test_relative_and_absolute_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///rel/dir/x.db") as s:
        assert s.path == str(tmp_path / "rel" / "dir" / "x.db")
        s.acquire("job", "r1", owner=ME, lease_seconds=30)
    assert (tmp_path / "rel" / "dir" / "x.db").is_file()
    absolute = tmp_path / "abs" / "y.db"
    with open_store(f"sqlite:///{absolute}") as s:  # sqlite:////abs/... : four slashes
        assert s.path == str(absolute)
        assert s.display == f"sqlite:///{absolute}"
    assert absolute.is_file()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///dir/", "sqlite://host/x.db"])
def test_urls_without_a_path_are_refused_with_both_forms(url):
    with pytest.raises(ConfigError) as info:
        open_store(url)
    assert "sqlite:///relative/path.db" in str(info.value)
    assert "sqlite:////absolute/path.db" in str(info.value)


def test_unknown_query_options_and_memory_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no query options"):
        open_store(f"sqlite:///{tmp_path}/x.db?timeout=3")
    with pytest.raises(ConfigError, match="memory://"):
        open_store("sqlite:///:memory:")


def _results(db) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT n FROM results ORDER BY n")]


def test_transaction_commits_user_rows_and_checkpoint_together(store, db):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    with store.transaction() as conn:
        conn.execute("CREATE TABLE results (n INTEGER)")
    with store.transaction() as conn:
        conn.executemany("INSERT INTO results VALUES (?)", [(1,), (2,)])
        rec = store.save(rec.replace(done=2), lease_seconds=30)
    assert _results(db) == [1, 2]
    assert store.load("job", "r1").done == 2
    # The private hook a later issue uses: the CAS on an open transaction, no commit.
    with store.transaction() as conn:
        conn.execute("INSERT INTO results VALUES (3)")
        rec = store._save_in(conn, rec.replace(done=3), store.now(), 30)
    assert _results(db) == [1, 2, 3] and store.load("job", "r1").done == 3


def test_transaction_rolls_back_both_on_exception(store, db):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    with store.transaction() as conn:
        conn.execute("CREATE TABLE results (n INTEGER)")
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("INSERT INTO results VALUES (1)")
        store.save(rec.replace(done=1), lease_seconds=30)
        raise RuntimeError("boom")
    assert _results(db) == []
    assert store.load("job", "r1").done == 0
    assert len(store.history("job", "r1")) == 1  # only the acquire's entry


def test_a_fenced_save_in_a_transaction_rolls_back_the_users_rows(store, db):
    old = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    with store.transaction() as conn:
        conn.execute("CREATE TABLE results (n INTEGER)")
    with open_store(f"sqlite:///{db}") as other:
        new = other.acquire("job", "r1", owner=OTHER, lease_seconds=30, steal_epoch=old.epoch)
    with pytest.raises(Fenced), store.transaction() as conn:
        conn.execute("INSERT INTO results VALUES (1)")
        store.save(old.replace(done=1), lease_seconds=30)
    assert _results(db) == []
    loaded = store.load("job", "r1")
    assert loaded.epoch == new.epoch and loaded.owner == OTHER
    # The connection is usable afterwards (no transaction left open).
    assert not store._conn.in_transaction
    store.save(new, lease_seconds=30)


def test_history_is_pruned_without_growing(store, db):
    store.history_every = 1  # a row for every save (the default samples one a second)
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    for i in range(3 * HISTORY_LIMIT):
        rec = store.save(rec.replace(done=i), lease_seconds=30)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM history WHERE job = 'job' AND run = 'r1'").fetchone()[0]
    assert HISTORY_LIMIT <= rows <= HISTORY_LIMIT + _PRUNE_EVERY
    assert len(store.history("job", "r1", limit=1000)) == HISTORY_LIMIT
    assert store.history("job", "r1", limit=1)[0].done == 3 * HISTORY_LIMIT - 1


def test_renew_updates_columns_and_load_overlays_them(store, db):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=5)
    expiry = store.renew("job", "r1", epoch=rec.epoch, lease_seconds=600)
    with sqlite3.connect(db) as conn:
        text = conn.execute("SELECT record FROM runs").fetchone()[0]
    assert str(rec.lease_expires) in text  # the JSON still has the old expiry ...
    assert store.load("job", "r1").lease_expires == pytest.approx(expiry)  # ... the column wins


def test_markers_replace_and_are_removed_with_the_run(store, db):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    store.mark("job", "r1", "files", "a", 1, epoch=rec.epoch)
    store.mark("job", "r1", "files", "a", {"v": (1, 2)}, epoch=rec.epoch)
    assert store.markers("job", "r1", "files") == {"a": {"v": (1, 2)}}
    assert store.delete("job", "r1")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM markers").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 0


def test_a_locked_database_is_store_unavailable(db):
    s = SQLiteStore(db, busy_timeout=0.2)
    rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable) as info:
            s.save(rec.replace(done=1), lease_seconds=30)
        assert "locked" in str(info.value) and "sqlite:///" in str(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    s.save(rec.replace(done=1), lease_seconds=30)  # and it recovers
    s.close()


def test_a_full_database_is_store_unavailable(store):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL, as on a full disk
    with pytest.raises(StoreUnavailable, match="disk full"):
        store.save(rec.replace(state={"big": "x" * 100_000}), lease_seconds=30)
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    assert store.load("job", "r1").state == {}


def test_a_closed_store_says_so(db):
    s = SQLiteStore(db)
    s.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        s.load("job", "r1")


_AS_NOBODY = textwrap.dedent(
    """
    import os, sys
    from restartable.stores import open_store
    import restartable._sqlite.store, restartable.stores.file  # import while we can still read the code
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
    try:
        with open_store(sys.argv[1]) as s:
            s.load("job", "r1")
            from restartable._checkpoint import Owner
            s.acquire("job", "r1", owner=Owner(host="h", pid=1), lease_seconds=30)
    except BaseException as exc:
        print(type(exc).__name__)
        print(exc)
    else:
        print("OK")
    """
)


def run_as_nobody(url: str) -> tuple[str, str]:
    """Open ``url`` and acquire a run in a child that drops root; returns (error class, message)."""
    out = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, url], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    name, _, message = out.partition("\n")
    return name, message


@pytest.fixture
def public_dir(tmp_path_factory):
    """A directory others may traverse (pytest's own tmp dirs are 0700)."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root to create a directory another uid cannot write (root ignores modes)")
    path = tempfile.mkdtemp(prefix="rt-perm-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_permission_denied_on_a_directory_owned_by_another_user(public_dir):
    locked = os.path.join(public_dir, "locked")
    os.mkdir(locked, 0o700)  # owned by root
    name, message = run_as_nobody(f"sqlite:///{locked}/sub/ckpt.db")
    assert name == "PermissionDenied", message
    assert locked in message and "uid 65534" in message


def test_permission_denied_on_a_read_only_database(public_dir):
    db = os.path.join(public_dir, "ro.db")
    with open_store(f"sqlite:///{db}") as s:
        s.acquire("job", "r1", owner=ME, lease_seconds=30)
        s.save(s.load("job", "r1"), lease_seconds=None)
    os.chmod(db, 0o644)  # readable by others, writable by root only
    name, message = run_as_nobody(f"sqlite:///{db}")
    assert name == "PermissionDenied", message
    assert db in message


def test_bad_names_never_reach_sql_unparameterized(store):
    # Names are validated by the caller; the store itself only ever binds them as parameters.
    weird = "r1'; DROP TABLE runs; --"
    assert store.load("job", weird) is None
    store.acquire("job", "r1", owner=ME, lease_seconds=30)
    assert store.load("job", "r1") is not None


def test_the_callers_own_sql_errors_reach_them_untranslated(store, db):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    with store.transaction() as conn:
        conn.execute("CREATE TABLE results (n INTEGER PRIMARY KEY)")
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as conn:
        store.save(rec.replace(done=1), lease_seconds=30)
        conn.executemany("INSERT INTO results VALUES (?)", [(1,), (1,)])
    assert _results(db) == [] and store.load("job", "r1").done == 0


def _save_in_child(store, epoch, conn) -> None:
    try:
        rec = store.load("job", "r1")
        store.save(rec.replace(done=7), lease_seconds=30)
        conn.send("ok")
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent
        conn.send(repr(exc))


def test_a_forked_child_opens_its_own_connection(store):
    import multiprocessing

    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_save_in_child, args=(store, rec.epoch, child_end))
    child.start()
    child.join(30)
    assert parent_end.recv() == "ok"
    assert store.load("job", "r1").done == 7  # the parent's connection still works
    store.save(store.load("job", "r1").replace(done=8), lease_seconds=30)


def test_a_directory_is_not_a_database(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        open_store(f"sqlite:///{tmp_path}")
