"""Errors and control-flow signals.

Every error a user can cause derives from :class:`RestartableError` and carries
the exit code that the CLI and :func:`restartable.entrypoint` turn it into::

    Exception
     └── RestartableError                  exit 1
          ├── CommandFailed                exit 1   each-file: a command failed on every attempt
          ├── InitializerFailed            exit 1   job.map's initializer raised in a worker
          ├── UsageError                   exit 2   bad name, bad argument
          ├── DataError                    exit 65  not worth retrying: the data is wrong
          │    ├── InputChanged                      the input changed under a checkpoint
          │    ├── CheckpointCorrupt                 no readable checkpoint generation
          │    ├── StateNotSerializable              job.state holds a non-JSON value
          │    ├── SkipBudgetExceeded                too many items or files skipped
          │    └── StagesChanged                     a Pipeline's stages changed under a run in flight
          ├── TemporaryError               exit 75  worth retrying later
          │    ├── RunLocked                         another live runner holds the lease
          │    ├── StoreUnavailable                  the store cannot be reached or written
          │    └── CheckpointLost                    the server lost the record (restart without persistence)
          ├── PermissionDenied             exit 77
          └── ConfigError                  exit 78  bad store URL or option
               ├── MissingDriver                     the store's pip extra is not installed
               └── StoreNotFound                     a read-only open found no store at the URL

    BaseException
     └── SystemExit
          └── ControlSignal                control flow, never an error
               ├── Interrupted             exit 130 (SIGINT) / 143 (SIGTERM), after its checkpoint
               └── Fenced                  exit 75  a newer runner owns the run, or the run was reset

    TimeoutError
     └── ItemTimeout                       one attempt of a job.map item ran past timeout=

Control signals derive from :class:`SystemExit`, so a user's ``except Exception``
cannot swallow them, and uncaught they end the process with their exit code and
no traceback.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_DATA",
    "EXIT_TEMPORARY",
    "EXIT_PERMISSION",
    "EXIT_CONFIG",
    "EXIT_SIGINT",
    "EXIT_SIGTERM",
    "EXIT_CODE_TABLE",
    "ExitCode",
    "RestartableError",
    "UsageError",
    "DataError",
    "InputChanged",
    "CheckpointCorrupt",
    "StateNotSerializable",
    "SkipBudgetExceeded",
    "StagesChanged",
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

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DATA = 65
EXIT_TEMPORARY = 75
EXIT_PERMISSION = 77
EXIT_CONFIG = 78
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class ExitCode(NamedTuple):
    """One row of :data:`EXIT_CODE_TABLE`."""

    #: The process exit code(s) this row describes (130 and 143 share a row).
    codes: tuple[int, ...]
    #: What ended the process with it, as the README and the documentation say it.
    meaning: str
    #: Whether running the job again can help: True, False, or None for success
    #: (nothing to retry). Kubernetes' ``podFailurePolicy`` fails the Job on the False rows.
    retry: bool | None


#: The exit-code contract of every entry point (the CLI, :func:`restartable.entrypoint`,
#: ``restartable run``, the excepthook a Job installs), in the order the documentation
#: lists it. This tuple is the one source: ``tests/test_docs.py`` checks that the README's
#: table and the site's ``docs/exit-codes.md`` say exactly this.
EXIT_CODE_TABLE: tuple[ExitCode, ...] = (
    ExitCode((EXIT_OK,), "completed, or already completed", None),
    ExitCode((EXIT_FAILED,), "the job's own code raised", True),
    ExitCode((EXIT_USAGE,), "usage error", False),
    ExitCode((EXIT_DATA,), "data error: input changed, no readable checkpoint generation, skip budget exceeded", False),
    ExitCode(
        (EXIT_TEMPORARY,),
        "temporary: run held by another live runner after waiting, store unreachable after retries, fenced",
        True,
    ),
    ExitCode((EXIT_PERMISSION,), "permission denied", False),
    ExitCode((EXIT_CONFIG,), "configuration: bad store URL or option, store not found, missing driver extra", False),
    ExitCode((EXIT_SIGINT, EXIT_SIGTERM), "interrupted by SIGINT / SIGTERM, after its checkpoint", True),
)


class RestartableError(Exception):
    """Base of every error restartable raises. ``exit_code`` is what the CLI exits with."""

    exit_code: int = EXIT_FAILED


class UsageError(RestartableError):
    """The caller passed something invalid: a bad name, a bad argument."""

    exit_code = EXIT_USAGE


class DataError(RestartableError):
    """The data is wrong; retrying as-is will not help."""

    exit_code = EXIT_DATA


class InputChanged(DataError):
    """The input changed before the checkpointed position."""


class CheckpointCorrupt(DataError):
    """No readable generation of the checkpoint exists."""


class StateNotSerializable(DataError):
    """``job.state`` holds a value the JSON codec cannot encode."""


class SkipBudgetExceeded(DataError):
    """More items or files were skipped than the skip budget allows."""


class StagesChanged(DataError):
    """The stage list of a run in flight differs from the one it was started with.

    A :class:`restartable.Pipeline` whose stages were added, removed, renamed or reordered
    while a run is in flight: finish it with the old code, or start a new run (``run=``).
    """


class CommandFailed(RestartableError):
    """A file's command failed on every attempt and ``--on-error stop`` is in force (exit 1).

    Raised by ``restartable each-file`` (and its runner); ``--on-error skip`` with a
    ``--skip-budget`` skips the file instead.
    """


class InitializerFailed(RestartableError):
    """The ``initializer`` given to ``job.map`` raised in a worker: the run stops, whatever ``on_error`` says.

    No item is to blame, so none becomes a dead letter.
    """


class ItemTimeout(TimeoutError):
    """An attempt of a ``job.map`` item ran longer than ``timeout=``: a failed attempt, retried within ``attempts``.

    Not a :class:`RestartableError`: it is one attempt's failure, handed to the retry and
    dead-letter policy like any exception ``fn`` raises.
    """


class TemporaryError(RestartableError):
    """Worth retrying later: the run is busy or the store is unreachable."""

    exit_code = EXIT_TEMPORARY


class RunLocked(TemporaryError):
    """Another live runner holds the run's lease.

    ``owner`` describes the holder and ``lease_age`` is the seconds since it last
    renewed the lease.
    """

    def __init__(self, message: str, *, owner: object = None, lease_age: float | None = None):
        super().__init__(message)
        self.owner = owner
        self.lease_age = lease_age


class StoreUnavailable(TemporaryError):
    """The store could not be reached or written (after retries), or the disk is full."""


class CheckpointLost(TemporaryError):
    """The store's server lost the record (for example Redis restarted without persistence).

    Raised by ``save`` and ``renew`` instead of Fenced when the store can tell a lost
    record from a reset one; the job then writes its in-memory record back with
    ``Store.restore`` and warns loudly.
    """


class PermissionDenied(RestartableError):
    """The store or a path refused access."""

    exit_code = EXIT_PERMISSION


class ConfigError(RestartableError):
    """A bad store URL or option."""

    exit_code = EXIT_CONFIG


class MissingDriver(ConfigError):
    """The store's driver is not installed; the message names the pip extra."""


class StoreNotFound(ConfigError):
    """A store opened read-only does not exist: no SQLite file, no file-store directory, no
    PostgreSQL schema (exit 78).

    A read-only open (``open_store(url, read_only=True)``, the ``status`` and ``show``
    commands) never creates a store, so it reports the missing one instead: the message
    names the path or URL (redacted) and what would create it, a job's first run. A
    Redis store with no keys is not missing, only empty.
    """


class ControlSignal(SystemExit):
    """Base of control-flow signals. Not an error: see the module docstring."""

    def __init__(self, message: str, code: int):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Interrupted(ControlSignal):
    """SIGTERM or SIGINT arrived; the checkpoint was written and the lease released."""

    def __init__(self, message: str, *, signum: int):
        import signal

        super().__init__(message, EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)
        self.signum = signum


class Fenced(ControlSignal):
    """A newer runner took the run over; this runner must stop without saving.

    Also raised when the run was reset (its record deleted), and by ``renew`` once this
    runner's lease was released: a renewal delayed past the release never takes the
    lease again (the message then says "the lease was released").
    """

    def __init__(self, message: str):
        super().__init__(message, EXIT_TEMPORARY)
