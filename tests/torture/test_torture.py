"""The torture suite: every store x way of processing x fault, with the invariants of campaigns.py.

Quick mode (the default, part of every ``pytest`` run) injects a few faults per cell;
``RESTARTABLE_TORTURE=long`` injects thousands in all (run by hand, see
docs/torture.md). ``RESTARTABLE_TORTURE_SEED`` changes the random moments;
``RESTARTABLE_TORTURE_REPORT=path`` writes the table to a file. Each cell fails when
any invariant was violated; the table at the end of the session lists them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from campaigns import SEED, Cell, CellEnv, run_cell
from faults import FAULTS, LOCAL_ONLY, NET, SERVER_ONLY
from queue_cells import QUEUE_FAULTS
from report import Report, Row
from workloads import MODES, write_script

from procs import Spawner

STORES = ("sqlite", "file", "postgresql", "redis")


def _supported(store: str, mode: str, fault: str) -> bool:
    if mode == "batches" and store not in ("sqlite", "postgresql"):
        return False  # a transactional sink needs the store's own database
    if fault in LOCAL_ONLY and store not in ("sqlite", "file"):
        return False
    if fault in SERVER_ONLY and store not in ("postgresql", "redis"):
        return False
    return True


#: Cells that fail because of a bug in src/. Not strict: whether a random restart lands while
#: files are being marked is timing; the deterministic twin in test_found.py is strict.
KNOWN_BUGS: dict[Cell, str] = {}  # none open: the bugs found so far are fixed (test_found.py keeps their twins)


def _param(cell: Cell) -> Any:
    bug = KNOWN_BUGS.get(cell)
    return pytest.param(cell, marks=pytest.mark.xfail(strict=False, reason=bug)) if bug else cell


CELLS = [_param(Cell(s, m, f)) for s in STORES for m in MODES for f in FAULTS if _supported(s, m, f)]
#: The work queue (queue_cells.py): several workers drain one WorkQueue on PostgreSQL or Redis.
CELLS += [_param(Cell(s, "queue", f)) for s in ("postgresql", "redis") for f in QUEUE_FAULTS]


def _cleanup(env: CellEnv) -> None:
    for kind, url, name in env.cleanups:
        try:
            if kind == "pg":
                import psycopg
                from psycopg import sql

                with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
            else:
                import redis

                client = redis.Redis.from_url(url, socket_timeout=5)
                keys = list(client.scan_iter(match=f"{name}*", count=1000))
                if keys:
                    client.delete(*keys)
                client.close()
        except Exception:  # noqa: BLE001 - best effort: a private server is thrown away anyway
            pass


@pytest.fixture
def cell_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CellEnv]:
    cell: Cell = request.node.callspec.params["cell"]
    with Spawner(write_script(tmp_path)) as spawner:
        env = CellEnv(root=tmp_path, spawner=spawner, script=spawner.script)
        if cell.store == "postgresql":
            if cell.fault in ("restart", "restart-keep"):  # PostgreSQL always keeps its data
                env.server = request.getfixturevalue("torture_private_pg")
                env.pg_url = env.server.url()
            else:
                env.pg_url = request.getfixturevalue("postgres_server")
        if cell.store == "redis":
            if cell.fault in ("restart", "restart-keep"):
                # The queue needs a Redis that keeps its data (test_found.py shows why): its "restart"
                # is a crash (SIGKILL) of a server with appendonly, its "restart-keep" a clean restart.
                plain = cell.fault == "restart" and cell.mode != "queue"
                fixture = "torture_private_redis" if plain else "torture_private_redis_aof"
                env.server = request.getfixturevalue(fixture)
                env.redis_url = env.server.url
            else:
                env.redis_url = request.getfixturevalue("redis_server")
        if cell.fault in NET:
            from urllib.parse import urlsplit

            from faultproxy import FaultProxy

            server = urlsplit(env.pg_url or env.redis_url)
            env.proxy = FaultProxy(
                (server.hostname or "127.0.0.1", int(server.port or 0)),
                seed=f"{SEED}-{cell.store}-{cell.mode}-{cell.fault}",
            ).start()
        if cell.fault == "enospc":
            env.tmpfs = request.getfixturevalue("torture_tmpfs")
        try:
            yield env
        finally:
            if env.proxy is not None:
                env.proxy.close()
            _cleanup(env)
            if env.tmpfs is not None:
                for child in env.tmpfs.iterdir():
                    import shutil

                    shutil.rmtree(child, ignore_errors=True)


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: f"{c.store}-{c.mode}-{c.fault}")
def test_torture(cell: Cell, cell_env: CellEnv, torture_report: Report) -> None:
    row = Row(cell.store, cell.mode, cell.fault)
    try:
        run_cell(cell, cell_env, row)
    finally:
        torture_report.add(row)
        torture_report.write()  # after every cell: a long run's table is readable while it runs
    detail: Any = "\n".join(row.violations[:5])
    assert not row.violations, f"{len(row.violations)} violation(s):\n{detail}"
