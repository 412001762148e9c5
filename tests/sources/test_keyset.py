"""Keyset batches (PostgresTable, SQLiteTable, job.batches) on real databases.

Each PostgreSQL test works in a schema of its own on the shared server (the store's
tables live there too); SQLite tests in a file under tmp_path.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import tracemalloc
import uuid
from decimal import Decimal
from types import SimpleNamespace

import pytest

from restartable import Job
from restartable._job import run_context
from restartable._sources.batches import iterate_batches
from restartable._sqlite.table import SQLiteTable
from restartable.errors import UsageError

psycopg = pytest.importorskip("psycopg")
from psycopg import sql

from restartable._postgres.table import PostgresTable


@pytest.fixture
def pg(postgres_server):
    """A schema of the test's own: ``pg.run(sql_with_{s})``, ``pg.table(name, **kw)``, ``pg.job(name)``."""
    schema = f"rt_ks_{uuid.uuid4().hex[:10]}"
    conn = psycopg.connect(postgres_server, autocommit=True)
    s = sql.Identifier(schema)

    def run(text: str, params=None):
        cur = conn.execute(sql.SQL(text).format(s=s), params)
        return cur.fetchall() if cur.description else None

    run("CREATE SCHEMA {s}")
    ns = SimpleNamespace(
        url=postgres_server,
        schema=schema,
        conn=conn,
        run=run,
        store=f"{postgres_server}?schema={schema}",
        table=lambda name, **kw: PostgresTable(postgres_server, name, schema=schema, **kw),
        job=lambda name="ks", **kw: Job(name, store=f"{postgres_server}?schema={schema}", progress=False, **kw),
    )
    yield ns
    run("DROP SCHEMA {s} CASCADE")
    conn.close()


def _ids(batches):
    return [[r["id"] for r in b] for b in batches]


# -- strictly after the last key: the article's `>=` bugs -------------------------------


def test_no_row_twice_and_a_short_last_batch(pg):
    pg.run("CREATE TABLE {s}.t (id int PRIMARY KEY, v text NOT NULL)")
    pg.run("INSERT INTO {s}.t SELECT g, 'v' || g FROM generate_series(1, 10) g")
    with pg.job() as job:
        got = _ids(job.batches(pg.table("t", batch_size=3)))
    assert got == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]
    assert job.completed and job.record.done == 10


def test_terminates_when_only_the_final_row_matches(pg):
    """With `>=` a batch of one would return the last row forever; `>` ends."""
    pg.run("CREATE TABLE {s}.t (id bigint PRIMARY KEY)")
    pg.run("INSERT INTO {s}.t SELECT generate_series(1, 3)")
    seen = []
    with pg.job() as job:
        for batch in job.batches(pg.table("t", batch_size=1)):
            seen.append(batch[0]["id"])
            assert len(seen) <= 3, "the loop did not end"
    assert seen == [1, 2, 3]


def test_resume_after_the_last_key_only_the_final_row_left(pg):
    pg.run("CREATE TABLE {s}.t (id int PRIMARY KEY)")
    pg.run("INSERT INTO {s}.t SELECT generate_series(1, 10)")
    with pg.job() as job:
        for batch in job.batches(pg.table("t", batch_size=3)):
            if batch[-1]["id"] == 9:
                break  # batch [7, 8, 9] is not done: the loop did not come back
    with pg.job() as job:
        assert job.record.positions["0"]["key"] == (6,)
        assert _ids(job.batches(pg.table("t", batch_size=3))) == [[7, 8, 9], [10]]
    # Full batches to the end: one query more finds nothing, and no row comes again.
    with pg.job("full") as job:
        assert _ids(job.batches(pg.table("t", batch_size=5))) == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    with pg.job("full") as job:
        assert list(job.batches(pg.table("t", batch_size=5))) == []  # completed: nothing again


def test_checkpoint_every_batch_and_resume_mid_table(pg):
    pg.run("CREATE TABLE {s}.t (id int PRIMARY KEY)")
    pg.run("INSERT INTO {s}.t SELECT generate_series(1, 100)")
    saves = []
    with pg.job() as job:
        job.on_checkpoint(lambda: saves.append(run_context(job).positions()["0"]["offset"]))
        for i, _ in enumerate(job.batches(pg.table("t", batch_size=10), every=1)):
            if i == 4:
                break
    assert saves == [10, 20, 30, 40, 40]  # after each done batch, then the break's final save
    with pg.job() as job:
        rest = _ids(job.batches(pg.table("t", batch_size=10), every=3))
    assert rest[0][0] == 41 and sum(len(b) for b in rest) == 60


