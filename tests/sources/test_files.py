"""``job.files`` and ``job.output``: per-file markers, recheck, retries, skips, marker dirs, bad input.

Real files, real SQLite and file stores; the permission cases drop root in a subprocess.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from procs import clean_env, local_store_url
from restartable import DataError, Job, SkipBudgetExceeded, UsageError
from restartable._job import run_context
from restartable._sources.files import FileItem, resolve
from restartable.stores import open_store


@pytest.fixture(params=["sqlite", "file"])
def url(request, tmp_path) -> str:
    return local_store_url(request.param, tmp_path)


def make_inputs(directory: Path, n: int, *, ext: str = "csv") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = directory / f"part-{i:03d}.{ext}"
        p.write_text(f"id,value\n{i},{i * 7}\n")
        paths.append(p)
    return paths


def job(url: str, name: str = "files", **kw) -> Job:
    return Job(name, store=url, progress=False, **kw)


# -- the basics ------------------------------------------------------------------------------


def test_yields_sorted_files_and_outputs_atomically(tmp_path, url):
    make_inputs(tmp_path / "in", 5)
    (tmp_path / "in" / ".hidden.csv").write_text("skip me")
    (tmp_path / "in" / "notes.txt").write_text("not matched")
    seen = []
    with job(url) as j:
        for f in j.files(tmp_path / "in" / "*.csv"):
            assert isinstance(f, FileItem) and isinstance(f, os.PathLike)
            seen.append(f.key)
            with f, j.output(tmp_path / "out" / f.name) as tmp:
                assert tmp.parent == tmp_path / "out" and tmp.name.startswith(".")
                with open(f) as src:  # the handle is a path
                    tmp.write_text(src.read().upper())
    assert seen == [f"part-{i:03d}.csv" for i in range(5)]
    assert sorted(os.listdir(tmp_path / "out")) == seen  # no temp left behind
    assert (tmp_path / "out" / "part-002.csv").read_text() == "ID,VALUE\n2,14\n"
    with job(url) as j:
        assert j.completed and list(j.files(tmp_path / "in" / "*.csv")) == []


def test_directory_input_and_string_paths(tmp_path, url):
    make_inputs(tmp_path / "in", 3)
    (tmp_path / "in" / "sub").mkdir()
    with job(url) as j:
        got = [str(p) for p in j.files(tmp_path / "in")]
    assert got == [str(tmp_path / "in" / f"part-{i:03d}.csv") for i in range(3)]


def test_recursive_glob_keys_are_relative(tmp_path):
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "b").mkdir()
    (tmp_path / "in" / "b" / "x.csv").write_text("1")
    (tmp_path / "in" / "a" / "y.csv").write_text("2")
    base, entries = resolve(f"{tmp_path}/in/**/*.csv")
    assert base == f"{tmp_path}/in"
    assert [e.key for e in entries] == ["a/y.csv", "b/x.csv"]


def test_a_file_is_done_when_the_loop_moves_on(tmp_path, url):
    make_inputs(tmp_path / "in", 6)
    pattern = tmp_path / "in" / "*.csv"
    with pytest.raises(RuntimeError), job(url) as j:
        for f in j.files(pattern):
            if f.name == "part-003.csv":
                raise RuntimeError("boom")
    with open_store(url) as s:
        assert sorted(s.markers("files", "default", "0")) == ["part-000.csv", "part-001.csv", "part-002.csv"]
        assert s.load("files", "default").status == "failed"
    with job(url) as j:
        assert [f.name for f in j.files(pattern)] == ["part-003.csv", "part-004.csv", "part-005.csv"]
    with open_store(url) as s:
        rec = s.load("files", "default")
        assert rec.status == "completed" and rec.positions["0"]["offset"] == 6 and rec.positions["0"]["total"] == 6


def test_markers_are_o1_writes_not_record_rewrites(tmp_path, url):
    make_inputs(tmp_path / "in", 40)
    with job(url) as j:
        for _ in j.files(tmp_path / "in", seconds=3600):
            pass
    with open_store(url) as s:
        assert len(s.markers("files", "default", "0")) == 40
        # start, the first boundary never saves; end-of-iteration save and the completion save
        assert len(s.history("files", "default", limit=50)) <= 4


def test_every_checkpoints_by_count(tmp_path, url):
    if url.startswith("sqlite"):  # the history observes every save only with a row per save
        url += "?history_every=1"
    make_inputs(tmp_path / "in", 10)
    with job(url) as j:
        for _ in j.files(tmp_path / "in", every=2, seconds=3600):
            pass
    with open_store(url) as s:
        done = [h.done for h in s.history("files", "default", limit=50)]
    assert {2, 4, 6, 8, 10} <= set(done)


# -- changes to the input ----------------------------------------------------------------------


def _fail_at(url: str, pattern: Path, name: str, **kw) -> list[str]:
    seen = []
    with pytest.raises(RuntimeError), job(url) as j:
        for f in j.files(pattern, **kw):
            seen.append(f.name)
            if f.name == name:
                raise RuntimeError("stop here")
    return seen


def test_a_changed_file_is_processed_again(tmp_path, url):
    files = make_inputs(tmp_path / "in", 5)
    pattern = tmp_path / "in" / "*.csv"
    _fail_at(url, pattern, "part-003.csv")
    files[1].write_text("changed content, another size\n")
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same size, newer mtime
    with job(url) as j:
        again = [f.name for f in j.files(pattern)]
    assert again == ["part-000.csv", "part-001.csv", "part-003.csv", "part-004.csv"]


def test_recheck_false_keeps_changed_files_done(tmp_path, url):
    files = make_inputs(tmp_path / "in", 4)
    pattern = tmp_path / "in" / "*.csv"
    _fail_at(url, pattern, "part-002.csv", recheck=False)
    files[0].write_text("changed\n")
    with job(url) as j:
        assert [f.name for f in j.files(pattern, recheck=False)] == ["part-002.csv", "part-003.csv"]


def test_new_files_of_an_unfinished_run_are_picked_up(tmp_path, url):
    make_inputs(tmp_path / "in", 3)
    pattern = tmp_path / "in" / "*.csv"
    _fail_at(url, pattern, "part-001.csv")
    (tmp_path / "in" / "part-000a.csv").write_text("new\n")
    with job(url) as j:
        assert [f.name for f in j.files(pattern)] == ["part-000a.csv", "part-001.csv", "part-002.csv"]


# -- retries, stop and skip ---------------------------------------------------------------------


def test_retries_yield_the_same_file_again(tmp_path, url):
    make_inputs(tmp_path / "in", 3)
    attempts: dict[str, list[int]] = {}
    with job(url) as j:
        for f in j.files(tmp_path / "in", attempts=3, backoff=0.001):
            with f:
                attempts.setdefault(f.name, []).append(f.attempt)
                if f.name == "part-001.csv" and f.attempt < 3:
                    raise OSError("flaky")
    assert attempts == {"part-000.csv": [1], "part-001.csv": [1, 2, 3], "part-002.csv": [1]}
    with open_store(url) as s:
        assert len(s.markers("files", "default", "0")) == 3


def test_backoff_doubles(tmp_path, url):
    make_inputs(tmp_path / "in", 1)
    stamps = []
    with pytest.raises(ValueError) as info, job(url) as j:
        for f in j.files(tmp_path / "in", attempts=3, backoff=0.05):
            with f:
                stamps.append(time.monotonic())
                raise ValueError("always")
    assert len(stamps) == 3
    assert stamps[1] - stamps[0] >= 0.05 and stamps[2] - stamps[1] >= 0.1
    assert any("failed after 3 attempt(s)" in n for n in info.value.__notes__)
    with open_store(url) as s:
        assert s.markers("files", "default", "0") == {}
        assert s.load("files", "default").status == "failed"


def test_plain_use_without_with_propagates(tmp_path, url):
    make_inputs(tmp_path / "in", 2)
    with pytest.raises(KeyError), job(url) as j:
        for f in j.files(tmp_path / "in", attempts=5):
            raise KeyError(f.name)
    with open_store(url) as s:
        assert s.markers("files", "default", "0") == {}


def test_skip_records_failed_files_and_goes_on(tmp_path, url):
    make_inputs(tmp_path / "in", 5)
    done = []
    with job(url) as j:
        for f in j.files(tmp_path / "in", on_error="skip", attempts=2, backoff=0):
            with f:
                if f.name in ("part-001.csv", "part-003.csv"):
                    raise ValueError(f"bad row in {f.name}")
                done.append(f.name)
    assert done == ["part-000.csv", "part-002.csv", "part-004.csv"]
    with open_store(url) as s:
        rec = s.load("files", "default")
    assert rec.status == "completed"
    failed = rec.positions["0"]["failed"]
    assert sorted(failed) == ["part-001.csv", "part-003.csv"]
    assert "ValueError: bad row in part-001.csv" in failed["part-001.csv"]


def test_skip_budget_exceeded_fails_with_65(tmp_path, url):
    make_inputs(tmp_path / "in", 6)
    seen = []
    with pytest.raises(SkipBudgetExceeded) as info, job(url) as j:
        for f in j.files(tmp_path / "in", on_error="skip", skip_budget=2):
            with f:
                seen.append(f.name)
                if f.name != "part-000.csv":
                    raise ValueError("bad")
    assert info.value.exit_code == 65
    assert "more than the skip budget of 2" in str(info.value)
    assert seen == ["part-000.csv", "part-001.csv", "part-002.csv", "part-003.csv"]
    with open_store(url) as s:
        rec = s.load("files", "default")
        assert rec.status == "failed" and len(rec.positions["0"]["failed"]) == 3
        assert list(s.markers("files", "default", "0")) == ["part-000.csv"]


def test_failed_files_are_retried_by_a_rerun(tmp_path, url):
    make_inputs(tmp_path / "in", 3)
    with pytest.raises(RuntimeError), job(url) as j:
        for f in j.files(tmp_path / "in", on_error="skip"):
            with f:
                if f.name == "part-000.csv":
                    raise ValueError("bad")
            if f.name == "part-002.csv":
                raise RuntimeError("crash before the end")
    with job(url) as j:
        again = [f.name for f in j.files(tmp_path / "in", on_error="skip")]
    assert again == ["part-000.csv", "part-002.csv"]
    with open_store(url) as s:
        assert s.load("files", "default").positions["0"]["failed"] == {}


def test_interrupt_during_backoff_does_not_mark(tmp_path, url):
    make_inputs(tmp_path / "in", 2)
    with pytest.raises(SystemExit) as info, job(url) as j:
        for f in j.files(tmp_path / "in", attempts=3, backoff=5):
            with f:
                run_context(j).on_signal(signal.SIGTERM)  # as the handler would
                raise OSError("flaky")
    assert info.value.code == 143
    with open_store(url) as s:
        assert s.markers("files", "default", "0") == {}
        assert s.load("files", "default").status == "interrupted"


# -- marker directory -------------------------------------------------------------------------


def test_marker_dir_writes_and_honours_done_files(tmp_path, url):
    make_inputs(tmp_path / "in", 4)
    marks = tmp_path / "checkpoints"
    marks.mkdir()
    (marks / "part-001.csv.done").touch()  # left by the article's bash loop
    with job(url) as j:
        got = [f.name for f in j.files(tmp_path / "in", marker_dir=marks)]
    assert got == ["part-000.csv", "part-002.csv", "part-003.csv"]
    assert sorted(os.listdir(marks)) == [f"part-{i:03d}.csv.done" for i in range(4)]


def test_marker_dir_recheck_uses_mtimes(tmp_path, url):
    files = make_inputs(tmp_path / "in", 2)
    marks = tmp_path / "checkpoints"
    marks.mkdir()
    for f in files:
        (marks / f"{f.name}.done").touch()
    future = time.time_ns() + 5_000_000_000
    os.utime(files[1], ns=(future, future))  # modified after its marker
    with job(url) as j:
        assert [f.name for f in j.files(tmp_path / "in", marker_dir=marks)] == ["part-001.csv"]
    assert (marks / "part-001.csv.done").stat().st_mtime_ns >= time.time_ns() - 5_000_000_000


# -- job.output ----------------------------------------------------------------------------------


def test_output_exception_leaves_nothing(tmp_path, url):
    dest = tmp_path / "out" / "result.csv"
    with job(url) as j:
        with pytest.raises(ZeroDivisionError), j.output(dest) as tmp:
            tmp.write_text("half")
            raise ZeroDivisionError
        assert not dest.exists() and os.listdir(tmp_path / "out") == []
        dest.write_text("old")
        with pytest.raises(ZeroDivisionError), j.output(dest) as tmp:
            tmp.write_text("new")
            raise ZeroDivisionError
        assert dest.read_text() == "old"
        with j.output(dest) as tmp:
            tmp.write_text("new")
        assert dest.read_text() == "new" and os.listdir(tmp_path / "out") == ["result.csv"]


def test_output_block_that_writes_nothing(tmp_path, url):
    with job(url) as j, pytest.raises(UsageError, match="wrote nothing"), j.output(tmp_path / "x.csv"):
        pass


def test_output_survives_sigkill_as_old_or_new(tmp_path):
    """A writer killed mid-output leaves the old file whole, never a prefix of the new one."""
    dest = tmp_path / "big.out"
    dest.write_bytes(b"old\n")
    script = tmp_path / "w.py"
    script.write_text(
        "import sys, time\nfrom restartable._sources.files import atomic_output\n"
        "with atomic_output(None, sys.argv[1]) as tmp:\n"
        "    with open(tmp, 'wb') as f:\n"
        "        for i in range(10**6):\n"
        "            f.write(b'x' * 100 + b'\\n'); f.flush()\n"
        "            if i == 10: print('writing', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script), str(dest)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(random.uniform(0.01, 0.1))
    proc.kill()
    proc.wait()
    proc.stdout.close()
    assert dest.read_bytes() == b"old\n"


# -- bad input ----------------------------------------------------------------------------------


def test_missing_input_directory(tmp_path, url):
    with job(url) as j:
        with pytest.raises(DataError, match=r"input directory .*nope .*does not exist.*create it"):
            j.files(tmp_path / "nope" / "*.csv")
        with pytest.raises(DataError, match="does not exist"):
            j.files(tmp_path / "nope")
        j.complete()


def test_glob_matching_nothing(tmp_path, url):
    (tmp_path / "in").mkdir()
    with job(url) as j:
        with pytest.raises(DataError, match=r"matches no file.*allow_empty"):
            j.files(tmp_path / "in" / "*.csv")
        assert list(j.files(tmp_path / "in" / "*.csv", allow_empty=True, name="empty")) == []


def test_empty_match_after_files_were_done_is_fine(tmp_path, url):
    """A job that moves its inputs away once done: a resume sees no file, which is not an error."""
    files = make_inputs(tmp_path / "in", 3)
    with pytest.raises(RuntimeError), job(url) as j:
        for f in j.files(tmp_path / "in" / "*.csv"):
            if f.name == "part-002.csv":
                raise RuntimeError
            os.rename(f, tmp_path / f.name)
    files[2].unlink()
    with job(url) as j:
        assert list(j.files(tmp_path / "in" / "*.csv")) == []
    with open_store(url) as s:
        assert s.load("files", "default").status == "completed"


def test_bad_options(tmp_path, url):
    make_inputs(tmp_path / "in", 1)
    with job(url) as j:
        for kw in ({"attempts": 0}, {"on_error": "ignore"}, {"skip_budget": -1}, {"backoff": -1}, {"every": 0}):
            with pytest.raises(UsageError):
                j.files(tmp_path / "in", **kw)
        j.complete()


@pytest.fixture
def shared_dir():
    """A directory outside pytest's private tmp tree, usable by an unprivileged user."""
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    d = tempfile.mkdtemp(prefix="rt-files-")
    os.chmod(d, 0o777)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


