"""``restartable each-file``: real commands in real processes, killed and signalled; a drop-in for the bash loop."""

from __future__ import annotations

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

from procs import clean_env
from restartable.cli.each_file import default_job_name
from restartable.stores import open_store

# The article's script, verbatim but for its directory variables (and the file list, kept
# beside them rather than in a shared /tmp).
ARTICLE_LOOP = r"""#!/bin/bash
# process-with-checkpoints.sh

CHECKPOINT_DIR="@WORK@/checkpoints"
INPUT_DIR="@WORK@/input"
OUTPUT_DIR="@WORK@/output-bash"

mkdir -p "$CHECKPOINT_DIR"

# Get list of all input files
find "$INPUT_DIR" -name "*.csv" | sort > "@WORK@/all_files.txt"

while IFS= read -r input_file; do
  filename=$(basename "$input_file")
  checkpoint_file="$CHECKPOINT_DIR/$filename.done"

  # Skip if already processed
  if [ -f "$checkpoint_file" ]; then
    echo "Skipping $filename (already processed)"
    continue
  fi

  echo "Processing $filename..."

  # Process the file
  if ./process-file.sh "$input_file" "$OUTPUT_DIR/$filename"; then
    # Mark as complete
    touch "$checkpoint_file"
    echo "$filename complete"
  else
    echo "Error processing $filename"
    exit 1
  fi
done < "@WORK@/all_files.txt"

echo "All files processed"
"""

# Upper-cases the rows and appends a checksum; logs what it did; fails on request.
PROCESS_FILE = r"""#!/bin/sh
echo "${1##*/}" >> "$(dirname "$0")/processed.log"
if [ -e "$(dirname "$0")/fail-${1##*/}" ]; then exit 3; fi
tr 'a-z' 'A-Z' < "$1" > "$2" && cksum < "$1" >> "$2"
"""


def each_file(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "restartable", "each-file", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(**env),
        timeout=timeout,
        check=False,
    )


