"""Files with per-file done markers, and atomic outputs.

::

    with Job("convert") as job:
        for f in job.files("data/input/*.csv", attempts=3, on_error="skip"):
            with f, job.output(f"data/output/{f.name}") as tmp:
                convert(f.path, tmp)

The contract:

* ``job.files(pattern)`` takes a glob (``**`` recurses) or a directory (its regular,
  non-hidden files) and yields the files not yet done, sorted by their path relative
  to the pattern's fixed directory: a stable order, and markers that survive a change
  of working directory.
* A file is done when the loop asks for the next one, as with ``iterate``. Marking it
  is one O(1) store write (``Store.mark``) of its size and mtime; the markers are read
  once, when the loop starts. With ``recheck`` (the default) a file whose size or
  mtime changed since it was marked is processed again.
* Failures: use the yielded handle as a context manager (``with f:``). An exception
  in the block is retried ``attempts`` times in all, sleeping at least ``backoff``
  seconds, doubled at each retry (with jitter, at most 60 s: :mod:`restartable._retry`);
  the generator yields the same file again. When the
  attempts are spent, ``on_error="stop"`` (the default) lets the exception out: the
  run fails, its checkpoint kept, and the file is not done. ``on_error="skip"``
  records the file and its error in the cursor's ``failed`` map (``restartable show``
  prints it) and goes on; more than ``skip_budget`` failed files raise
  :class:`~restartable.errors.SkipBudgetExceeded` (exit 65). A rerun tries failed
  files again. Without ``with``, an exception simply propagates. Code after the
  ``with`` block runs once per attempt.
* ``marker_dir`` also writes an empty ``<marker_dir>/<file>.done`` for each done file,
  as the article's bash loop does, and honours existing ones (a run of that loop
  can be continued by ``job.files`` or ``restartable each-file --marker-dir``).
* ``job.output(path)`` yields a temp path beside ``path``; when the block succeeds the
  temp file is fsynced and renamed over ``path`` and the directory fsynced, so a crash
  never leaves a half-written output under the final name. On an exception the temp
  file is removed. A temp left by a killed process is named ``.NAME.HEX.tmp``.
* Bad input fails before any work with a message naming the path and the fix: a
  missing input directory or a pattern matching nothing (DataError, exit 65; an
  empty match is accepted when files of this cursor were already done, or with
  ``allow_empty``), an unreadable input file or a marker directory that cannot be
  written (PermissionDenied, exit 77).
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple, Self

from .._retry import DEFAULT_BACKOFF_SECONDS, Backoff
from .._run import DEFAULT_SECONDS, RunContext, check_every
from ..errors import DataError, PermissionDenied, SkipBudgetExceeded, UsageError
from ..stores._localfs import FILE_MODE, fsync_dir

__all__ = ["Entry", "FileItem", "FileSet", "atomic_output", "commit_output", "iterate_files", "temp_path_for"]

log = logging.getLogger("restartable")

OnError = Literal["stop", "skip"]

#: Longest error text kept per failed file in the checkpoint.
ERROR_TEXT_LIMIT = 300
#: How many paths an error message lists before "...".
SHOWN_PATHS = 5


class Entry(NamedTuple):
    """One input file: ``key`` is its path relative to the pattern's base directory."""

    key: str
    path: str