# -- keys: composite, typed ---------------------------------------------------------------


def test_composite_key_with_a_non_unique_first_column(pg):
    pg.run("CREATE TABLE {s}.t (grp int NOT NULL, id int PRIMARY KEY, v int NOT NULL)")
    pg.run("INSERT INTO {s}.t SELECT g % 4, g, g FROM generate_series(1, 103) g")
    pg.run("CREATE INDEX ON {s}.t (grp, id)")
    expected = sorted((g % 4, g) for g in range(1, 104))
    got = []
    for attempt in range(20):  # break after two batches each time: resume repeatedly
        with pg.job() as job:
            for i, batch in enumerate(job.batches(pg.table("t", key=("grp", "id"), columns=["v"], batch_size=7))):
                assert set(batch[0]) == {"v", "grp", "id"}  # key columns added to the selection
                if i == 2:
                    break  # this batch is not done: the loop did not come back for the next
                got.extend((r["grp"], r["id"]) for r in batch)
        if job.completed:
            break
    assert got == expected  # every row once, in key order, across the ties of grp


@pytest.mark.parametrize(
    ("ddl", "make", "kind"),
    [
        ("bigint", lambda i: 10**12 + i, int),
        ("text", lambda i: f"name-{i:04d}", str),
        ("timestamptz", lambda i: dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i), dt.datetime),
        ("timestamp", lambda i: dt.datetime(2026, 1, 1) + dt.timedelta(seconds=i), dt.datetime),
        ("numeric(12,3)", lambda i: Decimal(i) / 8, Decimal),
        ("uuid", lambda i: uuid.UUID(int=i * 7919), uuid.UUID),
        ("date", lambda i: dt.date(2020, 1, 1) + dt.timedelta(days=i), dt.date),
    ],
)
def test_key_values_keep_their_types(pg, ddl, make, kind):
    pg.run(f"CREATE TABLE {{s}}.t (k {ddl} PRIMARY KEY, n int NOT NULL)")
    values = [make(i) for i in range(1, 21)]
    pg.conn.cursor().executemany(
        sql.SQL("INSERT INTO {}.t VALUES (%s, %s)").format(sql.Identifier(pg.schema)),
        [(v, i) for i, v in enumerate(values)],
    )
    with pg.job() as job:
        it = job.batches(pg.table("t", key="k", batch_size=6))
        next(it)
        next(it)  # the first batch is done; the checkpoint holds its last key
        it.close()
    from restartable.stores import open_store

    with open_store(pg.store) as store:
        (key,) = store.load("ks", "default").positions["0"]["key"]
    assert type(key) is kind and key == sorted(values)[5]
    with pg.job() as job:
        rest = [r["k"] for b in job.batches(pg.table("t", key="k", batch_size=6)) for r in b]
    assert rest == sorted(values)[6:]


def test_tuple_rows_and_where_params(pg):
    pg.run("CREATE TABLE {s}.t (id int PRIMARY KEY, kind text NOT NULL, v int NOT NULL)")
    pg.run("INSERT INTO {s}.t SELECT g, CASE WHEN g % 3 = 0 THEN 'a' ELSE 'b' END, g FROM generate_series(1, 30) g")
    evil = "a'; DROP TABLE t; --"
    with pg.job("pos") as job:
        got = [
            r
            for b in job.batches(
                pg.table("t", columns=["v"], where="kind = %s AND v > %s", params=["a", 3], batch_size=4, rows="tuple")
            )
            for r in b
        ]
    assert got == [(v, v) for v in range(6, 31, 3)]  # (v, id): the key appended
    with pg.job("named") as job:
        got = [
            r["id"]
            for b in job.batches(pg.table("t", where=sql.SQL("kind = %(k)s"), params={"k": "a"}, batch_size=4))
            for r in b
        ]
    assert got == list(range(3, 31, 3))
    with pg.job("evil") as job:
        assert list(job.batches(pg.table("t", where="kind = %s", params=[evil]))) == []
    assert pg.run("SELECT count(*) FROM {s}.t") == [(30,)]


