"""The script entry point: library errors and signals become the documented exit codes.

::

    import restartable

    @restartable.entrypoint
    def main() -> None:
        with restartable.Job("export") as job:
            ...

    if __name__ == "__main__":
        main()

The exit codes, what each means and whether a retry can help are listed once, in
:data:`restartable.errors.EXIT_CODE_TABLE` (the README and the documentation's exit-code
page are checked against it); the constants ``EXIT_*`` of :mod:`restartable.errors` name them.

A library error ends in one line on stderr, never a traceback; the job's own
exceptions keep their traceback (it is the user's bug to read).

The decorator is optional. Creating a :class:`~restartable.Job` in the main thread of
a script installs :func:`install_excepthook`, so a library error that escapes the
script ends the process with its code all the same; ``restartable run SCRIPT [ARGS]``
(or ``python -m restartable run ...``) runs any script under the same contract. A permanent error
(2, 65, 77, 78) also writes its line to the Kubernetes termination log
(``$RESTARTABLE_TERMINATION_LOG``, default ``/dev/termination-log`` when it exists).
"""

from __future__ import annotations

import atexit
import functools
import os
import runpy
import sys
import threading
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, NoReturn, TypeVar

from .errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PERMISSION,
    EXIT_SIGINT,
    EXIT_USAGE,
    ControlSignal,
    RestartableError,
)

__all__ = [
    "entrypoint",
    "run_main",
    "run_script",
    "exit_code_for",
    "install_excepthook",
    "PERMANENT_CODES",
    "report_error",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes not worth retrying: the Kubernetes manifests FailJob on them.
PERMANENT_CODES = frozenset({EXIT_USAGE, EXIT_DATA, EXIT_PERMISSION, EXIT_CONFIG})


def exit_code_for(exc: BaseException | None) -> int:
    """The documented exit code for an outcome (None means success)."""
    if exc is None:
        return EXIT_OK
    if isinstance(exc, ControlSignal):
        return int(exc.code) if isinstance(exc.code, int) else EXIT_FAILED
    if isinstance(exc, RestartableError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_SIGINT
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_FAILED)
    return EXIT_FAILED


def _termination_log(line: str) -> None:
    path = os.environ.get("RESTARTABLE_TERMINATION_LOG", "/dev/termination-log")
    if not path or not os.path.exists(path):
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(line[:4000] + "\n")
    except OSError:
        pass  # best effort: the exit code still says it all


def report_error(exc: BaseException, *, prog: str = "restartable") -> int:
    """Print the one-line report for ``exc`` on stderr and return its exit code."""
    code = exit_code_for(exc)
    if isinstance(exc, ControlSignal):
        pass  # already logged by the job when it was raised
    elif isinstance(exc, RestartableError):
        line = f"{prog}: error: {exc}"
        sys.stderr.write(line + "\n")
        if code in PERMANENT_CODES:
            _termination_log(line)
    elif isinstance(exc, KeyboardInterrupt):
        sys.stderr.write(f"{prog}: interrupted\n")
    elif not isinstance(exc, SystemExit):
        traceback.print_exception(exc)
    sys.stderr.flush()
    return code


def run_main(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Call ``fn`` and return the exit code its outcome maps to (errors reported on stderr)."""
    try:
        fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - mapping every outcome is the point
        return report_error(exc)
    return EXIT_OK


def entrypoint(fn: F) -> F:
    """Decorate a job script's ``main``: calling it runs it and exits with the documented code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> NoReturn:
        sys.exit(run_main(fn, *args, **kwargs))

    return wrapper  # type: ignore[return-value]


def _exit_like_the_interpreter(code: int) -> None:
    """End the process with ``code`` after what a normal exit does: wait for non-daemon
    threads, run ``atexit`` handlers, flush stdout and stderr.

    Python gives an uncaught exception exit code 1 whatever its type, and nothing after
    ``sys.excepthook`` can change it, so the hook does the interpreter's shutdown steps
    itself and ends with ``os._exit``.
    """
    me = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not me and not thread.daemon and thread.is_alive():
            thread.join()
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def install_excepthook() -> None:
    """Make an uncaught library error end this script with its documented exit code.

    Installed by :class:`~restartable.Job` when it is created in the main thread; does
    nothing in an interactive session (the prompt must survive an error), in another
    thread, or when already installed. The hook chains the one it replaces (rich's,
    Sentry's): exceptions that are not ours go to it unchanged and exit 1 with their
    traceback. Ours print one line (and the termination-log line for permanent codes)
    and exit with their code once non-daemon threads ended and ``atexit`` ran.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if hasattr(sys, "ps1") or sys.flags.interactive:
        return
    if getattr(sys.excepthook, "_restartable", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if not isinstance(exc, RestartableError):
            previous(exc_type, exc, tb)
            return
        _exit_like_the_interpreter(report_error(exc))

    hook._restartable = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def run_script(path: str, args: list[str]) -> int:
    """Run the Python script ``path`` as ``__main__`` with ``args``; return its exit code.

    What ``restartable run`` does: the script's directory leads ``sys.path`` and
    ``sys.argv`` is ``[path, *args]``, as ``python path args`` would have them; library
    errors become their documented codes with one line, the script's own exceptions
    exit 1 with their traceback.
    """
    if not os.path.isfile(path):
        from .errors import UsageError

        return report_error(UsageError(f"no such script: {path!r}"))
    sys.argv = [path, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    return run_main(runpy.run_path, path, run_name="__main__")
