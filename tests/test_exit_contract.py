"""The exit-code contract holds for a plain script: no decorator, one line, the documented code.

Every case runs a real script in a subprocess, both as ``python script.py`` and as
``python -m restartable run script.py``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from restartable.errors import EXIT_DATA, EXIT_FAILED, EXIT_TEMPORARY, EXIT_USAGE

FORMS = ["python", "restartable-run"]


def _run(tmp_path: Path, body: str, form: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "job_script.py"
    script.write_text(textwrap.dedent(body))
    argv = (
        [sys.executable, str(script), *args]
        if form == "python"
        else [sys.executable, "-m", "restartable", "run", str(script), *args]
    )
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    )


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("restartable: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("form", FORMS)
def test_a_bad_name_exits_2(tmp_path: Path, form: str) -> None:
    done = _run(
        tmp_path,
        """
        from restartable import Job
        with Job("my job", store="memory://") as job:
            pass
    """,
        form,
    )
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "job name" in _one_line(done.stderr)


@pytest.mark.parametrize("form", FORMS)
def test_a_second_runner_exits_75(tmp_path: Path, form: str) -> None:
    store = f"sqlite:///{tmp_path}/ckpt.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from restartable import Job
            with Job("held", store={store!r}, progress=False) as job:
                print("holding", flush=True)
                sys.stdin.readline()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        done = _run(
            tmp_path,
            f"""
            from restartable import Job
            with Job("held", store={store!r}, progress=False) as job:
                print("should not run")
        """,
            form,
        )
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    assert done.returncode == EXIT_TEMPORARY, done.stderr
    assert "is held by" in _one_line(done.stderr)
    assert "should not run" not in done.stdout


@pytest.mark.parametrize("form", FORMS)
def test_a_changed_input_exits_65(tmp_path: Path, form: str) -> None:
    body = f"""
        import sys
        from restartable import Job
        items = [sys.argv[1] + str(i) for i in range(10)]
        with Job("changes", store="sqlite:///{tmp_path}/ckpt.db", progress=False) as job:
            for item in job.iterate(items, every=1):
                if item.endswith("5") and sys.argv[1] == "a":
                    break
    """
    first = _run(tmp_path, body, form, "a")
    assert first.returncode == 0, first.stderr
    done = _run(tmp_path, body, form, "b")
    assert done.returncode == EXIT_DATA, done.stderr
    assert "changed" in _one_line(done.stderr)


@pytest.mark.parametrize("form", FORMS)
def test_the_jobs_own_exception_keeps_its_traceback_and_exits_1(tmp_path: Path, form: str) -> None:
    done = _run(
        tmp_path,
        """
        from restartable import Job
        with Job("own", store="memory://", progress=False) as job:
            raise ValueError("the user's bug")
    """,
        form,
    )
    assert done.returncode == EXIT_FAILED
    assert "Traceback (most recent call last)" in done.stderr and "ValueError: the user's bug" in done.stderr


@pytest.mark.parametrize("form", FORMS)
def test_threads_atexit_and_buffered_output_finish_before_the_exit(tmp_path: Path, form: str) -> None:
    done = _run(
        tmp_path,
        f"""
        import atexit, sys, threading, time
        from restartable import Job

        def late():
            time.sleep(0.5)
            open({str(tmp_path / "thread.txt")!r}, "w").write("thread done")

        threading.Thread(target=late).start()           # non-daemon: the exit waits for it
        atexit.register(lambda: open({str(tmp_path / "atexit.txt")!r}, "w").write("atexit ran"))
        sys.stdout.write("buffered, never flushed")      # stdout is a pipe: block-buffered
        Job("bad name!", store="memory://")
    """,
        form,
    )
    assert done.returncode == EXIT_USAGE, done.stderr
    _one_line(done.stderr)
    assert done.stdout == "buffered, never flushed"
    assert (tmp_path / "thread.txt").read_text() == "thread done"
    assert (tmp_path / "atexit.txt").read_text() == "atexit ran"


def test_an_existing_excepthook_is_chained_for_other_exceptions(tmp_path: Path) -> None:
    done = _run(
        tmp_path,
        """
        import sys
        def mine(t, e, tb):
            sys.stderr.write("MY HOOK: " + repr(e) + "\\n")
        sys.excepthook = mine
        from restartable import Job
        with Job("chained", store="memory://", progress=False):
            pass
        raise KeyError("k")
    """,
        "python",
    )
    assert done.returncode == EXIT_FAILED
    assert "MY HOOK: KeyError('k')" in done.stderr


def test_run_refuses_a_missing_script(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "restartable", "run", str(tmp_path / "nope.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_USAGE
    assert "nope.py" in done.stderr and "Traceback" not in done.stderr


def test_run_passes_arguments_and_the_scripts_own_exit_code(tmp_path: Path) -> None:
    done = _run(
        tmp_path,
        """
        import sys
        print(sys.argv[1:])
        sys.exit(3)
    """,
        "restartable-run",
        "--flag",
        "x",
    )
    assert done.returncode == 3
    assert done.stdout.strip() == "['--flag', 'x']"