AS_NOBODY = r"""
import json, os, sys
from restartable import Job, RestartableError
# Import (and warm up) as root what the run needs: the interpreter lives in /root.
import encodings.ascii, restartable._proc, restartable._sources.files, restartable._sqlite.store
restartable._proc._machine()
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
cfg = json.loads(sys.argv[1])
try:
    with Job("perm", store=cfg["store"], progress=False) as job:
        for f in job.files(cfg["pattern"], marker_dir=cfg.get("marker_dir")):
            print("processed", f.name)
except RestartableError as exc:
    print(type(exc).__name__, exc.exit_code, exc)
"""


def run_as_nobody(cfg: dict) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd="/",
        timeout=60,
        check=False,
    )
    return proc.stdout + proc.stderr


def test_unreadable_file_is_permission_denied(shared_dir):
    inputs = shared_dir / "in"
    make_inputs(inputs, 3)
    os.chmod(inputs, 0o755)
    for p in inputs.iterdir():
        os.chmod(p, 0o644)
    os.chmod(inputs / "part-001.csv", 0o600)  # root's only
    out = run_as_nobody({"store": f"sqlite:///{shared_dir}/ckpt.db", "pattern": f"{inputs}/*.csv"})
    assert "PermissionDenied 77" in out, out
    assert "part-001.csv" in out and "readable by uid 65534" in out and "no file was processed" in out
    assert "processed" not in out.replace("no file was processed", "")


