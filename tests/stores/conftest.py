"""One fixture, ``store_url``, parametrized over every store; the contract suite runs on each."""

from __future__ import annotations

import importlib
import uuid

import pytest

STORES = ["memory", "sqlite", "file", "postgresql", "redis"]
_MODULES = {
    "memory": "restartable.stores.memory",
    "sqlite": "restartable.stores.sqlite",
    "file": "restartable.stores.file",
    "postgresql": "restartable.stores.postgres",
    "redis": "restartable.stores.redis",
}


@pytest.fixture(params=STORES)
def store_url(request, tmp_path) -> str:
    """A URL naming a fresh, empty store of each kind."""
    kind = request.param
    try:
        importlib.import_module(_MODULES[kind])
    except ModuleNotFoundError as exc:
        if exc.name == _MODULES[kind]:
            pytest.skip(f"the {kind} store is not implemented yet")
        raise
    if kind == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/ckpt.db"
    if kind == "file":
        return f"file://{tmp_path}/ckpt"
    if kind == "postgresql":
        return request.getfixturevalue("postgres_url")
    return request.getfixturevalue("redis_url")


@pytest.fixture
def store(store_url):
    from restartable.stores import open_store

    s = open_store(store_url)
    yield s
    s.close()
