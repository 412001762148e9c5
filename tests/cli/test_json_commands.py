"""`--json` on `reset`, `cleanup` (with and without --dry-run) and `reopen`: one documented document each.

Every output is read back with `json.loads`, and checked against the store it describes.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from restartable import Job
from restartable.cli import cli, main
from restartable.stores import open_store


@pytest.fixture
def url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path}/ckpt.db"
    for run in ("a", "b"):
        with Job("export", run=run, store=url, progress=False) as job:
            list(job.iterate(range(30), every=10))
    with pytest.raises(RuntimeError):
        with Job("export", run="c", store=url, progress=False) as job:
            for i in job.iterate(range(30), every=10):
                if i == 12:
                    raise RuntimeError("stop")
    return url


def doc(*args: str) -> dict:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def runs_of(url: str) -> set[str]:
    with open_store(url) as store:
        return {r.run for r in store.list_runs("export")}


def test_cleanup_json_dry_run_lists_and_deletes_nothing_then_deletes(url):
    dry = doc("cleanup", "--older-than", "0s", "--dry-run", "--json", "--store", url)
    assert dry["dry_run"] is True and dry["count"] == 2 and dry["older_than"] == "0s"
    assert dry["older_than_seconds"] == 0 and dry["job"] is None and dry["store"] == url
    assert sorted(r["run"] for r in dry["runs"]) == ["a", "b"] and all(r["job"] == "export" for r in dry["runs"])
    assert all(r["updated"].endswith("+00:00") for r in dry["runs"])
    assert runs_of(url) == {"a", "b", "c"}
    real = doc("cleanup", "--older-than", "0s", "--json", "--job", "export", "--store", url)
    assert real["dry_run"] is False and real["count"] == 2 and real["job"] == "export"
    assert runs_of(url) == {"c"}  # the failed run is never touched


def test_reset_json_lists_each_run_with_what_it_was(url):
    one = doc("reset", "export", "--run", "c", "--json", "--store", url)
    assert one == {
        "store": url,
        "job": "export",
        "reset": [{"run": "c", "status": "failed", "done": 12, "unreadable": False}],
        "count": 1,
        "not_reset": [],
    }
    every = doc("reset", "export", "--all-runs", "--json", "--store", url)
    assert every["count"] == 2 and [r["run"] for r in every["reset"]] == ["a", "b"]
    assert all(r["status"] == "completed" and r["done"] == 30 for r in every["reset"])
    assert runs_of(url) == set()


def test_reset_json_still_prints_a_document_when_an_error_stops_it(url, capsys):
    with Job("export", run="live", store=url, progress=False):  # holds the lease
        code = main(["reset", "export", "--all-runs", "--json", "--store", url])
    out, err = capsys.readouterr()
    assert code == 75 and "--force" in err and len(err.strip().splitlines()) == 1
    data = json.loads(out)
    assert [r["run"] for r in data["reset"]] == ["a", "b", "c"] and data["count"] == 3  # before "live"


def test_reopen_json_says_what_was_reopened(url):
    data = doc("reopen", "export", "--run", "a", "--json", "--store", url)
    assert data == {
        "store": url,
        "job": "export",
        "run": "a",
        "status": "interrupted",
        "was": "completed",
        "done": 30,
        "dead_letters": 0,
        "failed_files": 0,
        "skipped": 0,
    }
    with open_store(url) as store:
        rec = store.load("export", "a")
        assert rec is not None and rec.status == "interrupted"


def test_show_raw_prints_a_file_store_record_file_as_one_json_document(tmp_path, capsys):
    url = f"file://{tmp_path}/store"
    with Job("export", run="r1", store=url, progress=False) as job:
        job.state["n"] = 7
        list(job.iterate(range(30), every=10))
    (path,) = [p for p in (tmp_path / "store").rglob("*.ckpt")]
    data = doc("show", "--raw", str(path))  # no JOB, no store: the file alone
    assert data["record"]["job"] == "export" and data["record"]["run"] == "r1"
    assert data["record"]["done"] == 30 and data["record"]["state"] == {"n": 7}
    assert main(["show", "--raw", str(tmp_path / "nope.ckpt")]) == 2
    assert "no such record file" in capsys.readouterr().err


def test_show_without_a_job_or_raw_is_a_usage_error(capsys):
    assert main(["show"]) == 2
    assert "show needs a JOB (or --raw PATH)" in capsys.readouterr().err
