"""Stores written by restartable at commit 145aab9 (record format 1) open with today's code.

The old code is not vendored: ``git archive 145aab9 src`` extracts it from this clone's
history into a temporary directory, and a small script run with ``PYTHONPATH`` on it (and
this venv's interpreter, so the same drivers) writes each kind of store the way a
deployed runner did: a completed run with history, a run with markers, and a run whose
process died holding a 5-minute lease mid-way. Today's code then reads every one of them
(``status`` and ``show`` first, read-only, before anything migrates the store), lists
them, reads their history and markers, and resumes the dead run to completion.

Redis is the store whose layout changed in format 2 (times in seconds under ``*_s``
names, see restartable._redis.lua): the test also checks that the old millisecond times
read as seconds, and that the resume leaves no millisecond field behind.

A shallow clone has no 145aab9: the tests skip with the reason, except under ``CI=true``
(CI clones fully), where they fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ci_env import unavailable
from procs import clean_env

OLD_COMMIT = "145aab9"
REPO = Path(__file__).resolve().parents[2]

#: The old runner: every write goes through the old code's public API or store.
WRITER = r"""
import os, socket, sys

import restartable
from restartable import Job, Owner, open_store

url = sys.argv[1]
print("code", restartable.__file__, flush=True)

with Job("done-job", run="r1", store=url, handle_signals=False, progress=False) as job:
    for i in job.iterate(range(10), every=3):
        job.state["sum"] = job.state.get("sum", 0) + i

store = open_store(url)
rec = store.acquire("marked", "r1", owner=Owner(host=socket.gethostname(), pid=os.getpid()), lease_seconds=30)
store.mark("marked", "r1", "files", "a.csv", {"rows": 3}, epoch=rec.epoch)
store.mark("marked", "r1", "files", "b b.csv", None, epoch=rec.epoch)
rec = store.save(
    rec.replace(status="completed", done=2, positions={"files": {"offset": 2, "finished": True}}),
    lease_seconds=None,
)
store.close()

with Job("crashed", run="r1", store=url, handle_signals=False, progress=False, lease_seconds=300) as job:
    for i in job.iterate(range(100), every=10):
        job.state["sum"] = job.state.get("sum", 0) + i
        if i == 44:
            print("dying with the lease held", flush=True)
            os._exit(0)
"""


@pytest.fixture(scope="session")
def old_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``src`` directory of commit 145aab9, extracted from this clone's history."""
    probe = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"], capture_output=True, timeout=30
    )
    if probe.returncode != 0:
        unavailable(
            f"commit {OLD_COMMIT} is not in this clone's history (a shallow clone?): "
            f"git fetch --unshallow to run the old-format tests"
        )
    out = tmp_path_factory.mktemp("rt145")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", OLD_COMMIT, "src"], capture_output=True, check=True, timeout=60
    )
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True, timeout=60)
    return out / "src"


