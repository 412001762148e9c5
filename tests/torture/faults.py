"""The faults the torture suite injects, and the machinery they need (tmpfs mounts, read-only trees).

Signals (SIGKILL, SIGTERM, SIGSTOP/SIGCONT) go through :meth:`procs.Worker.signal`;
server restarts through the private servers' ``restart()``; network faults through
tests/faultproxy.py (a TCP proxy between the workers and the server). Here:

* :class:`Tmpfs`: a small tmpfs mounted for the test (we run as root); outside CI a
  refused mount skips the test with the reason, with ``CI=true`` it fails.
* :func:`fill`: fill a filesystem to the last byte, so the next write that needs a
  new block gets ENOSPC; :func:`unlink` frees it again.
* :func:`read_only`: take the write bits off a directory tree (and put them back).
  Root ignores modes, so the workers of those trials run without CAP_DAC_OVERRIDE
  (``drop_dac``, see workloads.py): to them the tree is as read-only as to anyone.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import tempfile
from pathlib import Path

from ci_env import unavailable  # noqa: F401 - the torture modules import it from here

__all__ = ["FAULTS", "LOCAL_ONLY", "NET", "SERVER_ONLY", "Tmpfs", "fill", "read_only", "unavailable"]

#: Every fault, in the order of the report's columns.
FAULTS = (
    "kill",
    "term",
    "stop",
    "dup",
    "enospc",
    "readonly",
    "restart",
    "restart-keep",
    "net-reset",
    "net-blackhole",
    "net-commit",
    "net-delay",
)
#: Faults of a local filesystem: the sqlite and file stores only.
LOCAL_ONLY = frozenset({"enospc", "readonly"})
#: Faults of the network between the workers and the server (a tests/faultproxy.py in between).
NET = frozenset({"net-reset", "net-blackhole", "net-commit", "net-delay"})
#: Faults of a server: postgresql and redis only.
SERVER_ONLY = frozenset({"restart", "restart-keep"}) | NET


class Tmpfs:
    """A tmpfs of ``size`` mounted on a fresh directory; unmounted (lazily if busy) on close."""

    def __init__(self, size: str = "16m") -> None:
        self.path = Path(tempfile.mkdtemp(prefix="rt-torture-tmpfs-"))
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            os.rmdir(self.path)
            unavailable(f"cannot mount a tmpfs for the disk-full faults (need root): {done.stderr.strip()}")

    def close(self) -> None:
        subprocess.run(["umount", str(self.path)], capture_output=True)
        if os.path.ismount(self.path):
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        try:
            os.rmdir(self.path)
        except OSError:
            pass

    def __enter__(self) -> Tmpfs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fill(directory: Path) -> Path:
    """Fill ``directory``'s filesystem until ENOSPC; return the filler file (unlink it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 4096, 512, 64, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def read_only(root: Path, on: bool) -> None:
    """Take the write bits off every directory and file under ``root`` (``on``), or put them back."""
    paths = [root] + [Path(d) / f for d, dirs, files in os.walk(root) for f in dirs + files]
    # Directories first when locking (no new entries appear), last when unlocking.
    for p in paths if on else reversed(paths):
        try:
            mode = os.lstat(p).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            continue
        if stat.S_ISDIR(mode):
            os.chmod(p, 0o500 if on else 0o700)
        else:
            os.chmod(p, 0o400 if on else 0o600)
