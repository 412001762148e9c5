"""The storage of :mod:`restartable.queue`: PostgreSQL (``FOR UPDATE SKIP LOCKED``) and Redis (Lua).

Each operation is one statement (PostgreSQL, autocommit) or one script (Redis), with the
fencing comparison inside it. Times are the server's. ``complete`` answers True when the
task is done by this claim's epoch, also when an earlier attempt of the same call
committed before the connection dropped: only this claim can complete with its epoch.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from . import _xact
from ._url import StoreURL
from .errors import MissingDriver, StoreUnavailable
from .queue import Counts, _Row
from .stores._retry import call_with_retry

T = TypeVar("T")

_LEASE = "statement_timestamp() + %(lease)s::float8 * interval '1 second'"
_LIVE = "lease_expires > statement_timestamp()"
_KEY = "queue = %(q)s AND key = %(key)s"
_MINE = f"{_KEY} AND epoch = %(epoch)s AND done_at IS NULL"

_SCHEMA = [
    "CREATE SCHEMA IF NOT EXISTS {s}",
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

_SQL = {
    "filled": "SELECT filled_at IS NOT NULL FROM {s}.queues WHERE queue = %(q)s",
    "mark_filled": "INSERT INTO {s}.queues (queue, filled_at) VALUES (%(q)s, statement_timestamp()) "
    "ON CONFLICT (queue) DO UPDATE SET filled_at = coalesce({s}.queues.filled_at, excluded.filled_at)",
    "fill": "INSERT INTO {s}.queue_tasks (queue, key, payload) "
    "SELECT %(q)s, k, p::jsonb FROM unnest(%(keys)s::text[], %(payloads)s::text[]) AS t(k, p) "
    "ON CONFLICT (queue, key) DO NOTHING",
    # The oldest claimable task, skipping rows another worker is claiming right now.
    "claim": f"""
        WITH next AS (
            SELECT key FROM {{s}}.queue_tasks
            WHERE queue = %(q)s AND done_at IS NULL AND (lease_expires IS NULL OR NOT {_LIVE})
            ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
        UPDATE {{s}}.queue_tasks t SET epoch = t.epoch + 1, owner = %(owner)s, attempts = t.attempts + 1,
            lease_expires = {_LEASE}
        FROM next WHERE t.queue = %(q)s AND t.key = next.key
        RETURNING t.key, t.payload, t.epoch, t.attempts, t."offset\"""",
    "renew": f"UPDATE {{s}}.queue_tasks SET lease_expires = {_LEASE} WHERE {_MINE} RETURNING 1",
    "complete": f"UPDATE {{s}}.queue_tasks SET done_at = statement_timestamp(), lease_expires = NULL "
    f"WHERE {_MINE} RETURNING 1",
    "release": f"UPDATE {{s}}.queue_tasks SET lease_expires = NULL, owner = NULL WHERE {_MINE} RETURNING 1",
    "checkpoint": f'UPDATE {{s}}.queue_tasks SET "offset" = %(offset)s, lease_expires = {_LEASE} '
    f"WHERE {_MINE} RETURNING 1",
    "holder": f"SELECT epoch, owner, done_at IS NOT NULL FROM {{s}}.queue_tasks WHERE {_KEY}",
    "counts": f"""
        SELECT count(*), count(*) FILTER (WHERE done_at IS NOT NULL),
            count(*) FILTER (WHERE done_at IS NULL AND {_LIVE}),
            extract(epoch FROM min(lease_expires) FILTER (WHERE done_at IS NULL AND {_LIVE})
                - statement_timestamp())::float8
        FROM {{s}}.queue_tasks WHERE queue = %(q)s""",
    "drop_tasks": "DELETE FROM {s}.queue_tasks WHERE queue = %(q)s",
    "drop_queue": "DELETE FROM {s}.queues WHERE queue = %(q)s",
}