def start(*args: str, cwd: Path, **env: str) -> subprocess.Popen[str]:
    """A runner in its own process group (so the test can kill the group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "restartable", "each-file", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=clean_env(**env),
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def make_inputs(directory: Path, n: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = directory / f"part-{i:03d}.csv"
        p.write_text("".join(f"row {j},value {i * j}\n" for j in range(i % 7 + 1)))
        paths.append(p)
    return paths


@pytest.fixture
def work(tmp_path) -> Path:
    (tmp_path / "process-file.sh").write_text(PROCESS_FILE)
    os.chmod(tmp_path / "process-file.sh", 0o755)
    return tmp_path


def store(work: Path) -> str:
    return f"sqlite:///{work}/ckpt.db"


def tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def processed(work: Path) -> list[str]:
    log = work / "processed.log"
    return log.read_text().splitlines() if log.exists() else []


# -- the drop-in check ------------------------------------------------------------------------------


def test_same_outputs_as_the_article_bash_loop(work):
    make_inputs(work / "input", 19)
    (work / "input" / "with space.csv").write_text("a b c\n")
    (work / "input" / "notes.txt").write_text("ignored by both\n")
    (work / "output-bash").mkdir()
    script = work / "loop.sh"
    script.write_text(ARTICLE_LOOP.replace("@WORK@", str(work)))
    subprocess.run(["bash", str(script)], cwd=work, check=True, capture_output=True, timeout=60)
    expected = tree(work / "output-bash")
    assert len(expected) == 20
    variants = {
        "output-1": ["-j", "1", "input/*.csv", "--", "./process-file.sh", "{}", "output-1/{name}"],
        "output-4": ["-j", "4", "input/*.csv", "--", "./process-file.sh", "{}", "output-4/{name}"],
        "output-o": ["-j", "3", "-o", "output-o/{name}", "input/*.csv", "--", "./process-file.sh", "{}", "{out}"],
        "output-d": ["input", "--", "./process-file.sh", "{}", "output-d/{name}"],
    }
    for name, args in variants.items():
        target = work / name
        target.mkdir(exist_ok=True)
        r = each_file("--store", store(work), *args, cwd=work)
        assert r.returncode == 0, r.stderr
        got = tree(target)
        if name == "output-d":  # a directory means every file in it, the .txt too
            assert got.pop("notes.txt").startswith(b"IGNORED BY BOTH\n")
        assert got == expected, name
    assert "[part-000.csv]" not in r.stdout


def test_continues_a_bash_loop_run_through_its_marker_dir(work):
    make_inputs(work / "input", 20)
    (work / "output-bash").mkdir()
    (work / "fail-part-012.csv").touch()
    script = work / "loop.sh"
    script.write_text(ARTICLE_LOOP.replace("@WORK@", str(work)))
    r = subprocess.run(["bash", str(script)], cwd=work, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1 and "Error processing part-012.csv" in r.stdout
    assert len(os.listdir(work / "checkpoints")) == 12
    (work / "fail-part-012.csv").unlink()
    before = len(processed(work))
    r = each_file(
        "--store",
        store(work),
        "--marker-dir",
        "checkpoints",
        "input/*.csv",
        "--",
        "./process-file.sh",
        "{}",
        "output-bash/{name}",
        cwd=work,
    )
    assert r.returncode == 0, r.stderr
    assert processed(work)[before:] == [f"part-{i:03d}.csv" for i in range(12, 20)]
    assert sorted(os.listdir(work / "checkpoints")) == [f"part-{i:03d}.csv.done" for i in range(20)]
    # and the bash loop, run again, finds every file done
    r = subprocess.run(["bash", str(script)], cwd=work, capture_output=True, text=True, timeout=60, check=False)
    assert r.stdout.count("already processed") == 20


# -- placeholders, names, output -----------------------------------------------------------------


def test_placeholders_and_default_job_name(work):
    make_inputs(work / "in", 2)
    args = ["in/*.csv", "--", "sh", "-c", 'echo "$1|$2|$3"', "_", "{}", "{name}", "{stem}"]
    r = each_file("--store", store(work), *args, cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["in/part-000.csv|part-000.csv|part-000", "in/part-001.csv|part-001.csv|part-001"]
    name = default_job_name("in/*.csv", args[2:], None)
    assert f"each-file job {name}" in r.stderr and name.startswith("each-file-") and len(name) == 18
    r = each_file("--store", store(work), *args, cwd=work)
    assert r.returncode == 0 and "already complete" in r.stderr and r.stdout == ""
    (work / "in" / "part-002.csv").write_text("new\n")
    r = each_file("--store", store(work), *args, cwd=work)
    assert "1 matching file(s) are not done" in r.stderr and f"restartable reset {name}" in r.stderr
    # other braces are left alone; --job names the job
    r = each_file("--store", store(work), "--job", "echoes", "in/*.csv", "--", "echo", "{x}", "{}", "{ }", cwd=work)
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "{x} in/part-000.csv { }"
    assert "each-file job" not in r.stderr


def test_parallel_output_is_prefixed(work):
    make_inputs(work / "in", 4)
    r = each_file(
        "--store", store(work), "-j", "2", "in/*.csv", "--", "sh", "-c", "echo out; echo err >&2", "_", "{}", cwd=work
    )
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [f"[part-{i:03d}.csv] out" for i in range(4)]
    assert sum(line.endswith("] err") for line in r.stderr.splitlines()) == 4


def test_output_template_renames_only_on_success(work):
    make_inputs(work / "in", 3)
    (work / "fail-part-001.csv").touch()
    r = each_file(
        "--store",
        store(work),
        "--on-error",
        "skip",
        "-o",
        "out/{stem}.txt",
        "in/*.csv",
        "--",
        "./process-file.sh",
        "{}",
        "{out}",
        cwd=work,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(work / "out")) == ["part-000.txt", "part-002.txt"]  # no temp, no partial output
    assert "1 failed and skipped: part-001.csv" in r.stderr


# -- failures ---------------------------------------------------------------------------------------


def test_stop_on_error_then_rerun_resumes(work):
    make_inputs(work / "in", 5)
    (work / "out").mkdir()
    (work / "fail-part-002.csv").touch()
    args = ["--store", store(work), "in/*.csv", "--", "./process-file.sh", "{}", "out/{name}"]
    r = each_file(*args, cwd=work)
    assert r.returncode == 1
    assert "failed on in/part-002.csv (exit status 3) after 1 attempt(s)" in r.stderr
    assert processed(work) == ["part-000.csv", "part-001.csv", "part-002.csv"]
    (work / "fail-part-002.csv").unlink()
    (work / "in" / "part-000.csv").write_text("changed since it was done\n")
    r = each_file(*args, cwd=work)
    assert r.returncode == 0, r.stderr
    assert processed(work)[3:] == ["part-000.csv", "part-002.csv", "part-003.csv", "part-004.csv"]
    assert (work / "out" / "part-000.csv").read_text().startswith("CHANGED SINCE IT WAS DONE\n")


def test_retries_with_backoff(work):
    make_inputs(work / "in", 3)
    flaky = work / "flaky.sh"
    flaky.write_text(
        '#!/bin/sh\nc="$1.count"; n=$(cat "$c" 2>/dev/null || echo 0); echo $((n+1)) > "$c"\n'
        'echo "${1##*/} try $((n+1))" >> tries.log\n'
        'case "$1" in *part-001*) [ "$n" -ge 2 ] || exit 7;; esac\n'
    )
    flaky.chmod(0o755)
    r = each_file(
        "--store", store(work), "--attempts", "3", "--backoff", "0.01", "in/*.csv", "--", "./flaky.sh", "{}", cwd=work
    )
    assert r.returncode == 0, r.stderr
    assert (work / "tries.log").read_text().splitlines() == [
        "part-000.csv try 1",
        "part-001.csv try 1",
        "part-001.csv try 2",
        "part-001.csv try 3",
        "part-002.csv try 1",
    ]
    assert r.stderr.count("retrying in") == 2


def test_skip_budget(work):
    make_inputs(work / "in", 6)
    (work / "out").mkdir()
    for i in (1, 2, 4):
        (work / f"fail-part-{i:03d}.csv").touch()
    args = [
        "--store",
        store(work),
        "--job",
        "budget",
        "--on-error",
        "skip",
        "in/*.csv",
        "--",
        "./process-file.sh",
        "{}",
        "out/{name}",
    ]
    r = each_file("--skip-budget", "2", *args, cwd=work)
    assert r.returncode == 65, r.stderr
    assert "3 files failed, more than the skip budget of 2" in r.stderr
    assert "part-005.csv" not in processed(work)
    r = each_file("--skip-budget", "3", *args, cwd=work)
    assert r.returncode == 0, r.stderr
    show = subprocess.run(
        [sys.executable, "-m", "restartable", "show", "budget", "--store", store(work)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=work,
        check=False,
    )
    assert "completed" in show.stdout and "part-001.csv" in show.stdout and "part-004.csv" in show.stdout


# -- bad input -------------------------------------------------------------------------------------


def test_bad_input_fails_clearly(work):
    cases = [
        (["nope/*.csv", "--", "true"], 65, "input directory nope of the pattern 'nope/*.csv' does not exist"),
        (["*.xyz", "--", "true"], 65, "matches no file"),
        (["--allow-empty", "*.xyz", "--", "true"], 0, "0/0 files done"),
        (["*.sh", "--", "no-such-command-anywhere", "{}"], 2, "'no-such-command-anywhere' is not found on $PATH"),
        (["*.sh", "--", "./missing.sh", "{}"], 2, "cannot run the command './missing.sh'"),
        (["-o", "out/{name}", "*.sh", "--", "cp", "{}", "out/x"], 2, "must write to {out}"),
        (["-o", "out/fixed", "*.sh", "--", "cp", "{}", "{out}"], 2, "must contain {name}"),
        (["*.sh", "--", "cp", "{}", "{out}"], 2, "{out} needs -o/--output"),
        (["*.sh"], 2, "needs a command after `--`"),
    ]
    for args, code, text in cases:
        r = each_file("--store", store(work), *args, cwd=work)
        assert r.returncode == code, (args, r.stderr)
        assert text in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


AS_NOBODY = r"""
import os, sys
import encodings.ascii, restartable._proc, restartable.cli, restartable._sqlite.store
restartable._proc._machine()
os.setgroups([]); os.setgid(65534); os.setuid(65534)
sys.exit(restartable.cli.main(sys.argv[1:]))
"""


def test_unreadable_input_file_is_77():
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    d = Path(tempfile.mkdtemp(prefix="rt-each-file-"))
    try:
        os.chmod(d, 0o777)
        make_inputs(d / "in", 3)
        os.chmod(d / "in", 0o755)
        for p in (d / "in").iterdir():
            os.chmod(p, 0o644 if p.name != "part-002.csv" else 0o600)
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                AS_NOBODY,
                "each-file",
                "--store",
                f"sqlite:///{d}/ckpt.db",
                f"{d}/in/*.csv",
                "--",
                "cat",
                "{}",
            ],
            capture_output=True,
            text=True,
            cwd=d,
            env=clean_env(),
            timeout=60,
            check=False,
        )
        assert r.returncode == 77, r.stderr
        assert "part-002.csv" in r.stderr and "readable by uid 65534" in r.stderr
        assert r.stdout == ""  # no command ran
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- signals and kills ----------------------------------------------------------------------------------

WORK_SH = r"""#!/bin/sh
# work.sh IN OUT LOG: copy IN to OUT with a trailer line, logging start and end.
echo "start ${1##*/}" >> "$3"
sleep 0.02
cat "$1" > "$2"
n=$(wc -c < "$1")
printf 'bytes %d\n' "$n" >> "$2"
echo "end ${1##*/}" >> "$3"
"""


def alive_commands(marker: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line mentions ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if marker.encode() in cmd:
            pids.append(int(entry))
    return pids


def test_sigkill_of_the_runner_group_during_parallel_run(work):
    n = 200
    make_inputs(work / "in", n)
    (work / "work.sh").write_text(WORK_SH)
    log = work / "log"
    args = [
        "--store",
        store(work),
        "--job",
        "kill",
        "-j",
        "4",
        "-o",
        "out/{name}",
        "in/*.csv",
        "--",
        "sh",
        str(work / "work.sh"),
        "{}",
        "{out}",
        str(log),
    ]
    rng = random.Random(20261127)

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    snapshots: list[tuple[int, set[str]]] = []  # (log length after the kill, files marked by then)
    kills = 0
    t0 = time.monotonic()
    while kills < 18 and time.monotonic() - t0 < 40:
        proc = start(*args, cwd=work)
        want = sum(x.startswith("end ") for x in lines()) + rng.randint(0, 14)
        while sum(x.startswith("end ") for x in lines()) < want and proc.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))
        if proc.poll() is not None:
            finish(proc)
            break  # finished before the kill
        os.killpg(proc.pid, signal.SIGKILL)
        finish(proc)
        kills += 1
        time.sleep(0.2)  # the reaper kills the commands of the dead runner
        assert alive_commands(str(work / "work.sh")) == [], "a command outlived its runner"
        with open_store(store(work)) as s:
            marked = set(s.markers("kill", "default", "files"))
        snapshots.append((len(lines()), marked))
    assert kills >= 10
    code, _, err = finish(start(*args, cwd=work))
    assert code == 0, err
    final = lines()
    names = [f"part-{i:03d}.csv" for i in range(n)]
    assert sorted(os.listdir(work / "out")) == names  # every output, and no temp file left
    for name in names:
        data = (work / "in" / name).read_bytes()
        assert (work / "out" / name).read_bytes() == data + f"bytes {len(data)}\n".encode(), name
    assert {x[4:] for x in final if x.startswith("end ")} == set(names)
    for length, marked in snapshots:
        rerun = {x[6:] for x in final[length:] if x.startswith("start ")}
        assert not (rerun & marked), f"finished files ran again: {sorted(rerun & marked)[:5]}"


TERM_SH = r"""#!/bin/sh
# term.sh IN OUT LOG: on SIGTERM, note it and finish the file anyway.
trap 'echo "term ${1##*/}" >> "$3"' TERM
echo "start ${1##*/}" >> "$3"
sleep 1 & wait $!
cp "$1" "$2"
echo "end ${1##*/}" >> "$3"
"""


def test_sigterm_launches_nothing_new_and_lets_running_commands_finish(work):
    make_inputs(work / "in", 12)
    (work / "out").mkdir()
    (work / "term.sh").write_text(TERM_SH)
    log = work / "log"
    args = [
        "--store",
        store(work),
        "--job",
        "term",
        "-j",
        "3",
        "in/*.csv",
        "--",
        "sh",
        str(work / "term.sh"),
        "{}",
        "out/{name}",
        str(log),
    ]
    proc = start(*args, cwd=work)
    deadline = time.monotonic() + 30
    while (not log.exists() or log.read_text().count("start ") < 3) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    ended_before = log.read_text().count("end ")
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 143, err
    first = log.read_text().splitlines()
    started = [x[6:] for x in first if x.startswith("start ")]
    ended = [x[4:] for x in first if x.startswith("end ")]
    assert len(started) <= ended_before + 3  # nothing launched after the signal
    assert sorted(started) == sorted(ended)  # the running ones finished...
    assert sum(x.startswith("term ") for x in first) >= 1  # ...after getting the forwarded signal
    with open_store(store(work)) as s:
        assert set(s.markers("term", "default", "files")) == set(ended)  # ...and are done
        assert s.load("term", "default").status == "interrupted"
    code, _, err = finish(start(*args, cwd=work))
    assert code == 0, err
    second = log.read_text().splitlines()[len(first) :]
    again = [x[6:] for x in second if x.startswith("start ")]
    assert not set(again) & set(started) and sorted(started + again) == [f"part-{i:03d}.csv" for i in range(12)]


def test_sigterm_grace_then_kill(work):
    make_inputs(work / "in", 4)
    stubborn = work / "stubborn.sh"
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\necho started\nsleep 30\n")
    proc = start(
        "--store",
        store(work),
        "--job",
        "grace",
        "-j",
        "2",
        "--grace",
        "0.5",
        "in/*.csv",
        "--",
        "sh",
        str(stubborn),
        "{}",
        cwd=work,
    )
    assert proc.stdout.readline().endswith("started\n")
    time.sleep(0.1)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 143 and time.monotonic() - t0 < 10, err
    assert "killing them" in err
    time.sleep(0.2)
    assert alive_commands(str(stubborn)) == []
    with open_store(store(work)) as s:
        assert s.markers("grace", "default", "files") == {}


NO_REAPER = r"""
import sys
import restartable.cli, restartable._concurrency.processes as m
m.USE_REAPER = False
sys.exit(restartable.cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("reaper", [True, False], ids=["reaper", "pdeathsig"])
def test_commands_die_with_a_killed_runner(work, reaper):
    make_inputs(work / "in", 1)
    script = work / "spawns.sh"
    # The command starts a grandchild: the reaper kills the whole group, PR_SET_PDEATHSIG the command only
    # (a script should `exec` its last command).
    script.write_text('#!/bin/sh\nsleep 30 &\necho "$!" > "$2.child"\necho "$$" > "$2.pid"\nexec sleep 31\n')
    cmd = ["each-file", "--store", store(work), "in/*.csv", "--", "sh", str(script), "{}", str(work / "p")]
    runner = [sys.executable, "-m", "restartable", *cmd] if reaper else [sys.executable, "-c", NO_REAPER, *cmd]
    proc = subprocess.Popen(
        runner, cwd=work, env=clean_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    while not (work / "p.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    pid = int((work / "p.pid").read_text())
    child = int((work / "p.child").read_text())
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    def alive(p: int) -> bool:
        try:
            with open(f"/proc/{p}/stat") as f:
                return f.read().split(") ", 1)[1][0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(pid), "the command outlived its runner"
    if reaper:
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not alive(child), "the command's child outlived the runner"
    else:
        os.kill(child, signal.SIGKILL)  # known limit of PR_SET_PDEATHSIG: clean up