def _entry(rel: str, path: str) -> Entry:
    """An entry whose key is valid text: a name that is not UTF-8 (surrogate-escaped by
    Python) gets its undecodable bytes spelled ``\\xNN``, stable across runs."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        rel = os.fsencode(rel).decode("utf-8", "backslashreplace")
    return Entry(rel, path)


# -- resolving the input --------------------------------------------------------------


def _base_dir(pattern: str) -> str:
    """The leading directories of ``pattern`` that hold no glob magic."""
    parts: list[str] = []
    # Walk from the left: the first component with magic ends the fixed part.
    for comp in pattern.split(os.sep):
        if glob.has_magic(comp):
            break
        parts.append(comp)
    head = os.sep.join(parts)
    if pattern.startswith(os.sep) and not head:
        head = os.sep
    return head or "."


def _listing_error(exc: OSError, path: str, what: str) -> Exception:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(
            f"permission denied reading the {what} {path}: make it readable (and searchable) by uid "
            f"{os.geteuid()}, or run as its owner"
        )
    return DataError(f"cannot read the {what} {path}: {exc.strerror or exc}")


def resolve(pattern: str | os.PathLike[str]) -> tuple[str, list[Entry]]:
    """``(base directory, entries sorted by key)`` for a glob, a directory or one file.

    Raises DataError when the input directory is missing, PermissionDenied when it
    cannot be listed. An empty list is returned as is (the caller decides).
    """
    text = os.fspath(pattern)
    if not text:
        raise UsageError("job.files: the pattern is empty; pass a glob ('data/*.csv') or a directory")
    if not glob.has_magic(text):
        if os.path.isdir(text):
            try:
                with os.scandir(text) as it:
                    found = [e.path for e in it if not e.name.startswith(".") and e.is_file()]
            except OSError as exc:
                raise _listing_error(exc, text, "input directory") from exc
            return text, sorted(_entry(os.path.relpath(p, text), p) for p in found)
        if os.path.isfile(text):
            base = os.path.dirname(text) or "."
            return base, [_entry(os.path.basename(text), text)]
        parent = os.path.dirname(text) or "."
        if not os.path.isdir(parent):
            raise DataError(f"the input directory {parent} does not exist (for {text}): create it, or fix the path")
        raise DataError(f"the input {text} does not exist: fix the path, or pass a glob or a directory")
    base = _base_dir(text)
    if not os.path.isdir(base):
        raise DataError(
            f"the input directory {base} of the pattern {text!r} does not exist: create it, or fix the pattern"
        )
    try:
        with os.scandir(base):  # glob() hides an unlistable directory as "no match": check it ourselves
            pass
    except OSError as exc:
        raise _listing_error(exc, base, "input directory") from exc
    entries = [_entry(os.path.relpath(p, base), p) for p in glob.glob(text, recursive=True) if os.path.isfile(p)]
    return base, sorted(entries)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _marker_value(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _shown(paths: list[str]) -> str:
    head = ", ".join(paths[:SHOWN_PATHS])
    return head + (f" and {len(paths) - SHOWN_PATHS} more" if len(paths) > SHOWN_PATHS else "")


# -- the shared core of job.files and each-file -----------------------------------------


class FileSet:
    """The files of one cursor: which are pending, and marking them done or failed.

    Shared by :func:`iterate_files` and ``restartable each-file``. :meth:`mark` is safe
    to call from worker threads (it only writes the store, which is thread-safe, and a
    ``.done`` file); :meth:`count_done` and :meth:`record_failure` change the cursor and
    belong to the thread that saves checkpoints.
    """

    def __init__(
        self,
        job: RunContext,
        pattern: str | os.PathLike[str],
        *,
        name: str | None,
        recheck: bool,
        marker_dir: str | os.PathLike[str] | None,
        allow_empty: bool,
        skip_budget: int | None,
        label: str | None = None,
    ) -> None:
        self.job = job
        self.pattern = os.fspath(pattern)
        self.recheck = recheck
        self.skip_budget = skip_budget
        self.marker_dir = os.fspath(marker_dir) if marker_dir is not None else None
        self.base, entries = resolve(pattern)
        self.cursor = job.cursor(name, total=len(entries))
        self.describe = label or f"{job.label} files {self.pattern!r}" + (
            "" if self.cursor.name.isdigit() else f" (iteration {self.cursor.name!r})"
        )
        markers = job.store.markers(job.name, job.run, self.cursor.name)
        if not entries and not markers and not allow_empty:
            raise DataError(
                f"{self.describe}: the pattern matches no file in {self.base}: check the pattern and "
                "that the input is there (pass allow_empty=True, or --allow-empty, to accept it)"
            )
        if self.marker_dir is not None:
            self._check_marker_dir()
        failed = self.cursor.extra.get("failed")
        #: Failed (skipped) files of this run: key -> error text. Saved with the cursor.
        self.failed: dict[str, str] = dict(failed) if isinstance(failed, dict) else {}
        if self.failed:  # (an empty map is only saved once there was something to clear)
            self.cursor.extra["failed"] = self.failed
        self.pending: list[Entry] = []
        changed: list[str] = []
        for entry in entries:
            st = _stat(entry.path)
            if st is None:
                continue  # vanished since the listing
            verdict = self._done(entry, st, markers.get(entry.key))
            if verdict is True:
                continue
            if verdict == "changed":
                changed.append(entry.key)
            self.pending.append(entry)
        self.cursor.total = len(entries)
        self.cursor.offset = len(entries) - len(self.pending)
        if self.pending:
            self.cursor.finished = False
        if changed:
            log.info(
                "%s: %d file(s) changed since they were done, processing them again: %s",
                self.describe,
                len(changed),
                _shown(changed),
            )
        unreadable = [e.path for e in self.pending if not os.access(e.path, os.R_OK)]
        if unreadable:
            raise PermissionDenied(
                f"{self.describe}: cannot read {len(unreadable)} input file(s): {_shown(unreadable)}; make them "
                f"readable by uid {os.geteuid()} (chmod/chown) and rerun; no file was processed in this run"
            )

    # -- deciding what is done ---------------------------------------------------------

    def _done(self, entry: Entry, st: os.stat_result, marker: Any) -> bool | str:
        """True (done), False (never done) or "changed" (done, then modified)."""
        if marker is not None:
            if not self.recheck:
                return True
            same = (
                isinstance(marker, dict)
                and marker.get("size") == st.st_size
                and marker.get("mtime_ns") == st.st_mtime_ns
            )
            return True if same else "changed"
        if self.marker_dir is not None:
            done_st = _stat(self._done_path(entry.key))
            if done_st is not None:
                if not self.recheck or st.st_mtime_ns <= done_st.st_mtime_ns:
                    return True
                return "changed"
        return False

    def stat(self, entry: Entry) -> os.stat_result | None:
        """The file's stat right before it is processed, or None (and a warning) when it vanished."""
        st = _stat(entry.path)
        if st is None:
            log.warning("%s: %s disappeared before it was processed; skipping it", self.describe, entry.path)
        return st

    # -- marker directory ----------------------------------------------------------------

    def _done_path(self, key: str) -> str:
        assert self.marker_dir is not None
        return os.path.join(self.marker_dir, key + ".done")

    def _check_marker_dir(self) -> None:
        """Create the marker directory and prove it writable with a probe file, before any work."""
        assert self.marker_dir is not None
        where = self.marker_dir
        try:
            os.makedirs(where, exist_ok=True)
            probe = os.path.join(where, f".restartable-probe-{os.urandom(6).hex()}")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
            os.unlink(probe)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise PermissionDenied(
                    f"{self.describe}: the marker directory {where} is not writable by uid {os.geteuid()} "
                    f"({exc.strerror}): fix its permissions or choose another marker_dir; nothing was processed "
                    "in this run"
                ) from exc
            raise DataError(
                f"{self.describe}: cannot use the marker directory {where}: {exc.strerror or exc}; "
                "choose another marker_dir"
            ) from exc

    def _touch_done(self, key: str) -> None:
        path = self._done_path(key)
        parent = os.path.dirname(path)
        if os.sep in key:
            os.makedirs(parent, exist_ok=True)
        # An empty file: its creation is atomic by itself. Bump its mtime when it exists
        # (the file changed and was processed again), so the mtime comparison holds.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            os.utime(fd)
        finally:
            os.close(fd)
        fsync_dir(parent)

    # -- marking ---------------------------------------------------------------------------

    def mark(self, entry: Entry, st: os.stat_result) -> None:
        """Record ``entry`` as done with the stat it had when processed: O(1), fenced, thread-safe."""
        self.job.mark(self.cursor.name, entry.key, _marker_value(st))
        if self.marker_dir is not None:
            self._touch_done(entry.key)

    def count_done(self, entry: Entry) -> None:
        """Advance the cursor after :meth:`mark` (saving thread only)."""
        self.cursor.offset += 1
        self.failed.pop(entry.key, None)

    def record_failure(self, entry: Entry, error: str, cause: BaseException | None = None) -> None:
        """Record a skipped file; raise SkipBudgetExceeded when more files failed than the budget."""
        self.failed[entry.key] = error[:ERROR_TEXT_LIMIT]
        self.cursor.extra["failed"] = self.failed
        log.warning("%s: skipping %s after its last attempt failed: %s", self.describe, entry.path, error)
        if self.skip_budget is not None and len(self.failed) > self.skip_budget:
            raise SkipBudgetExceeded(
                f"{self.describe}: {len(self.failed)} files failed, more than the skip budget of "
                f"{self.skip_budget}: {_shown(sorted(self.failed))}; fix them (or raise the budget) and rerun: "
                "the done files are skipped"
            ) from cause


