"""``SQLiteTable``: a SQLite table read in key order, one bounded query per batch.

The SQLite twin of :class:`~restartable.PostgresTable`, for jobs
whose store, input and output share one SQLite file (exactly-once with
``job.transaction()``)::

    with Job("copy", store="sqlite:///data/app.db") as job:
        for batch in job.batches(SQLiteTable("data/app.db", "src", key="id")):
            with job.transaction() as conn:
                conn.executemany("INSERT INTO dst VALUES (?, ?)", [(r["id"], r["v"]) for r in batch])

The same contract as PostgresTable: each batch is ``SELECT cols FROM t WHERE (k1, k2)
> (?, ?) AND (where) ORDER BY k1, k2 LIMIT n`` on a connection of its own in
autocommit (no read transaction held between batches; WAL lets it read while the
store writes), strictly after the last key. Keys compare BINARY (byte by byte,
``COLLATE BINARY`` in the query), whatever collation the columns declare.

The key must be:

* unique, as the table declares it: it holds the INTEGER PRIMARY KEY (the rowid
  alias), or every key column of a primary key, UNIQUE constraint or unique index that
  is not partial and has no expression. Otherwise rows sharing the last key of a
  batch would be skipped: end a non-unique key with a unique column,
  ``key=("day", "id")``;
* NOT NULL columns (the rowid alias is never NULL), which also keeps a unique index's
  repeated NULLs out of the question;
* served by a non-partial index in BINARY order whose columns start with the key; the
  rowid (or a WITHOUT ROWID table's primary key) that ends every index counts, so an
  index on ``day`` serves ``key=("day", "id")`` when ``id`` is the INTEGER PRIMARY KEY.

Else UsageError with the fix. Names are quoted identifiers, matched exactly (case
included), looked up like SQLite does (``main.t`` is a table named so, not table
``t`` of schema ``main``); ``where`` is the programmer's SQL with ``?`` or ``:name``
placeholders and ``params``. Rows are dicts (``rows="tuple"`` for tuples).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

from .._sources.batches import Batch
from ..errors import StoreUnavailable, UsageError

__all__ = ["SQLiteTable"]


def _quote(name: str) -> str:
    """A SQLite identifier, quoted: any text is then a name, never SQL."""
    return '"' + name.replace('"', '""') + '"'


def _names(value: Any, what: str) -> tuple[Any, ...]:
    """``key``/``columns`` as a tuple: one name, or a list or tuple of them (a string is one name)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise UsageError(f"{what} must be a column name or a list of them, not {type(value).__name__}")


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise UsageError(f"invalid {what} {value!r:.80}: a non-empty name without NUL (unquoted: it is quoted for you)")
    return value


