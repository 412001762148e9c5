"""The Redis storage of the work queue (:class:`restartable.WorkQueue`): a few keys, every change one Lua script.

Each script does its fencing comparison inside it; times are the server's (``TIME``).
A Redis queue cannot commit the caller's output with a completion
(``claim.transaction()`` is refused): its output must be idempotent, keyed by the claim.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .._queue_types import Counts, Row
from .._retry import call_with_retry
from .._url import StoreURL
from ..errors import MissingDriver, UsageError
from ..stores.base import epoch_step

T = TypeVar("T")

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
    "claim": _NOW
    + """
-- leases that ran out go back to the pending set, in their fill order
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[2], k)
  redis.call('ZADD', KEYS[1], redis.call('HGET', KEYS[3], k), k)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0)
if #first == 0 then return {0} end
local k = first[1]
redis.call('ZREM', KEYS[1], k)
local epoch = redis.call('HINCRBY', KEYS[4], k, tonumber(ARGV[3]))
local attempts = redis.call('HINCRBY', KEYS[7], k, 1)
redis.call('HSET', KEYS[6], k, ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), k)
return {1, k, redis.call('HGET', KEYS[5], k), epoch, attempts, redis.call('HGET', KEYS[8], k) or '0'}""",
    # A task moved back to pending by a sweep but not claimed again is still this claim's.
    "renew": _NOW
    + _MINE_LUA
    + """
redis.call('ZREM', KEYS[1], k)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), k)
return 1""",
    "checkpoint": _NOW
    + _MINE_LUA
    + """
redis.call('HSET', KEYS[8], k, ARGV[4])
redis.call('ZREM', KEYS[1], k)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), k)
return 1""",
    "complete": _NOW
    + _MINE_LUA
    + """
redis.call('HSET', KEYS[9], k, now)
redis.call('ZREM', KEYS[1], k)
redis.call('ZREM', KEYS[2], k)
return 1""",
    "release": _MINE_LUA
    + """
redis.call('ZREM', KEYS[2], k)
redis.call('HDEL', KEYS[6], k)
redis.call('ZADD', KEYS[1], redis.call('HGET', KEYS[3], k), k)
return 1""",
    "counts": _NOW
    + """
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
            raise MissingDriver(
                f"a work queue on {url.display} needs redis-py: pip install 'restartable[redis]'"
            ) from None
        from .store import make_client, read_timeout_of

        self.display = url.display
        self._retry = retry
        # The Redis store's client: every reply within ?read_timeout= (default 60 s, 0: none),
        # and no retries of redis-py's own (its default retries a timeout again and again).
        self._client = make_client(
            url.driver_url,
            display=url.display,
            retry=retry,
            read_timeout=read_timeout_of(url),
            options="prefix, retry, ttl and read_timeout",
        )
        self._transient = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        base = f"{url.options.get('prefix', 'restartable:')}queue:{{{name}}}:"
        self._keys = [base + part for part in _PARTS]
        self._scripts = {k: self._client.register_script(v) for k, v in _LUA.items()}

    def _run(self, script: str, *args: Any) -> Any:
        fn = self._scripts[script]
        return call_with_retry(
            lambda: fn(keys=self._keys, args=list(args)),
            seconds=self._retry,
            transient=self._transient,
            display=self.display,
            what=f"queue {script}",
        )

    def _plain(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retry(
            fn, seconds=self._retry, transient=self._transient, display=self.display, what=f"queue {what}"
        )

    def filled(self) -> bool:
        return self._plain("filled", lambda: self._client.hexists(self._keys[9], "filled"))

    def mark_filled(self) -> None:
        self._plain("fill", lambda: self._client.hsetnx(self._keys[9], "filled", "1"))

    def fill(self, rows: list[tuple[str, str]]) -> int:
        added = 0
        for i in range(0, len(rows), 1000):  # each chunk atomic; a re-fill completes a half-done one
            added += int(self._run("fill", *[x for row in rows[i : i + 1000] for x in row]))
        return added

    def claim(self, owner: str, lease: float) -> Row | None:
        # A claim's epoch step is random (base.next_epoch): never the epoch a lost write gave.
        out = self._run("claim", owner, max(1, round(lease * 1000)), epoch_step())
        if int(out[0]) == 0:
            return None
        _, key, payload, epoch, attempts, offset = out
        return Row(key.decode(), json.loads(payload), int(epoch), int(attempts), int(offset))

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
        raise UsageError(
            f"claim.transaction() needs a PostgreSQL queue: {self.display} cannot commit your output "
            "with the completion; write idempotent output (keyed by claim.key) and use `with claim:`"
        )
        yield  # pragma: no cover - a generator for contextmanager

    def close(self) -> None:
        self._client.close()