class PostgresQueue:
    """The queue's tasks as rows of ``{schema}.queue_tasks``; one autocommit connection, locked."""

    options = frozenset({"schema", "retry", "history", "read_timeout"})

    def __init__(self, url: StoreURL, name: str, *, retry: float) -> None:
        try:
            import psycopg
            from psycopg import sql
        except ImportError:
            raise MissingDriver(f"a work queue on {url.display} needs psycopg: pip install "
                                "'restartable[postgres]'") from None
        from .stores.postgres import _check_schema

        from .stores._pgconn import parse_read_timeout

        self._pg = psycopg
        self.display = url.display
        self._url = url.driver_url
        # Ours, like the store's: taken out of the URL (libpq would refuse it) and checked now.
        self._read_timeout = parse_read_timeout(url.options.get("read_timeout"), url.display)
        self._name = name
        self._retry = retry
        schema = _check_schema(url.options.get("schema", "restartable"), url.display)
        ident = sql.Identifier(schema)
        self._sql = {k: sql.SQL(v).format(s=ident) for k, v in _SQL.items()}
        self._schema_sql = [sql.SQL(v).format(s=ident) for v in _SCHEMA]
        self._lock_key = f"restartable.queue:{schema}"
        self._lock = threading.Lock()
        self._conn: Any = None
        self._tx_conn: Any = None
        self._call("open", self._create)

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = _pg_connect(self._url, autocommit=True, display=self.display, read_timeout=self._read_timeout)
        return self._conn

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        def attempt() -> T:
            with self._lock:
                return fn(self._connect())

        def reconnect(exc: BaseException) -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None

        return call_with_retry(attempt, seconds=self._retry, transient=(self._pg.OperationalError,
                               self._pg.InterfaceError), display=self.display, what=f"queue {what}",
                               before_retry=reconnect)

    def _create(self, conn: Any) -> None:
        # Workers start together: serialize the CREATEs instead of racing on the catalog.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [self._lock_key])
            for stmt in self._schema_sql:
                conn.execute(stmt)

    def _one(self, what: str, params: dict[str, Any]) -> Any:
        params = {"q": self._name, **params}
        return self._call(what, lambda c: c.execute(self._sql[what], params).fetchone())

    def filled(self) -> bool:
        row = self._one("filled", {})
        return bool(row and row[0])

    def mark_filled(self) -> None:
        self._call("fill", lambda c: c.execute(self._sql["mark_filled"], {"q": self._name}))

    def fill(self, rows: list[tuple[str, str]]) -> int:
        params = {"q": self._name, "keys": [k for k, _ in rows], "payloads": [p for _, p in rows]}
        return int(self._call("fill", lambda c: c.execute(self._sql["fill"], params).rowcount))  # one statement

    def claim(self, owner: str, lease: float) -> _Row | None:
        row = self._one("claim", {"owner": owner, "lease": lease})
        return None if row is None else _Row(row[0], row[1], int(row[2]), int(row[3]), int(row[4]))

    def renew(self, key: str, epoch: int, lease: float) -> bool:
        return self._one("renew", {"key": key, "epoch": epoch, "lease": lease}) is not None

    def complete(self, key: str, epoch: int) -> bool:
        if self._one("complete", {"key": key, "epoch": epoch}) is not None:
            return True
        return self._done_by(key, epoch)

    def _done_by(self, key: str, epoch: int) -> bool:
        held = self.holder(key)
        return held[2] and held[0] == epoch

    def release(self, key: str, epoch: int) -> bool:
        return self._one("release", {"key": key, "epoch": epoch}) is not None

    def checkpoint(self, key: str, epoch: int, offset: int, lease: float) -> bool:
        return self._one("checkpoint", {"key": key, "epoch": epoch, "offset": offset, "lease": lease}) is not None

    def holder(self, key: str) -> tuple[int, str | None, bool]:
        row = self._one("holder", {"key": key})
        return (0, None, False) if row is None else (int(row[0]), row[1], bool(row[2]))

    def counts(self) -> Counts:
        total, done, leased, expiry = self._one("counts", {})
        return Counts(int(total), int(done), int(leased), None if expiry is None else float(expiry))

    def drop(self) -> None:
        self._call("drop", lambda c: (c.execute(self._sql["drop_tasks"], {"q": self._name}),
                                      c.execute(self._sql["drop_queue"], {"q": self._name})))

    @contextmanager
    def transaction(self, key: str, epoch: int) -> Iterator[tuple[Any, dict[str, bool]]]:
        """Yield ``(conn, result)``: the caller's writes, then the fenced completion, in one commit.

        ``result["ok"]`` is False (and everything rolled back) when the claim was fenced.
        """
        pg = self._pg
        if self._tx_conn is None or self._tx_conn.closed or self._tx_conn.broken:
            try:
                self._tx_conn = _pg_connect(self._url, autocommit=False, display=self.display,
                                            read_timeout=self._read_timeout)
            except pg.OperationalError as exc:
                raise StoreUnavailable(f"queue transaction: cannot connect to {self.display} ({exc})") from exc
        conn, result = self._tx_conn, {"ok": False, "in_doubt": False}
        try:
            yield conn, result
            ref = _xact.note(conn)  # before COMMIT: what lets a lost answer be asked about
            row = conn.execute(self._sql["complete"], {"q": self._name, "key": key, "epoch": epoch}).fetchone()
        except BaseException as exc:
            _rollback(conn)
            if isinstance(exc, pg.OperationalError):
                raise StoreUnavailable(f"queue transaction on {self.display} failed ({exc}); nothing of it was "
                                       "committed") from exc
            raise
        if row is None:  # fenced: the output must not commit either
            _rollback(conn)
            return
        try:
            conn.commit()
        except pg.Error as exc:
            if not (conn.broken or conn.closed):
                raise  # a definite failure (a deferred constraint): rolled back, the caller's
            # The answer was lost: the server may still be committing, so reading the task at once
            # cannot tell "not committed" from "not yet". Ask until the answer is final.
            what = f"queue transaction of task {key!r} (claim {epoch}) on {self.display}"
            outcome = self._resolve(ref, key, epoch, what)
            if outcome == _xact.ABORTED:
                raise StoreUnavailable(f"{what} lost its connection during COMMIT ({exc}); the server shows it did "
                                       "not commit (nor did the output)") from exc
            if outcome == _xact.UNKNOWN:
                result["in_doubt"] = True
                raise StoreUnavailable(f"{what} lost its connection during COMMIT ({exc}) and whether it committed "
                                       "could not be settled; the claim is left to expire (not released): the task "
                                       "is claimed again only if it did not commit") from exc
        result["ok"] = True

    def _resolve(self, ref: _xact.XactRef, key: str, epoch: int, what: str) -> str:
        """Committed, aborted or unknown, asked on new connections (the shared one may be blocked
        behind the orphan's row lock, in the heartbeat's renew)."""
        pg = self._pg

        def connect() -> Any:
            return _pg_connect(self._url, autocommit=True, display=self.display, read_timeout=self._read_timeout)

        def shows_commit(conn: Any) -> bool:
            # Only this claim can complete the task with its epoch: done by it proves the commit.
            row = conn.execute(self._sql["holder"], {"q": self._name, "key": key}).fetchone()
            return row is not None and bool(row[2]) and int(row[0]) == epoch

        return _xact.resolve(ref, connect=connect, shows_commit=shows_commit, budget=self._retry, what=what,
                             transient=(pg.OperationalError, pg.InterfaceError))

    def close(self) -> None:
        for conn in (self._conn, self._tx_conn):
            if conn is not None:
                conn.close()
        self._conn = self._tx_conn = None


