"""The README and the documentation site say what the code does.

* The exit-code table has one source, ``restartable.errors.EXIT_CODE_TABLE``: the README's
  copy and the site's ``docs/exit-codes.md`` must equal it row for row, and it must agree
  with the exit codes the errors really carry and with the codes the manifests treat as
  permanent.
* The README stays a front door: short, with the Quick start's two commands byte for byte
  (CI and newcomers run them), links that resolve, and a first example that really is
  exactly once under SIGKILL.
* Every ``RESTARTABLE_*`` variable the package reads is in the site's one table, and every
  page is in the site's navigation.

``mkdocs build --strict`` itself runs in ``.ci/run`` (broken links, missing references).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import restartable
from restartable import errors
from restartable.errors import EXIT_CODE_TABLE, ExitCode

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: The Quick start's code block, byte for byte: CI (.ci/run) and newcomers run it.
QUICK_START = (
    "```sh\n"
    "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/restartable demo\n"
    ".venv/bin/python -m pytest\n"
    "```\n"
)

RETRY_WORDS = {"yes": True, "no": False, "—": None}


def section(text: str, heading: str) -> str:
    """The Markdown between ``heading`` (a whole line) and the next heading of any level."""
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        raise AssertionError(f"no heading {heading!r}") from None
    body: list[str] = []
    fenced = False
    for line in lines[start + 1 :]:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("#"):
            break
        body.append(line)
    return "\n".join(body)


def first_table(markdown: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows (cells stripped) of the first pipe table in ``markdown``."""
    rows: list[list[str]] = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    assert len(rows) >= 2 and set("".join(rows[1])) <= set("-: "), f"no Markdown table in:\n{markdown}"
    return rows[0], rows[2:]


def parse_exit_table(markdown: str) -> list[ExitCode]:
    """The exit-code table of a page, as EXIT_CODE_TABLE rows."""
    header, rows = first_table(markdown)
    assert header == ["code", "meaning", "retry?"], header
    parsed = []
    for code, meaning, retry in rows:
        assert retry in RETRY_WORDS, f"retry? must be one of {sorted(RETRY_WORDS)}, not {retry!r}"
        parsed.append(ExitCode(tuple(int(c) for c in code.split("/")), meaning, RETRY_WORDS[retry]))
    return parsed


def test_parse_exit_table_reads_what_it_is_given():
    """The parser cannot pass by reading nothing: a changed cell changes its result."""
    good = "| code | meaning | retry? |\n|---|---|---|\n| 0 | ok | — |\n| 130 / 143 | signal | yes |\n"
    assert parse_exit_table(good) == [ExitCode((0,), "ok", None), ExitCode((130, 143), "signal", True)]
    assert parse_exit_table(good.replace("| yes |", "| no |"))[-1].retry is False
    with pytest.raises(AssertionError):
        parse_exit_table(good.replace("| — |", "| maybe |"))


def test_readme_exit_code_table_is_the_source():
    assert parse_exit_table(section(README.read_text(), "## Exit codes")) == list(EXIT_CODE_TABLE)


def test_site_exit_code_table_is_the_source():
    assert parse_exit_table((DOCS / "exit-codes.md").read_text()) == list(EXIT_CODE_TABLE)


def test_exit_code_table_agrees_with_the_code():
    """Every EXIT_* constant has one row; 'retry? no' is exactly the set the manifests FailJob on."""
    from restartable._entry import PERMANENT_CODES

    codes = [c for row in EXIT_CODE_TABLE for c in row.codes]
    constants = {getattr(errors, n) for n in errors.__all__ if n.startswith("EXIT_") and n != "EXIT_CODE_TABLE"}
    assert sorted(codes) == sorted(constants), "every EXIT_* constant appears exactly once in EXIT_CODE_TABLE"
    assert codes == sorted(codes), "rows are in the order of their codes"
    assert {c for row in EXIT_CODE_TABLE if row.retry is False for c in row.codes} == set(PERMANENT_CODES)
    assert [row.retry for row in EXIT_CODE_TABLE if 0 in row.codes] == [None]


def _instance(cls: type[BaseException], signum: int = signal.SIGTERM) -> BaseException:
    if issubclass(cls, errors.Interrupted):
        return cls("interrupted", signum=signum)
    if issubclass(cls, errors.ControlSignal) and cls is not errors.ControlSignal:
        return cls("fenced")  # type: ignore[call-arg]
    if cls is errors.ControlSignal:
        return cls("signal", errors.EXIT_TEMPORARY)  # type: ignore[call-arg]
    return cls("message")


