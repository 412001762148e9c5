"""Checkpoint stores, chosen by URL scheme. See :mod:`restartable.stores.base` for the contract.

A store is opened from its URL by :func:`open_store`; which class serves which scheme
is the registry's (:mod:`restartable.stores._registry`): the file and memory stores
live here, each database (PostgreSQL, SQLite, Redis) in its own package.
"""

from __future__ import annotations

import os

from .._url import parse_store_url
from ._registry import store_class
from .base import Store

__all__ = ["Store", "open_store", "DEFAULT_STORE", "resolve_store_url"]

#: The embedded default: a SQLite file under the current directory.
DEFAULT_STORE = "sqlite:///.restartable/checkpoints.db"


def resolve_store_url(store: str | None) -> str:
    """``store``, else ``$RESTARTABLE_STORE``, else :data:`DEFAULT_STORE`."""
    return store or os.environ.get("RESTARTABLE_STORE") or DEFAULT_STORE


def open_store(store: str | Store | None = None) -> Store:
    """Open the store ``store`` names (a URL or a Store, which is returned as is)."""
    if isinstance(store, Store):
        return store
    url = resolve_store_url(store)
    cls: type[Store] = store_class(url)
    return cls.from_url(parse_store_url(url, known_options=cls.options))
