"""``PostgresTable``: a PostgreSQL table read in key order, one bounded query per batch.

::

    table = PostgresTable("postgresql://app@db/app", "large_table", key="id",
                          columns=["id", "payload"], where="kind = %s", params=["a"], batch_size=1000)
    for batch in job.batches(table):      # a batch is a list of dict rows
        ...

The contract:

* Each batch is ONE query, ``SELECT cols FROM t WHERE (k1, k2) > (%s, %s) AND (where)
  ORDER BY k1, k2 LIMIT n``, in autocommit: no server-side cursor and no
  transaction is held between batches, so checkpoint commits never touch it and
  nothing copies the rest of the table (``WITH HOLD``). Resuming is strictly after
  the last key (``>``): no row is read twice and the loop ends after the last row.
* Rows are dicts (column name -> value; ``rows="tuple"`` gives tuples in ``columns``
  order). The key columns are always selected: when ``columns`` leaves them out they
  are added at the end. ``columns=None`` selects every column.
* The key must be unique, and the table must say so: a primary key, a unique
  constraint or a unique index (valid, non-partial, on columns rather than
  expressions, with the type's default equality) whose key columns are all key
  columns. With batches starting strictly after the last key, rows sharing that key
  but not in the batch would be skipped. A non-unique column therefore needs a unique
  tie-breaker after it: ``key=("created_at", "id")``. INCLUDE columns, a partial or a
  not-yet-valid (``CREATE INDEX CONCURRENTLY``) unique index do not count, nor a
  unique index under another collation than a nondeterministic column's. A table
  with inheritance children is refused (no index of the parent covers their rows); a
  partitioned table's unique indexes cover every partition.
* The key must be NOT NULL columns that start some valid, non-partial btree index,
  in order and in one direction, with the columns' collations, and of scalar types
  (not composite or JSON: the last key goes back as a query parameter). Otherwise
  ``open`` refuses it (UsageError, exit 2) with the fix: the key to use, the
  ``CREATE INDEX`` or ``SET NOT NULL`` statement.
* Names are identifiers, never SQL: ``table``, ``schema``, ``key`` and ``columns``
  are quoted through :mod:`psycopg.sql` (with ``%`` escaped, so ``"a%s"`` is a name,
  not a placeholder), so a name shaped like an injection is just a name (usually of a
  table that does not exist: UsageError). ``s.t`` is the name of one table; a schema
  is the ``schema`` argument. ``where`` IS SQL, the
  programmer's: put values in ``params`` (``%s`` or ``%(name)s``; write ``%%`` for
  ``%``), never in the text. It should not depend on time: keyset order assumes the
  filtered set only grows ahead of the position.
* Rows inserted after the run started behind the position are not seen (keyset
  semantics); rows ahead of it are.
* Connection loss: with a URL, a query that fails because the connection dropped
  (server restart, failover) is retried with backoff, reconnecting, for ``retry``
  seconds (default 60; ``?retry=`` in the URL); then StoreUnavailable (exit 75) and
  the last checkpoint stands. A connection passed in is not reconnected: its loss is
  StoreUnavailable at once.

``url_or_conn`` may be the store's URL: restartable's store options (``schema``,
``retry``, ``history``, ``read_timeout``) are taken out of it, and ``?read_timeout=``
bounds every read on the table's connection (default 60 s, ``0`` for none); the
table's schema is the ``schema`` argument (default: the connection's ``search_path``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from .._retry import DEFAULT_RETRY_SECONDS, call_with_retry
from .._sources.batches import Batch
from .._url import parse_duration, parse_store_url, redact
from ..errors import (
    ConfigError,
    MissingDriver,
    PermissionDenied,
    StoreUnavailable,
    UsageError,
)
from .errors import classify, scrub, secrets_of

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

__all__ = ["PostgresTable"]

log = logging.getLogger("restartable")

_STORE_OPTIONS = frozenset({"schema", "retry", "history"})
_MAX_IDENT = 63  # PostgreSQL truncates longer identifiers: refuse rather than read another table

# One row: the relation, and whether legacy inheritance children hang under it (their
# rows are read too, but no index of the parent covers them).
_TABLE = """
SELECT c.oid, c.relkind, n.nspname, c.relname,
       c.relkind = 'r' AND EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhparent = c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s)"""
# collisdeterministic exists from PostgreSQL 12; before it every collation is deterministic.
_COLUMNS = """
SELECT a.attname, a.attnum, a.attnotnull, a.attcollation, {deterministic}, t.typtype, format_type(a.atttypid, NULL)
FROM pg_attribute a LEFT JOIN pg_collation co ON co.oid = a.attcollation JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"""
# Every index, filtered in Python (one query serves the order check, the uniqueness check
# and the message naming the indexes that do not count). indkey/indoption/indcollation
# list the key columns first (indnkeyatts of them), then INCLUDE columns; attnum 0 is an
# expression. same_eq[j]: the j-th key column's operator class has the same equality as
# the type's default btree class, the one the batch query's ``>`` and ORDER BY use (a
# unique index under a finer equality, record_image_ops say, does not make the key unique).
_INDEXES = """
SELECT ci.relname, i.indkey::int2[], i.indoption::int2[], i.indcollation::oid[], i.indnkeyatts,
       am.amname = 'btree', i.indisvalid, i.indpred IS NOT NULL, i.indisunique,
       ARRAY(SELECT coalesce(
                 (SELECT o.amopopr FROM pg_amop o WHERE o.amopfamily = oc.opcfamily AND o.amopstrategy = 3
                    AND o.amoplefttype = oc.opcintype AND o.amoprighttype = oc.opcintype)
               = (SELECT o.amopopr FROM pg_opclass d JOIN pg_amop o ON o.amopfamily = d.opcfamily
                  WHERE d.opcmethod = oc.opcmethod AND d.opcdefault AND d.opcintype = oc.opcintype
                    AND o.amopstrategy = 3 AND o.amoplefttype = d.opcintype AND o.amoprighttype = d.opcintype),
               false)
             FROM unnest(i.indclass::oid[]) WITH ORDINALITY AS u(cls, n) JOIN pg_opclass oc ON oc.oid = u.cls
             ORDER BY u.n)
FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid JOIN pg_am am ON am.oid = ci.relam
WHERE i.indrelid = %s
ORDER BY i.indisprimary DESC, i.indisunique DESC, i.indnkeyatts, ci.relname"""
_DESC = 1  # indoption bit: the column is sorted descending (a backward scan serves ASC)


class _Column(NamedTuple):
    attnum: int
    notnull: bool
    collation: int  # 0: the type is not collatable
    deterministic: bool  # equal only when byte-equal (every collation but nondeterministic ICU ones)
    typtype: str  # 'c': a composite type
    typname: str


class _Index(NamedTuple):
    """A row of :data:`_INDEXES`."""

    name: str
    indkey: list[int]
    indoption: list[int]
    indcoll: list[int]
    nkey: int
    btree: bool
    valid: bool
    partial: bool
    unique: bool
    same_eq: list[bool]


def _why_not(index: _Index, cols: dict[str, _Column]) -> str | None:
    """Why a unique ``index`` does not make its key columns unique for the batch query (None: it does).

    Not valid: CREATE INDEX CONCURRENTLY is still running, or failed. Partial: unique only
    among the rows its WHERE selects. On an expression: unique in the expression's value,
    not the columns'. Another equality than the type's default btree one, which the
    query's ``>`` and ORDER BY use (record_image_ops tells ROW(1.0) from ROW(1.00)).
    Another collation than the column's when the column's is nondeterministic: a
    case-insensitive column calls 'a' and 'A' equal; a "C" unique index keeps both.
    """
    if not index.valid:
        return "not valid: CREATE INDEX CONCURRENTLY still running or failed"
    if index.partial:
        return "partial: unique only where its WHERE holds"
    if not index.btree:
        return "not a btree"
    if 0 in index.indkey[: index.nkey]:
        return "on an expression"
    if not all(index.same_eq):
        return "another operator class's equality"
    by_num = {c.attnum: c for c in cols.values()}
    if any(
        not by_num[a].deterministic and coll != by_num[a].collation
        for a, coll in zip(index.indkey[: index.nkey], index.indcoll[: index.nkey], strict=False)
    ):
        return "another collation than a nondeterministic column's"
    return None


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise MissingDriver("PostgresTable needs psycopg 3: pip install 'restartable[postgres]'") from None
    return psycopg


def _names(value: Any, what: str) -> tuple[Any, ...]:
    """``key``/``columns`` as a tuple: one name, or a list or tuple of them (a string is one name,
    never a sequence of one-letter names)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise UsageError(f"{what} must be a column name or a list of them, not {type(value).__name__}")