def test_unlistable_input_directory_is_permission_denied(shared_dir):
    inputs = shared_dir / "in"
    make_inputs(inputs, 2)
    os.chmod(inputs, 0o700)
    out = run_as_nobody({"store": f"sqlite:///{shared_dir}/ckpt.db", "pattern": f"{inputs}/*.csv"})
    assert "PermissionDenied 77" in out and str(inputs) in out, out


def test_marker_dir_not_writable(shared_dir):
    inputs = shared_dir / "in"
    make_inputs(inputs, 2)
    os.chmod(inputs, 0o755)
    for p in inputs.iterdir():
        os.chmod(p, 0o644)
    marks = shared_dir / "marks"
    marks.mkdir()
    os.chmod(marks, 0o755)  # root's
    out = run_as_nobody(
        {"store": f"sqlite:///{shared_dir}/ckpt.db", "pattern": f"{inputs}/*.csv", "marker_dir": str(marks)}
    )
    assert "PermissionDenied 77" in out and str(marks) in out and "not writable" in out, out
    assert "processed part" not in out


# -- crash safety ---------------------------------------------------------------------------------

KILLED = r"""
import os, sys, time
from restartable import Job
store, pattern, log = sys.argv[1:4]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
with Job("crash", store=store, progress=False) as job:
    print("started", flush=True)
    for f in job.files(pattern, seconds=3600):
        with job.output(os.path.join(os.path.dirname(log), "out", f.name)) as tmp:
            data = open(f).read()
            time.sleep(0.002)
            tmp.write_text(data + "ok\n")
        os.write(fd, f"{f.name}\n".encode())
"""


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_sigkill_loses_no_file_and_redoes_at_most_the_one_in_flight(tmp_path, kind):
    url = local_store_url(kind, tmp_path)
    make_inputs(tmp_path / "in", 150)
    log = tmp_path / "done.log"
    rng = random.Random(5)
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, str(script), url, f"{tmp_path}/in/*.csv", str(log)],
            stdout=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        assert proc.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.0, 0.15))
        proc.kill()
        proc.wait()
        proc.stdout.close()
    subprocess.run(
        [sys.executable, str(script), url, f"{tmp_path}/in/*.csv", str(log)],
        check=True,
        stdout=subprocess.DEVNULL,
        env=clean_env(),
        timeout=60,
    )
    lines = log.read_text().splitlines()
    names = [f"part-{i:03d}.csv" for i in range(150)]
    assert sorted(set(lines)) == names
    # A file is logged after its output, before it is marked: at most the one in flight per kill repeats.
    assert len(lines) - len(names) <= 12
    for n in names:
        assert (tmp_path / "out" / n).read_text() == (tmp_path / "in" / n).read_text() + "ok\n"
