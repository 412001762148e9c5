"""The public API is complete, documented, and importable without the optional drivers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import restartable

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_all_is_complete_and_importable():
    public = {n for n in dir(restartable) if not n.startswith("_") and n[0].isupper() or n in (
        "entrypoint", "run_main", "exit_code_for", "open_store")}
    missing = public - set(restartable.__all__) - {"DEFAULT_STORE"}
    assert not missing, f"public names not in __all__: {missing}"
    for name in restartable.__all__:
        assert getattr(restartable, name) is not None


def test_every_public_name_has_a_docstring():
    for name in restartable.__all__:
        obj = getattr(restartable, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"


def test_readme_mentions_the_main_api():
    for name in ("Job", "iterate", "job.state", "checkpoint()", "complete()", "entrypoint", "Interrupted",
                 "Fenced", "RestartableError", "PostgresTable", "Pipeline", "job.map", "job.files"):
        assert name in README, f"README does not mention {name}"


def test_import_does_not_load_drivers():
    code = ("import sys, restartable; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('psycopg', 'redis', 'tenacity', 'prometheus_client', 'yaml')]; print(bad); assert not bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
