"""The CLI: every command, its errors as one line and a documented exit code, the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from restartable import Job
from restartable.cli import cli, main


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path}/ckpt.db"
    with Job("export", run="2026-11-26", store=url, progress=False) as job:
        list(job.iterate(range(100), every=10))
    with pytest.raises(RuntimeError):
        with Job("export", run="2026-11-27", store=url, progress=False) as job:
            for i in job.iterate(range(100), every=10):
                if i == 40:
                    raise RuntimeError
    return url


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_has_help(capsys):
    for name, command in cli.commands.items():
        code, out, _ = run_cli(capsys, name, "--help")
        assert code == 0 and "Usage" in out, name
        assert command.help, f"{name} has no help text"


def test_readme_documents_every_command():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in cli.commands:
        assert f"restartable {name}" in readme, f"README does not document `restartable {name}`"


def test_status_lists_runs(capsys, db):
    code, out, _ = run_cli(capsys, "status", "--store", db)
    assert code == 0
    assert "export" in out and "completed" in out and "failed" in out
    code, out, _ = run_cli(capsys, "status", "--store", db, "--json")
    data = json.loads(out)
    runs = {r["run"]: r for r in data["runs"]}
    assert runs["2026-11-27"]["done"] == 40 and runs["2026-11-27"]["total"] == 100
    assert runs["2026-11-26"]["status"] == "completed"


def test_status_honours_env(capsys, db, monkeypatch):
    monkeypatch.setenv("RESTARTABLE_STORE", db)
    code, out, _ = run_cli(capsys, "status", "--json")
    assert code == 0 and len(json.loads(out)["runs"]) == 2


def test_show_needs_run_when_several(capsys, db):
    code, _, err = run_cli(capsys, "show", "export", "--store", db)
    assert code == 2 and "--run" in err and "Traceback" not in err
    code, out, _ = run_cli(capsys, "show", "export", "--run", "2026-11-27", "--store", db)
    assert code == 0 and "failed" in out and "40/100" in out and "recent saves" in out
    code, out, _ = run_cli(capsys, "show", "export", "--run", "2026-11-27", "--store", db, "--json")
    data = json.loads(out)
    assert data["positions"]["0"]["offset"] == 40 and data["history"]


def test_reset_then_rerun_starts_fresh(capsys, db):
    code, out, _ = run_cli(capsys, "reset", "export", "--run", "2026-11-26", "--store", db)
    assert code == 0 and "reset" in out
    with Job("export", run="2026-11-26", store=db, progress=False) as job:
        assert not job.completed
        assert len(list(job.iterate(range(100)))) == 100


def test_reset_refuses_a_live_run(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    with Job("live", store=url, progress=False):
        code, _, err = run_cli(capsys, "reset", "live", "--store", url)
        assert code == 75 and "--force" in err


def test_cleanup_removes_only_completed(capsys, db):
    code, out, _ = run_cli(capsys, "cleanup", "--older-than", "0s", "--store", db, "--dry-run")
    assert code == 0 and "would delete 1" in out
    code, out, _ = run_cli(capsys, "cleanup", "--older-than", "0s", "--store", db)
    assert code == 0 and "deleted 1" in out
    code, out, _ = run_cli(capsys, "status", "--store", db, "--json")
    assert [r["status"] for r in json.loads(out)["runs"]] == ["failed"]
    code, _, err = run_cli(capsys, "cleanup", "--older-than", "soon", "--store", db)
    assert code == 2 and "--older-than" in err


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["status", "--store", "nosuch://x"], 78, "scheme"),
        (["status", "--store", "postgresql+foo://u:hunter2@h/db"], 78, "scheme"),
        (["show", "../etc/passwd"], 2, "invalid job name"),
        (["show", "x'; DROP TABLE runs; --"], 2, "invalid job name"),
        (["nosuchcommand"], 2, "No such command"),
    ],
)
def test_errors_are_one_line_with_documented_codes(tmp_path, args, code, needle):
    env = {**os.environ, "RESTARTABLE_STORE": f"sqlite:///{tmp_path}/x.db"}
    proc = subprocess.run(
        [sys.executable, "-m", "restartable.cli", *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr and "hunter2" not in proc.stderr


def test_demo_resumes_with_exactly_once_output(tmp_path):
    env = {**os.environ, "RESTARTABLE_STORE": f"sqlite:///{tmp_path}/demo.db"}
    cmd = [
        sys.executable,
        "-m",
        "restartable.cli",
        "demo",
        "--items",
        "3000",
        "--rounds",
        "2000",
        "--output",
        str(tmp_path / "out.csv"),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (tmp_path / "out.csv").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(2)  # Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT" in err and "Traceback" not in err
    proc = subprocess.run(
        cmd[:-2] + ["--rounds", "1", "--output", str(tmp_path / "out.csv")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stderr
    assert "3,000 lines, 0 duplicates, 0 missing" in proc.stdout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert again.returncode == 0 and "already completed" in again.stdout


def test_sharded_run_is_one_line_in_status_and_detailed_in_show(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    for i in range(3):
        with Job("sharded", run="uid", store=url, shard=(i, 3), progress=False) as job:
            for x in job.iterate(list(range(30)), shard="auto"):
                if i == 2 and x == 25:
                    break
    code, out, _ = run_cli(capsys, "status", "--store", url, "--json")
    runs = json.loads(out)["runs"]
    assert len(runs) == 1 and runs[0]["run"] == "uid [2/3 shards done]"
    assert runs[0]["done"] == 25 and runs[0]["total"] == 30 and runs[0]["status"] == "interrupted"
    code, out, _ = run_cli(capsys, "status", "--store", url, "--json", "--shards")
    assert len(json.loads(out)["runs"]) == 3
    code, out, _ = run_cli(capsys, "show", "sharded", "--run", "uid", "--store", url)
    assert code == 0 and out.count("job sharded  run uid.shard-") == 3


@pytest.mark.parametrize("server", ["postgres_url", "redis_url"])
def test_cli_works_unchanged_on_network_stores(capsys, request, server):
    url = request.getfixturevalue(server)
    with Job("net", run="a", store=url, progress=False) as job:
        list(job.iterate(range(20), every=5))
    with pytest.raises(RuntimeError):
        with Job("net", run="b", store=url, progress=False) as job:
            for i in job.iterate(range(20), every=5):
                if i == 12:
                    raise RuntimeError
    code, out, _ = run_cli(capsys, "status", "--store", url, "--json")
    assert code == 0
    runs = {r["run"]: r for r in json.loads(out)["runs"]}
    assert runs["a"]["status"] == "completed" and runs["b"]["done"] == 12
    code, out, _ = run_cli(capsys, "show", "net", "--run", "b", "--store", url)
    assert code == 0 and "12/20" in out
    code, out, _ = run_cli(capsys, "cleanup", "--older-than", "0s", "--store", url)
    assert code == 0 and "deleted 1" in out
    code, out, _ = run_cli(capsys, "reset", "net", "--run", "b", "--store", url)
    assert code == 0
    code, out, _ = run_cli(capsys, "status", "--store", url, "--json")
    assert json.loads(out)["runs"] == []


def test_cli_redacts_passwords(capsys, postgres_server):
    url = postgres_server.replace("postgres@", "postgres:hunter2@")
    code, out, err = run_cli(capsys, "status", "--store", url)
    assert "hunter2" not in out + err