def _write_old(old_src: Path, url: str, tmp_path: Path) -> None:
    script = tmp_path / "old_writer.py"
    script.write_text(WRITER)
    env = clean_env()
    env["PYTHONPATH"] = str(old_src)
    done = subprocess.run(
        [sys.executable, str(script), url], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "dying with the lease held" in done.stdout, done.stderr[-2000:]
    # Really the old code, not this checkout's (an editable install must not shadow PYTHONPATH).
    assert f"code {old_src}/restartable/__init__.py" in done.stdout, done.stdout


def _cli(*args: str) -> str:
    from restartable.cli import cli

    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, (args, result.output)
    return result.output


def _check_and_resume(url: str) -> None:
    from restartable import Job, open_store

    now = time.time()
    # Read-only first: the store is as the old code left it (not migrated yet).
    runs = json.loads(_cli("status", "--store", url, "--json"))
    assert {"done-job", "crashed", "marked"} <= set(json.dumps(runs).replace('"', " ").split()), runs
    shown = _cli("show", "crashed", "--run", "r1", "--store", url, "--json")
    assert json.loads(shown)
    assert "crashed" in _cli("show", "crashed", "--run", "r1", "--store", url)

    with open_store(url) as store:
        assert [(r.job, r.run) for r in store.list_runs()] == [("crashed", "r1"), ("done-job", "r1"), ("marked", "r1")]
        done = store.load("done-job", "r1")
        assert done.status == "completed" and done.done == 10 and done.state == {"sum": 45}
        history = store.history("done-job", "r1")
        assert history and history[0].status == "completed" and history[0].done == 10
        # Times in seconds whatever unit the old store kept (Redis: milliseconds).
        for t in (done.started, done.updated, done.heartbeat, *(h.at for h in history)):
            assert abs(t - now) < 600, (t, now)
        marked = store.load("marked", "r1")
        assert marked.status == "completed" and marked.positions["files"]["offset"] == 2
        assert store.markers("marked", "r1", "files") == {"a.csv": {"rows": 3}, "b b.csv": None}
        crashed = store.load("crashed", "r1")
        assert crashed.status == "running" and crashed.lease_expires is not None
        assert 200 < crashed.lease_expires - now <= 300  # the dead runner's lease is still live
        saved_offset = crashed.done
        assert saved_offset == 40 and crashed.state == {"sum": sum(range(40))}

    seen: list[int] = []
    with Job("crashed", run="r1", store=url, handle_signals=False, progress=False) as job:
        assert job.resumed
        for i in job.iterate(range(100), every=10):
            seen.append(i)
            job.state["sum"] = job.state.get("sum", 0) + i
    assert seen == list(range(saved_offset, 100))
    with open_store(url) as store:
        final = store.load("crashed", "r1")
        assert final.status == "completed" and final.done == 100 and final.state == {"sum": sum(range(100))}
        assert final.lease_expires is None and abs(final.updated - time.time()) < 600
        assert store.history("crashed", "r1")[0].done == 100


def test_sqlite_store_of_145aab9(old_src, tmp_path):
    url = f"sqlite:///{tmp_path}/old.db"
    _write_old(old_src, url, tmp_path)
    _check_and_resume(url)


def test_file_store_of_145aab9(old_src, tmp_path):
    url = f"file://{tmp_path}/old-ckpt"
    _write_old(old_src, url, tmp_path)
    _check_and_resume(url)


def test_postgres_store_of_145aab9(old_src, postgres_url, tmp_path):
    _write_old(old_src, postgres_url, tmp_path)
    _check_and_resume(postgres_url)


def test_redis_store_of_145aab9(old_src, redis_url, tmp_path):
    import redis

    from restartable import Owner, RunLocked, open_store

    _write_old(old_src, redis_url, tmp_path)
    base, _, query = redis_url.partition("?")
    prefix = dict(p.split("=", 1) for p in query.split("&"))["prefix"]
    client = redis.Redis.from_url(base, decode_responses=True)
    old = client.hgetall(f"{prefix}run:crashed:r1")
    assert int(old["updated"]) > 1e12 and "updated_at_s" not in old  # really the old layout: ms
    assert json.loads(old["body"])["version"] == 1
    # The old run's lease (ms, field "lease") still holds against a live stranger.
    with open_store(redis_url) as store, pytest.raises(RunLocked):
        store.acquire("crashed", "r1", owner=Owner(host="elsewhere", pid=1), lease_seconds=30)
    assert client.hgetall(f"{prefix}run:crashed:r1") == old  # a refused acquire writes nothing
    _check_and_resume(redis_url)
    # The resumed run is in format 2: seconds under *_s names, no millisecond field left.
    new = client.hgetall(f"{prefix}run:crashed:r1")
    assert not {"started", "updated", "heartbeat", "lease", "expires"} & set(new), new.keys()
    assert abs(float(new["started_at_s"]) - int(old["started"]) / 1000) < 0.002  # its start carried over
    assert json.loads(new["body"])["version"] == 2
    # An old run never acquired again is still read as it was (ms fields, ms history).
    assert "updated" in client.hgetall(f"{prefix}run:done-job:r1")
    # The index mixes the old runs' ms scores with the resumed run's seconds: all still listed,
    # and the index key lives as long as its longest-lived run (7 days), not 1000 times that.
    scores = dict(client.zrange(f"{prefix}runs", 0, -1, withscores=True))
    assert scores["crashed\0r1"] < 1e11 < scores["done-job\0r1"]
    assert 6 * 86400_000 < client.pttl(f"{prefix}runs") < 8 * 86400_000
    with open_store(redis_url) as store:
        assert len(store.list_runs()) == 3
        assert (
            abs(store.load("done-job", "r1").updated - int(client.hget(f"{prefix}run:done-job:r1", "updated")) / 1000)
            < 1e-6
        )


def test_a_record_newer_than_this_code_asks_for_an_upgrade():
    from restartable._checkpoint import FORMAT_VERSION, Checkpoint, decode_record, encode_record
    from restartable.errors import CheckpointCorrupt

    text = encode_record(Checkpoint(job="j", run="r", epoch=1))
    assert json.loads(text)["version"] == FORMAT_VERSION == 2
    # Format 2's time keys name their unit; format 1's (no unit) still read.
    assert {"started_at_s", "updated_at_s", "heartbeat_at_s", "lease_expires_at_s"} <= set(json.loads(text))
    v1 = text.replace('"version":2', '"version":1').replace('_at_s"', '"')
    assert "updated_at_s" not in v1 and decode_record(v1) == decode_record(text)  # format 1 still reads
    with pytest.raises(CheckpointCorrupt, match=r"newer than this restartable understands.*upgrade restartable"):
        decode_record(text.replace('"version":2', '"version":3'))
    for bad in ('"version":0', '"version":true', '"version":"2"'):
        with pytest.raises(CheckpointCorrupt, match="unknown format version"):
            decode_record(text.replace('"version":2', bad))
