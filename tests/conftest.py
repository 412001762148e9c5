"""Fixtures shared by every test: real servers, fresh stores.

PostgreSQL and Redis tests use the servers this machine runs on loopback. Outside
CI a test whose server cannot be had is skipped with the reason; with ``CI=true``
it fails instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from ci_env import unavailable

PG_URL = os.environ.get("RESTARTABLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RESTARTABLE_TEST_REDIS", "redis://127.0.0.1:6379/0")

#: Environment variables that change what the library does: cleared for every test, so a
#: developer's shell (or a CI runner inside Kubernetes) cannot change what a test asserts.
ISOLATED_PREFIXES = ("RESTARTABLE_",)
ISOLATED_NAMES = ("KUBERNETES_SERVICE_HOST", "JOB_COMPLETION_INDEX")
#: The test harness's own knobs (server URLs, torture length and seed): the library never reads them.
HARNESS_PREFIXES = ("RESTARTABLE_TEST_", "RESTARTABLE_TORTURE")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without ``RESTARTABLE_*``, ``KUBERNETES_SERVICE_HOST`` or ``JOB_COMPLETION_INDEX``.

    The harness's own knobs (``RESTARTABLE_TEST_*``, ``RESTARTABLE_TORTURE*``) stay; a test
    that wants a library variable sets it with ``monkeypatch.setenv``.
    """
    for name in list(os.environ):
        if name.startswith(HARNESS_PREFIXES):
            continue
        if name.startswith(ISOLATED_PREFIXES) or name in ISOLATED_NAMES:
            monkeypatch.delenv(name, raising=False)


def _reset_library_logger() -> None:
    logger = logging.getLogger("restartable")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """Every test starts with the ``restartable`` logger as the import leaves it.

    A Job made where the root logger has no handler (outside a test's phases: at
    collection, or on a thread that outlived its test) installs its own stderr handler and
    stops propagation, after which ``caplog`` would see nothing for the rest of the session.
    """
    _reset_library_logger()
    yield
    _reset_library_logger()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The shared PostgreSQL's URL, or skip/fail when it cannot be reached."""
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed (pip install 'restartable[postgres]')")
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means no server
        unavailable(f"PostgreSQL at {PG_URL} is not reachable: {exc}")
    return PG_URL


@pytest.fixture
def postgres_url(postgres_server: str):
    """A store URL on the shared server with a schema of its own, dropped afterwards."""
    import psycopg
    from psycopg import sql

    schema = f"rt_test_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_server}?schema={schema}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The shared Redis's URL, or skip/fail when it cannot be reached."""
    try:
        import redis
    except ImportError:
        unavailable("redis-py is not installed (pip install 'restartable[redis]')")
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        unavailable(f"Redis at {REDIS_URL} is not reachable: {exc}")
    return REDIS_URL


@pytest.fixture
def redis_url(redis_server: str):
    """A store URL on the shared Redis with a key prefix of its own, deleted afterwards."""
    import redis

    prefix = f"rt_test_{uuid.uuid4().hex[:12]}:"
    yield f"{redis_server}?prefix={prefix}"
    client = redis.Redis.from_url(redis_server)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
