"""The URL-scheme registry: which package holds each database's store and queue storage.

This is the only place that names the databases. A new database is one package
(``restartable/_<database>/``: its store, its sources, its queue, its schema) plus
one line in :data:`_REGISTRY`. Modules are imported only when their scheme is used,
so a missing driver costs nothing until a URL asks for it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from .._url import parse_store_url, redact
from ..errors import ConfigError

__all__ = ["queue_backend", "schemes", "store_class"]


@dataclass(frozen=True)
class _Backend:
    """Where a scheme's code lives: ``"module:Class"`` of its store, and of its queue storage (or None)."""

    store: str
    queue: str | None = None


_POSTGRES = _Backend("restartable._postgres.store:PostgresStore", "restartable._postgres.queue:PostgresQueue")
_REDIS = _Backend("restartable._redis.store:RedisStore", "restartable._redis.queue:RedisQueue")

#: URL scheme -> its database's code.
_REGISTRY: dict[str, _Backend] = {
    "sqlite": _Backend("restartable._sqlite.store:SQLiteStore"),
    "file": _Backend("restartable.stores.file:FileStore"),
    "memory": _Backend("restartable.stores.memory:MemoryStore"),
    "postgresql": _POSTGRES,
    "postgres": _POSTGRES,
    "redis": _REDIS,
    "rediss": _REDIS,
}


def _load(target: str) -> Any:
    module_name, cls_name = target.split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].lower() if ":" in url else ""


def schemes() -> list[str]:
    """Every URL scheme a store can be opened with."""
    return sorted(_REGISTRY)


def store_class(url: str) -> Any:
    """The store class for ``url``'s scheme; ConfigError names the known schemes."""
    backend = _REGISTRY.get(_scheme(url))
    if backend is None:
        raise ConfigError(
            f"unknown store URL scheme in {redact(url)!r}: use one of " + ", ".join(f"{s}://" for s in schemes())
        )
    return _load(backend.store)


def queue_backend(url: str) -> type[Any]:
    """The queue storage class for store URL ``url`` (a :class:`restartable._queue_types.QueueBackend`).

    Raises ConfigError for a store that workers cannot share (sqlite, file, memory).
    """
    backend = _REGISTRY.get(_scheme(url))
    if backend is None or backend.queue is None:
        shared: dict[_Backend, str] = {}
        for scheme, known in _REGISTRY.items():  # each database once, by its first scheme
            if known.queue is not None:
                shared.setdefault(known, f"{scheme}://")
        raise ConfigError(
            f"a work queue needs a {' or '.join(shared.values())} store shared by its workers, not "
            f"{parse_store_url(url).display if backend else redact(url)}"
        )
    return _load(backend.queue)  # type: ignore[no-any-return]