# -- job.files ------------------------------------------------------------------------------

_RUNNING, _RETRY, _FAILED, _SKIPPED = "running", "retry", "failed", "skipped"


class FileItem:
    """A file handed out by ``job.files``: a path (``os.fspath``, ``str``) and a context manager.

    ``path`` (a :class:`~pathlib.Path`), ``name``, ``stem``, ``key`` (the path relative
    to the pattern's base directory), ``attempt`` (1 on the first try), ``error`` (the
    last attempt's exception, if any).
    """

    __slots__ = ("_loop", "_state", "_str", "attempt", "error", "key", "path")

    def __init__(self, entry: Entry, loop: _FileLoop) -> None:
        self._str = entry.path
        self.path = Path(entry.path)
        self.key = entry.key
        self.attempt = 0
        self.error: BaseException | None = None
        self._loop = loop
        self._state = _RUNNING

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def stem(self) -> str:
        return self.path.stem

    def __fspath__(self) -> str:
        return self._str

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return f"FileItem({self._str!r}, attempt={self.attempt})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FileItem):
            return self._str == other._str
        if isinstance(other, (str, os.PathLike)):
            return self._str == os.fspath(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._str)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        return self._loop.exited(self, exc)


class _FileLoop:
    """Retry and skip decisions for the handles of one ``job.files`` loop."""

    def __init__(self, fs: FileSet, *, attempts: int, on_error: OnError) -> None:
        self.fs = fs
        self.attempts = attempts
        self.on_error = on_error

    def exited(self, item: FileItem, exc: BaseException | None) -> bool:
        """``with f:`` ended. Returns True to swallow the exception (retry or skip)."""
        if exc is None or not isinstance(exc, Exception):
            return False  # success, or a control signal (Interrupted, Fenced, KeyboardInterrupt): never ours
        item.error = exc
        if item.attempt < self.attempts:
            item._state = _RETRY
            return True
        if self.on_error == "stop":
            item._state = _FAILED
            exc.add_note(
                f"restartable: {item.path} failed after {item.attempt} attempt(s); it is not marked "
                "done, a rerun processes it again"
            )
            return False
        item._state = _SKIPPED
        entry = Entry(item.key, os.fspath(item))
        self.fs.record_failure(entry, f"{type(exc).__name__}: {exc}", exc)
        return True


