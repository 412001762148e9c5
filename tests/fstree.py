"""A snapshot of a directory tree, to prove that a command wrote nothing."""

from __future__ import annotations

import os
from pathlib import Path


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root``: relative path -> (size, mtime_ns).

    A SQLite -shm file's mtime is left out: it is SQLite's lock table (shared memory, not
    the store's data), and every reader of a database a writer holds open registers there.
    """
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath, name)
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_size, 0 if name.endswith("-shm") else st.st_mtime_ns)
    return out
