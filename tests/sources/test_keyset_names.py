"""Hostile table, schema and column names in PostgresTable and SQLiteTable.

Names are identifiers, never SQL: whatever the text (double quotes, spaces, dots,
unicode, upper case, leading digits, SQL keywords, ``;--``, and the placeholder
shapes ``%s``, ``%(x)s``, ``?``, ``:k``, ``$1``), a table that really has that name is
read like any other, every row once, and a name that cannot be one (empty, NUL, over
PostgreSQL's 63 bytes) is refused with a UsageError: never a traceback, an SQL error
or another table read in its place.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from restartable._sqlite.table import SQLiteTable
from restartable.errors import UsageError

psycopg = pytest.importorskip("psycopg")
from psycopg import sql

from restartable._postgres.table import PostgresTable

PIECES = [
    '"',
    "'",
    " ",
    ".",
    "é",
    "Ω",
    "日本",
    "😀",
    "ß",
    "A",
    "a",
    "Z",
    "1",
    "0x",
    "select",
    "TABLE",
    "from",
    ";--",
    "/*",
    "%s",
    "%(x)s",
    "%(_rt_limit)s",
    "%%",
    "%",
    "?",
    "?1",
    ":k",
    "@p",
    "$1",
    "\\",
    "{}",
    "{0}",
    "`",
    "[x]",
    "\t",
    "\n",
    "-",
    "x" * 20,
]
names = st.lists(st.sampled_from(PIECES), min_size=1, max_size=5).map("".join)
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ROWS = [(i, f"v{i}") for i in (3, 1, 5, 2, 4)]


def drain(source: Any) -> list[Any]:
    source.open()
    try:
        rows: list[Any] = []
        after = None
        for _ in range(100):
            batch = source.fetch(after)
            if not batch.rows:
                return rows
            rows.extend(batch.rows)
            after = batch.last_key
        raise AssertionError("the batches did not end")
    finally:
        source.close()


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def pgconn(postgres_server):
    conn = psycopg.connect(postgres_server, autocommit=True)
    yield conn
    conn.close()


def _fits(name: str) -> bool:
    return len(name.encode()) <= 63


@SETTINGS
@given(
    schema=names, table=names, key=names, col=names, mode=st.sampled_from(["schema", "search_path", "where", "named"])
)
@example(schema="s", table="s.t", key="id", col="v", mode="schema")
@example(schema="x", table='a%s"b', key="%(_rt_limit)s", col="%s", mode="named")
@example(schema="x", table="t", key="k%s", col="c%s", mode="where")
@example(schema="SELECT", table="TABLE", key="from", col="1x", mode="search_path")
def test_pg_hostile_names_are_read_or_refused(postgres_server, pgconn, schema, table, key, col, mode):
    assume(key != col)
    schema = f"{schema}{uuid.uuid4().hex[:6]}"  # each example its own schema, left behind by none
    if not all(_fits(n) for n in (schema, table, key, col)):
        with pytest.raises(UsageError, match="63 bytes"):
            PostgresTable(postgres_server, table, schema=schema, key=key, columns=[col])
        return
    s = sql.Identifier(schema)
    pgconn.execute(sql.SQL("CREATE SCHEMA {}").format(s))
    try:
        pgconn.execute(
            sql.SQL("CREATE TABLE {} ({} int PRIMARY KEY, {} text NOT NULL)").format(
                sql.Identifier(schema, table), sql.Identifier(key), sql.Identifier(col)
            )
        )
        # Literals, no parameters: psycopg would read a % in the names as a placeholder.
        pgconn.execute(
            sql.SQL("INSERT INTO {} VALUES {}").format(
                sql.Identifier(schema, table),
                sql.SQL(", ").join(sql.SQL("({}, {})").format(sql.Literal(i), sql.Literal(v)) for i, v in ROWS),
            )
        )
        kw: dict[str, Any] = {"key": key, "columns": [col], "batch_size": 2}
        if mode == "where":
            kw.update(where="%s = %s", params=[1, 1])
        elif mode == "named":
            kw.update(where="%(one)s = 1", params={"one": 1})
        if mode == "search_path":
            with psycopg.connect(postgres_server, autocommit=True) as given_conn:
                given_conn.execute(sql.SQL("SET search_path = {}").format(s))
                got = drain(PostgresTable(given_conn, table, **kw))
        else:
            got = drain(PostgresTable(postgres_server, table, schema=schema, **kw))
        assert got == [{col: f"v{i}", key: i} for i in range(1, 6)]
    finally:
        pgconn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(s))


def test_pg_a_schema_qualified_name_and_a_table_named_with_a_dot(postgres_server, pgconn):
    """``s.t`` is one table's name; schema ``s`` with table ``t`` is another table."""
    s, p = f"s{uuid.uuid4().hex[:8]}", f"p{uuid.uuid4().hex[:8]}"
    for name in (s, p):
        pgconn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        pgconn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(sql.Identifier(s, "t")))
        pgconn.execute(sql.SQL("INSERT INTO {} VALUES (1), (2)").format(sql.Identifier(s, "t")))
        pgconn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(sql.Identifier(p, f"{s}.t")))
        pgconn.execute(sql.SQL("INSERT INTO {} VALUES (10), (20)").format(sql.Identifier(p, f"{s}.t")))
        ids = lambda table: [r["id"] for r in drain(table)]  # noqa: E731
        assert ids(PostgresTable(postgres_server, "t", schema=s)) == [1, 2]
        assert ids(PostgresTable(postgres_server, f"{s}.t", schema=p)) == [10, 20]
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(p)))
            assert ids(PostgresTable(conn, f"{s}.t")) == [10, 20]  # the literal name, through the search_path
            conn.execute("SET search_path = public")
            with pytest.raises(UsageError, match=f"pass schema='{s}'"):
                drain(PostgresTable(conn, f"{s}.t"))
        with pytest.raises(UsageError, match="no column 'ID'"):  # quoted names are case-sensitive
            drain(PostgresTable(postgres_server, "t", schema=s, key="ID"))
    finally:
        for name in (s, p):
            pgconn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 64, "é" * 32, 7, None, b"t"])
