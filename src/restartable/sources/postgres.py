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
* The key must be NOT NULL columns that start some valid, non-partial btree index,
  in order and in one direction, with the columns' collations; otherwise ``open``
  refuses it (UsageError, exit 2) with the statement that fixes it. A non-unique
  leading column needs a unique tie-breaker after it (``key=("created_at", "id")``):
  the key must be unique, or rows sharing the last key of a batch are skipped.
* Names are identifiers, never SQL: ``table``, ``schema``, ``key`` and ``columns``
  are quoted through :mod:`psycopg.sql`, so a name shaped like an injection is just a
  name (usually of a table that does not exist: UsageError). ``where`` IS SQL, the
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
``retry``, ``history``) are taken out of it; the table's schema is the ``schema``
argument (default: the connection's ``search_path``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from .._url import parse_duration, parse_store_url, redact
from ..errors import (
    ConfigError,
    MissingDriver,
    PermissionDenied,
    StoreUnavailable,
    UsageError,
)
from ..stores._retry import DEFAULT_RETRY_SECONDS, call_with_retry
from ..stores.postgres import _AUTH_FAILURES, _CONFIG_FAILURES, _scrub, _secrets_of
from .batches import Batch

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

__all__ = ["PostgresTable"]

log = logging.getLogger("restartable")

_STORE_OPTIONS = frozenset({"schema", "retry", "history"})
_MAX_IDENT = 63  # PostgreSQL truncates longer identifiers: refuse rather than read another table

_TABLE = """
SELECT c.oid, c.relkind, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s)"""
_COLUMNS = """
SELECT attname, attnum, attnotnull, attcollation FROM pg_attribute
WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum"""
# Usable indexes: valid btree, not partial. indkey/indoption/indcollation list the key
# columns first (indnkeyatts of them), then INCLUDE columns; attnum 0 is an expression.
_INDEXES = """
SELECT ci.relname, i.indkey::int2[], i.indoption::int2[], i.indcollation::oid[], i.indnkeyatts
FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid JOIN pg_am am ON am.oid = ci.relam
WHERE i.indrelid = %s AND am.amname = 'btree' AND i.indisvalid AND i.indpred IS NULL
ORDER BY i.indisprimary DESC, i.indisunique DESC, ci.relname"""
_DESC = 1  # indoption bit: the column is sorted descending (a backward scan serves ASC)


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise MissingDriver("PostgresTable needs psycopg 3: pip install 'restartable[postgres]'") from None
    return psycopg


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
    :param key: the key column, or a tuple of them (the last one unique overall).
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
        keys = (key,) if isinstance(key, str) else tuple(key)
        if not keys:
            raise UsageError("PostgresTable needs a key: key='id' or key=('created_at', 'id')")
        self.key_columns: tuple[str, ...] = tuple(_check_ident(k, "key column") for k in keys)
        if len(set(self.key_columns)) != len(self.key_columns):
            raise UsageError(f"key {self.key_columns!r} names a column twice")
        self.columns = None if columns is None else [_check_ident(c, "column") for c in columns]
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
            self._secrets = _secrets_of(url_or_conn)
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
            raise UsageError(f"PostgresTable needs a postgresql:// URL or a psycopg connection, not "
                             f"{type(url_or_conn).__name__}")
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
            raise UsageError(f"{self.describe}: no such table (looked up as {qualified.as_string(conn)}, "
                             f"through the search_path when no schema is given){hint}")
        oid, relkind, nspname, relname = found
        target = sql.Identifier(nspname, relname)
        self._name = target.as_string(conn)
        if relkind not in ("r", "p", "m"):
            raise UsageError(f"{self.describe} is not a table (relkind {relkind!r}): keyset batches need a table "
                             "or materialized view with an index on the key")
        cols = {name: (num, notnull, coll) for name, num, notnull, coll in conn.execute(_COLUMNS, (oid,))}
        for c in (*self.key_columns, *(self.columns or ())):
            if c not in cols:
                raise UsageError(f"{self.describe} has no column {c!r} (its columns: {', '.join(cols)})")
        for k in self.key_columns:
            if not cols[k][1]:
                fix = sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(target, sql.Identifier(k))
                raise UsageError(
                    f"{self.describe}: key column {k!r} can be NULL, and rows with a NULL key would never be "
                    f"read (NULL compares as unknown). Make it NOT NULL: {fix.as_string(conn)}"
                )
        self._check_index(conn, oid, target, cols)
        selected = list(self.columns) if self.columns is not None else list(cols)
        selected += [k for k in self.key_columns if k not in selected]
        self._key_index = [selected.index(k) for k in self.key_columns]
        return self._compose(conn, target, selected)

    def _check_index(self, conn: psycopg.Connection[Any], oid: int, target: sql.Identifier,
                     cols: dict[str, tuple[int, bool, int]]) -> None:
        from psycopg import sql

        want = [cols[k][0] for k in self.key_columns]
        colls = [cols[k][2] for k in self.key_columns]
        n = len(want)
        seen = []
        for name, indkey, indoption, indcoll, nkey in conn.execute(_INDEXES, (oid,)):
            seen.append(name)
            if list(indkey[:n]) != want or nkey < n:
                continue
            directions = {opt & _DESC for opt in indoption[:n]}
            if len(directions) == 1 and list(indcoll[:n]) == colls:
                return
        fix = sql.SQL("CREATE INDEX ON {} ({})").format(
            target, sql.SQL(", ").join(sql.Identifier(k) for k in self.key_columns)
        )
        others = f" (its usable btree indexes: {', '.join(seen)})" if seen else ""
        raise UsageError(
            f"{self.describe}: no index starts with the key {self.key_columns!r} in this order{others}, so every "
            f"batch would scan and sort the table. Create one: {fix.as_string(conn)} (or choose a key that "
            "leads an index)"
        )

    def _compose(self, conn: psycopg.Connection[Any], target: sql.Identifier, selected: list[str]) -> tuple[bytes, bytes]:
        from psycopg import sql

        named = isinstance(self.params, Mapping)
        ph = (lambda i: sql.Placeholder(f"_rt_k{i}")) if named else (lambda i: sql.Placeholder())
        limit = sql.Placeholder("_rt_limit") if named else sql.Placeholder()
        keys = [sql.Identifier(k) for k in self.key_columns]
        order = sql.SQL(", ").join(keys)
        if len(keys) == 1:
            after = sql.SQL("{} > {}").format(keys[0], ph(0))
        else:  # a row comparison: one index range condition, not an OR of cases
            after = sql.SQL("({}) > ({})").format(order, sql.SQL(", ").join(ph(i) for i in range(len(keys))))
        where = sql.SQL(self.where) if isinstance(self.where, str) else self.where
        head = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(sql.Identifier(c) for c in selected), target)
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
        given_params = pg.conninfo.conninfo_to_dict(self._conninfo)
        extra = {k: v for k, v in (("connect_timeout", 10), ("application_name", "restartable")) if k not in given_params}
        try:
            self._conn = pg.connect(self._conninfo, autocommit=True, **extra)
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

        return call_with_retry(attempt, seconds=self.retry_seconds, transient=transient, display=self._display,
                               what=f"{what} of {self._name}")

    def _translate(self, exc: BaseException, what: str, *, connecting: bool = False) -> BaseException:
        """Ours when retrying cannot help; the driver error itself when it is transient (retried)."""
        pg = self._pg
        message = self._scrub(exc)
        sqlstate = getattr(exc, "sqlstate", None) or ""
        lowered = message.lower()
        libpq = connecting and sqlstate == ""
        where = f"{self.describe}: {what} failed ({message})"
        err: BaseException
        if isinstance(exc, pg.errors.InsufficientPrivilege) or sqlstate.startswith("28") or (
            libpq and any(p in lowered for p in _AUTH_FAILURES)
        ):
            err = PermissionDenied(f"{where}: check the user and password, and GRANT SELECT on the table")
        elif sqlstate == "3D000" or (libpq and any(p in lowered for p in _CONFIG_FAILURES)):
            err = ConfigError(f"{where}: fix the URL or create the database")
        elif isinstance(exc, (pg.OperationalError, pg.InterfaceError)):
            return exc
        elif isinstance(exc, (pg.ProgrammingError, pg.DataError)):
            err = UsageError(f"{where}: check where= and params=")
        else:
            err = StoreUnavailable(where)
        err.__cause__ = exc if message == str(exc).strip() else None
        err.__suppress_context__ = True
        return err

    def _scrub(self, exc: BaseException) -> str:
        return _scrub(str(exc).strip(), self._secrets)
