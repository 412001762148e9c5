"""Whether this is CI, and what a test does when a server CI must provide is missing.

A plain module (not ``conftest``): several folders have a ``conftest.py``, so
``from conftest import ...`` would get whichever one was imported first.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip outside CI, fail in CI: a server that CI must provide is missing."""
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)