def _pause(job: RunContext, seconds: float) -> None:
    """Sleep ``seconds``, returning early once a signal asked the job to stop."""
    end = time.monotonic() + seconds
    while job.signal is None:
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def _check_options(
    attempts: int, backoff: float, on_error: str, skip_budget: int | None, every: int | None, seconds: float | None
) -> None:
    if not isinstance(attempts, int) or attempts < 1:
        raise UsageError(f"attempts must be an int >= 1, not {attempts!r}")
    if backoff < 0:
        raise UsageError(f"backoff must be >= 0 seconds, not {backoff!r}")
    if on_error not in ("stop", "skip"):
        raise UsageError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
    if skip_budget is not None and (not isinstance(skip_budget, int) or skip_budget < 0):
        raise UsageError(f"skip_budget must be an int >= 0 or None, not {skip_budget!r}")
    check_every(every)
    if seconds is not None and seconds <= 0:
        raise UsageError(f"seconds must be positive, not {seconds!r}")


def iterate_files(
    job: RunContext,
    pattern: str | os.PathLike[str],
    *,
    name: str | None = None,
    recheck: bool = True,
    attempts: int = 1,
    backoff: float = DEFAULT_BACKOFF_SECONDS,
    on_error: OnError = "stop",
    skip_budget: int | None = None,
    marker_dir: str | os.PathLike[str] | None = None,
    allow_empty: bool = False,
    every: int | None = None,
    seconds: float | None = None,
    progress: bool | None = None,
) -> Iterator[FileItem]:
    """Yield the files of ``pattern`` not yet done; see the module docstring for the contract."""
    if job.record is None:
        raise UsageError(f"{job.label} is not started: call job.files inside `with Job(...) as job:`")
    _check_options(attempts, backoff, on_error, skip_budget, every, seconds)
    if every is None and seconds is None:
        seconds = DEFAULT_SECONDS
    if job.completed:
        log.info("%s is already complete: files %r yields nothing", job.label, os.fspath(pattern))
        job.skip_iteration()  # keep the numbering of later unnamed iterations stable
        return iter(())
    fs = FileSet(
        job,
        pattern,
        name=name,
        recheck=recheck,
        marker_dir=marker_dir,
        allow_empty=allow_empty,
        skip_budget=skip_budget,
    )
    hooks = job.loop_hooks(seconds=seconds, progress=progress)
    return _run(fs, hooks, _FileLoop(fs, attempts=attempts, on_error=on_error), backoff=backoff, every=every)


