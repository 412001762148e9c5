"""Sources that know how to resume: keyset tables, files with markers, stages.

Plain sequences and iterators are handled by ``Job.iterate`` itself
(:mod:`restartable._cursor`). The sources here build on the job's extension API:
``job._cursor(name)`` registers a cursor loaded from the record, and
``job._loop_hooks(...)`` gives the between-items work (checkpoint when due, stop on a
signal or fencing, progress).
"""

from .postgres import PostgresTable
from .sqlite import SQLiteTable
from .stages import Pipeline, StagesChanged

__all__ = ["PostgresTable", "SQLiteTable", "Pipeline", "StagesChanged"]