# -- refusals ------------------------------------------------------------------------------


def _refusal(pg, name="t", **kw) -> str:
    with pg.job(f"r{uuid.uuid4().hex[:6]}") as job, pytest.raises(UsageError) as info:
        next(job.batches(pg.table(name, **kw)))
    return str(info.value)


def test_refuses_a_key_without_a_matching_index(pg):
    # Every key ends with the primary key: unique, so what is missing is only the index.
    pg.run("CREATE TABLE {s}.t (a int NOT NULL, b int NOT NULL, c int NOT NULL, id int PRIMARY KEY)")
    msg = _refusal(pg, key=("a", "id"))
    assert "no index starts with the key" in msg and f'CREATE INDEX ON "{pg.schema}"."t" ("a", "id")' in msg
    pg.run("CREATE INDEX ON {s}.t (a, b, id)")
    assert "CREATE INDEX" in _refusal(pg, key=("b", "a", "id"))  # wrong order
    assert "CREATE INDEX" in _refusal(pg, key=("a", "c", "id"))  # not a prefix
    pg.run("CREATE INDEX t_c_part ON {s}.t (c, id) WHERE c > 0")
    assert "CREATE INDEX" in _refusal(pg, key=("c", "id"))  # a partial index cannot serve every batch
    pg.run("CREATE INDEX t_c_hash ON {s}.t USING hash (c)")
    assert "CREATE INDEX" in _refusal(pg, key=("c", "id"))  # not a btree
    pg.run("CREATE INDEX t_b_desc ON {s}.t (b DESC, id DESC)")
    with pg.job() as job:  # a descending index serves the ascending order by a backward scan
        assert list(job.batches(pg.table("t", key=("b", "id")))) == []


def test_refuses_a_nullable_key(pg):
    pg.run("CREATE TABLE {s}.t (a int, b int NOT NULL)")
    pg.run("CREATE INDEX ON {s}.t (b, a)")
    msg = _refusal(pg, key=("b", "a"))
    assert "'a' can be NULL" in msg and f'ALTER TABLE "{pg.schema}"."t" ALTER COLUMN "a" SET NOT NULL' in msg


def test_refuses_unknown_columns_and_tables(pg):
    pg.run("CREATE TABLE {s}.t (id int PRIMARY KEY)")
    assert "no column 'nope'" in _refusal(pg, columns=["nope"])
    assert "no column 'k'" in _refusal(pg, key="k")
    assert "no such table" in _refusal(pg, name="missing")
    with pg.job() as job, pytest.raises(UsageError, match="pass schema="):
        next(job.batches(PostgresTable(pg.url, f"{pg.schema}.t")))
    pg.run("CREATE VIEW {s}.v AS SELECT * FROM {s}.t")
    assert "is not a table" in _refusal(pg, name="v")
    with pytest.raises(UsageError, match="identifier"):
        PostgresTable(pg.url, "x" * 64)
    with pytest.raises(UsageError, match="batch_size"):
        PostgresTable(pg.url, "t", batch_size=0)
    with pg.job() as job, pytest.raises(UsageError, match="check where"):
        next(job.batches(pg.table("t", where="no_such_col = 1")))


@pytest.mark.parametrize(
    "name", ["t; DROP TABLE victim; --", 'x" OR 1=1 --', "t')) UNION SELECT 1 --", "Robert'); DROP TABLE victim;--"]
)
def test_injection_shaped_names_are_only_names(pg, name):
    pg.run("CREATE TABLE {s}.victim (id int PRIMARY KEY)")
    pg.run("CREATE TABLE {s}.t (id int PRIMARY KEY)")
    assert "no such table" in _refusal(pg, name=name)
    with pg.job() as job:
        with pytest.raises(UsageError):
            next(job.batches(pg.table("t", key=name)))
        with pytest.raises(UsageError):
            next(job.batches(pg.table("t", columns=[name]), name="cols"))
    # A table that really has such a name is read like any other.
    pg.run(
        "CREATE TABLE {s}.{n} ({c} int PRIMARY KEY)".replace("{n}", sql.Identifier(name).as_string(pg.conn)).replace(
            "{c}", sql.Identifier(name + "_id").as_string(pg.conn)
        )
    )
    pg.conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 5)").format(sql.Identifier(pg.schema, name)))
    with pg.job("weird") as job:
        got = [r[name + "_id"] for b in job.batches(pg.table(name, key=name + "_id", batch_size=2)) for r in b]
    assert got == [1, 2, 3, 4, 5]
    assert pg.run("SELECT count(*) FROM {s}.victim") == [(0,)]