class SQLiteTable:
    """A SQLite table read in batches by keyset pagination; see the module docstring.

    :param path: the database file, a ``sqlite:///`` URL, or an open ``sqlite3.Connection``
        (used as is, never closed by us).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | sqlite3.Connection,
        table: str,
        *,
        key: str | Sequence[str] = "id",
        columns: Sequence[str] | None = None,
        where: str | None = None,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        batch_size: int = 1000,
        rows: Literal["dict", "tuple"] = "dict",
    ) -> None:
        self.table = _check_name(table, "table name")
        keys = _names(key, "key")
        if not keys or len(set(keys)) != len(keys):
            raise UsageError(f"SQLiteTable needs a key of distinct columns, not {key!r}")
        self.key_columns: tuple[str, ...] = tuple(_check_name(k, "key column") for k in keys)
        self.columns = None if columns is None else [_check_name(c, "column") for c in _names(columns, "columns")]
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive int, not {batch_size!r}")
        if rows not in ("dict", "tuple"):
            raise UsageError(f"rows must be 'dict' or 'tuple', not {rows!r}")
        if params is not None and where is None:
            raise UsageError("params are the values of where's placeholders: pass them with where=")
        if where is not None and not isinstance(where, str):
            raise UsageError(f"where must be SQL text, not {type(where).__name__}")
        self.batch_size, self.rows, self.where, self.params = batch_size, rows, where, params
        self._given: sqlite3.Connection | None = None
        if isinstance(path, sqlite3.Connection):
            self._given, self.path = path, ""
        else:
            text = os.fspath(path)
            if text.lower().startswith("sqlite:///"):
                text = text[len("sqlite:///") :]
            self.path = os.path.abspath(text)
        self._conn: sqlite3.Connection | None = None
        self._queries: tuple[str, str] | None = None
        self._names: list[str] = []
        self._key_index: list[int] = []

    @property
    def describe(self) -> str:
        return f"SQLite table {_quote(self.table)} in {self.path or 'the connection passed in'}"

    def __repr__(self) -> str:
        return f"<SQLiteTable {self.describe} key={self.key_columns!r}>"

    def open(self) -> None:
        """Connect, check the table, its key and index, and prepare the two queries."""
        self.close()
        if self._given is not None:
            self._conn = self._given
        else:
            if not os.path.exists(self.path):
                raise UsageError(f"{self.describe}: no such database file")
            # isolation_level=None: each SELECT is its own read transaction, none held between batches.
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0, check_same_thread=False)
        try:
            self._queries = self._prepare(self._conn)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.describe}: reading its schema failed: {exc}") from exc

    def fetch(self, after: tuple[Any, ...] | None) -> Batch:
        """The next batch strictly after key ``after`` (None: from the first row)."""
        if self._queries is None or self._conn is None:
            raise UsageError(f"{self.describe} is not open: iterate it with job.batches()")
        query = self._queries[0 if after is None else 1]
        keys = list(after) if after is not None else []
        if isinstance(self.params, Mapping):
            params: Any = {**self.params, **{f"_rt_k{i}": v for i, v in enumerate(keys)}, "_rt_limit": self.batch_size}
        else:
            params = [*keys, *(self.params or ()), self.batch_size]
        try:
            found = self._conn.execute(query, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "syntax" in str(exc) or "no such column" in str(exc):
                raise UsageError(f"{self.describe}: the batch query failed ({exc}): check where= and params=") from exc
            raise StoreUnavailable(f"{self.describe}: reading a batch failed: {exc}") from exc
        except sqlite3.ProgrammingError as exc:
            raise UsageError(f"{self.describe}: the batch query failed ({exc}): check where= and params=") from exc
        if not found:
            return Batch([], None)
        last = found[-1]
        key = tuple(last[i] for i in self._key_index)
        if self.rows == "dict":
            names = self._names
            found = [dict(zip(names, r, strict=False)) for r in found]
        return Batch(found, key)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn is not self._given:
            conn.close()

    def explain(self, after: tuple[Any, ...] | None = None) -> str:
        """``EXPLAIN QUERY PLAN`` of the batch query after ``after``."""
        if self._queries is None or self._conn is None:
            raise UsageError(f"{self.describe} is not open: call open() first")
        keys = list(after) if after is not None else []
        params: Any = (
            {**self.params, **{f"_rt_k{i}": v for i, v in enumerate(keys)}, "_rt_limit": 1}
            if isinstance(self.params, Mapping)
            else [*keys, *(self.params or ()), 1]
        )
        plan = self._conn.execute("EXPLAIN QUERY PLAN " + self._queries[0 if after is None else 1], params)
        return "\n".join(str(r[-1]) for r in plan)

    # -- internals ---------------------------------------------------------------------

    def _prepare(self, conn: sqlite3.Connection) -> tuple[str, str]:
        info = conn.execute('SELECT name, type, "notnull", pk FROM pragma_table_info(?)', (self.table,)).fetchall()
        if not info:
            hint = ""
            if "." in self.table:
                hint = (
                    " (a name with a dot is one table's name, looked up in every attached database: pass the "
                    "bare table name, not schema.table)"
                )
            raise UsageError(f"{self.describe}: no such table{hint}")
        cols = {name: (typ, bool(notnull), pk) for name, typ, notnull, pk in info}
        for c in (*self.key_columns, *(self.columns or ())):
            if c not in cols:
                raise UsageError(
                    f"{self.describe} has no column {c!r} (its columns: {', '.join(cols)}; names are "
                    "matched exactly, case included)"
                )
        indexes = _indexes(conn, self.table)
        # INTEGER PRIMARY KEY is the rowid of a rowid table: never NULL, unique, the table's own
        # order, and the implicit last column of every index. (A WITHOUT ROWID table, or a
        # rowid table whose primary key is not exactly "INTEGER", lists it as an index of
        # origin 'pk' instead.)
        pks = [name for name, (_, _, pk) in cols.items() if pk]
        rowid = (
            pks[0]
            if len(pks) == 1 and cols[pks[0]][0].upper() == "INTEGER" and not any(ix.origin == "pk" for ix in indexes)
            else None
        )
        for k in self.key_columns:
            if not cols[k][1] and k != rowid:
                raise UsageError(
                    f"{self.describe}: key column {k!r} can be NULL, and rows with a NULL key would never be read. "
                    f"Declare it NOT NULL (SQLite needs the table rebuilt: CREATE TABLE ... {_quote(k)} ... NOT "
                    "NULL, copy the rows, rename), or key on a NOT NULL column"
                )
        self._check_unique(cols, indexes, rowid)
        if self.key_columns != (rowid,) and not any(_serves_order(self.key_columns, ix, rowid) for ix in indexes):
            raise UsageError(
                f"{self.describe}: no index starts with the key {self.key_columns!r} in this order, so every batch "
                f"would scan and sort the table. Create one: {self._create_index(self.key_columns)}"
            )
        selected = list(self.columns) if self.columns is not None else list(cols)
        selected += [k for k in self.key_columns if k not in selected]
        self._names = selected
        self._key_index = [selected.index(k) for k in self.key_columns]
        named = isinstance(self.params, Mapping)
        # COLLATE BINARY on the values and in ORDER BY: the key compares byte by byte, whatever
        # collation the columns declare. So the BINARY index the order check found serves the
        # query, and a unique index under any collation (NOCASE keeps at most one of 'a', 'A')
        # makes the key unique under it; under a NOCASE column's own collation, a BINARY unique
        # index would let 'a' and 'A' tie and one of them be skipped. (On the value side, not
        # the column's: SQLite then still uses the index for a row-value range.)
        ph = [f"{':_rt_k' + str(i) if named else '?'} COLLATE BINARY" for i in range(len(self.key_columns))]
        limit = ":_rt_limit" if named else "?"
        order = ", ".join(_quote(k) for k in self.key_columns)
        after = f"{_quote(self.key_columns[0])} > {ph[0]}" if len(ph) == 1 else f"({order}) > ({', '.join(ph)})"
        head = f"SELECT {', '.join(_quote(c) for c in selected)} FROM {_quote(self.table)}"
        tail = f" ORDER BY {', '.join(_quote(k) + ' COLLATE BINARY' for k in self.key_columns)} LIMIT {limit}"
        if self.where is None:
            return head + tail, f"{head} WHERE {after}{tail}"
        return f"{head} WHERE ({self.where}){tail}", f"{head} WHERE {after} AND ({self.where}){tail}"

    def _check_unique(self, cols: dict[str, tuple[str, bool, int]], indexes: list[_Index], rowid: str | None) -> None:
        """Refuse a key that is not unique: batches would skip the rows tied with a batch's last key.

        A key tuple is unique iff it holds the rowid alias or every key column of a unique,
        non-partial index without expressions (its other, aux, columns do not count). NULLs,
        which a unique index lets repeat, cannot occur: key columns are NOT NULL.
        """
        uniques = ([[rowid]] if rowid is not None else []) + [
            names for ix in indexes if (names := ix.unique_columns()) is not None
        ]
        if any(set(names) <= set(self.key_columns) for names in uniques):
            return
        ignored = [
            f"{ix.name} ({'partial' if ix.partial else 'on an expression'})"
            for ix in indexes
            if ix.unique and ix.unique_columns() is None
        ]
        skipped = f" (unique indexes that do not count: {', '.join(ignored)})" if ignored else ""
        head = (
            f"{self.describe}: the key {self.key_columns!r} is not unique: no primary key, UNIQUE constraint or "
            f"unique index covers only key columns{skipped}. Rows sharing the last key of a batch would be "
            "skipped (each batch starts strictly after that key)."
        )
        if uniques:
            tie = min(uniques, key=len)
            better = (*self.key_columns, *(c for c in tie if c not in self.key_columns))
            fix = f" End the key with a unique tie-breaker: key={better!r}"
            if not any(_serves_order(better, ix, rowid) for ix in indexes) and better != (rowid,):
                fix += f", with an index in that order: {self._create_index(better)}"
            raise UsageError(head + fix)
        raise UsageError(
            f"{head} The table has no unique key: end the key with its rowid alias (an INTEGER PRIMARY KEY "
            "column) or a UNIQUE column, or, if the key's values are in fact unique, declare it: "
            f"{self._create_index(self.key_columns, unique=True)}"
        )

    def _create_index(self, key: Sequence[str], *, unique: bool = False) -> str:
        name = _quote(self.table + "_" + "_".join(key))
        return (
            f"CREATE {'UNIQUE ' if unique else ''}INDEX {name} ON {_quote(self.table)} "
            f"({', '.join(_quote(k) for k in key)})"
        )


class _Index(NamedTuple):
    """One index of the table, from ``pragma_index_list`` and ``pragma_index_xinfo``."""

    name: str
    unique: bool
    origin: str  # 'c' CREATE INDEX, 'u' UNIQUE constraint, 'pk' PRIMARY KEY
    partial: bool
    # (cid, name, desc, collation, is_key) in index order: the key columns, then the aux
    # columns (the rowid, or a WITHOUT ROWID table's primary key). cid -2 is an
    # expression, -1 the rowid (name None).
    columns: list[tuple[int, str | None, int, str, bool]]

    def unique_columns(self) -> list[str] | None:
        """The columns this index makes unique (its key columns), or None when it makes none unique."""
        if not self.unique or self.partial:
            return None
        keys = [c for c in self.columns if c[4]]
        if any(cid < 0 or name is None for cid, name, *_ in keys):
            return None
        return [name for _, name, *_ in keys if name is not None]


def _indexes(conn: sqlite3.Connection, table: str) -> list[_Index]:
    """Every index of ``table`` with its columns, in one query."""
    rows = conn.execute(
        'SELECT il.name, il."unique", il.origin, il.partial, ix.cid, ix.name, ix."desc", ix.coll, ix."key" '
        "FROM pragma_index_list(?) AS il, pragma_index_xinfo(il.name) AS ix ORDER BY il.seq, ix.seqno",
        (table,),
    ).fetchall()
    found: dict[str, _Index] = {}
    for name, unique, origin, partial, cid, col, desc, coll, key in rows:
        ix = found.setdefault(name, _Index(name, bool(unique), origin, bool(partial), []))
        ix.columns.append((cid, col, desc, str(coll).upper(), bool(key)))
    return list(found.values())


def _serves_order(key: Sequence[str], index: _Index, rowid: str | None) -> bool:
    """Whether ``index`` returns rows in BINARY ``ORDER BY key`` order (each batch a range scan).

    The aux columns after the key columns count: SQLite orders every index by them too (the
    rowid, which the rowid alias names, or a WITHOUT ROWID table's primary key), so an
    index on ``grp`` serves ``key=("grp", "id")`` when ``id`` is the INTEGER PRIMARY KEY.
    """
    if index.partial:
        return False
    head = index.columns[: len(key)]
    names = [rowid if cid == -1 else name for cid, name, *_ in head]
    return (
        len(head) == len(key)
        and names == list(key)
        and len({c[2] for c in head}) == 1
        and all(c[3] == "BINARY" for c in head)
    )