def _pg_connect(url: str, *, autocommit: bool, display: str, read_timeout: float) -> Any:
    """A connection whose every read is bounded by ``read_timeout`` (?read_timeout=; see stores/_pgconn.py)."""
    from .stores import _pgconn  # imports psycopg: only for a PostgreSQL queue

    return _pgconn.connect(url, autocommit=autocommit, display=display, connect_timeout=5, read_timeout=read_timeout)


def _rollback(conn: Any) -> None:
    if conn.closed or conn.broken:
        return
    try:
        conn.rollback()
    except Exception:  # noqa: BLE001 - keep the error that got us here
        conn.close()


# -- Redis ------------------------------------------------------------------------------------

# KEYS: pending (zset seq), leased (zset expiry ms), seq, epoch, payload, owner, attempts, offset,
# done (hashes by task key), meta (hash: counter, filled).
_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
_MINE_LUA = """
local k, epoch = ARGV[1], tonumber(ARGV[2])
if redis.call('HEXISTS', KEYS[9], k) == 1 or tonumber(redis.call('HGET', KEYS[4], k) or '-1') ~= epoch then
  return 0
end
"""
_LUA = {
    "fill": """
local added = 0
for i = 1, #ARGV, 2 do
  local k = ARGV[i]
  if redis.call('HEXISTS', KEYS[3], k) == 0 then
    local s = redis.call('HINCRBY', KEYS[10], 'counter', 1)
    redis.call('HSET', KEYS[3], k, s)
    redis.call('HSET', KEYS[4], k, 0)
    redis.call('HSET', KEYS[5], k, ARGV[i + 1])
    redis.call('ZADD', KEYS[1], s, k)
    added = added + 1
  end
end
return added""",
    "claim": _NOW + """
-- leases that ran out go back to the pending set, in their fill order
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[2], k)
  redis.call('ZADD', KEYS[1], redis.call('HGET', KEYS[3], k), k)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0)
if #first == 0 then return {0} end
local k = first[1]
redis.call('ZREM', KEYS[1], k)
local epoch = redis.call('HINCRBY', KEYS[4], k, 1)
local attempts = redis.call('HINCRBY', KEYS[7], k, 1)
redis.call('HSET', KEYS[6], k, ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), k)
return {1, k, redis.call('HGET', KEYS[5], k), epoch, attempts, redis.call('HGET', KEYS[8], k) or '0'}""",
    # A task moved back to pending by a sweep but not claimed again is still this claim's.
    "renew": _NOW + _MINE_LUA + """
redis.call('ZREM', KEYS[1], k)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), k)
return 1""",
    "checkpoint": _NOW + _MINE_LUA + """
redis.call('HSET', KEYS[8], k, ARGV[4])
redis.call('ZREM', KEYS[1], k)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), k)
return 1""",
    "complete": _NOW + _MINE_LUA + """
redis.call('HSET', KEYS[9], k, now)
redis.call('ZREM', KEYS[1], k)
redis.call('ZREM', KEYS[2], k)
return 1""",
    "release": _MINE_LUA + """
redis.call('ZREM', KEYS[2], k)
redis.call('HDEL', KEYS[6], k)
redis.call('ZADD', KEYS[1], redis.call('HGET', KEYS[3], k), k)
return 1""",
    "counts": _NOW + """
local nxt = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {redis.call('HLEN', KEYS[3]), redis.call('HLEN', KEYS[9]), redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'),
        nxt[2] and (tonumber(nxt[2]) - now) or -1}""",
}
_PARTS = ("pending", "leased", "seq", "epoch", "payload", "owner", "attempts", "offset", "done", "meta")


