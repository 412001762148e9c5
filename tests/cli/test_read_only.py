"""``status`` and ``show`` only look: they never create or write a store, and a down server is quick to report.

Each command runs as a real process (its stderr is what a person sees, logging
included): a store that does not exist is one line and exit 78 with nothing created;
an existing one is left byte for byte as it was; a stopped, closed or frozen server is
one line and exit 75 after about ``--retry`` seconds (5 by default), not the job's minute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fstree import tree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pgserver
import redisserver
from pgserver import PgServer
from redisserver import RedisServer
from restartable._checkpoint import COMPLETED, Owner
from restartable.stores import open_store

private_redis = redisserver.private_redis
redis_server_factory = redisserver.redis_server_factory
private_postgres = pgserver.private_postgres

ME = Owner(host="host-a", pid=111)


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[int, str, list[str], float]:
    """Run ``restartable ARGS``: (exit code, stdout, the non-empty stderr lines, seconds it took)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESTARTABLE_")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "restartable.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**clean, **(env or {})},
    )
    took = time.monotonic() - started
    return done.returncode, done.stdout, [line for line in done.stderr.splitlines() if line.strip()], took


def populate(url: str) -> None:
    with open_store(url) as store:
        rec = store.acquire("export", "2026-12-01", owner=ME, lease_seconds=30)
        rec = store.save(rec.replace(positions={"": {"offset": 7, "total": 10}}, done=7), lease_seconds=30)
        store.save(rec.replace(status=COMPLETED, done=10), lease_seconds=None)


READS = [("status",), ("status", "--json"), ("show", "export"), ("show", "export", "--json")]


def assert_not_found(code: int, out: str, err: list[str], *names: str) -> None:
    assert code == 78, (out, err)
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "a job's first run creates it" in err[0] or "a job's first run creates them" in err[0], err
    for name in names:
        assert name in err[0], err


# -- a store that does not exist ---------------------------------------------------------------


def test_in_an_empty_directory_status_and_show_create_nothing(tmp_path: Path) -> None:
    for args in READS:
        code, out, err, _ = cli(*args, cwd=tmp_path)
        assert_not_found(code, out, err, ".restartable/checkpoints.db")
    assert list(tmp_path.iterdir()) == []


def test_a_typo_in_the_store_url_creates_nothing(tmp_path: Path) -> None:
    code, out, err, _ = cli("show", "my-job", cwd=tmp_path, env={"RESTARTABLE_STORE": "sqlite:///typo.db"})
    assert_not_found(code, out, err, "typo.db")
    for url, name in (
        (f"sqlite:///{tmp_path}/typo/x.db", f"{tmp_path}/typo/x.db"),
        (f"file://{tmp_path}/typo/ckpt", f"{tmp_path}/typo/ckpt"),
    ):
        for args in READS:
            code, out, err, _ = cli(*args, "--store", url, cwd=tmp_path)
            assert_not_found(code, out, err, name)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_postgres_schema_is_not_created(postgres_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    schema = postgres_url.rsplit("schema=", 1)[1]
    for args in READS:
        code, out, err, _ = cli(*args, "--store", postgres_url)
        assert_not_found(code, out, err, repr(schema))
    with psycopg.connect(postgres_url.split("?")[0]) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema]).fetchone() == (0,)


def test_an_empty_redis_is_no_runs_and_stays_empty(private_redis: RedisServer) -> None:
    import redis

    code, out, err, _ = cli("status", "--store", private_redis.url)
    assert code == 0 and "no runs in" in out and not err, (out, err)
    code, out, err, _ = cli("show", "export", "--store", private_redis.url)
    assert code == 2 and len(err) == 1 and "no runs of job 'export'" in err[0], (out, err)
    assert redis.Redis.from_url(private_redis.url).dbsize() == 0


# -- an existing store -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_reading_a_local_store_writes_nothing(kind: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ckpt.db" if kind == "sqlite" else f"file://{tmp_path}/ckpt"
    populate(url)
    before = tree(tmp_path)
    for args in READS:
        code, out, err, _ = cli(*args, "--store", url)
        assert code == 0 and "export" in out and not err, (args, out, err)
    assert tree(tmp_path) == before  # no -wal, -shm or lock made; no size or mtime changed


def test_reading_a_sqlite_store_a_job_holds_open_writes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ckpt.db"
    populate(url)
    with open_store(url) as writer:
        rec = writer.acquire("export", "2026-12-02", owner=ME, lease_seconds=30)
        writer.save(rec.replace(done=3), lease_seconds=30)
        before = tree(tmp_path)
        assert {"ckpt.db-wal", "ckpt.db-shm", "ckpt.db.lock"} <= set(before)
        for args in READS:
            code, out, err, _ = cli(*args, "--store", url, *(["--run", "2026-12-02"] if args[0] == "show" else []))
            assert code == 0 and "2026-12-02" in out and not err, (args, out, err)
        assert tree(tmp_path) == before


# -- a server that is down -------------------------------------------------------------------------


def assert_down(code: int, out: str, err: list[str], took: float, limit: float) -> None:
    assert code == 75, (out, err)
    assert len(err) == 1 and "Traceback" not in err[0], err  # no retry lines before the error
    assert "unreachable" in err[0] and "--retry" in err[0], err
    assert took < limit, f"took {took:.1f}s"


def test_a_stopped_redis_is_reported_in_seconds_in_one_line(private_redis: RedisServer) -> None:
    url = private_redis.url
    private_redis.stop()
    code, out, err, took = cli("status", "--store", url)
    assert_down(code, out, err, took, 8.0)
    assert took > 4.0  # it did ride out a restart for its 5 s
    code, out, err, took = cli("show", "export", "--store", url, "--retry", "1")
    assert_down(code, out, err, took, 3.0)


def test_a_closed_postgres_port_is_reported_in_seconds_in_one_line(private_postgres: PgServer) -> None:
    url = private_postgres.url()
    private_postgres.stop()
    code, out, err, took = cli("status", "--store", url)
    assert_down(code, out, err, took, 8.0)
    # The URL's own, longer budget (a job's) does not make the command wait longer.
    code, out, err, took = cli("status", "--store", url + "?retry=120s", "--retry", "1")
    assert_down(code, out, err, took, 3.0)


def test_a_frozen_redis_is_reported_in_bounded_time(private_redis: RedisServer) -> None:
    populate(private_redis.url)
    private_redis.freeze()  # accepts connections (the kernel does), answers nothing
    try:
        code, out, err, took = cli("status", "--store", private_redis.url, "--retry", "2")
        assert_down(code, out, err, took, 6.0)
    finally:
        private_redis.thaw()


def test_a_frozen_postgres_is_reported_in_bounded_time(private_postgres: PgServer) -> None:
    url = private_postgres.url()
    populate(url)
    pid = int((private_postgres.datadir / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)  # the postmaster: new connections are accepted by the kernel, never served
    try:
        code, out, err, took = cli("status", "--store", url, "--retry", "2")
        assert_down(code, out, err, took, 8.0)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_retry_is_documented_in_the_help() -> None:
    for command in ("status", "show"):
        code, out, _, _ = cli(command, "--help")
        assert code == 0 and "--retry SECONDS" in out and "job keeps its own" in " ".join(out.split())