@pytest.mark.parametrize("role", ["table", "schema", "key", "column"])
def test_pg_impossible_names_are_refused_at_once(postgres_server, bad, role):
    kw: dict[str, Any] = (
        {"schema": bad}
        if role == "schema"
        else {"key": bad}
        if role == "key"
        else ({"columns": [bad]} if role == "column" else {})
    )
    if role == "schema" and bad is None:
        return  # schema=None is the default: the search_path
    with pytest.raises(UsageError):
        PostgresTable(postgres_server, bad if role == "table" else "t", **kw)


# -- SQLite ------------------------------------------------------------------------------------


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@SETTINGS
@given(table=names, key=names, col=names, mode=st.sampled_from(["plain", "where", "named", "rowid"]))
@example(table="main.t", key="id", col="v", mode="plain")
@example(table="t", key="rowid", col="oid", mode="plain")
@example(table="sqlite_x", key="?1", col=":k", mode="named")
def test_sqlite_hostile_names_are_read_or_refused(tmp_path_factory, table, key, col, mode):
    assume(key.lower() != col.lower())  # SQLite's names are case-insensitive (ASCII): one column
    assume(not table.lower().startswith("sqlite_"))  # reserved for SQLite's own tables
    path = tmp_path_factory.mktemp("names") / "n.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        kind = "INTEGER PRIMARY KEY" if mode == "rowid" else "INTEGER NOT NULL PRIMARY KEY"
        conn.execute(f"CREATE TABLE {_q(table)} ({_q(key)} {kind}, {_q(col)} TEXT NOT NULL)")
        conn.executemany(f"INSERT INTO {_q(table)} VALUES (?, ?)", ROWS)
    finally:
        conn.close()
    kw: dict[str, Any] = {"key": key, "columns": [col], "batch_size": 2}
    if mode == "where":
        kw.update(where="? = ?", params=[1, 1])
    elif mode == "named":
        kw.update(where=":one = 1", params={"one": 1})
    got = drain(SQLiteTable(path, table, **kw))
    assert got == [{col: f"v{i}", key: i} for i in range(1, 6)]


def test_sqlite_a_dotted_name_is_one_name(tmp_path):
    path = tmp_path / "d.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1), (2)")
    conn.execute('CREATE TABLE "main.t" (id INTEGER PRIMARY KEY)')
    conn.execute('INSERT INTO "main.t" VALUES (10)')
    conn.close()
    assert [r["id"] for r in drain(SQLiteTable(path, "main.t"))] == [10]  # the literal name
    assert [r["id"] for r in drain(SQLiteTable(path, "t"))] == [1, 2]
    with pytest.raises(UsageError, match="a name with a dot is one table's name"):
        drain(SQLiteTable(path, "other.t"))
    with pytest.raises(UsageError, match="matched exactly"):  # "ID" would be "id" to SQLite: say so
        drain(SQLiteTable(path, "t", key="ID"))
    assert drain(SQLiteTable(path, "t", columns="id")) == [{"id": 1}, {"id": 2}]  # one name, not "i", "d"


@pytest.mark.parametrize("bad", ["", "a\x00b", 7, None])
def test_sqlite_impossible_names_are_refused_at_once(tmp_path, bad):
    for kw in ({"key": bad}, {"columns": [bad]}):
        with pytest.raises(UsageError):
            SQLiteTable(tmp_path / "x.db", "t", **kw)
    with pytest.raises(UsageError):
        SQLiteTable(tmp_path / "x.db", bad)


def test_pg_a_placeholder_in_a_name_never_reads_another_table(postgres_server, pgconn):
    """psycopg turns ``%(_rt_limit)s`` inside a quoted name into ``$1``: without escaping,
    the table ``t%(_rt_limit)s`` was read as the table ``t$1``, silently."""
    s = f"ph{uuid.uuid4().hex[:8]}"
    pgconn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(s)))
    try:
        for name, first in (("t%(_rt_limit)s", 1), ("t$1", 100)):
            ident = sql.Identifier(s, name)
            pgconn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(ident))
            pgconn.execute(
                sql.SQL("INSERT INTO {} SELECT generate_series({}, {})").format(
                    ident, sql.Literal(first), sql.Literal(first + 2)
                )
            )
        table = PostgresTable(postgres_server, "t%(_rt_limit)s", schema=s, where="%(one)s = 1", params={"one": 1})
        assert [r["id"] for r in drain(table)] == [1, 2, 3]
    finally:
        pgconn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(s)))
