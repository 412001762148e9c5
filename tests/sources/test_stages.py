"""``Pipeline``: stages in order in one Job, resumed at the stage and position; a changed stage list refused."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procs import clean_env, local_store_url
from restartable import StateNotSerializable, UsageError
from restartable._pipeline import Pipeline, StagesChanged, describe_stages
from restartable.stores import open_store


@pytest.fixture(params=["sqlite", "file"])
def url(request, tmp_path) -> str:
    return local_store_url(request.param, tmp_path)


def etl(url: str, calls: list[str], *, fail_at: int | None = None, n: int = 20) -> Pipeline:
    pipe = Pipeline("etl", run="r1", store=url, progress=False)

    @pipe.stage
    def extract(job):
        calls.append("extract")
        for i in job.iterate(range(n), every=1):
            calls.append(f"e{i}")
        return {"rows": n}

    @pipe.stage("transform")
    def transform_rows(job, results):
        calls.append("transform")
        total = 0
        for i in job.iterate(range(results["extract"]["rows"]), every=1, name="rows"):
            if fail_at is not None and i == fail_at:
                raise RuntimeError("transform crashed")
            calls.append(f"t{i}")
            total += i
        return {"sum_of_this_process": total}

    @pipe.stage
    def load(job, results):
        calls.append("load")
        assert job.results is results and set(results) == {"extract", "transform"}
        return "loaded"

    return pipe


def test_stages_run_in_order_with_results(url):
    calls: list[str] = []
    pipe = etl(url, calls, n=3)
    assert pipe.stages == ["extract", "transform", "load"]
    results = pipe.run()
    assert results == {"extract": {"rows": 3}, "transform": {"sum_of_this_process": 3}, "load": "loaded"}
    assert calls == ["extract", "e0", "e1", "e2", "transform", "t0", "t1", "t2", "load"]
    with open_store(url) as s:
        rec = s.load("etl", "r1")
    assert rec.status == "completed"
    assert set(rec.positions) == {"pipeline", "extract:0", "transform:rows"}
    assert rec.positions["pipeline"]["done"] == ["extract", "transform", "load"]
    # A rerun of the completed run runs nothing and returns the stored results.
    calls.clear()
    assert etl(url, calls, n=3).run() == results and calls == []


def test_resume_mid_stage_after_an_exception(url):
    calls: list[str] = []
    with pytest.raises(RuntimeError):
        etl(url, calls, fail_at=12).run()
    assert calls[-1] == "t11"
    with open_store(url) as s:
        rec = s.load("etl", "r1")
        assert rec.status == "failed"
        assert rec.positions["pipeline"]["current"] == "transform"
        assert rec.positions["transform:rows"]["offset"] == 12
        lines = list(describe_stages(rec))
    assert lines[0].startswith("  stage 'extract': done  result {\"rows\":20}")
    assert lines[2] == "  stage 'transform': in progress"
    assert lines[3] == "    iteration 'transform:rows': 12/20"
    assert lines[4] == "  stage 'load': pending"
    calls.clear()
    results = etl(url, calls).run()
    # extract is not run again; transform is called again and resumes at item 12.
    assert calls == ["transform"] + [f"t{i}" for i in range(12, 20)] + ["load"]
    assert results["extract"] == {"rows": 20} and results["transform"] == {"sum_of_this_process": sum(range(12, 20))}


def test_changed_stage_list_is_refused(url):
    calls: list[str] = []
    with pytest.raises(RuntimeError):
        etl(url, calls, fail_at=5).run()
    pipe = Pipeline("etl", run="r1", store=url, progress=False)

    @pipe.stage
    def extract(job):
        calls.append("extract again")

    @pipe.stage
    def load(job):
        calls.append("load")

    with pytest.raises(StagesChanged) as info:
        pipe.run()
    assert info.value.exit_code == 65
    msg = str(info.value)
    assert "['extract', 'transform', 'load']" in msg and "['extract', 'load']" in msg and "restartable reset etl" in msg
    assert "extract again" not in calls
    with open_store(url) as s:
        rec = s.load("etl", "r1")
    assert rec.positions["transform:rows"]["offset"] == 5  # nothing lost
    assert rec.positions["pipeline"]["stages"] == ["extract", "transform", "load"]
    calls.clear()
    etl(url, calls).run()  # the original pipeline still finishes the run
    assert calls[0] == "transform"


def test_registration_rules():
    pipe = Pipeline("p", store="memory://")
    with pytest.raises(UsageError, match="no stages"):
        pipe.run()

    @pipe.stage
    def a(job):
        return 1

    with pytest.raises(UsageError, match="already registered"):
        pipe.stage("a")(lambda job: 2)
    with pytest.raises(UsageError, match="reserved"):
        pipe.stage("pipeline")(lambda job: 2)
    with pytest.raises(UsageError, match="invalid stage name"):
        pipe.stage("bad name")(lambda job: 2)


def test_stage_result_must_be_json(tmp_path):
    pipe = Pipeline("p", store=f"sqlite:///{tmp_path}/c.db", progress=False)

    @pipe.stage
    def a(job):
        return object()

    with pytest.raises(StateNotSerializable, match="stage 'a'"):
        pipe.run()


def test_stage_job_names_cursors_and_shares_state(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"{i}.csv").write_text(str(i))
    pipe = Pipeline("p", store=url, progress=False)

    @pipe.stage
    def first(job):
        list(job.iterate([1, 2]))
        list(job.iterate([3]))
        job.state["seen"] = [f.name for f in job.files(tmp_path / "in", name="inputs")]
        assert job.stage == "first" and "first" in repr(job)

    @pipe.stage
    def second(job):
        job.state["more"] = len(job.state["seen"])

    pipe.run()
    with open_store(url) as s:
        rec = s.load("p", "default")
    assert set(rec.positions) == {"pipeline", "first:0", "first:1", "first:inputs"}
    assert rec.state == {"seen": ["0.csv", "1.csv", "2.csv"], "more": 3}


# -- in real processes ----------------------------------------------------------------------------

SCRIPT = r"""
import os, sys, time
import restartable
from restartable._pipeline import Pipeline
store, log = sys.argv[1], sys.argv[2]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
def say(line):
    os.write(fd, (line + "\n").encode())