class RedisQueue:
    """The queue as a few keys under one hash tag, every change one Lua script."""

    options = frozenset({"prefix", "retry", "ttl", "read_timeout"})

    def __init__(self, url: StoreURL, name: str, *, retry: float) -> None:
        try:
            import redis
        except ImportError:
            raise MissingDriver(f"a work queue on {url.display} needs redis-py: pip install "
                                "'restartable[redis]'") from None
        from .stores.redis import make_client, read_timeout_of

        self.display = url.display
        self._retry = retry
        # The Redis store's client: every reply within ?read_timeout= (default 60 s, 0: none),
        # and no retries of redis-py's own (its default retries a timeout again and again).
        self._client = make_client(url.driver_url, display=url.display, retry=retry, read_timeout=read_timeout_of(url),
                                   options="prefix, retry, ttl and read_timeout")
        self._transient = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        base = f"{url.options.get('prefix', 'restartable:')}queue:{{{name}}}:"
        self._keys = [base + part for part in _PARTS]
        self._scripts = {k: self._client.register_script(v) for k, v in _LUA.items()}

    def _run(self, script: str, *args: Any) -> Any:
        fn = self._scripts[script]
        return call_with_retry(lambda: fn(keys=self._keys, args=list(args)), seconds=self._retry,
                               transient=self._transient, display=self.display, what=f"queue {script}")

    def _plain(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retry(fn, seconds=self._retry, transient=self._transient, display=self.display,
                               what=f"queue {what}")

    def filled(self) -> bool:
        return self._plain("filled", lambda: self._client.hexists(self._keys[9], "filled"))

    def mark_filled(self) -> None:
        self._plain("fill", lambda: self._client.hsetnx(self._keys[9], "filled", "1"))

    def fill(self, rows: list[tuple[str, str]]) -> int:
        added = 0
        for i in range(0, len(rows), 1000):  # each chunk atomic; a re-fill completes a half-done one
            added += int(self._run("fill", *[x for row in rows[i:i + 1000] for x in row]))
        return added

    def claim(self, owner: str, lease: float) -> _Row | None:
        out = self._run("claim", owner, max(1, round(lease * 1000)))
        if int(out[0]) == 0:
            return None
        _, key, payload, epoch, attempts, offset = out
        return _Row(key.decode(), json.loads(payload), int(epoch), int(attempts), int(offset))

    def renew(self, key: str, epoch: int, lease: float) -> bool:
        return int(self._run("renew", key, epoch, max(1, round(lease * 1000)))) == 1

    def checkpoint(self, key: str, epoch: int, offset: int, lease: float) -> bool:
        return int(self._run("checkpoint", key, epoch, max(1, round(lease * 1000)), offset)) == 1

    def complete(self, key: str, epoch: int) -> bool:
        if int(self._run("complete", key, epoch)) == 1:
            return True
        held = self.holder(key)
        return held[2] and held[0] == epoch

    def release(self, key: str, epoch: int) -> bool:
        return int(self._run("release", key, epoch)) == 1

    def holder(self, key: str) -> tuple[int, str | None, bool]:
        def read() -> tuple[int, str | None, bool]:
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(self._keys[3], key)
            pipe.hget(self._keys[5], key)
            pipe.hexists(self._keys[8], key)
            epoch, owner, done = pipe.execute()
            return int(epoch or 0), owner.decode() if owner else None, bool(done)

        return self._plain("holder", read)

    def counts(self) -> Counts:
        total, done, leased, nxt = self._run("counts")
        return Counts(int(total), int(done), int(leased), None if int(nxt) < 0 else int(nxt) / 1000)

    def drop(self) -> None:
        self._plain("drop", lambda: self._client.delete(*self._keys))

    @contextmanager
    def transaction(self, key: str, epoch: int) -> Iterator[tuple[Any, dict[str, bool]]]:
        from .errors import UsageError

        raise UsageError(f"claim.transaction() needs a PostgreSQL queue: {self.display} cannot commit your output "
                         "with the completion; write idempotent output (keyed by claim.key) and use `with claim:`")
        yield  # pragma: no cover - a generator for contextmanager

    def close(self) -> None:
        self._client.close()