def _check_ident(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value or len(value.encode()) > _MAX_IDENT:
        raise UsageError(
            f"invalid {what} {value!r:.80}: a PostgreSQL identifier is 1 to {_MAX_IDENT} bytes without NUL "
            "(pass the name itself, unquoted: it is quoted for you)"
        )
    return value


class PostgresTable:
    """A table read in batches by keyset pagination; see the module docstring.

    :param url_or_conn: a ``postgresql://`` URL (or libpq conninfo), or an open psycopg
        connection (best in autocommit; it is never closed, nor reconnected, by us).
    :param table: the table's name, unquoted; ``schema`` its schema.
    :param key: the key column, or a tuple of them, unique together (see the module docstring).
    :param columns: the columns to select (default: all).
    :param where: an extra filter: SQL text with ``params``, or a ``psycopg.sql`` Composable.
    :param batch_size: rows per batch (per query).
    :param rows: ``"dict"`` rows (default) or ``"tuple"`` rows.
    :param retry: how long to ride out a lost connection (seconds or ``"2m"``).
    """

    def __init__(
        self,
        url_or_conn: str | psycopg.Connection[Any],
        table: str,
        *,
        key: str | Sequence[str] = "id",
        columns: Sequence[str] | None = None,
        where: str | sql.Composable | None = None,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        batch_size: int = 1000,
        schema: str | None = None,
        rows: Literal["dict", "tuple"] = "dict",
        retry: float | str | None = None,
    ) -> None:
        self._pg = _import_psycopg()
        self.table = _check_ident(table, "table name")
        self.schema = None if schema is None else _check_ident(schema, "schema name")
        keys = _names(key, "key")
        if not keys:
            raise UsageError("PostgresTable needs a key: key='id' or key=('created_at', 'id')")
        self.key_columns: tuple[str, ...] = tuple(_check_ident(k, "key column") for k in keys)
        if len(set(self.key_columns)) != len(self.key_columns):
            raise UsageError(f"key {self.key_columns!r} names a column twice")
        self.columns = None if columns is None else [_check_ident(c, "column") for c in _names(columns, "columns")]
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive int, not {batch_size!r}")
        self.batch_size = batch_size
        if rows not in ("dict", "tuple"):
            raise UsageError(f"rows must be 'dict' or 'tuple', not {rows!r}")
        self.rows = rows
        if where is not None and not isinstance(where, (str, self._pg.sql.Composable)):
            raise UsageError(f"where must be SQL text or a psycopg.sql Composable, not {type(where).__name__}")
        if params is not None and where is None:
            raise UsageError("params are the values of where's placeholders: pass them with where=")
        if isinstance(params, (str, bytes)):
            raise UsageError("params must be a sequence or a mapping of values, not a string")
        self.where = where
        self.params = params
        url_retry: str | None = None
        self._conn: psycopg.Connection[Any] | None = None
        if isinstance(url_or_conn, str):
            self._owns = True
            self._conninfo, url_retry, self._display = self._parse_url(url_or_conn)
            self._secrets = secrets_of(url_or_conn)
        elif isinstance(url_or_conn, self._pg.Connection):
            self._owns = False
            self._given = url_or_conn
            try:
                self._display = f"a psycopg connection to {url_or_conn.info.dbname!r}"
            except self._pg.Error:  # already closed: fails at open(), with the fix
                self._display = "a psycopg connection"
            self._conninfo = ""
            self._secrets = ()
        else:
            raise UsageError(
                f"PostgresTable needs a postgresql:// URL or a psycopg connection, not {type(url_or_conn).__name__}"
            )
        given = retry if retry is not None else url_retry
        self.retry_seconds = parse_duration(given if given is not None else DEFAULT_RETRY_SECONDS, "retry")
        self._queries: tuple[bytes, bytes] | None = None
        self._key_index: list[int] = []
        self._name = f'"{self.table}"' if self.schema is None else f'"{self.schema}"."{self.table}"'

    @staticmethod
    def _parse_url(url: str) -> tuple[str, str | None, str]:
        if "://" not in url:  # a libpq "host=... dbname=..." string
            return url, None, "PostgreSQL (conninfo)"
        parsed = parse_store_url(url, known_options=_STORE_OPTIONS)
        if parsed.scheme not in ("postgresql", "postgres"):
            raise ConfigError(f"PostgresTable needs a postgresql:// URL, not {redact(url)!r}")
        return parsed.driver_url, parsed.options.get("retry"), parsed.display

    @property
    def describe(self) -> str:
        return f"table {self._name} on {self._display}"

    def __repr__(self) -> str:
        return f"<PostgresTable {self.describe} key={self.key_columns!r}>"

    # -- the BatchSource protocol ----------------------------------------------------

    def open(self) -> None:
        """Connect, check the table, its key and index, and prepare the two queries."""
        self.close()
        self._run("connecting", lambda conn: None)
        self._queries = self._run("checking the table", self._prepare)

    def fetch(self, after: tuple[Any, ...] | None) -> Batch:
        """The next batch strictly after key ``after`` (None: from the first row)."""
        if self._queries is None:
            raise UsageError(f"{self.describe} is not open: iterate it with job.batches()")
        query = self._queries[0 if after is None else 1]
        params = self._params(after)
        found = self._run("reading a batch", lambda conn: self._select(conn, query, params))
        if not found:
            return Batch([], None)
        last = found[-1]
        if self.rows == "dict":
            key = tuple(last[k] for k in self.key_columns)
        else:
            key = tuple(last[i] for i in self._key_index)
        return Batch(found, key)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._owns:
            conn.close()

    def explain(self, after: tuple[Any, ...] | None = None) -> str:
        """The plan of the batch query after ``after`` (EXPLAIN text), to check it uses the index."""
        if self._queries is None:
            raise UsageError(f"{self.describe} is not open: call open() first")
        query = b"EXPLAIN " + self._queries[0 if after is None else 1]
        params = self._params(after)
        rows = self._run("explaining", lambda conn: self._select(conn, query, params, plain=True))
        return "\n".join(r[0] for r in rows)

    # -- internals ---------------------------------------------------------------------

    def _params(self, after: tuple[Any, ...] | None) -> Any:
        keys = list(after) if after is not None else []
        if isinstance(self.params, Mapping):
            named = dict(self.params)
            named.update({f"_rt_k{i}": v for i, v in enumerate(keys)})
            named["_rt_limit"] = self.batch_size
            return named
        return [*keys, *(self.params or ()), self.batch_size]

    def _select(self, conn: psycopg.Connection[Any], query: bytes, params: Any, *, plain: bool = False) -> list[Any]:
        rf = self._pg.rows
        factory = rf.tuple_row if plain or self.rows == "tuple" else rf.dict_row
        with conn.cursor(row_factory=factory) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def _prepare(self, conn: psycopg.Connection[Any]) -> tuple[bytes, bytes]:
        from psycopg import sql

        qualified = sql.Identifier(self.table) if self.schema is None else sql.Identifier(self.schema, self.table)
        found = conn.execute(_TABLE, (qualified.as_string(conn),)).fetchone()
        if found is None:
            hint = ""
            if self.schema is None and "." in self.table:
                hint = f"; to name a schema pass schema={self.table.split('.')[0]!r} and the bare table name"
            raise UsageError(
                f"{self.describe}: no such table (looked up as {qualified.as_string(conn)}, "
                f"through the search_path when no schema is given){hint}"
            )
        oid, relkind, nspname, relname, inherited = found
        target = sql.Identifier(nspname, relname)
        self._name = target.as_string(conn)
        if relkind not in ("r", "p", "m"):
            raise UsageError(
                f"{self.describe} is not a table (relkind {relkind!r}): keyset batches need a table "
                "or materialized view with an index on the key"
            )
        if inherited:
            raise UsageError(
                f"{self.describe} has inheritance children: their rows are read too, but no index or unique "
                "constraint of the parent covers them, so a key shared across tables would skip rows. Read each "
                "table on its own (a view with ONLY is not keyset-readable either), or make it a partitioned "
                "table, whose unique indexes cover every partition"
            )
        deterministic = "coalesce(co.collisdeterministic, true)" if conn.info.server_version >= 120000 else "true"
        cols = {row[0]: _Column(*row[1:]) for row in conn.execute(_COLUMNS.format(deterministic=deterministic), (oid,))}
        for c in (*self.key_columns, *(self.columns or ())):
            if c not in cols:
                raise UsageError(f"{self.describe} has no column {c!r} (its columns: {', '.join(cols)})")
        for k in self.key_columns:
            if not cols[k].notnull:
                fix = sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(target, sql.Identifier(k))
                raise UsageError(
                    f"{self.describe}: key column {k!r} can be NULL, and rows with a NULL key would never be "
                    f"read (NULL compares as unknown). Make it NOT NULL: {fix.as_string(conn)}"
                )
        indexes = [_Index(*row) for row in conn.execute(_INDEXES, (oid,))]
        self._check_unique(conn, target, cols, indexes)
        self._check_order(conn, target, cols, indexes)
        for k in self.key_columns:
            # The last key goes back as a query parameter, which PostgreSQL cannot take for
            # these: a composite value arrives as an "anonymous composite" (not implemented),
            # a JSON value as text that is not JSON. Refuse now rather than at the second batch.
            if cols[k].typtype == "c" or cols[k].typname in ("json", "jsonb"):
                raise UsageError(
                    f"{self.describe}: key column {k!r} is of type {cols[k].typname}, whose values "
                    "cannot be sent back as the position to resume after: key on scalar columns "
                    "(numbers, text, dates, timestamps, UUIDs), such as the primary key"
                )
        selected = list(self.columns) if self.columns is not None else list(cols)
        selected += [k for k in self.key_columns if k not in selected]
        self._key_index = [selected.index(k) for k in self.key_columns]
        return self._compose(conn, (nspname, relname), selected)

    @staticmethod
    def _serves_order(key: Sequence[str], cols: dict[str, _Column], index: _Index) -> bool:
        """Whether ``index`` returns rows in ``ORDER BY key`` order (so each batch is a range scan)."""
        n = len(key)
        if not (index.btree and index.valid and not index.partial) or index.nkey < n:
            return False
        if list(index.indkey[:n]) != [cols[k].attnum for k in key]:
            return False
        # One direction throughout (a backward scan serves a DESC index), the columns' collations.
        return len({opt & _DESC for opt in index.indoption[:n]}) == 1 and list(index.indcoll[:n]) == [
            cols[k].collation for k in key
        ]

    @staticmethod
    def _unique_columns(cols: dict[str, _Column], index: _Index) -> list[str] | None:
        """The columns ``index`` makes unique, as the batch query compares keys; else None.

        A key tuple is unique iff it holds all the columns of such an index. What does not
        count is listed in :func:`_why_not`. INCLUDE columns are not part of uniqueness;
        NULLS [NOT] DISTINCT does not matter, key columns being NOT NULL.
        """
        if not index.unique or _why_not(index, cols) is not None:
            return None
        by_num = {c.attnum: name for name, c in cols.items()}
        return [by_num[a] for a in index.indkey[: index.nkey]]

    def _check_unique(
        self, conn: psycopg.Connection[Any], target: sql.Identifier, cols: dict[str, _Column], indexes: list[_Index]
    ) -> None:
        from psycopg import sql

        usable = [(ix, self._unique_columns(cols, ix)) for ix in indexes]
        if any(names is not None and set(names) <= set(self.key_columns) for _, names in usable):
            return
        # The fix: the same key with a unique tie-breaker after it, from the primary key or the
        # smallest unique index (the query's ORDER BY sorts primary first, then by width).
        tie = next((names for _, names in usable if names is not None), None)
        ignored = [f"{ix.name} ({why})" for ix in indexes if ix.unique and (why := _why_not(ix, cols)) is not None]
        skipped = f" (unique indexes that do not count: {', '.join(ignored)})" if ignored else ""
        head = (
            f"{self.describe}: the key {self.key_columns!r} is not unique: no primary key, unique constraint or "
            f"unique index covers only key columns{skipped}. Rows sharing the last key of a batch would be "
            "skipped (each batch starts strictly after that key)."
        )
        if tie is not None:
            better = (*self.key_columns, *(c for c in tie if c not in self.key_columns))
            fix = f" End the key with a unique tie-breaker: key={better!r}"
            if not any(self._serves_order(better, cols, ix) for ix in indexes):
                index = sql.SQL("CREATE INDEX ON {} ({})").format(
                    target, sql.SQL(", ").join(sql.Identifier(k) for k in better)
                )
                fix += f", with an index in that order: {index.as_string(conn)}"
            raise UsageError(head + fix)
        unique = sql.SQL("CREATE UNIQUE INDEX ON {} ({})").format(
            target, sql.SQL(", ").join(sql.Identifier(k) for k in self.key_columns)
        )
        raise UsageError(
            f"{head} The table has no usable unique key: give it a primary key (ALTER TABLE {target.as_string(conn)} "
            "ADD PRIMARY KEY (...)) and end the key with its columns, or, if the key's values are in fact unique, "
            f"declare it: {unique.as_string(conn)}"
        )

    def _check_order(
        self, conn: psycopg.Connection[Any], target: sql.Identifier, cols: dict[str, _Column], indexes: list[_Index]
    ) -> None:
        from psycopg import sql

        if any(self._serves_order(self.key_columns, cols, ix) for ix in indexes):
            return
        fix = sql.SQL("CREATE INDEX ON {} ({})").format(
            target, sql.SQL(", ").join(sql.Identifier(k) for k in self.key_columns)
        )
        seen = [ix.name for ix in indexes if ix.btree and ix.valid and not ix.partial]
        others = f" (its usable btree indexes: {', '.join(seen)})" if seen else ""
        raise UsageError(
            f"{self.describe}: no index starts with the key {self.key_columns!r} in this order{others}, so every "
            f"batch would scan and sort the table. Create one: {fix.as_string(conn)} (or choose a key that "
            "leads an index)"
        )

    def _compose(
        self, conn: psycopg.Connection[Any], target: tuple[str, str], selected: list[str]
    ) -> tuple[bytes, bytes]:
        from psycopg import sql

        def ident(*parts: str) -> sql.Composable:
            # psycopg does not escape % inside identifiers, and these queries run with
            # parameters: a column named "a%s" would become a placeholder (a server-side
            # $n inside the quoted name: another column's name, or a mismatched count).
            return sql.SQL(sql.Identifier(*parts).as_string(conn).replace("%", "%%"))

        named = isinstance(self.params, Mapping)
        ph = (lambda i: sql.Placeholder(f"_rt_k{i}")) if named else (lambda i: sql.Placeholder())
        limit = sql.Placeholder("_rt_limit") if named else sql.Placeholder()
        keys = [ident(k) for k in self.key_columns]
        order = sql.SQL(", ").join(keys)
        if len(keys) == 1:
            after = sql.SQL("{} > {}").format(keys[0], ph(0))
        else:  # a row comparison: one index range condition, not an OR of cases
            after = sql.SQL("({}) > ({})").format(order, sql.SQL(", ").join(ph(i) for i in range(len(keys))))
        where = sql.SQL(self.where) if isinstance(self.where, str) else self.where
        table = ident(*target)
        head = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(ident(c) for c in selected), table)
        tail = sql.SQL(" ORDER BY {} LIMIT {}").format(order, limit)
        filt = sql.SQL("") if where is None else sql.SQL(" AND ({})").format(where)
        first = head + (sql.SQL("") if where is None else sql.SQL(" WHERE ({})").format(where)) + tail
        following = head + sql.SQL(" WHERE ") + after + filt + tail
        return first.as_bytes(conn), following.as_bytes(conn)

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not (conn.closed or conn.broken):
            return conn
        if not self._owns:
            given = self._given
            if given.closed or given.broken:
                raise StoreUnavailable(
                    f"{self.describe}: the connection passed in is closed or lost; PostgresTable cannot reconnect "
                    "it: pass a postgresql:// URL to ride out server restarts"
                )
            self._conn = given
            return given
        self._conn = None
        pg = self._pg
        from . import conn as _pgconn

        try:
            # Bounded connect, and every read bounded by the URL's ?read_timeout= (default
            # 60 s, taken out of the URL there): a silent connection fails and is retried.
            self._conn = _pgconn.connect(self._conninfo, autocommit=True, display=self._display)
        except pg.Error as exc:
            raise self._translate(exc, "connecting", connecting=True)
        return self._conn

    def _run(self, what: str, fn: Any) -> Any:
        """``fn(connection)``, retrying a lost connection with backoff for ``retry_seconds``."""
        pg = self._pg
        transient = (pg.OperationalError, pg.InterfaceError)

        def attempt() -> Any:
            conn = self._connection()
            idle = conn.info.transaction_status == pg.pq.TransactionStatus.IDLE
            try:
                result = fn(conn)
                if idle and not conn.autocommit:
                    conn.rollback()  # end the read transaction we began: hold no snapshot between batches
                return result
            except pg.Error as exc:
                if conn.broken or conn.closed:
                    self._conn = None
                    if self._owns:
                        conn.close()
                    else:
                        raise StoreUnavailable(
                            f"{self.describe}: {what} lost the connection passed in ({self._scrub(exc)}); "
                            "pass a postgresql:// URL so that PostgresTable can reconnect"
                        ) from None
                raise self._translate(exc, what)

        return call_with_retry(
            attempt,
            seconds=self.retry_seconds,
            transient=transient,
            display=self._display,
            what=f"{what} of {self._name}",
        )

    def _translate(self, exc: BaseException, what: str, *, connecting: bool = False) -> BaseException:
        """Ours when retrying cannot help; the driver error itself when it is transient (retried)."""
        pg = self._pg
        message = self._scrub(exc)
        kind = classify(exc, pg, message, connecting=connecting, transient=(pg.OperationalError, pg.InterfaceError))
        where = f"{self.describe}: {what} failed ({message})"
        err: BaseException
        if kind == "denied":
            err = PermissionDenied(f"{where}: check the user and password, and GRANT SELECT on the table")
        elif kind == "config":
            err = ConfigError(f"{where}: fix the URL or create the database")
        elif kind == "transient":
            return exc
        elif isinstance(exc, (pg.ProgrammingError, pg.DataError)):
            err = UsageError(f"{where}: check where= and params=")
        else:
            err = StoreUnavailable(where)
        err.__cause__ = exc if message == str(exc).strip() else None
        err.__suppress_context__ = True
        return err

    def _scrub(self, exc: BaseException) -> str:
        return scrub(str(exc).strip(), self._secrets)
