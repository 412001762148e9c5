"""Records the usual tools can read: sqlite3, psql and redis-cli, with the units in the names.

Every store keeps its times in Unix seconds (PostgreSQL: ``timestamptz``), and a name says
so where the type does not: SQLite's ``checkpoints_json`` view (``updated_at_s``), Redis's
hash fields (``updated_at_s``, history ``at_s``). PostgreSQL's ``checkpoints_json`` view
casts the record to jsonb so ``record->'state'`` needs no cast, without writing anything
more per save. The queries of docs/stores/*.md are run here as written, through the real
command-line tools when they are installed.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ci_env import IN_CI, unavailable
from restartable import Owner, open_store

ME = Owner(host="h", pid=1, token="me")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "stores"
SQLITE_QUERY = "SELECT job, run, status, updated_utc, json_extract(record, '$.state') FROM checkpoints_json"
PSQL_QUERY = "SELECT record->'state' FROM restartable.checkpoints_json WHERE job = 'nightly-export'"
REDIS_KEY = "'restartable:run:nightly-export:2026-11-27'"


def test_the_docs_show_the_queries_run_here():
    assert SQLITE_QUERY in (DOCS / "sqlite.md").read_text()
    assert PSQL_QUERY in (DOCS / "postgresql.md").read_text()
    redis_doc = (DOCS / "redis.md").read_text()
    assert f"redis-cli HGETALL {REDIS_KEY}" in redis_doc
    assert f"redis-cli --raw HGET {REDIS_KEY} body | jq .state" in redis_doc


STATE = {"rows": 1234, "last": "a'b", "when": "2026-11-27"}


def _write(url: str) -> float:
    """A running run with a lease, a state, a marker and two saves; returns the store's clock then."""
    with open_store(url) as store:
        rec = store.acquire("nightly-export", "2026-11-27", owner=ME, lease_seconds=300)
        rec = store.save(rec.replace(done=5, state={"rows": 5}), lease_seconds=300)
        rec = store.save(rec.replace(done=1234, state=STATE), lease_seconds=300)
        store.mark("nightly-export", "2026-11-27", "files", "a.csv", {"rows": 3}, epoch=rec.epoch)
        return store.now()


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # psql and redis-cli come with the servers CI runs; sqlite3 is a package of its own.
        if IN_CI and name != "sqlite3":
            unavailable(f"{name} is not on PATH")
        pytest.skip(f"{name} is not on PATH (the query is still checked through the driver)")
    return path


def _is_seconds(value: float, near: float) -> bool:
    # Unix seconds now are ~1.8e9; milliseconds would be ~1.8e12.
    return abs(value - near) < 3600


# -- SQLite ------------------------------------------------------------------------


def test_sqlite_view_names_the_units_and_reads_the_state(tmp_path):
    db = tmp_path / "ckpt.db"
    now = _write(f"sqlite:///{db}")
    conn = sqlite3.connect(db)
    row = conn.execute(
        "SELECT job, run, status, updated_at_s, heartbeat_at_s, lease_until_s, updated_utc, "
        "json_extract(record, '$.state') FROM checkpoints_json"
    ).fetchone()
    job, run, status, updated, heartbeat, lease, updated_utc, state = row
    assert (job, run, status) == ("nightly-export", "2026-11-27", "running")
    assert _is_seconds(updated, now) and _is_seconds(heartbeat, now) and 250 < lease - updated <= 300
    assert updated_utc == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(updated)))
    assert json.loads(state) == STATE
    assert json.loads(conn.execute("SELECT record FROM checkpoints_json").fetchone()[0])["version"] == 2


