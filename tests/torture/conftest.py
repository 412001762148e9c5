"""Fixtures of the torture suite: private servers to restart, a tmpfs to fill, and the report.

The suite's table (store x mode x fault) is printed at the end of the session and
written to ``$RESTARTABLE_TORTURE_REPORT`` when that is set.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from campaigns import LONG, SEED
from faults import Tmpfs, unavailable
from report import Report

_REPORT = Report("long" if LONG else "quick", SEED)


@pytest.fixture(scope="session")
def torture_report() -> Report:
    return _REPORT


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORT.rows:
        terminalreporter.write_sep("=", "torture: store x mode x fault")
        terminalreporter.write_line(_REPORT.table())
        _REPORT.write()


@pytest.fixture(scope="session")
def torture_tmpfs() -> Iterator[Path]:
    """A 16 MB tmpfs for the disk-full faults, shared by the cells."""
    with Tmpfs("16m") as fs:
        yield fs.path


@pytest.fixture(scope="session")
def torture_private_pg() -> Iterator[Any]:
    """A private PostgreSQL server, restarted by the restart cells (never the shared one)."""
    from pgserver import new_server

    server = new_server()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def torture_private_redis() -> Iterator[Any]:
    """A private redis-server without persistence, restarted by the restart cells."""
    try:
        import redis  # noqa: F401
    except ImportError:
        unavailable("redis-py is not installed (pip install 'restartable[redis]')")
    if shutil.which("redis-server") is None:
        unavailable("the redis-server binary is not installed")
    from redisserver import RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="rt-torture-redis-"))
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def torture_private_redis_aof() -> Iterator[Any]:
    """A private redis-server WITH persistence (appendonly, fsync always), restarted by restart-keep."""
    try:
        import redis  # noqa: F401
    except ImportError:
        unavailable("redis-py is not installed (pip install 'restartable[redis]')")
    if shutil.which("redis-server") is None:
        unavailable("the redis-server binary is not installed")
    from redisserver import RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="rt-torture-redis-aof-"))
    try:
        server = RedisServer(workdir, appendonly=True)
    except TypeError:
        pytest.fail("tests/redisserver.py has no RedisServer(..., appendonly=True): needed for restart-keep")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
