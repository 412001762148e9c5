"""Local-filesystem helpers shared by the ``sqlite://`` and ``file://`` stores.

* :func:`make_private_dirs` creates missing directories with mode 0700 (every missing
  level, not only the last one as ``os.makedirs`` would).
* :func:`create_private_file` creates a file with mode 0600 if it does not exist.
* :func:`write_temp` / :func:`fsync_dir` / :func:`atomic_write` are the crash-safe
  write: a temp file in the SAME directory as the target (a rename across
  filesystems is a copy, not atomic), written and fsynced, then ``os.replace``\\d over
  the target, then the directory fsynced so the rename itself survives a power loss.
* :func:`os_errors` translates ``OSError`` at the boundary: a full disk becomes
  :class:`StoreUnavailable`, refused access :class:`PermissionDenied`, both naming
  the path and the fix.

These are for local filesystems only: NFS and other network filesystems do not give
``flock`` and ``rename`` the guarantees the stores rely on.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import PermissionDenied, RestartableError, StoreUnavailable

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "atomic_write",
    "create_private_file",
    "fsync_dir",
    "make_private_dirs",
    "os_errors",
    "translate_oserror",
    "write_temp",
]

DIR_MODE = 0o700
FILE_MODE = 0o600

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS}


def make_private_dirs(path: str | os.PathLike[str]) -> None:
    """Create ``path`` and any missing parents with mode 0700; existing ones are left alone.

    Durable: the parent of each directory created is fsynced after its ``mkdir``, so a
    power loss cannot leave a checkpoint file fsynced inside a directory whose own
    entry was never written (the file would vanish with it).
    """
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            pass  # created by a concurrent process: fine, and not ours to chmod
        else:
            # mkdir's mode is filtered by the umask; set it exactly (a umask can only remove bits,
            # but one like 0o277 would leave us a directory we cannot write).
            os.chmod(d, DIR_MODE)
        # The new entry lives in the parent directory: fsync it before anything is created
        # inside ``d`` (top-down, so each level's entry is durable before the next). Also when a
        # concurrent process won the mkdir: it may not have fsynced yet when we write inside.
        fsync_dir(d.parent)


def create_private_file(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` empty with mode 0600 unless it exists. Returns whether it was created.

    An existing file keeps its mode: the user may have chosen it.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def write_temp(directory: str | os.PathLike[str], prefix: str, data: bytes) -> str:
    """Write ``data`` to a new 0600 temp file in ``directory``, fsync it, return its path.

    The name is ``{prefix}{16 hex digits}.tmp``; callers pick a prefix starting with a
    dot so a leftover can never be mistaken for a record. On failure the temp file is
    removed and the OSError propagates.
    """
    path = os.path.join(directory, f"{prefix}{os.urandom(8).hex()}.tmp")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)
    return path


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory, making the renames and creations in it durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp + fsync + rename + dir fsync).

    After a crash the file holds either its old content or ``data``, never a mix.
    """
    directory, name = os.path.split(os.fspath(path))
    directory = directory or "."
    tmp = write_temp(directory, f".{name}.", data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(directory)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def translate_oserror(exc: OSError, *, path: str | os.PathLike[str], display: str) -> RestartableError:
    """The restartable error for ``exc`` raised on ``path`` of the store ``display``."""
    where = os.fspath(path)
    if exc.errno in _DISK_FULL:
        return StoreUnavailable(
            f"disk full writing {where} for the store {display}: free space on that filesystem "
            "(or raise the quota), then rerun; the last complete checkpoint is intact"
        )
    if exc.errno in _REFUSED:
        if exc.errno == errno.EROFS:
            fix = "the filesystem is read-only: point the store at a writable location"
        else:
            fix = (
                f"make it (and its directory) readable and writable by uid {os.geteuid()}, "
                "or point the store at a directory this user owns"
            )
        return PermissionDenied(f"permission denied on {where} for the store {display}: {fix}")
    return StoreUnavailable(
        f"cannot access {where} for the store {display}: {exc.strerror or exc} "
        f"(errno {errno.errorcode.get(exc.errno or 0, exc.errno)})"
    )


@contextmanager
def os_errors(path: str | os.PathLike[str], *, display: str) -> Iterator[None]:
    """Translate any OSError raised in the block (see :func:`translate_oserror`).

    The path named is the one the error carries when it has one, else ``path``.
    """
    try:
        yield
    except OSError as exc:
        raise translate_oserror(exc, path=exc.filename or path, display=display) from exc


def flock_exclusive(fd: int, timeout: float, stuck: Callable[[], RestartableError]) -> None:
    """``flock(LOCK_EX)`` on ``fd``, waiting at most ``timeout`` seconds, then raising ``stuck()``.

    Holders keep these locks for one write or one open, milliseconds; waiting longer means
    a stuck (stopped, hung) process, which must not hang this one and its heartbeat forever.
    Polls with a non-blocking lock and a backoff from 1 to 50 ms (a blocking flock cannot
    time out without a signal, which a library must not take).
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise stuck() from None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
