"""One fixture, ``store_url``, parametrized over every store; the contract suite runs on each."""

from __future__ import annotations

import pytest

from procs import store_url_for

STORES = ["memory", "sqlite", "file", "postgresql", "redis"]


@pytest.fixture(params=STORES)
def store_url(request, tmp_path) -> str:
    """A URL naming a fresh, empty store of each kind."""
    return store_url_for(request.param, request, tmp_path)


@pytest.fixture
def store(store_url):
    from restartable.stores import open_store

    s = open_store(store_url)
    yield s
    s.close()
