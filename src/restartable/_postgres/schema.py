"""The PostgreSQL store's tables and their versioned migrations.

Every table lives in the store's own schema (URL option ``schema``, default
``restartable``). ``<schema>.schema_migrations`` records which of :data:`MIGRATIONS`
have been applied; :func:`migrate` applies the missing ones in one transaction under
a transaction-scoped advisory lock, so processes that open a fresh store at the same
moment serialize instead of racing on ``CREATE TABLE``. A migration is never edited
once released: a change is a new entry at the end of the list.

The schema name is validated by the caller and only ever reaches SQL through
:class:`psycopg.sql.Identifier`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._names import _NAME, GRAMMAR
from ..errors import ConfigError

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

__all__ = ["LATEST", "MIGRATIONS", "check_schema", "current_version", "migrate"]

# Each migration is a list of statements; ``{s}`` is the schema identifier.
#
# Design notes for version 1:
# * ``job``/``run`` use the "C" collation so ``ORDER BY`` matches Python's sort (list_runs
#   is "sorted by job then run") whatever the database's locale, and key comparisons are
#   plain byte compares.
# * ``record`` is text, not jsonb: jsonb rewrites numbers (1e300 comes back as a
#   300-digit integer, a float becomes an int) and key order; the record must
#   round-trip byte for byte through the tagged JSON codec. Marker values are text for
#   the same reason.
# * ``owner`` is a jsonb column so acquire can compare "is the holder me?" in SQL.
# * ``saves`` counts the run's saves. History is a ring of ``keep`` slots per run: a
#   save writes slot ``saves % keep`` with ``seq = saves`` (an upsert that, once the
#   ring is full, rewrites a row in place). No pruning, no scan, no growth: the run
#   keeps exactly its last ``keep`` saves (opened later with a smaller ``keep``, its
#   ring may still hold older entries in the upper slots). Reading it takes the run's
#   few rows by the key prefix and orders them by ``seq``.
# * The only index on runs is its key, and runs and history leave room on their
#   pages: an update then stays on its page without new index entries (a HOT update,
#   less WAL). cleanup, which filters on status and age, is rare and scans.
# * history and markers reference runs ON DELETE CASCADE: deleting a run is one
#   statement, and a marker written concurrently with a delete either lands before it
#   (and is cascaded) or finds no run (and is fenced), never an orphan that a recreated
#   run would inherit.
_V1 = [
    """CREATE TABLE {s}.runs (
        job text COLLATE "C" NOT NULL,
        run text COLLATE "C" NOT NULL,
        epoch bigint NOT NULL,
        status text NOT NULL,
        owner jsonb,
        lease_expires timestamptz,
        heartbeat timestamptz NOT NULL,
        updated timestamptz NOT NULL,
        started timestamptz NOT NULL,
        saves bigint NOT NULL DEFAULT 0,
        record text NOT NULL,
        PRIMARY KEY (job, run)
    ) WITH (fillfactor = 70)""",
    """CREATE TABLE {s}.history (
        job text COLLATE "C" NOT NULL,
        run text COLLATE "C" NOT NULL,
        slot int NOT NULL,
        seq bigint NOT NULL,
        at timestamptz NOT NULL,
        epoch bigint NOT NULL,
        status text NOT NULL,
        done bigint NOT NULL,
        failed bigint NOT NULL,
        PRIMARY KEY (job, run, slot),
        FOREIGN KEY (job, run) REFERENCES {s}.runs (job, run) ON DELETE CASCADE
    ) WITH (fillfactor = 80)""",
    """CREATE TABLE {s}.markers (
        job text COLLATE "C" NOT NULL,
        run text COLLATE "C" NOT NULL,
        "cursor" text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        value text NOT NULL,
        PRIMARY KEY (job, run, "cursor", key),
        FOREIGN KEY (job, run) REFERENCES {s}.runs (job, run) ON DELETE CASCADE
    )""",
]

# Version 2: ``epoch_floor``, one row holding the highest epoch of any record deleted
# (by delete or cleanup, in the same statement). A record created again starts at
# GREATEST(clock seed, floor + 1), so even after the client's clock stepped back no epoch
# of the new record can equal one a stale runner of the deleted record still holds (see
# base.first_epoch). The row starts at 0: records deleted before the migration were
# seeded from the clock alone, as before. A store written by version 1 gets the table
# when a restartable that knows version 2 first opens it; nothing else changes.
_V2 = [
    "CREATE TABLE {s}.epoch_floor (id int PRIMARY KEY CHECK (id = 0), epoch bigint NOT NULL)",
    "INSERT INTO {s}.epoch_floor (id, epoch) VALUES (0, 0)",
]

# Version 3: ``runs.save_seq``, the sequence number of the run's last save at its epoch
# (0 after an acquire). A save writes only when its number is higher than the stored one:
# the epoch's compare-and-set does not order the saves of one runner, and a save whose
# bytes were delayed in the network past the read deadline (the client gave up and
# retried, and saved again since) would otherwise land later and move the checkpoint
# backwards. A retried save that finds its own number stored was applied already and
# is answered with the stored times. A constant default: no table rewrite.
_V3 = ["ALTER TABLE {s}.runs ADD COLUMN save_seq bigint NOT NULL DEFAULT 0"]


# Version 4: the work queue's tables (restartable.WorkQueue on a postgresql:// store).
# Until this version the queue created them itself with CREATE ... IF NOT EXISTS; the
# statements keep IF NOT EXISTS so that a schema where an older queue already made them
# upgrades cleanly (nothing is created twice, nothing is rewritten).
_V4 = [
    """CREATE TABLE IF NOT EXISTS {s}.queue_tasks (
        queue text NOT NULL,
        key text NOT NULL,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        payload jsonb,
        epoch bigint NOT NULL DEFAULT 0,
        owner text,
        lease_expires timestamptz,
        attempts integer NOT NULL DEFAULT 0,
        "offset" bigint NOT NULL DEFAULT 0,
        done_at timestamptz,
        PRIMARY KEY (queue, key))""",
    "CREATE INDEX IF NOT EXISTS queue_tasks_todo ON {s}.queue_tasks (queue, seq) WHERE done_at IS NULL",
    "CREATE TABLE IF NOT EXISTS {s}.queues (queue text PRIMARY KEY, filled_at timestamptz)",
]

# Version 5: ``checkpoints_json``, a view for people with psql: each run's key columns
# and its record cast to jsonb, so ``SELECT record->'state' FROM <schema>.checkpoints_json
# WHERE job = 'x'`` needs no cast. A view, not a column: nothing more is written per save,
# and the record keeps its exact text in ``runs.record`` (see the notes on version 1:
# jsonb would rewrite numbers). The times are the table's timestamptz columns, which psql
# prints as dates; the record's own ``started``/``updated``/``heartbeat``/``lease_expires``
# are Unix seconds (float) and the columns are the authority over them. The code never
# reads the view. OR REPLACE: a schema whose migration rows were removed by hand
# (as a test does to stand for an older release) migrates again without an error.
_V5 = [
    """CREATE OR REPLACE VIEW {s}.checkpoints_json AS
    SELECT job, run, status, epoch, owner, started, updated, heartbeat, lease_expires, saves,
        record::jsonb AS record
    FROM {s}.runs""",
]

#: Ordered ``(version, statements)``; append only.
MIGRATIONS: list[tuple[int, list[str]]] = [(1, _V1), (2, _V2), (3, _V3), (4, _V4), (5, _V5)]
LATEST = MIGRATIONS[-1][0]


def _q(text: str, schema: sql.Identifier) -> sql.Composed:
    from psycopg import sql

    return sql.SQL(text).format(s=schema)  # constant text from this module, never user data


def current_version(conn: psycopg.Connection, schema: str) -> int:
    """The highest applied migration, or 0 when the schema or its table is missing.

    Runs one statement on an autocommit connection; it never fails on a fresh database.
    """
    row = conn.execute(
        "SELECT CASE WHEN to_regclass(%s) IS NULL THEN NULL ELSE 1 END",
        [_regclass_name(schema)],
    ).fetchone()
    if row is None or row[0] is None:
        return 0
    from psycopg import sql

    got = conn.execute(
        _q("SELECT coalesce(max(version), 0) FROM {s}.schema_migrations", sql.Identifier(schema))
    ).fetchone()
    return int(got[0]) if got else 0


def _regclass_name(schema: str) -> str:
    # to_regclass parses a possibly-quoted name; quote the schema the way SQL does.
    return '"' + schema.replace('"', '""') + '".schema_migrations'


def migrate(conn: psycopg.Connection, schema: str) -> int:
    """Bring ``schema`` to :data:`LATEST`; return the version found before.

    ``conn`` must be in autocommit mode. The fast path (already up to date) is one
    statement and needs no CREATE privilege. Otherwise one transaction takes
    ``pg_advisory_xact_lock`` on a key derived from the schema name, creates the schema
    and ``schema_migrations`` if needed, re-reads the applied versions (another process
    may have migrated while we waited) and applies the missing migrations in order.
    Raises ConfigError when the schema was migrated by a newer restartable.
    """
    from psycopg import sql

    ident = sql.Identifier(schema)
    found = current_version(conn, schema)
    if found == LATEST:
        return found
    if found > LATEST:
        raise _too_new(schema, found)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"restartable.migrate:{schema}"])
        conn.execute(_q("CREATE SCHEMA IF NOT EXISTS {s}", ident))
        conn.execute(
            _q(
                "CREATE TABLE IF NOT EXISTS {s}.schema_migrations ("
                "version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
                ident,
            )
        )
        applied = {r[0] for r in conn.execute(_q("SELECT version FROM {s}.schema_migrations", ident))}
        if applied and max(applied) > LATEST:
            raise _too_new(schema, max(applied))
        for version, statements in MIGRATIONS:
            if version in applied:
                continue
            for stmt in statements:
                conn.execute(_q(stmt, ident))
            conn.execute(_q("INSERT INTO {s}.schema_migrations (version) VALUES (%s)", ident), [version])
    return found


def _too_new(schema: str, version: int) -> ConfigError:
    return ConfigError(
        f"PostgreSQL schema {schema!r} is at version {version}, newer than this restartable "
        f"understands ({LATEST}): upgrade restartable, or use another schema with ?schema=NAME"
    )


def check_schema(schema: str, display: str) -> str:
    # PostgreSQL truncates identifiers at 63 bytes: refuse rather than silently share.
    if _NAME.fullmatch(schema) is None or len(schema.encode()) > 63:
        raise ConfigError(
            f"invalid schema option {schema!r} in {display}: use 1-63 characters from letters, digits, "
            f"'.', '_' and '-', starting with a letter or digit ({GRAMMAR})"
        )
    return schema
