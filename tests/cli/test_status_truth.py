"""`restartable status` tells the truth: a run nobody works on is `stalled`, with no rate and no ETA.

Real worker processes (tests/procs.py) save checkpoints to a SQLite store; one is
killed with SIGKILL, and `status` must call it stalled at once (its owner is provably
dead), while the live one stays running with a rate. A property covers the rule for
every record: a run saved as running is running only while a live owner holds its lease.
`status --watch` is run as a real subprocess and ended with SIGINT.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procs import Spawner, clean_env, wait_items, write_worker
from restartable import Checkpoint, HistoryEntry, Owner
from restartable.cli import main
from restartable.cli._report import group_shards, state_text, summarize


@pytest.fixture
def spawn(tmp_path: Path):
    with Spawner(write_worker(tmp_path)) as s:
        yield s


def status_json(capsys: pytest.CaptureFixture[str], url: str) -> dict:
    code = main(["status", "--store", url, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return {r["run"]: r for r in json.loads(out)["runs"]}


def test_a_killed_run_is_stalled_at_once_and_a_live_one_runs_with_a_rate(spawn, tmp_path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path}/ckpt.db"
    cfg = {"store": url, "job": "truth", "n": 100_000, "sleep": 0.005, "every": 4, "lease_seconds": 60}
    live = spawn({**cfg, "run": "live", "log": str(tmp_path / "live.log")})
    doomed = spawn({**cfg, "run": "doomed", "log": str(tmp_path / "doomed.log")})
    live.started()
    doomed.started()
    wait_items(tmp_path / "live.log", 40)
    wait_items(tmp_path / "doomed.log", 40)

    before = status_json(capsys, url)
    assert before["doomed"]["state"] == "running" and before["doomed"]["rate_per_second"]

    doomed.proc.kill()  # SIGKILL: no handler runs, the record still says running, the lease is held for 60 s
    doomed.proc.wait(timeout=10)  # the kernel delivers SIGKILL asynchronously: time status from the death
    killed_at = time.monotonic()
    runs = status_json(capsys, url)
    took = time.monotonic() - killed_at
    assert took < 1.0, f"status took {took:.2f}s"
    dead = runs["doomed"]
    assert dead["status"] == "running"  # what the last save wrote...
    assert dead["state"] == "stalled"  # ...and what is true
    assert dead["lease"] == "dead owner"
    assert dead["rate_per_second"] is None and dead["eta_seconds"] is None
    assert dead["last_save_age_seconds"] is not None and dead["last_save_age_seconds"] < 5
    alive = runs["live"]
    assert alive["state"] == "running" and alive["lease"] == "held"
    assert alive["rate_per_second"] and alive["rate_per_second"] > 0
    assert alive["eta_seconds"] is not None and alive["lease_expires_in_seconds"] > 0

    code = main(["status", "--store", url])  # piped: one tab-separated line per run
    out, _ = capsys.readouterr()
    assert code == 0
    header, *lines = out.splitlines()
    rows = {row["run"]: row for row in (dict(zip(header.split("\t"), line.split("\t"), strict=True)) for line in lines)}
    assert rows["doomed"]["state"] == "stalled" and rows["doomed"]["last_save_age_seconds"].isdigit()
    assert rows["doomed"]["rate_per_second"] == "" and rows["doomed"]["eta_seconds"] == ""
    assert rows["live"]["state"] == "running" and rows["live"]["rate_per_second"] != ""
    live.proc.kill()


def test_watch_redraws_until_sigint_and_exits_0(spawn, tmp_path):
    url = f"sqlite:///{tmp_path}/ckpt.db"
    w = spawn(
        {"store": url, "job": "watched", "n": 100_000, "sleep": 0.005, "every": 4, "log": str(tmp_path / "w.log")}
    )
    w.started()
    wait_items(tmp_path / "w.log", 20)
    proc = subprocess.Popen(
        [sys.executable, "-m", "restartable.cli", "status", "--watch", "--interval", "0.3", "--json", "--store", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None
        docs = [json.loads(proc.stdout.readline()) for _ in range(3)]  # piped: one JSON document per line
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    w.proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and err.strip() == ""
    dones = [d["runs"][0]["done"] for d in docs]
    assert all(d["runs"][0]["state"] == "running" for d in docs)
    assert dones == sorted(dones) and dones[-1] > dones[0], dones  # a new read each interval


def test_watch_piped_prints_a_table_each_interval(tmp_path):
    url = f"sqlite:///{tmp_path}/ckpt.db"
    from restartable import Job

    with Job("tabled", run="r", store=url, progress=False) as job:
        list(job.iterate(range(10), every=5))
    proc = subprocess.Popen(
        [sys.executable, "-m", "restartable.cli", "status", "--watch", "--interval", "0.2", "--store", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert out.count("runs in") >= 2 and "tabled" in out and "completed" in out


# -- the rule, for every record ---------------------------------------------------------------

NOW = 1_800_000_000.0
GONE = Owner(host="elsewhere", pid=1)  # another machine: never provably dead from here


@given(
    status=st.sampled_from(["running", "interrupted", "failed", "completed"]),
    lease=st.one_of(st.none(), st.floats(min_value=-3600, max_value=3600)),
    saves=st.lists(st.tuples(st.floats(min_value=0.01, max_value=60), st.integers(0, 1000)), max_size=6),
    total=st.one_of(st.none(), st.integers(0, 10**6)),
)
@settings(max_examples=300, deadline=None)
def test_running_means_a_held_lease_and_only_running_runs_have_a_rate(status, lease, saves, total):
    done = sum(d for _, d in saves)
    rec = Checkpoint(
        job="j",
        run="r",
        epoch=7,
        status=status,
        owner=GONE,
        done=done,
        updated=NOW - 1,
        heartbeat=NOW - 1,
        lease_expires=None if lease is None else NOW + lease,
        positions={"it": {"offset": done, **({"total": total} if total is not None else {})}},
    )
    history, at, count = [], NOW - 1, done
    for gap, step in saves:  # newest first, as stores return it
        history.append(HistoryEntry(at=at, epoch=7, status="running", done=count))
        at, count = at - gap, max(0, count - step)
    s = summarize(rec, history, NOW)
    held = lease is not None and NOW + lease > NOW  # as the store compares: expiry past now
    if status != "running":
        assert s.state == status
    else:
        assert s.state == ("running" if held else "stalled")
    if s.state != "running":
        assert s.rate is None and s.eta is None
    if s.state == "stalled":
        assert "stalled" in state_text(s) and "last save" in state_text(s)
    assert s.to_json()["state"] == s.state and s.to_json()["last_save_age_seconds"] == pytest.approx(1.0)


def test_a_shard_set_partly_done_reads_at_a_glance():
    def shard(i: int, status: str, lease: float | None) -> Checkpoint:
        return Checkpoint(
            job="j",
            run=f"uid.shard-{i}-of-3",
            epoch=1,
            status=status,
            owner=GONE,
            done=10,
            updated=NOW - 5,
            heartbeat=NOW - 5,
            lease_expires=None if lease is None else NOW + lease,
            positions={"it": {"offset": 10, "total": 10, "dead": {"k": "boom"}}},
        )

    rows = [summarize(shard(0, "completed", None), [], NOW), summarize(shard(1, "running", -10), [], NOW)]
    (group,) = group_shards(rows)
    assert group.state == "stalled" and group.shards_done == 1 and group.shards_total == 3
    assert "1/3 shards done" in state_text(group) and "2 dead letters" in state_text(group)
    assert [s["run"] for s in group.to_json()["shards"]] == ["uid.shard-0-of-3", "uid.shard-1-of-3"]
    rows.append(summarize(shard(2, "interrupted", None), [], NOW))
    (group,) = group_shards(rows)
    assert group.state == "stalled"  # one shard stalled, none working: the worst news first
    rows[1] = summarize(shard(1, "interrupted", None), [], NOW)
    assert group_shards(rows)[0].state == "partial"
