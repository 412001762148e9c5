"""Checkpoint stores, chosen by URL scheme. See :mod:`restartable.stores.base` for the contract.

A store is opened from its URL by :func:`open_store`; which class serves which scheme
is the registry's (:mod:`restartable.stores._registry`): the file and memory stores
live here, each database (PostgreSQL, SQLite, Redis) in its own package.
"""

from __future__ import annotations

import dataclasses
import os

from .._url import StoreURL, parse_duration, parse_store_url
from ._registry import store_class
from .base import Store

__all__ = ["Store", "open_store", "DEFAULT_STORE", "resolve_store_url"]

#: The embedded default: a SQLite file under the current directory.
DEFAULT_STORE = "sqlite:///.restartable/checkpoints.db"


def resolve_store_url(store: str | None) -> str:
    """``store``, else ``$RESTARTABLE_STORE``, else :data:`DEFAULT_STORE`."""
    return store or os.environ.get("RESTARTABLE_STORE") or DEFAULT_STORE


def open_store(store: str | Store | None = None, *, read_only: bool = False, retry: float | None = None) -> Store:
    """Open the store ``store`` names (a URL or a Store, which is returned as is).

    ``read_only``: open it for reading only (see :mod:`restartable.stores.base`): nothing
    is created, a missing store raises :class:`~restartable.errors.StoreNotFound`, and
    every write raises UsageError. ``status``, ``show`` and ``serve`` open stores so.

    ``retry``: the most this store object waits for an unreachable server, in seconds,
    however long the URL's ``retry=`` is (the caller wants an answer that quickly; a
    job's own store keeps the URL's budget, 60 s by default). One rule, for the budget
    and the deadlines alike: the shorter wins, so a URL that names a shorter ``retry=``
    or ``read_timeout=`` keeps it, and a longer or absent one is cut to ``retry``. It is
    a quick read: the connect and reply deadlines are bounded by it too, the budget
    counts from the first attempt, and the retries are logged at DEBUG, not as
    warnings, so the one error that ends the wait is all a person sees. Stores that do
    not retry (SQLite, file, memory) ignore it.
    """
    if isinstance(store, Store):
        return store
    url = resolve_store_url(store)
    cls: type[Store] = store_class(url)
    parsed = parse_store_url(url, known_options=cls.options)
    if retry is not None:
        parsed = _quick(parsed, retry, cls.options)
    return cls.from_url(parsed, read_only=read_only)


def _quick(url: StoreURL, retry: float, known: frozenset[str]) -> StoreURL:
    """``url`` with the options of a quick read: a budget and deadlines no longer than ``retry``."""
    if "retry" not in known:
        return url
    seconds = parse_duration(retry, "retry budget")
    options = dict(url.options)
    given = url.options.get("retry")
    options["retry"] = repr(seconds if given is None else min(parse_duration(given, "retry option"), seconds))
    if "read_timeout" in known:
        # 0 (or none) means no deadline, which a quick read cannot have: one reply must not outlast the budget.
        deadline = parse_duration(url.options.get("read_timeout", "0"), "read_timeout option")
        options["read_timeout"] = repr(min(deadline, seconds) if deadline else seconds)
    return dataclasses.replace(url, options=options, quick=True)