pipe = Pipeline("etl", store=store, progress=False)

@pipe.stage
def extract(job):
    say("extract")
    for i in job.iterate(range(30), every=1):
        time.sleep(0.01)
        say(f"e {i}")
    return 30

@pipe.stage
def slow(job, results):
    say("slow begin")
    print("slow", flush=True)
    time.sleep(float(os.environ.get("SLOW", "0")))
    say("slow end")
    return "ok"

@pipe.stage
def transform(job, results):
    say("transform")
    for i in job.iterate(range(results["extract"]), every=1):
        time.sleep(0.01)
        say(f"t {i}")

def main():
    pipe.run()
    say("finished")

restartable.entrypoint(main)()
"""


def run_script(tmp_path: Path, url: str, **env: str) -> subprocess.Popen[str]:
    script = tmp_path / "etl.py"
    script.write_text(SCRIPT)
    return subprocess.Popen(
        [sys.executable, str(script), url, str(tmp_path / "log")],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(**env),
    )


def log_lines(tmp_path: Path) -> list[str]:
    p = tmp_path / "log"
    return p.read_text().splitlines() if p.exists() else []


def test_sigkill_mid_stage_resumes_at_the_stage_and_position(tmp_path, url):
    rng = random.Random(11)
    for _ in range(6):
        proc = run_script(tmp_path, url)
        target = len(log_lines(tmp_path)) + rng.randint(3, 12)
        deadline = time.monotonic() + 20
        while len(log_lines(tmp_path)) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.kill()
        proc.wait()
        proc.stdout.close()
    proc = run_script(tmp_path, url)
    assert proc.wait(timeout=60) == 0
    proc.stdout.close()
    lines = log_lines(tmp_path)
    assert lines[-1] == "finished"
    e = [int(x[2:]) for x in lines if x.startswith("e ")]
    t = [int(x[2:]) for x in lines if x.startswith("t ")]
    # every=1: an item is redone only when the kill fell between its log line and its checkpoint.
    assert sorted(set(e)) == list(range(30)) and len(e) - 30 <= 6
    assert sorted(set(t)) == list(range(30)) and len(t) - 30 <= 6
    # A finished stage never runs again: extract starts again only while it is unfinished.
    first_transform = lines.index("transform") if "transform" in lines else len(lines)
    assert "extract" not in lines[first_transform:]
    assert lines.count("slow end") >= 1


def test_sigterm_in_a_stage_without_iterations_stops_at_its_end(tmp_path, url):
    proc = run_script(tmp_path, url, SLOW="0.5")
    assert proc.stdout.readline().strip() == "slow"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    proc.stdout.close()
    lines = log_lines(tmp_path)
    assert lines[-1] == "slow end" and "transform" not in lines
    with open_store(url) as s:
        rec = s.load("etl", "default")
    assert rec.status == "interrupted" and rec.positions["pipeline"]["done"] == ["extract", "slow"]
    proc = run_script(tmp_path, url)
    assert proc.wait(timeout=60) == 0
    proc.stdout.close()
    after = log_lines(tmp_path)[len(lines) :]
    assert after[0] == "transform" and after[-1] == "finished" and "slow begin" not in after
