"""Checkpoint stores, chosen by URL scheme. See :mod:`restartable.stores.base` for the contract."""

from __future__ import annotations

import importlib
import os

from .._url import parse_store_url, redact
from ..errors import ConfigError
from .base import Store

__all__ = ["Store", "open_store", "DEFAULT_STORE", "resolve_store_url"]

#: The embedded default: a SQLite file under the current directory.
DEFAULT_STORE = "sqlite:///.restartable/checkpoints.db"

# scheme -> "module:Class"; modules are imported only when their scheme is used, so a
# missing driver costs nothing until a URL asks for it.
_REGISTRY: dict[str, str] = {
    "sqlite": "restartable.stores.sqlite:SQLiteStore",
    "file": "restartable.stores.file:FileStore",
    "memory": "restartable.stores.memory:MemoryStore",
    "postgresql": "restartable.stores.postgres:PostgresStore",
    "postgres": "restartable.stores.postgres:PostgresStore",
    "redis": "restartable.stores.redis:RedisStore",
    "rediss": "restartable.stores.redis:RedisStore",
}


def resolve_store_url(store: str | None) -> str:
    """``store``, else ``$RESTARTABLE_STORE``, else :data:`DEFAULT_STORE`."""
    return store or os.environ.get("RESTARTABLE_STORE") or DEFAULT_STORE


def open_store(store: str | Store | None = None) -> Store:
    """Open the store ``store`` names (a URL or a Store, which is returned as is)."""
    if isinstance(store, Store):
        return store
    url = resolve_store_url(store)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    target = _REGISTRY.get(scheme)
    if target is None:
        raise ConfigError(
            f"unknown store URL scheme in {redact(url)!r}: use one of "
            + ", ".join(f"{s}://" for s in sorted(set(_REGISTRY)))
        )
    module_name, cls_name = target.split(":")
    cls: type[Store] = getattr(importlib.import_module(module_name), cls_name)
    return cls.from_url(parse_store_url(url, known_options=cls.options))
