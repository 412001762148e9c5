"""restartable: crash-proof long-running batch jobs.

A job saves its progress to a store as it runs; when its process is killed, its
pod evicted or its node lost, the next run resumes where the last one stopped,
losing no finished work and never corrupting its checkpoint::

    from restartable import Job

    with Job("nightly-export", run="2026-11-27") as job:
        for item in job.iterate(items, every=100, seconds=10):
            process(item)
"""

from __future__ import annotations

from ._checkpoint import Checkpoint, HistoryEntry, Owner
from ._entry import entrypoint, exit_code_for, run_main
from ._job import Job
from ._pipeline import Pipeline
from ._postgres.table import PostgresTable
from ._sqlite.table import SQLiteTable
from .errors import (
    CheckpointCorrupt,
    CheckpointLost,
    CommandFailed,
    ConfigError,
    ControlSignal,
    DataError,
    Fenced,
    InitializerFailed,
    InputChanged,
    Interrupted,
    ItemTimeout,
    MissingDriver,
    PermissionDenied,
    RestartableError,
    RunLocked,
    SkipBudgetExceeded,
    StagesChanged,
    StateNotSerializable,
    StoreNotFound,
    StoreUnavailable,
    TemporaryError,
    UsageError,
)
from .queue import WorkQueue
from .stores import DEFAULT_STORE, Store, open_store

__version__ = "0.1.0"

__all__ = [
    "Job",
    "WorkQueue",
    "Pipeline",
    "PostgresTable",
    "SQLiteTable",
    "StagesChanged",
    "Store",
    "open_store",
    "DEFAULT_STORE",
    "Checkpoint",
    "HistoryEntry",
    "Owner",
    "entrypoint",
    "run_main",
    "exit_code_for",
    "RestartableError",
    "UsageError",
    "DataError",
    "InputChanged",
    "CheckpointCorrupt",
    "StateNotSerializable",
    "SkipBudgetExceeded",
    "CommandFailed",
    "InitializerFailed",
    "ItemTimeout",
    "TemporaryError",
    "RunLocked",
    "StoreUnavailable",
    "CheckpointLost",
    "PermissionDenied",
    "ConfigError",
    "MissingDriver",
    "StoreNotFound",
    "ControlSignal",
    "Interrupted",
    "Fenced",
]


def _show_the_public_path() -> None:
    # httpx's habit: documentation and tracebacks name `restartable.Job`, not the private
    # module a class happens to live in (restartable._job.Job). Constants have no __module__.
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) or callable(obj):
            obj.__module__ = __name__


_show_the_public_path()