def test_every_error_exits_with_a_code_of_the_table():
    """Each public exception's code (through exit_code_for, as the CLI sees it) has a row."""
    codes = {c for row in EXIT_CODE_TABLE for c in row.codes}
    for name in restartable.__all__:
        obj = getattr(restartable, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            for signum in (signal.SIGINT, signal.SIGTERM):
                code = restartable.exit_code_for(_instance(obj, signum))
                assert code in codes, f"{name} exits {code}, which EXIT_CODE_TABLE does not list"


def test_site_maps_each_error_to_its_code():
    """The exit-code page's second table (code -> errors) is what exit_code_for does."""
    text = (DOCS / "exit-codes.md").read_text()
    second = text[text.index("Which error ends with which code") :]
    header, rows = first_table(second)
    assert header == ["code", "errors"]
    named: set[str] = set()
    for code_cell, errors_cell in rows:
        row_codes = {int(c) for c in code_cell.split("/")}
        for name in re.findall(r"`(\w+)`", errors_cell):
            cls = getattr(restartable, name)
            named.add(name)
            for signum in (signal.SIGINT, signal.SIGTERM):
                assert restartable.exit_code_for(_instance(cls, signum)) in row_codes, (name, code_cell)
    public_errors = {
        n
        for n in restartable.__all__
        if isinstance(getattr(restartable, n), type) and issubclass(getattr(restartable, n), BaseException)
    }
    assert public_errors - {"ControlSignal"} <= named, f"not on the exit-code page: {public_errors - named}"


def test_entry_docstring_refers_to_the_table_instead_of_repeating_it():
    from restartable import _entry as entry

    doc = entry.__doc__ or ""
    assert "EXIT_CODE_TABLE" in doc
    assert "retry?" not in doc and "130/143" not in doc, "entry.py's docstring repeats the exit-code table"


def test_cli_help_names_every_exit_code():
    """``restartable --help`` summarises the codes; it must not miss one of the table's."""
    from procs import clean_env

    proc = subprocess.run(
        [sys.executable, "-m", "restartable", "--help"],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=str(ROOT / "src")),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for row in EXIT_CODE_TABLE[1:]:
        for code in row.codes:
            assert re.search(rf"\b{code}\b", proc.stdout), f"restartable --help does not name exit code {code}"


# -- the README as a front door ---------------------------------------------------


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 200, "the README is the front door: move long material to docs/"
    assert QUICK_START in section(text, "## Quick start"), "the Quick start's two commands changed"


def test_readme_links_resolve():
    text = README.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links the documentation pages"
    for link in local:
        assert (ROOT / link).is_file(), f"README links {link}, which does not exist"
    pages = {str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md")}
    placeholders = {"docs/index.md"}
    assert pages - set(local) <= placeholders, f"pages the README does not link: {pages - set(local) - placeholders}"


def _nav_pages(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_pages(item)]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_pages(value)]
    return []


def test_every_page_is_in_the_site_navigation():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert sorted(nav) == sorted(set(nav)), "a page is twice in the navigation"
    assert set(nav) == pages, f"missing from nav: {pages - set(nav)}; nav entries without a page: {set(nav) - pages}"


def test_environment_page_lists_every_variable():
    table = (DOCS / "environment.md").read_text()
    found: set[str] = set()
    for path in (ROOT / "src" / "restartable").rglob("*.py"):
        found |= set(re.findall(r"RESTARTABLE_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    assert "RESTARTABLE_STORE" in found, "the scan found nothing: has src/ moved?"
    missing = {name for name in found if f"`{name}" not in table}
    assert not missing, f"docs/environment.md does not list {sorted(missing)}"


# -- the README's first example is exactly once ---------------------------------------

HARNESS = r"""
import os, signal, sys
from pathlib import Path

# One fault per run, each used once (a marker file per fault): a SIGKILL in the loop at a
# row, or a SIGKILL right after the on_checkpoint callback's fsync of the output (the
# output is durable, the checkpoint that records its length is not written yet).
FAULTS = [("row", 2500), ("fsync", 3), ("row", 7777), ("fsync", 1)]
fault = next((f for f in FAULTS if not Path(f"fault-{f[0]}-{f[1]}").exists()), None)
if fault:
    Path(f"fault-{fault[0]}-{fault[1]}").touch()

rows = range(10_000)

def render(row):
    if fault == ("row", row):
        os.kill(os.getpid(), signal.SIGKILL)
    return f"{row}\n".encode()

real_fsync, fsyncs = os.fsync, [0]

def fsync(fd):
    real_fsync(fd)
    if os.readlink(f"/proc/self/fd/{fd}").endswith("export.csv"):
        fsyncs[0] += 1
        if fault == ("fsync", fsyncs[0]):
            os.kill(os.getpid(), signal.SIGKILL)

os.fsync = fsync
exec(compile(Path(sys.argv[1]).read_text(), "README.md", "exec"))
"""


def test_readme_first_example_is_exactly_once_under_sigkill(tmp_path):
    """The README's first code block, run as written: killed four times, in the loop and
    between the output's fsync and the checkpoint, it ends with every row exactly once."""
    from procs import clean_env

    text = README.read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S)
    assert snippet and "on_checkpoint" in snippet.group(1), "the README's first example shows on_checkpoint"
    (tmp_path / "example.py").write_text(snippet.group(1))
    (tmp_path / "harness.py").write_text(HARNESS)
    env = clean_env(PYTHONPATH=str(ROOT / "src"))
    codes = []
    for _ in range(8):
        proc = subprocess.run(
            [sys.executable, "harness.py", "example.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        codes.append(proc.returncode)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert codes == [-signal.SIGKILL] * 4 + [0], codes
    lines = (tmp_path / "export.csv").read_text().splitlines()
    assert lines == [str(i) for i in range(10_000)]
    # A rerun of the completed run writes nothing more.
    proc = subprocess.run(
        [sys.executable, "harness.py", "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "export.csv").read_text().splitlines() == lines