def test_a_resume_with_another_key_is_refused(pg):
    pg.run("CREATE TABLE {s}.t (a int PRIMARY KEY, b int NOT NULL)")
    pg.run("CREATE UNIQUE INDEX ON {s}.t (a, b)")
    pg.run("INSERT INTO {s}.t SELECT g, g FROM generate_series(1, 10) g")
    with pg.job() as job:
        it = job.batches(pg.table("t", key="a", batch_size=3))
        next(it)
        next(it)
        it.close()
    with pg.job() as job, pytest.raises(UsageError, match="keyed on"):
        job.batches(pg.table("t", key=("a", "b")))


# -- the plan and the memory ----------------------------------------------------------------


def test_resume_query_uses_the_index(pg):
    pg.run("CREATE TABLE {s}.t (grp int NOT NULL, id bigint PRIMARY KEY, pad text NOT NULL)")
    pg.run("INSERT INTO {s}.t SELECT g % 100, g, repeat('x', 50) FROM generate_series(1, 50000) g")
    pg.run("CREATE INDEX t_grp_id ON {s}.t (grp, id)")
    pg.run("ANALYZE {s}.t")
    table = pg.table("t", key=("grp", "id"), batch_size=500)
    table.open()
    try:
        plan = table.explain((50, 25050))
    finally:
        table.close()
    assert "Index Scan using t_grp_id" in plan or "Index Only Scan using t_grp_id" in plan, plan
    assert "Sort" not in plan, plan


def test_memory_stays_one_batch_whatever_the_table_size(pg):
    pg.run("CREATE TABLE {s}.small (id int PRIMARY KEY, pad text NOT NULL)")
    pg.run("CREATE TABLE {s}.big (id int PRIMARY KEY, pad text NOT NULL)")
    pg.run("INSERT INTO {s}.small SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g")
    pg.run("INSERT INTO {s}.big SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g")
    peaks = {}
    for name in ("small", "big"):
        with pg.job(name, handle_signals=False) as job:
            tracemalloc.start()
            n = sum(len(b) for b in job.batches(pg.table(name, batch_size=500), every=50))
            peaks[name] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert n == (5000 if name == "small" else 50000)
    assert peaks["big"] < 1.5 * peaks["small"] + 200_000, peaks


# -- the generic driver --------------------------------------------------------------------


def test_batches_refuses_what_is_not_a_batch_source(tmp_path):
    with Job("x", store=f"sqlite:///{tmp_path}/c.db", progress=False) as job:
        with pytest.raises(UsageError, match="batch source"):
            job.batches([1, 2, 3])
        with pytest.raises(UsageError, match="every"):
            iterate_batches(run_context(job), SQLiteTable(tmp_path / "c.db", "runs"), every=0)


# -- SQLiteTable ---------------------------------------------------------------------------


@pytest.fixture
def lite(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    yield SimpleNamespace(
        path=path,
        conn=conn,
        store=f"sqlite:///{path}",
        job=lambda name="ks", **kw: Job(name, store=f"sqlite:///{path}", progress=False, **kw),
    )
    conn.close()


def test_sqlite_table_batches_and_resume(lite):
    lite.conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    lite.conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(1, 11)])
    with lite.job() as job:
        for batch in job.batches(SQLiteTable(lite.path, "t", batch_size=3)):
            if batch[0]["id"] == 7:
                break
    with lite.job() as job:
        assert _ids(job.batches(SQLiteTable(lite.store, "t", batch_size=3))) == [[7, 8, 9], [10]]
    with lite.job("one") as job:
        assert _ids(job.batches(SQLiteTable(lite.path, "t", batch_size=1, where="id >= ?", params=[9]))) == [[9], [10]]


