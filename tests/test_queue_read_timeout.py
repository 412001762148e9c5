"""The work queue's connections carry the stores' reply deadline (``?read_timeout=``).

Redis: the queue used to build its own client (a fixed 30 s socket timeout, redis-py's
default retries, which retry every timeout again) and passed ``?read_timeout=`` on to
redis-py, which failed with a TypeError. Now it shares the Redis store's client setup:
``read_timeout`` is ours (default 60 s, ``0`` none), redis-py retries nothing itself, and
a frozen server costs one deadline per attempt within the ``retry`` budget.
PostgreSQL: ``read_timeout`` is one of the queue's own options, checked when it opens.
"""

from __future__ import annotations

import threading
import time

import pytest

import redisserver
from restartable.errors import ConfigError, StoreUnavailable
from restartable.queue import WorkQueue

private_redis = redisserver.private_redis  # fixtures: a private server of the test's own
redis_server_factory = redisserver.redis_server_factory


def _kwargs(q: WorkQueue) -> dict:
    return q._backend._client.connection_pool.connection_kwargs


@pytest.mark.parametrize(
    ("query", "expected"),
    [("", 60.0), ("&read_timeout=2.5", 2.5), ("&read_timeout=500ms", 0.5), ("&read_timeout=0", None)],
)
def test_a_redis_queue_takes_read_timeout_as_its_own(redis_url: str, query: str, expected: float | None) -> None:
    with WorkQueue("rt-q", store=redis_url + query, handle_signals=False) as q:
        kwargs = _kwargs(q)
        assert kwargs["socket_timeout"] == expected
        assert "read_timeout" not in kwargs
        assert kwargs["retry"]._retries == 0  # call_with_retry owns the budget, not redis-py
        q.fill(["a", "b"])
        assert q.counts().total == 2
        q.drop()


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("&read_timeout=soon", "read_timeout"),
        ("&read_timeout=5&socket_timeout=7", "keep only"),
    ],
)
def test_a_redis_queue_refuses_a_bad_read_timeout(redis_url: str, query: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        WorkQueue("rt-q", store=redis_url + query, handle_signals=False)


def test_a_redis_queue_refuses_a_path_that_is_not_a_database(redis_server: str) -> None:
    base = redis_server.rsplit("/", 1)[0]
    with pytest.raises(ConfigError, match="database number"):
        WorkQueue("rt-q", store=f"{base}/notadb", handle_signals=False)


def test_a_redis_queue_on_a_frozen_server_fails_within_the_budget(private_redis: redisserver.RedisServer) -> None:
    with WorkQueue("rt-q", store=f"{private_redis.url}?read_timeout=1&retry=2", handle_signals=False) as q:
        q.fill(["a"])
        private_redis.freeze()
        out: dict[str, object] = {}

        def counts() -> None:
            t0 = time.monotonic()
            try:
                q.counts()
            except BaseException as exc:  # noqa: BLE001 - reported below
                out["error"] = exc
            out["elapsed"] = time.monotonic() - t0

        try:
            thread = threading.Thread(target=counts, daemon=True)
            thread.start()
            thread.join(30)
            assert not thread.is_alive(), "the queue hung on a frozen server"
        finally:
            private_redis.thaw()
        assert isinstance(out.get("error"), StoreUnavailable), out
        # The first attempt's deadline, the budget, the attempt in flight: ~4 s unloaded.
        assert out["elapsed"] < 10, out
        assert q.counts().total == 1  # the same queue works once the server answers again


def test_a_postgres_queue_takes_read_timeout_as_its_own(postgres_url: str) -> None:
    with WorkQueue("rt-q", store=postgres_url + "&read_timeout=7", handle_signals=False) as q:
        assert q._backend._read_timeout == 7.0 and q._backend._conn.read_timeout == 7.0
        q.drop()
    with pytest.raises(ConfigError, match="read_timeout"):
        WorkQueue("rt-q", store=postgres_url + "&read_timeout=soon", handle_signals=False)
