"""``SQLiteTable``: a SQLite table read in key order, one bounded query per batch.

The SQLite twin of :class:`~restartable.sources.postgres.PostgresTable`, for jobs
whose store, input and output share one SQLite file (exactly-once with
``job.transaction()``)::

    with Job("copy", store="sqlite:///data/app.db") as job:
        for batch in job.batches(SQLiteTable("data/app.db", "src", key="id")):
            with job.transaction() as conn:
                conn.executemany("INSERT INTO dst VALUES (?, ?)", [(r["id"], r["v"]) for r in batch])

The same contract as PostgresTable: each batch is ``SELECT cols FROM t WHERE (k1, k2)
> (?, ?) AND (where) ORDER BY k1, k2 LIMIT n`` on a connection of its own in
autocommit (no read transaction held between batches; WAL lets it read while the
store writes), strictly after the last key. The key must be NOT NULL columns that
start a non-partial index (or be the table's INTEGER PRIMARY KEY, the rowid),
else UsageError with the fix. Names are quoted identifiers; ``where`` is the
programmer's SQL with ``?`` or ``:name`` placeholders and ``params``. Rows are dicts
(``rows="tuple"`` for tuples).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..errors import StoreUnavailable, UsageError
from .batches import Batch

__all__ = ["SQLiteTable"]


def _quote(name: str) -> str:
    """A SQLite identifier, quoted: any text is then a name, never SQL."""
    return '"' + name.replace('"', '""') + '"'


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
        keys = (key,) if isinstance(key, str) else tuple(key)
        if not keys or len(set(keys)) != len(keys):
            raise UsageError(f"SQLiteTable needs a key of distinct columns, not {key!r}")
        self.key_columns: tuple[str, ...] = tuple(_check_name(k, "key column") for k in keys)
        self.columns = None if columns is None else [_check_name(c, "column") for c in columns]
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
            found = [dict(zip(names, r)) for r in found]
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
        params: Any = ({**self.params, **{f"_rt_k{i}": v for i, v in enumerate(keys)}, "_rt_limit": 1}
                       if isinstance(self.params, Mapping) else [*keys, *(self.params or ()), 1])
        plan = self._conn.execute("EXPLAIN QUERY PLAN " + self._queries[0 if after is None else 1], params)
        return "\n".join(str(r[-1]) for r in plan)

    # -- internals ---------------------------------------------------------------------

    def _prepare(self, conn: sqlite3.Connection) -> tuple[str, str]:
        info = conn.execute('SELECT name, type, "notnull", pk FROM pragma_table_info(?)', (self.table,)).fetchall()
        if not info:
            raise UsageError(f"{self.describe}: no such table")
        cols = {name: (typ, bool(notnull), pk) for name, typ, notnull, pk in info}
        for c in (*self.key_columns, *(self.columns or ())):
            if c not in cols:
                raise UsageError(f"{self.describe} has no column {c!r} (its columns: {', '.join(cols)})")
        pks = [name for name, (_, _, pk) in cols.items() if pk]
        listed = conn.execute('SELECT name, "partial", origin FROM pragma_index_list(?)', (self.table,)).fetchall()
        indexes = [(name, partial) for name, partial, _ in listed]
        # INTEGER PRIMARY KEY is the rowid of a rowid table: never NULL, the table's own order.
        # (A WITHOUT ROWID table lists its primary key as an index of origin 'pk' instead.)
        rowid = (len(pks) == 1 and cols[pks[0]][0].upper() == "INTEGER"
                 and not any(origin == "pk" for _, _, origin in listed))
        rowid_key = rowid and self.key_columns == (pks[0],)
        for k in self.key_columns:
            if not cols[k][1] and not (rowid_key and k == pks[0]):
                raise UsageError(
                    f"{self.describe}: key column {k!r} can be NULL, and rows with a NULL key would never be read. "
                    f"Declare it NOT NULL (SQLite needs the table rebuilt: CREATE TABLE ... {_quote(k)} ... NOT "
                    "NULL, copy the rows, rename), or key on a NOT NULL column"
                )
        if not rowid_key and not self._has_index(conn, indexes):
            fix = f"CREATE INDEX {_quote(self.table + '_' + '_'.join(self.key_columns))} ON {_quote(self.table)} " \
                  f"({', '.join(_quote(k) for k in self.key_columns)})"
            raise UsageError(
                f"{self.describe}: no index starts with the key {self.key_columns!r} in this order, so every batch "
                f"would scan and sort the table. Create one: {fix}"
            )
        selected = list(self.columns) if self.columns is not None else list(cols)
        selected += [k for k in self.key_columns if k not in selected]
        self._names = selected
        self._key_index = [selected.index(k) for k in self.key_columns]
        named = isinstance(self.params, Mapping)
        ph = [f":_rt_k{i}" if named else "?" for i in range(len(self.key_columns))]
        limit = ":_rt_limit" if named else "?"
        order = ", ".join(_quote(k) for k in self.key_columns)
        after = (f"{_quote(self.key_columns[0])} > {ph[0]}" if len(ph) == 1
                 else f"({order}) > ({', '.join(ph)})")
        head = f"SELECT {', '.join(_quote(c) for c in selected)} FROM {_quote(self.table)}"
        tail = f" ORDER BY {order} LIMIT {limit}"
        if self.where is None:
            return head + tail, f"{head} WHERE {after}{tail}"
        return f"{head} WHERE ({self.where}){tail}", f"{head} WHERE {after} AND ({self.where}){tail}"

    def _has_index(self, conn: sqlite3.Connection, indexes: list[tuple[str, int]]) -> bool:
        n = len(self.key_columns)
        for name, partial in indexes:
            if partial:
                continue
            # xinfo rows: (seqno, cid, name, desc, coll, key); key columns first, cid -2 is an expression.
            cols = [r for r in conn.execute("SELECT * FROM pragma_index_xinfo(?)", (name,)).fetchall() if r[5]]
            head = cols[:n]
            if (len(head) == n and [r[2] for r in head] == list(self.key_columns)
                    and len({r[3] for r in head}) == 1 and all(str(r[4]).upper() == "BINARY" for r in head)):
                return True
        return False