def test_sqlite_composite_key_and_tuples(lite):
    lite.conn.execute("CREATE TABLE t (grp TEXT NOT NULL, id INTEGER PRIMARY KEY, v INTEGER)")
    lite.conn.execute("CREATE INDEX t_grp_id ON t (grp, id)")
    lite.conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(f"g{i % 3}", i, i) for i in range(50)])
    table = SQLiteTable(lite.path, "t", key=("grp", "id"), columns=["v"], rows="tuple", batch_size=4)
    with lite.job() as job:
        got = [(r[1], r[2]) for b in job.batches(table) for r in b]
    assert got == sorted((f"g{i % 3}", i) for i in range(50))
    table.open()
    try:
        assert "USING INDEX t_grp_id" in table.explain(("g1", 10)) or "USING COVERING INDEX" in table.explain(
            ("g1", 10)
        )
    finally:
        table.close()


def test_sqlite_refusals(lite):
    lite.conn.execute("CREATE TABLE t (a INTEGER, b INTEGER NOT NULL, c TEXT NOT NULL, id INTEGER PRIMARY KEY)")
    lite.conn.execute("CREATE INDEX t_a ON t (a)")
    lite.conn.execute("CREATE INDEX t_c_part ON t (c) WHERE c > ''")
    lite.conn.execute('CREATE TABLE "x""; DROP TABLE t; --" (id INTEGER PRIMARY KEY)')
    lite.conn.execute('INSERT INTO "x""; DROP TABLE t; --" VALUES (1), (2)')
    with lite.job() as job:
        with pytest.raises(UsageError, match="can be NULL"):
            next(job.batches(SQLiteTable(lite.path, "t", key="a"), name="1"))
        with pytest.raises(UsageError, match='CREATE INDEX "t_b_id" ON "t" \\("b", "id"\\)'):
            next(job.batches(SQLiteTable(lite.path, "t", key=("b", "id")), name="2"))
        with pytest.raises(UsageError, match="CREATE INDEX"):
            next(job.batches(SQLiteTable(lite.path, "t", key=("c", "id")), name="3"))
        with pytest.raises(UsageError, match="no such table"):
            next(job.batches(SQLiteTable(lite.path, "t; DROP TABLE t; --"), name="4"))
        got = [r["id"] for b in job.batches(SQLiteTable(lite.path, 'x"; DROP TABLE t; --'), name="5") for r in b]
        assert got == [1, 2]
    assert lite.conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_a_connection_passed_in_is_used_and_left_idle(pg):
    pg.run("CREATE TABLE {s}.t (id int PRIMARY KEY)")
    pg.run("INSERT INTO {s}.t SELECT generate_series(1, 25)")
    conn = psycopg.connect(pg.url)  # not autocommit: each batch's read transaction must end at once
    try:
        with pg.job() as job:
            for batch in job.batches(PostgresTable(conn, "t", schema=pg.schema, batch_size=10)):
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                assert batch
        assert job.completed and job.record.done == 25
        assert not conn.closed  # ours to close, not the source's
    finally:
        conn.close()
    with pg.job("lost") as job, pytest.raises(Exception, match="cannot reconnect"):
        next(job.batches(PostgresTable(conn, "t", schema=pg.schema)))


def test_sigterm_finishes_the_batch_in_flight_then_stops(lite):
    import os
    import signal

    from restartable.errors import Interrupted

    lite.conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    lite.conn.execute("CREATE TABLE out (id INTEGER)")
    lite.conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, i) for i in range(1, 101)])
    done = []
    with pytest.raises(Interrupted), lite.job() as job:
        for batch in job.batches(SQLiteTable(lite.path, "t", batch_size=10)):
            if batch[0]["id"] == 31:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-batch: the batch still finishes
            with job.transaction() as conn:
                conn.executemany("INSERT INTO out VALUES (?)", [(r["id"],) for r in batch])
            done.extend(r["id"] for r in batch)
    assert done == list(range(1, 41))
    from restartable.stores import open_store

    with open_store(lite.store) as store:
        rec = store.load("ks", "default")
    assert rec.status == "interrupted" and rec.positions["0"]["key"] == (40,) and rec.lease_expires is None
    with lite.job() as job:
        for batch in job.batches(SQLiteTable(lite.path, "t", batch_size=10)):
            with job.transaction() as conn:
                conn.executemany("INSERT INTO out VALUES (?)", [(r["id"],) for r in batch])
    assert lite.conn.execute("SELECT count(*), count(DISTINCT id) FROM out").fetchone() == (100, 100)