def test_sqlite_docs_query_runs_in_the_sqlite3_tool(tmp_path):
    db = tmp_path / "ckpt.db"
    _write(f"sqlite:///{db}")
    out = subprocess.run(
        [
            _tool("sqlite3"),
            "-readonly",
            str(db),
            SQLITE_QUERY,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    job, run, status, _, state = out.strip().split("|", 4)
    assert (job, run, status) == ("nightly-export", "2026-11-27", "running")
    assert json.loads(state) == STATE


# -- PostgreSQL --------------------------------------------------------------------


def _pg(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    schema = dict(p.split("=", 1) for p in parts.query.split("&"))["schema"]
    return parts._replace(query="").geturl(), schema


def test_postgres_view_casts_the_record_to_jsonb_without_a_column_per_save(postgres_url):
    import psycopg
    from psycopg import sql

    _write(postgres_url)
    base, schema = _pg(postgres_url)
    with psycopg.connect(base) as conn:
        view = sql.Identifier(schema, "checkpoints_json")
        state, version, positions_type, updated = conn.execute(
            sql.SQL(
                "SELECT record->'state', record->>'version', jsonb_typeof(record->'positions'), updated "
                "FROM {} WHERE job = %s"
            ).format(view),
            ["nightly-export"],
        ).fetchone()
        assert state == STATE and version == "2" and positions_type == "object"
        assert abs(updated.timestamp() - time.time()) < 3600  # a timestamptz: psql prints it as a date
        # A view: nothing is written per save beyond the table's own columns.
        kind = conn.execute(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = 'checkpoints_json'",
            [schema],
        ).fetchone()
        assert kind == ("v",)
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = 'runs'",
                [schema],
            )
        }
        assert columns == {
            "job",
            "run",
            "epoch",
            "status",
            "owner",
            "lease_expires",
            "heartbeat",
            "updated",
            "started",
            "saves",
            "save_seq",
            "record",
        }


def test_postgres_docs_query_runs_in_psql(postgres_url):
    _write(postgres_url)
    base, schema = _pg(postgres_url)
    query = PSQL_QUERY.replace("restartable.", f'"{schema}".')
    out = subprocess.run(
        [_tool("psql"), base, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert json.loads(out) == STATE


# -- Redis -------------------------------------------------------------------------


def _prefix(url: str) -> str:
    return dict(p.split("=", 1) for p in urlsplit(url).query.split("&"))["prefix"]


def test_redis_stores_seconds_in_fields_named_for_their_unit(redis_url):
    import redis

    now = _write(redis_url)
    prefix = _prefix(redis_url)
    client = redis.Redis.from_url(redis_url.split("?")[0], decode_responses=True)
    fields = client.hgetall(f"{prefix}run:nightly-export:2026-11-27")
    times = {k: v for k, v in fields.items() if k.endswith("_s")}
    assert set(times) == {"started_at_s", "updated_at_s", "heartbeat_at_s", "lease_until_s", "expires_at_s"}
    # No time under a name without its unit (the milliseconds of record format 1).
    assert not {"started", "updated", "heartbeat", "lease", "expires"} & set(fields)
    for name in ("started_at_s", "updated_at_s", "heartbeat_at_s"):
        assert _is_seconds(float(times[name]), now), (name, times[name])
    assert 250 < float(times["lease_until_s"]) - float(times["updated_at_s"]) <= 300
    assert float(times["expires_at_s"]) - now > 6 * 86400  # the 7-day default retention
    assert json.loads(fields["body"])["state"] == STATE
    history = [json.loads(e) for e in client.lrange(f"{prefix}hist:nightly-export:2026-11-27", 0, -1)]
    assert [e["done"] for e in history] == [1234, 5, 0]
    assert all(_is_seconds(e["at_s"], now) and "at" not in e for e in history)
    ((member, score),) = client.zrange(f"{prefix}runs", 0, -1, withscores=True)
    assert member == "nightly-export\0" + "2026-11-27" and score == pytest.approx(float(times["expires_at_s"]))
    # The store reads back what it wrote, to the millisecond.
    with open_store(redis_url) as store:
        rec = store.load("nightly-export", "2026-11-27")
        assert rec.updated == float(times["updated_at_s"]) and rec.lease_expires == float(times["lease_until_s"])
        assert [h.at for h in store.history("nightly-export", "2026-11-27")] == [e["at_s"] for e in history]


def test_redis_released_lease_is_empty_and_renew_writes_seconds(redis_url):
    import redis

    with open_store(redis_url) as store:
        rec = store.acquire("j", "r", owner=ME, lease_seconds=30)
        until = store.renew("j", "r", epoch=rec.epoch, lease_seconds=60)
        key = f"{_prefix(redis_url)}run:j:r"
        client = redis.Redis.from_url(redis_url.split("?")[0], decode_responses=True)
        assert float(client.hget(key, "lease_until_s")) == until
        assert until - float(client.hget(key, "heartbeat_at_s")) == pytest.approx(60, abs=0.002)
        store.save(rec.replace(status="completed"), lease_seconds=None)
        assert client.hget(key, "lease_until_s") == ""
        assert store.load("j", "r").lease_expires is None


def test_redis_docs_query_runs_in_redis_cli(redis_url):
    _write(redis_url)
    parts = urlsplit(redis_url)
    key = f"{_prefix(redis_url)}run:nightly-export:2026-11-27"
    cli = [_tool("redis-cli"), "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    out = subprocess.run([*cli, "HGETALL", key], capture_output=True, text=True, check=True, timeout=30).stdout
    lines = out.splitlines()
    fields = dict(zip(lines[::2], lines[1::2], strict=True))
    assert float(fields["updated_at_s"]) > 1e9 and json.loads(fields["body"])["state"] == STATE
    body = subprocess.run([*cli, "--raw", "HGET", key, "body"], capture_output=True, check=True, timeout=30).stdout
    jq = shutil.which("jq")
    if jq:
        state = subprocess.run([jq, "-c", ".state"], input=body, capture_output=True, check=True, timeout=30).stdout
        assert json.loads(state) == STATE
