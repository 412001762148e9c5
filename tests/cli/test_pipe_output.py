"""Output that pipes: `status` and `show` piped are plain lines; on a terminal, the rich table.

Piped (CliRunner, whose stdout is not a terminal), `status` prints a header and one
tab-separated line per run, whatever the width (`COLUMNS=40`, 40-character job names),
with plain integers, so `grep`, `awk -F'\\t'` and `sort` work. On a real terminal (a
pseudo-terminal from the `pty` module, 40 columns wide), the same command draws the
rich table with thousands separators. The `grep`/`awk`/`sort` examples of
docs/operators.md are run through a real shell against a real store.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from restartable import Job
from restartable.cli import cli
from restartable.cli._report import PLAIN_COLUMNS

NAME = "nightly-export-" + "a" * 25  # 40 characters: wider than a 40-column terminal's cell
DOCS = Path(__file__).resolve().parents[2] / "docs" / "operators.md"


@pytest.fixture
def store(tmp_path: Path) -> str:
    """Three runs of a 40-character job: two completed, one failed at 73,958 of 200,000."""
    url = f"sqlite:///{tmp_path}/ckpt.db"
    for run in ("2026-12-01", "2026-12-02", "2026-12-03"):
        with pytest.raises(RuntimeError) if run == "2026-12-02" else _Nothing():
            with Job(NAME, run=run, store=url, progress=False) as job:
                for i in job.iterate(range(200_000), every=50_000):
                    if run == "2026-12-02" and i == 73_958:
                        raise RuntimeError("stop")
    return url


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": "40"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_status_piped_is_one_tab_separated_line_per_run_with_plain_integers(store):
    out = invoke("status", "--store", store)
    lines = out.splitlines()
    assert lines[0].split("\t") == list(PLAIN_COLUMNS)
    runs = [dict(zip(PLAIN_COLUMNS, line.split("\t"), strict=True)) for line in lines[1:]]
    assert len(runs) == 3  # `grep NAME` finds every run: one line each, never wrapped
    assert [line for line in lines if NAME in line] == lines[1:]
    failed = next(r for r in runs if r["run"] == "2026-12-02")
    assert failed["job"] == NAME and failed["state"] == "failed"
    assert failed["saved"] == "73958" and failed["total"] == "200000"
    assert "," not in out and "%" not in out  # plain integers, no percentage on its own
    assert all(len(line.split("\t")) == len(PLAIN_COLUMNS) for line in lines)


def test_show_piped_has_plain_integers_and_explains_epoch_and_iteration(store):
    out = invoke("show", NAME, "--run", "2026-12-02", "--store", store)
    assert "73958/200000" in out and "73,958" not in out
    epoch = next(line for line in out.splitlines() if line.strip().startswith("epoch"))
    assert re.search(r"epoch\s+\d{16}\s+\(the runner generation that wrote it: microseconds", epoch), epoch
    assert "iterations (each a pass over one input" in out
    assert "iteration '0': 73958/200000 saved" in out


def on_a_terminal(columns: int, *args: str) -> str:
    """Run the CLI with a pseudo-terminal ``columns`` wide as stdin, stdout and stderr; its screen text."""
    import fcntl
    import pty
    import struct
    import termios

    from procs import clean_env

    env = clean_env(COLUMNS=str(columns), LINES="50", TERM="xterm")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "restartable.cli", *args], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the command ended and the pty closed
            break
        if not data:
            break
        out += data
    os.close(master)
    assert proc.wait(timeout=30) == 0, out
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode()).replace("\r\n", "\n")


def test_status_on_a_terminal_is_the_rich_table_or_blocks_with_thousands_separators(store):
    wide = on_a_terminal(200, "status", "--store", store)
    assert "runs in" in wide and "│" in wide and "\t" not in wide  # the rich table
    row = next(line for line in wide.splitlines() if "2026-12-02" in line)
    assert NAME in row and "73,958/200,000 (37.0%)" in row and "failed" in row
    narrow = on_a_terminal(40, "status", "--store", store)
    assert "\t" not in narrow and max(len(line) for line in narrow.splitlines()) <= 40
    # Too narrow for the table: one block per run, its numbers whole, never folded apart.
    assert narrow.count("saved      73,958/200,000 (37.0%)") == 1 and narrow.count("200,000/200,000") == 2


def _doc_examples() -> list[str]:
    """The `$ restartable status ... | ...` commands of the piping section of docs/operators.md."""
    text = DOCS.read_text()
    section = text.split("## Piping `status`", 1)[1].split("\n## ", 1)[0]
    return [line[2:] for line in section.splitlines() if line.startswith("$ restartable status") and "|" in line]


def test_the_documented_grep_awk_and_sort_examples_work(store, tmp_path):
    examples = _doc_examples()
    assert len(examples) >= 3, examples
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "restartable"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m restartable.cli "$@"\n')
    script.chmod(0o700)
    from procs import clean_env

    src = str(Path(__file__).resolve().parents[2] / "src")
    env = clean_env(
        PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        RESTARTABLE_STORE=store,
        PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""),
        COLUMNS="40",
    )
    for command in examples:
        if "jq" in command and shutil.which("jq") is None:
            continue
        command = command.replace("nightly-export", NAME)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0 and done.stdout.strip(), (command, done.stdout, done.stderr)
        if "grep" in command:
            assert len(done.stdout.splitlines()) == 3, (command, done.stdout)
