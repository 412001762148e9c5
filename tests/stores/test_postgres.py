"""PostgreSQL store specifics beyond the contract suite: schema and migrations, names as
data, the server's clock, password redaction, riding out a server restart, cleanup.

Tests that stop or reconfigure a server use a private one (tests/pgserver.py); the
others use the shared server with a schema of their own (``postgres_url``).
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import threading
import time
import traceback
from urllib.parse import parse_qs, quote, urlsplit

import pytest

import pgserver
from pgserver import PgServer, new_server
from restartable._checkpoint import COMPLETED, RUNNING, Owner
from restartable._names import check_name
from restartable._postgres import schema as _pgschema
from restartable._postgres.store import PostgresStore, _Stale
from restartable.errors import (
    CheckpointCorrupt,
    ConfigError,
    Fenced,
    MissingDriver,
    PermissionDenied,
    RunLocked,
    StoreUnavailable,
    UsageError,
)
from restartable.stores import open_store
from restartable.stores.base import EPOCH_STEP

psycopg = pytest.importorskip("psycopg")
sql = psycopg.sql

private_postgres = pgserver.private_postgres  # a fixture: a private server of the test's own

ME = Owner(host="host-a", pid=111)
OTHER = Owner(host="host-b", pid=222)


def _schema_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["schema"][0]


def _base(url: str) -> str:
    return url.split("?", 1)[0]


def _sql(url: str, query: str, *params: object) -> list[tuple]:
    """Run ``query`` with ``{s}`` the store's schema, on a connection of the test's own."""
    with psycopg.connect(_base(url), autocommit=True) as conn:
        cur = conn.execute(sql.SQL(query).format(s=sql.Identifier(_schema_of(url))), params or None)
        return cur.fetchall() if cur.description else []


def _tables(conn_url: str, schema: str) -> set[str]:
    with psycopg.connect(conn_url) as conn:
        # Tables only: the schema's view (checkpoints_json) is tested in test_record_tools.py.
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE'",
            [schema],
        )
        return {r[0] for r in rows}


# -- schema and migrations -------------------------------------------------------


def test_schema_option_is_respected(postgres_url):
    with open_store(postgres_url) as store:
        store.acquire("job", "r1", owner=ME, lease_seconds=30)
    assert _tables(_base(postgres_url), _schema_of(postgres_url)) == {
        "schema_migrations",
        "runs",
        "history",
        "markers",
        "epoch_floor",
        "queue_tasks",
        "queues",
    }
    assert _sql(postgres_url, "SELECT job, run FROM {s}.runs") == [("job", "r1")]


def test_default_schema_is_restartable(private_postgres):
    with open_store(private_postgres.url()) as store:
        store.acquire("job", "r1", owner=ME, lease_seconds=30)
    assert "runs" in _tables(private_postgres.url(), "restartable")


def test_migrations_are_versioned_and_reopen_is_idempotent(postgres_url):
    with open_store(postgres_url) as store:
        rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
        store.save(rec.replace(done=4), lease_seconds=None)
    first = _sql(postgres_url, "SELECT version, applied_at FROM {s}.schema_migrations ORDER BY version")
    assert [v for v, _ in first] == [v for v, _ in _pgschema.MIGRATIONS]
    for _ in range(2):
        with open_store(postgres_url) as store:
            assert store.load("job", "r1").done == 4
    assert _sql(postgres_url, "SELECT version, applied_at FROM {s}.schema_migrations ORDER BY version") == first


def test_a_schema_from_a_newer_version_is_refused(postgres_url):
    open_store(postgres_url).close()
    _sql(postgres_url, "INSERT INTO {s}.schema_migrations (version) VALUES (%s)", _pgschema.LATEST + 1)
    with pytest.raises(ConfigError, match="upgrade restartable"):
        open_store(postgres_url)


def test_a_queue_made_before_its_tables_were_migrations_upgrades_cleanly(postgres_url):
    """Until version 4 a work queue made its own tables (CREATE IF NOT EXISTS) beside a version-3
    store: such a schema goes to version 4 without an error, and the queue's tasks, claims and
    completions are all still there and go on."""
    from restartable import WorkQueue

    with WorkQueue("q", store=postgres_url, handle_signals=False) as queue:
        queue.fill(["a", "b", "c"])
        for claim in queue.claims():
            with claim:
                done_key = claim.key
            break
    _sql(postgres_url, "DELETE FROM {s}.schema_migrations WHERE version >= 4")  # what the older release left
    assert [v for (v,) in _sql(postgres_url, "SELECT version FROM {s}.schema_migrations ORDER BY 1")] == [1, 2, 3]
    with WorkQueue("q", store=postgres_url, handle_signals=False) as queue:  # migrates: 4 finds the tables there
        assert [v for (v,) in _sql(postgres_url, "SELECT version FROM {s}.schema_migrations ORDER BY 1")] == [
            1,
            2,
            3,
            4,
            5,
        ]
        counts = queue.counts()
        assert (counts.total, counts.done) == (3, 1)
        left = []
        for claim in queue.claims():
            with claim:
                left.append(claim.key)
        assert sorted(left) == sorted({"a", "b", "c"} - {done_key})
        assert queue.counts().done == 3


def test_a_store_written_by_version_1_is_migrated_and_its_runs_keep_working(postgres_url, monkeypatch):
    """A schema made before the epoch floor (version 1) gets it at the next open; its runs
    go on, and a run deleted after that is made again above its epochs whatever the clock."""
    with open_store(postgres_url) as old:
        held = old.acquire("job", "r1", owner=ME, lease_seconds=30)
    # Back to what a restartable that knew only version 1 left: no floor table.
    _sql(postgres_url, "DROP TABLE {s}.epoch_floor")
    _sql(postgres_url, "ALTER TABLE {s}.runs DROP COLUMN save_seq")
    _sql(postgres_url, "DROP TABLE {s}.queue_tasks, {s}.queues")
    _sql(postgres_url, "DELETE FROM {s}.schema_migrations WHERE version > 1")
    assert _tables(_base(postgres_url), _schema_of(postgres_url)) == {"schema_migrations", "runs", "history", "markers"}
    with open_store(postgres_url) as store:
        assert [v for (v,) in _sql(postgres_url, "SELECT version FROM {s}.schema_migrations ORDER BY 1")] == [
            1,
            2,
            3,
            4,
            5,
        ]
        held = store.save(held.replace(done=2), lease_seconds=30)  # the old runner goes on
        assert store.renew("job", "r1", epoch=held.epoch, lease_seconds=30)
        assert store.delete("job", "r1")
        assert _sql(postgres_url, "SELECT epoch FROM {s}.epoch_floor") == [(held.epoch,)]
        monkeypatch.setattr(time, "time_ns", lambda: (held.epoch - 10) * 1000)  # the clock stepped back
        again = store.acquire("job", "r1", owner=OTHER, lease_seconds=30)
        monkeypatch.undo()
        assert 0 < again.epoch - held.epoch <= EPOCH_STEP
        with pytest.raises(Fenced):
            store.save(held, lease_seconds=30)


def test_cleanup_raises_the_epoch_floor_too(postgres_url, monkeypatch):
    with open_store(postgres_url) as store:
        rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
        store.save(rec.replace(status=COMPLETED), lease_seconds=None)
        assert [r.run for r in store.cleanup(older_than=0)] == ["r1"]
        monkeypatch.setattr(time, "time_ns", lambda: (rec.epoch - 10) * 1000)
        assert 0 < store.acquire("job", "r1", owner=ME, lease_seconds=30).epoch - rec.epoch <= EPOCH_STEP


def test_a_delete_racing_an_acquire_of_the_same_run_never_reuses_an_epoch(postgres_url, monkeypatch):
    """reset and a new runner at once, the clock stepped back: whichever order the server
    picks, the record that exists at the end has an epoch above every deleted one."""
    monkeypatch.setattr(time, "time_ns", lambda: 1_000_000_000 * 1000)  # far below every real epoch
    with open_store(postgres_url) as a, open_store(postgres_url) as b:
        top = 0
        for i in range(20):
            rec = a.acquire("job", "r", owner=ME, lease_seconds=30)
            top = max(top, rec.epoch)
            barrier = threading.Barrier(2)
            out: dict[str, object] = {}

            def delete() -> None:
                barrier.wait()
                out["deleted"] = a.delete("job", "r")

            def acquire() -> None:
                barrier.wait()
                try:
                    out["acquired"] = b.acquire("job", "r", owner=OTHER, lease_seconds=30, steal_epoch=rec.epoch)
                except RunLocked as exc:  # pragma: no cover - steal_epoch matches or the run is gone
                    out["acquired"] = exc

            threads = [threading.Thread(target=delete), threading.Thread(target=acquire)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            got = b.load("job", "r")
            if got is not None:
                assert got.epoch > rec.epoch, (i, out, got.epoch, rec.epoch)
                top = max(top, got.epoch)
                assert a.delete("job", "r")
        again = a.acquire("job", "r", owner=ME, lease_seconds=30)
        assert again.epoch > top


def _open_and_acquire(url: str, barrier, results, idx: int) -> None:
    try:
        barrier.wait()
        with open_store(url) as store:
            store.acquire("job", f"run{idx}", owner=Owner(host="h", pid=idx), lease_seconds=30)
        results.put("ok")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_first_opens_from_several_processes(postgres_url):
    ctx = multiprocessing.get_context("spawn")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_and_acquire, args=(postgres_url, barrier, results, i)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(results.get(timeout=5) for _ in range(n)) == ["ok"] * n
    assert len(_sql(postgres_url, "SELECT version FROM {s}.schema_migrations")) == _pgschema.LATEST
    assert len(_sql(postgres_url, "SELECT run FROM {s}.runs")) == n


# -- names are data, never SQL ----------------------------------------------------

EVIL = [
    "x'); DROP TABLE runs; --",
    'y"; DROP SCHEMA public CASCADE; --',
    "%(job)s %s {s} $1 \\ ''",
    "ünï ✓ ;",
]


def test_injection_shaped_names_are_refused_by_the_grammar():
    for name in EVIL:
        with pytest.raises(UsageError):
            check_name(name)


def test_injection_shaped_names_are_stored_as_data(postgres_url):
    with open_store(postgres_url) as store:
        for i, name in enumerate(EVIL):
            rec = store.acquire(name, EVIL[-1 - i], owner=ME, lease_seconds=30)
            rec = store.save(rec.replace(done=i, state={name: name}), lease_seconds=30)
            store.mark(name, rec.run, name, name, {name: i}, epoch=rec.epoch)
        for i, name in enumerate(EVIL):
            loaded = store.load(name, EVIL[-1 - i])
            assert loaded.job == name and loaded.state == {name: name} and loaded.done == i
            assert store.markers(name, loaded.run, name) == {name: {name: i}}
            assert store.history(name, loaded.run)[0].done == i
        assert sorted((r.job, r.run) for r in store.list_runs()) == sorted(zip(EVIL, reversed(EVIL)))
        assert store.delete(EVIL[0], EVIL[-1])
        assert len(store.list_runs()) == len(EVIL) - 1
    assert _tables(_base(postgres_url), _schema_of(postgres_url)) == {
        "schema_migrations",
        "runs",
        "history",
        "markers",
        "epoch_floor",
        "queue_tasks",
        "queues",
    }
    with psycopg.connect(_base(postgres_url)) as conn:
        assert conn.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'public'").fetchone()


@pytest.mark.parametrize("schema", ['x"; DROP SCHEMA public CASCADE; --', "a b", "-x", ".x", "a" * 64, "x'y"])
def test_injection_shaped_schema_option_is_refused(schema):
    # The port is closed: the refusal must come before any connection attempt.
    with pytest.raises(ConfigError, match="invalid schema"):
        open_store(f"postgresql://postgres@127.0.0.1:1/postgres?schema={quote(schema)}&retry=0")


def test_unusual_but_valid_schema_is_quoted(postgres_server):
    url = f"{postgres_server}?schema=Rt-Test.Odd_{time.time_ns()}"
    try:
        with open_store(url) as store:
            store.acquire("job", "r1", owner=ME, lease_seconds=30)
            assert store.load("job", "r1") is not None
        assert "runs" in _tables(postgres_server, _schema_of(url))
    finally:
        _sql(url, "DROP SCHEMA IF EXISTS {s} CASCADE")


# -- the server's clock -------------------------------------------------------------


def test_lease_expiry_is_judged_by_the_server_clock(postgres_url, monkeypatch):
    real_time = time.time
    with open_store(postgres_url) as store:
        first = store.acquire("job", "r1", owner=ME, lease_seconds=0.5)
        assert first.lease_expires - first.heartbeat == pytest.approx(0.5, abs=0.01)
        assert abs(first.heartbeat - store.now()) < 1
        # A client clock an hour ahead must not make the live lease look expired...
        monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
        with pytest.raises(RunLocked):
            store.acquire("job", "r1", owner=OTHER, lease_seconds=30)
        # ...and one an hour behind must not keep an expired lease alive.
        monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
        time.sleep(0.7)
        second = store.acquire("job", "r1", owner=OTHER, lease_seconds=30)
        assert 0 < second.epoch - first.epoch <= EPOCH_STEP and second.owner == OTHER
        assert abs(second.heartbeat - store.now()) < 1
        # The decision reads the column against the server's now(): move it server-side.
        _sql(postgres_url, "UPDATE {s}.runs SET lease_expires = now() - interval '1 second'")
        third = store.acquire("job", "r1", owner=ME, lease_seconds=30)
        assert 0 < third.epoch - second.epoch <= EPOCH_STEP


def test_the_same_owner_may_take_its_lease_again(postgres_url):
    # What a retried acquire whose first attempt committed does.
    with open_store(postgres_url) as store:
        first = store.acquire("job", "r1", owner=ME, lease_seconds=30)
        again = store.acquire("job", "r1", owner=ME, lease_seconds=30)
        assert 0 < again.epoch - first.epoch <= EPOCH_STEP


def test_columns_are_the_authority_and_corruption_is_reported(postgres_url):
    with open_store(postgres_url) as store:
        rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
        store.save(rec.replace(done=3), lease_seconds=30)
        _sql(postgres_url, "UPDATE {s}.runs SET status = 'failed', epoch = epoch + 7")
        loaded = store.load("job", "r1")
        assert (loaded.status, loaded.epoch, loaded.done) == ("failed", rec.epoch + 7, 3)
        _sql(postgres_url, "UPDATE {s}.runs SET record = '{{not json'")
        with pytest.raises(CheckpointCorrupt, match="job 'job' run 'r1'"):
            store.load("job", "r1")


# -- passwords ------------------------------------------------------------------------

PASSWORD = "S3cret/Pw:x"  # has characters that must be percent-encoded in a URL
QUOTED = quote(PASSWORD, safe="")


def _assert_hidden(text: str) -> None:
    assert PASSWORD not in text and QUOTED not in text and "S3cret" not in text


def _everything_about(exc: BaseException | None) -> str:
    """The messages a traceback of ``exc`` would print, for every exception in its chain.

    (Source lines are left out: this test's own source holds the password.)
    """
    text = ""
    while exc is not None:
        text += "".join(traceback.format_exception_only(exc)) + repr(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return text


@pytest.fixture
def password_server():
    server = new_server(hba=["host all pwuser 127.0.0.1/32 scram-sha-256"])
    server.execute(f"CREATE ROLE pwuser LOGIN PASSWORD '{PASSWORD}'")
    server.execute("CREATE ROLE limited LOGIN")
    server.execute("GRANT CREATE ON DATABASE postgres TO pwuser")
    try:
        yield server
    finally:
        server.destroy()


def test_password_never_appears(password_server: PgServer, caplog):
    caplog.set_level(logging.DEBUG)
    good = password_server.url(user="pwuser", password=QUOTED) + "?schema=pw"
    with open_store(good) as store:
        assert "***" in store.display
        _assert_hidden(store.display + repr(store))
        store.acquire("job", "r1", owner=ME, lease_seconds=30)
        with pytest.raises(RunLocked) as locked:
            store.acquire("job", "r1", owner=OTHER, lease_seconds=30)
        _assert_hidden(_everything_about(locked.value))

    wrong = password_server.url(user="pwuser", password=quote("S3cret-wrong", safe="")) + "?schema=pw&retry=30s"
    t0 = time.monotonic()
    with pytest.raises(PermissionDenied) as denied:
        open_store(wrong)
    assert time.monotonic() - t0 < 5  # a refused password is not retried
    assert "password authentication failed" in str(denied.value)
    _assert_hidden(_everything_about(denied.value))

    password_server.stop()
    with pytest.raises(StoreUnavailable) as down:
        open_store(good.replace("schema=pw", "schema=pw&retry=0.5s"))
    assert down.value.exit_code == 75
    _assert_hidden(_everything_about(down.value))

    with pytest.raises(ConfigError) as bad:  # libpq echoes a malformed token: it must be scrubbed
        open_store("postgresql://pwuser:S3cret%zz@127.0.0.1/postgres")
    _assert_hidden(_everything_about(bad.value))
    for record in caplog.records:
        _assert_hidden(record.getMessage())


def test_refused_privileges_are_permission_denied(password_server: PgServer):
    # "limited" may connect but not create the schema.
    with pytest.raises(PermissionDenied, match="CREATE"):
        open_store(password_server.url(user="limited") + "?schema=nope&retry=30s")


def test_unknown_database_is_a_config_error(postgres_server):
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="does not exist"):
        open_store(_base(postgres_server).rsplit("/", 1)[0] + "/rt_no_such_database")
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    "query", ["retry=abc", "history=-1", "history=x", "nosuchparam=1", "read_timeout=-1", "read_timeout=x"]
)
def test_bad_options_are_config_errors(query):
    with pytest.raises(ConfigError):
        open_store(f"postgresql://postgres@127.0.0.1:1/postgres?{query}")


def test_missing_driver_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what an environment without it looks like
    with pytest.raises(MissingDriver, match=r"pip install 'restartable\[postgres\]'"):
        open_store("postgresql://postgres@127.0.0.1:1/postgres")


# -- connection loss ------------------------------------------------------------------


def test_saves_keep_going_across_a_server_restart(private_postgres: PgServer, caplog):
    caplog.set_level(logging.WARNING, logger="restartable")
    store = open_store(private_postgres.url() + "?schema=rt&retry=30s")
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=60)
    errors: list[BaseException] = []
    counts = {"done": 0}
    restarted = threading.Event()
    stop = threading.Event()

    def saver() -> None:
        nonlocal rec
        after = 0
        try:
            while not stop.is_set() and after < 20:
                rec = store.save(rec.replace(done=counts["done"] + 1), lease_seconds=60)
                counts["done"] = rec.done
                after += restarted.is_set()
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=saver)
    thread.start()
    time.sleep(0.2)
    private_postgres.restart()
    restarted.set()
    thread.join(60)
    stop.set()
    assert errors == []
    assert any("retrying" in r.getMessage() for r in caplog.records)
    loaded = store.load("job", "r1")
    assert loaded.done == counts["done"] and loaded.epoch == rec.epoch
    assert store.renew("job", "r1", epoch=rec.epoch, lease_seconds=60) > store.now()
    store.close()


def test_server_down_longer_than_the_budget(private_postgres: PgServer):
    store = open_store(private_postgres.url() + "?schema=rt&retry=2s")
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=60)
    rec = store.save(rec.replace(done=5, state={"k": "v"}), lease_seconds=60)
    private_postgres.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.save(rec.replace(done=6), lease_seconds=60)
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed < 15
    assert info.value.exit_code == 75 and "?retry=SECONDS" in str(info.value)
    private_postgres.start()
    loaded = store.load("job", "r1")  # the same store reconnects
    assert (loaded.done, loaded.state, loaded.epoch) == (5, {"k": "v"}, rec.epoch)
    assert store.save(loaded.replace(done=7), lease_seconds=None).done == 7
    store.close()


# -- history and cleanup -----------------------------------------------------------------


def test_history_option_bounds_the_table(postgres_url):
    for keep in (3, 0):
        url = f"{postgres_url}&history={keep}"
        with open_store(url) as store:
            rec = store.acquire("job", f"k{keep}", owner=ME, lease_seconds=30)
            for i in range(10):
                rec = store.save(rec.replace(done=i), lease_seconds=30)
            assert [h.done for h in store.history("job", f"k{keep}")] == [9, 8, 7][:keep]
        rows = _sql(postgres_url, "SELECT count(*) FROM {s}.history WHERE run = %s", f"k{keep}")
        assert rows == [(keep,)]


def test_cleanup_prunes_completed_runs_and_history_by_retention(postgres_url):
    with open_store(postgres_url) as store:
        for run, status in [("old-done", COMPLETED), ("new-done", COMPLETED), ("old-live", RUNNING)]:
            rec = store.acquire("job", run, owner=ME, lease_seconds=30)
            for i in range(5):
                rec = store.save(rec.replace(done=i, status=status), lease_seconds=30)
            store.mark("job", run, "files", "a.csv", 1, epoch=rec.epoch)
        _sql(postgres_url, "UPDATE {s}.runs SET updated = now() - interval '10 days' WHERE run LIKE 'old-%'")
        _sql(postgres_url, "UPDATE {s}.history SET at = now() - interval '10 days' WHERE seq <= 3")
        _sql(postgres_url, "UPDATE {s}.history SET at = now() - interval '10 days' WHERE run = 'new-done'")
        removed = store.cleanup(older_than=7 * 86400)
        assert [r.run for r in removed] == ["old-done"] and removed[0].done == 4
        assert sorted(r.run for r in store.list_runs()) == ["new-done", "old-live"]
        assert [h.done for h in store.history("job", "old-live")] == [4, 3]
        assert [h.done for h in store.history("job", "new-done")] == [4]  # the newest entry stays
        assert store.markers("job", "old-done", "files") == {}
        assert store.markers("job", "old-live", "files") == {"a.csv": 1}
    assert _sql(postgres_url, "SELECT count(*) FROM {s}.history WHERE run = 'old-done'") == [(0,)]


# -- one transaction with the caller's writes ---------------------------------------------


def test_save_in_joins_the_callers_transaction(postgres_url):
    with open_store(postgres_url) as store:
        rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
        assert isinstance(store, PostgresStore)
        conn = store._connect()
        try:
            search_path = conn.execute("SHOW search_path").fetchone()[0]
            conn.rollback()
            with pytest.raises(RuntimeError), conn.transaction():
                store._save_in(conn, rec.replace(done=5), lease_seconds=30)
                raise RuntimeError("the caller's write failed")
            assert store.load("job", "r1").done == 0
            with conn.transaction():
                saved = store._save_in(conn, rec.replace(done=6), lease_seconds=30)
                assert store.load("job", "r1").done == 0  # not visible before COMMIT
            assert saved.lease_expires is not None and store.load("job", "r1").done == 6
            with pytest.raises(Fenced), conn.transaction():
                store._save_in(conn, rec.replace(epoch=rec.epoch - 1), lease_seconds=30)
            assert conn.execute("SHOW search_path").fetchone()[0] == search_path
        finally:
            conn.close()


def test_load_in_reads_on_the_callers_connection_and_fences_on_another_epoch(postgres_url):
    with open_store(postgres_url) as store:
        rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
        store.save(rec.replace(done=3), lease_seconds=30)
        conn = store._connect()
        try:
            assert store.load_in(conn, "job", "r1").done == 3
            assert store.load_in(conn, "job", "r1", epoch=rec.epoch).epoch == rec.epoch
            assert store.load_in(conn, "job", "nope", epoch=rec.epoch) is None
            with pytest.raises(Fenced, match=rf"a newer runner \(epoch {rec.epoch}\)"):
                store.load_in(conn, "job", "r1", epoch=rec.epoch - 1)
            conn.rollback()
        finally:
            conn.close()


@pytest.mark.parametrize("query", ["connect_timeout=abc", "connect_timeout=", "bogus=1"])
def test_a_bad_libpq_parameter_is_a_one_line_config_error(query):
    # Port 1: nothing listens; the URL must be refused before any connection matters.
    with pytest.raises(ConfigError) as info:
        open_store(f"postgresql://127.0.0.1:1/db?{query}&retry=1s")
    assert "\n" not in str(info.value), str(info.value)


def test_an_unreachable_server_is_one_line_store_unavailable(caplog):
    caplog.set_level(logging.WARNING, logger="restartable")
    with pytest.raises(StoreUnavailable) as info:
        open_store("postgresql://127.0.0.1:1/db?retry=0.5s&connect_timeout=2")
    # libpq's "...Connection refused\n\tIs the server running...": one line in the message and the logs.
    assert "Is the server running" in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_a_save_that_lands_late_never_moves_the_checkpoint_back(postgres_url):
    """A save's bytes delayed in the network past the read deadline: the client gave up, retried
    it and saved again since; then the server executes the old statement. The epoch matches (one
    runner), so only the save's sequence number can refuse it."""
    with open_store(postgres_url) as store:
        rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
        late = store._save_params(rec.replace(done=1, state={"v": 1}), 30)  # sent, never answered
        store._call("save", lambda c: store._exec_save(c, late))  # ... its retry, which committed
        store.save(rec.replace(done=2, state={"v": 2}), lease_seconds=30)
        store._call("save", lambda c: store._exec_save(c, late))  # the old bytes reach the server now
        got = store.load("job", "r1")
        assert (got.done, got.state) == (2, {"v": 2})
        assert [h.done for h in store.history("job", "r1", limit=3)][:2] == [2, 1]  # no entry for the late one
        # A retry of the newest save changes nothing either, and answers as a success.
        newest = store._save_params(rec.replace(done=3, state={"v": 3}), 30)
        first = store._call("save", lambda c: store._exec_save(c, newest))
        assert store._call("save", lambda c: store._exec_save(c, newest)) == first
        assert len([h for h in store.history("job", "r1", limit=10) if h.done == 3]) == 1
        # A new runner (a new epoch) starts its own sequence: its saves are never refused.
        taken = store.acquire("job", "r1", owner=OTHER, lease_seconds=30, steal_epoch=rec.epoch)
        assert store.save(taken.replace(done=9), lease_seconds=30).done == 9
        with pytest.raises(_Stale):  # save() turns it into Fenced
            store._call("save", lambda c: store._exec_save(c, late))
        assert store.load("job", "r1").done == 9