def _run(fs: FileSet, hooks: Any, loop: _FileLoop, *, backoff: float, every: int | None) -> Iterator[FileItem]:
    job, cursor = fs.job, fs.cursor
    next_count = cursor.offset + every if every else None
    try:
        hooks.boundary(cursor, False)
        for entry in fs.pending:
            st = fs.stat(entry)
            if st is None:
                continue
            item = FileItem(entry, loop)
            while True:
                item.attempt += 1
                item._state = _RUNNING
                yield item
                if item._state != _RETRY:
                    break
                delay = Backoff(backoff).delay(item.attempt)
                log.warning(
                    "%s: %s failed (attempt %d of %d): %s: %s; retrying in %.3gs",
                    fs.describe,
                    entry.path,
                    item.attempt,
                    loop.attempts,
                    type(item.error).__name__,
                    item.error,
                    delay,
                )
                _pause(job, delay)
                if job.signal is not None:
                    break  # stopping: the file is not done, the boundary below checkpoints and raises
            if item._state == _RUNNING:
                # The loop came back for the next file and the last attempt raised nothing: done.
                # (A skipped file, or a retry cut short by a signal, is not.)
                fs.mark(entry, st)
                fs.count_done(entry)
            due = next_count is not None and cursor.offset >= next_count
            if due:
                next_count = cursor.offset + (every or 0)
            hooks.boundary(cursor, due)
        hooks.end(cursor)
    finally:
        hooks.close(cursor)


# -- atomic outputs -----------------------------------------------------------------------------

_TEMP_RE = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{16}\.tmp")


def temp_path_for(dest: str | os.PathLike[str]) -> str:
    """A fresh temp path in ``dest``'s directory: ``.NAME.<16 hex>.tmp`` (hidden, never a final name)."""
    directory, name = os.path.split(os.fspath(dest))
    return os.path.join(directory, f".{name}.{os.urandom(8).hex()}.tmp")


def _output_error(exc: OSError, path: str) -> Exception:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(
            f"cannot write the output {path} ({exc.strerror}): make its directory writable by "
            f"uid {os.geteuid()}, or choose another output path"
        )
    return exc


def commit_output(tmp: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """fsync ``tmp``, rename it over ``dest``, fsync the directory: after a crash ``dest`` is old or new, whole.

    Raises FileNotFoundError when ``tmp`` was never written.
    """
    tmp, dest = os.fspath(tmp), os.fspath(dest)
    fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    fsync_dir(os.path.dirname(dest) or ".")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def atomic_output(job: RunContext | None, path: str | os.PathLike[str], *, makedirs: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it into place only when the block succeeds.

    The block must create the temp file (any way it likes: ``open(tmp, "w")``, a tool
    writing to it). On success it is fsynced and renamed over ``path``, and the
    directory fsynced; a block that wrote nothing raises UsageError. On an exception
    the temp file is removed and ``path`` is untouched. Missing directories of
    ``path`` are created (``makedirs``).
    """
    dest = os.fspath(path)
    directory = os.path.dirname(dest) or "."
    if makedirs:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise _output_error(exc, dest) from exc
    tmp = temp_path_for(dest)
    try:
        yield Path(tmp)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    try:
        commit_output(tmp, dest)
    except FileNotFoundError:
        if os.path.lexists(tmp):
            raise
        where = f"{job.label}: " if job is not None else ""
        raise UsageError(
            f"{where}job.output({dest!r}): the block wrote nothing to the temp path {tmp}; write the "
            "output there (it is renamed into place when the block succeeds)"
        ) from None
    except OSError as exc:
        _unlink_quietly(tmp)
        raise _output_error(exc, dest) from exc


def stale_temps(directory: str, names: set[str]) -> list[str]:
    """Temp files in ``directory`` left by killed writers of the outputs named ``names``."""
    try:
        with os.scandir(directory) as it:
            found = [e.path for e in it if (m := _TEMP_RE.fullmatch(e.name)) and m.group("name") in names]
    except OSError:
        return []
    return found
