"""Crash states of a recorded file-system trace (the method of ALICE, OSDI 2014, and CrashMonkey, OSDI 2018).

A test records every file-system operation a store issues under one directory (the
*world*) and then asks which directory trees a power cut could leave behind, under a
model of the page cache:

* everything up to the last completed ``fsync``/``fdatasync`` of a file is durable (its
  data and size); a directory's entries (create, mkdir, rename, unlink) are durable up to
  the last ``fsync`` of that directory;
* after that, any SUBSET of the unsynced operations may have reached the disk: writes to
  different files (and to one file) are reordered freely, a write may be torn at sector
  (512 B) granularity, a file that grows may or may not show its new size, and each
  unsynced create, rename or unlink in a directory may or may not have happened,
  independently of the others (a rename itself is atomic: the target names the new
  inode or the old one, never nothing).

This is stricter than ext4 (whose journal commits directory operations in order): a
store that passes here passes on any POSIX file system that keeps ``fsync``'s promise.

Two ways to record, both feeding :class:`Recorder`:

* :meth:`Recorder.patch` wraps the ``os`` functions (and refuses ``builtins.open`` for
  writing under the world, and every ``os`` writer it does not model), for code running
  in this process (the file store);
* :func:`parse_strace` replays an ``strace -f -y -xx`` log, for code whose writes Python
  cannot see (SQLite's own VFS). Writes through ``mmap`` are invisible to strace: the
  only file SQLite maps is the ``-shm`` index, which the first connection after a crash
  truncates and rebuilds from the WAL, so its content never decides a recovery.

:func:`crash_states` then enumerates, for every crash point (every prefix of the trace
after the ``start`` mark), the trees the model allows: exhaustively when their number is
at most ``limit``, else the ordered ("prefix") states plus ``samples`` drawn from a
seeded RNG. Each state says how many operations had been acknowledged (``ack`` marks)
before the crash.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import itertools
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

SECTOR = 512

# -- the operations of a trace (inodes are logical ids, stable across inode-number reuse) --


@dataclass(frozen=True)
class Create:
    """A new name ``name`` in directory ``dir`` for the new inode ``ino`` (open O_CREAT, mkdir)."""

    dir: int
    name: str
    ino: int
    is_dir: bool


@dataclass(frozen=True)
class Rename:
    sdir: int
    sname: str
    ddir: int
    dname: str
    ino: int


@dataclass(frozen=True)
class Unlink:
    dir: int
    name: str
    ino: int


@dataclass(frozen=True)
class Write:
    ino: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class Truncate:
    ino: int
    length: int


@dataclass(frozen=True)
class Sync:
    """``fsync``/``fdatasync`` of a file (its data and size) or of a directory (its entries)."""

    ino: int


@dataclass(frozen=True)
class FailedSync:
    """A sync of a file that returned an error (EIO: "fsyncgate").

    Linux then marks the file's dirty pages clean (ext4, XFS) or drops them: the writes
    since its last good sync may never reach the disk, whatever later syncs return, while
    a read still sees them in the page cache. The model keeps each of them optional at
    every later crash point (lost, torn or whole), never durable.
    """

    ino: int


@dataclass(frozen=True)
class Mark:
    """A label from the test: ``start`` (crash points begin here) or ``ack`` (an operation returned)."""

    label: str


Op = Create | Rename | Unlink | Write | Truncate | Sync | FailedSync | Mark
_DIRENT = (Create, Rename, Unlink)


class NotModeled(AssertionError):
    """The code under test changed the world in a way this model does not know: extend the model."""


# -- the namespace as the running program sees it ------------------------------------------------


@dataclass
class Tree:
    """Directories (inode -> {name: inode}) and file contents (inode -> bytes), by logical inode."""

    root: int = 0
    dirs: dict[int, dict[str, int]] = field(default_factory=lambda: {0: {}})
    data: dict[int, bytearray] = field(default_factory=dict)

    def copy(self) -> Tree:
        return Tree(
            self.root, {d: dict(e) for d, e in self.dirs.items()}, {i: bytearray(b) for i, b in self.data.items()}
        )

    def files(self) -> dict[str, bytes | None]:
        """Every path reachable from the root: its content, None for a directory."""
        out: dict[str, bytes | None] = {}

        def walk(d: int, prefix: str) -> None:
            for name, ino in sorted(self.dirs[d].items()):
                path = f"{prefix}{name}"
                if ino in self.dirs:
                    out[path] = None
                    walk(ino, path + "/")
                else:
                    out[path] = bytes(self.data.get(ino, b""))

        walk(self.root, "")
        return out


def digest(files: dict[str, bytes | None]) -> str:
    h = hashlib.sha256()
    for path, content in sorted(files.items()):
        h.update(path.encode() + b"\0" + (b"D" if content is None else b"F" + hashlib.sha256(content).digest()))
    return h.hexdigest()


def materialize(files: dict[str, bytes | None], target: str) -> None:
    """Build ``files`` as a real tree at ``target`` (emptied first), directories 0700, files 0600."""
    shutil.rmtree(target, ignore_errors=True)
    os.mkdir(target, 0o700)
    for path, content in sorted(files.items()):
        full = os.path.join(target, path)
        if content is None:
            os.mkdir(full, 0o700)
        else:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, content)
            finally:
                os.close(fd)


# -- recording ------------------------------------------------------------------------------------


class Recorder:
    """Turns path- and fd-level events under ``world`` into logical :data:`Op`\\s.

    ``world`` must exist and be empty when recording starts (everything in it is then
    created under the recorder's eyes). ``drop_syncs`` names syncs to leave out of the
    trace (``"dir"``, ``"file"``): the negative controls, a store made unsafe on purpose.
    """

    def __init__(self, world: str, *, drop_syncs: frozenset[str] = frozenset()) -> None:
        self.world = os.path.normpath(os.path.abspath(world))
        self.drop_syncs = drop_syncs
        self.tree = Tree()
        self.ops: list[Op] = []
        self.fds: dict[int, int] = {}
        self._next = 1
        #: Syncs of files still to fail (see :meth:`fail_file_syncs`).
        self._failing = 0

    # -- events (shared by the os wrappers and the strace parser) --

    def resolve(self, path: str) -> tuple[int, str, int | None] | None:
        """(parent inode, name, inode or None) of ``path``, or None when it is outside the world."""
        path = os.path.normpath(path)
        if path == self.world or not path.startswith(self.world + os.sep):
            return None
        parts = path[len(self.world) + 1 :].split(os.sep)
        d = self.tree.root
        for part in parts[:-1]:
            nxt = self.tree.dirs.get(d, {}).get(part)
            if nxt is None or nxt not in self.tree.dirs:
                raise NotModeled(f"{path}: a parent is missing from the recorded tree")
            d = nxt
        return d, parts[-1], self.tree.dirs[d].get(parts[-1])

    def _new(self, is_dir: bool) -> int:
        ino, self._next = self._next, self._next + 1
        if is_dir:
            self.tree.dirs[ino] = {}
        else:
            self.tree.data[ino] = bytearray()
        return ino

    def opened(self, path: str, flags: int, fd: int) -> None:
        if os.path.normpath(path) == self.world:  # the world itself: its fsync makes its entries durable
            self.fds[fd] = self.tree.root
            return
        where = self.resolve(path)
        if where is None:
            return
        d, name, ino = where
        if ino is None:
            if not flags & os.O_CREAT:
                raise NotModeled(f"{path} was opened but the recorded tree has no such file")
            ino = self._new(False)
            self.tree.dirs[d][name] = ino
            self.ops.append(Create(d, name, ino, False))
        elif flags & os.O_TRUNC and ino not in self.tree.dirs:
            self._truncate(ino, 0)
        self.fds[fd] = ino

    def closed(self, fd: int) -> None:
        self.fds.pop(fd, None)

    def wrote(self, fd: int, offset: int, data: bytes) -> None:
        ino = self.fds.get(fd)
        if ino is None or not data:
            return
        buf = self.tree.data[ino]
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + len(data)] = data
        self.ops.append(Write(ino, offset, bytes(data)))

    def _truncate(self, ino: int, length: int) -> None:
        buf = self.tree.data[ino]
        del buf[length:]
        buf.extend(bytes(length - len(buf)))
        self.ops.append(Truncate(ino, length))

    def truncated(self, fd: int, length: int) -> None:
        ino = self.fds.get(fd)
        if ino is not None:
            self._truncate(ino, length)

    def fail_file_syncs(self, count: int = 1) -> None:
        """Make the next ``count`` fsync/fdatasync calls on files under the world raise EIO
        without syncing, recorded as :class:`FailedSync` (the wrapped ``os`` functions only)."""
        self._failing = count

    def _sync_fails(self, fd: int) -> bool:
        ino = self.fds.get(fd)
        if self._failing <= 0 or ino is None or ino in self.tree.dirs:
            return False
        self._failing -= 1
        self.ops.append(FailedSync(ino))
        return True

    def synced(self, fd: int) -> None:
        ino = self.fds.get(fd)
        if ino is None:
            return
        if ("dir" if ino in self.tree.dirs else "file") in self.drop_syncs:
            return
        self.ops.append(Sync(ino))

    def made_dir(self, path: str) -> None:
        where = self.resolve(path)
        if where is None:
            return
        d, name, _ = where
        ino = self._new(True)
        self.tree.dirs[d][name] = ino
        self.ops.append(Create(d, name, ino, True))

    def renamed(self, src: tuple[int, str, int | None], dst_path: str) -> None:
        dst = self.resolve(dst_path)
        sd, sname, ino = src
        if dst is None or ino is None:
            raise NotModeled(f"a rename into or out of the world ({dst_path}) is not modeled")
        dd, dname, _ = dst
        del self.tree.dirs[sd][sname]
        self.tree.dirs[dd][dname] = ino
        self.ops.append(Rename(sd, sname, dd, dname, ino))

    def unlinked(self, where: tuple[int, str, int | None]) -> None:
        d, name, ino = where
        if ino is None:
            return
        del self.tree.dirs[d][name]
        self.ops.append(Unlink(d, name, ino))

    def mark(self, label: str) -> None:
        self.ops.append(Mark(label))

    # -- the os wrappers --

    def patch(self, monkeypatch: Any) -> None:
        """Wrap the ``os`` functions (globally: whatever module calls them) to record into this."""
        real = {
            n: getattr(os, n)
            for n in (
                "open",
                "close",
                "write",
                "pwrite",
                "ftruncate",
                "fsync",
                "fdatasync",
                "rename",
                "replace",
                "unlink",
                "remove",
                "rmdir",
                "mkdir",
                "lseek",
            )
        }
        real_open = builtins.open

        def p_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
            fd = real["open"](path, flags, mode, dir_fd=dir_fd)
            if dir_fd is not None and self.resolve(os.path.abspath(os.fspath(path))) is not None:
                raise NotModeled("os.open with dir_fd under the world")
            self.opened(os.path.abspath(os.fspath(path)), flags, fd)
            return fd

        def p_close(fd: int) -> None:
            real["close"](fd)
            self.closed(fd)

        def p_write(fd: int, data: Any) -> int:
            n = real["write"](fd, data)
            if fd in self.fds:
                end = real["lseek"](fd, 0, os.SEEK_CUR)
                self.wrote(fd, end - n, bytes(data[:n]))
            return n

        def p_pwrite(fd: int, data: Any, offset: int) -> int:
            n = real["pwrite"](fd, data, offset)
            self.wrote(fd, offset, bytes(data[:n]))
            return n

        def p_ftruncate(fd: int, length: int) -> None:
            real["ftruncate"](fd, length)
            self.truncated(fd, length)

        def p_sync(name: str) -> Callable[[int], None]:
            def sync(fd: int) -> None:
                if self._sync_fails(fd):
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                real[name](fd)
                self.synced(fd)

            return sync

        def p_rename(name: str) -> Callable[..., None]:
            def rename(src: Any, dst: Any, **kw: Any) -> None:
                if kw:
                    raise NotModeled(f"os.{name} with {kw}")
                s = self.resolve(os.path.abspath(os.fspath(src)))
                real[name](src, dst)
                if s is not None:
                    self.renamed(s, os.path.abspath(os.fspath(dst)))
                elif self.resolve(os.path.abspath(os.fspath(dst))) is not None:
                    raise NotModeled("a rename into the world from outside it")

            return rename

        def p_unlink(name: str) -> Callable[..., None]:
            def unlink(path: Any, **kw: Any) -> None:
                if kw:
                    raise NotModeled(f"os.{name} with {kw}")
                w = self.resolve(os.path.abspath(os.fspath(path)))
                real[name](path)
                if w is not None:
                    self.unlinked(w)

            return unlink

        def p_mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
            if dir_fd is not None:
                raise NotModeled("os.mkdir with dir_fd")
            real["mkdir"](path, mode)
            self.made_dir(os.path.abspath(os.fspath(path)))

        def p_builtin_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
                path = os.path.abspath(os.fsdecode(os.fspath(file)))
                if self.resolve(path) is not None:
                    raise NotModeled(f"open({path!r}, {mode!r}) writes under the world: record it with os.* calls")
            return real_open(file, mode, *args, **kw)

        def refuse(name: str) -> Callable[..., Any]:
            orig = getattr(os, name)

            def refused(*args: Any, **kw: Any) -> Any:
                for a in args:
                    if (isinstance(a, int) and a in self.fds) or (
                        isinstance(a, (str, os.PathLike)) and self.resolve(os.path.abspath(os.fspath(a))) is not None
                    ):
                        raise NotModeled(f"os.{name} on {a!r} is not modeled: extend tests/crashfs.py")
                return orig(*args, **kw)

            return refused

        monkeypatch.setattr(os, "open", p_open)
        monkeypatch.setattr(os, "close", p_close)
        monkeypatch.setattr(os, "write", p_write)
        monkeypatch.setattr(os, "pwrite", p_pwrite)
        monkeypatch.setattr(os, "ftruncate", p_ftruncate)
        monkeypatch.setattr(os, "fsync", p_sync("fsync"))
        monkeypatch.setattr(os, "fdatasync", p_sync("fdatasync"))
        monkeypatch.setattr(os, "rename", p_rename("rename"))
        monkeypatch.setattr(os, "replace", p_rename("replace"))
        monkeypatch.setattr(os, "unlink", p_unlink("unlink"))
        monkeypatch.setattr(os, "remove", p_unlink("remove"))
        monkeypatch.setattr(os, "rmdir", p_unlink("rmdir"))
        monkeypatch.setattr(os, "mkdir", p_mkdir)
        monkeypatch.setattr(builtins, "open", p_builtin_open)
        for name in (
            "truncate",
            "link",
            "symlink",
            "writev",
            "pwritev",
            "posix_fallocate",
            "sendfile",
            "copy_file_range",
            "dup",
            "dup2",
        ):
            if hasattr(os, name):
                monkeypatch.setattr(os, name, refuse(name))


# -- strace -----------------------------------------------------------------------------------

#: What to trace: every call that names a file, and every call that writes, syncs or drops a descriptor.
STRACE_CALLS = "%file,write,pwrite64,writev,pwritev,pwritev2,fsync,fdatasync,ftruncate,fallocate,close,dup,dup2,dup3"
_LINE = re.compile(r"^(?:\d+\s+)?(\w+)\((.*)\)\s+=\s+(-?\d+|\?)(?:<[^>]*>)?")
_FD = re.compile(r"^(-?\d+|AT_FDCWD)(?:<(.*)>)?(?:\(deleted\))?$")
_HEX = re.compile(r"\\x([0-9a-f]{2})")


def _unhex(s: str) -> str:
    """A path as strace -xx prints it beside a descriptor (every byte as \\xHH)."""
    return os.fsdecode(bytes(int(h, 16) for h in _HEX.findall(s))) if "\\x" in s else s


def _split_args(s: str) -> list[str]:
    """Top-level comma-separated arguments of one strace line (quotes, brackets and <> nest)."""
    out, depth, cur, quoted, i = [], 0, [], False, 0
    while i < len(s):
        c = s[i]
        if quoted:
            cur.append(c)
            if c == "\\":
                cur.append(s[i + 1])
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
            cur.append(c)
        elif c in "[{<(":
            depth += 1
            cur.append(c)
        elif c in "]}>)":
            depth -= 1
            cur.append(c)
        elif c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        out.append("".join(cur).strip())
    return out


def _string(arg: str) -> bytes:
    """A strace string argument printed with -xx (every byte as \\xHH)."""
    if arg.endswith("..."):
        raise NotModeled("strace truncated a string: raise -s")
    body = arg[1:-1]
    return bytes.fromhex(body.replace("\\x", "")) if body else b""


def _path_arg(dirfd: str | None, arg: str) -> str:
    path = os.fsdecode(_string(arg))
    if os.path.isabs(path):
        return os.path.normpath(path)
    m = _FD.match(dirfd or "")
    if not m or not m.group(2):
        raise NotModeled(f"a relative path {path!r} without a known directory")
    return os.path.normpath(os.path.join(_unhex(m.group(2)), path))


def parse_strace(log: str, rec: Recorder, *, marker: bytes = b"CRASHFS:") -> None:
    """Replay an ``strace -f -y -xx -s <big>`` log into ``rec``.

    A ``write`` of ``CRASHFS:<label>`` to any descriptor becomes ``Mark(label)`` (the
    traced program announces its acknowledgements this way, on /dev/null).
    """
    pending: dict[str, str] = {}
    for raw in log.splitlines():
        line = raw
        pid = raw.split(None, 1)[0] if raw[:1].isdigit() else ""
        if line.endswith("<unfinished ...>"):
            pending[pid] = line[: -len("<unfinished ...>")].rstrip()
            continue
        m_res = re.match(r"^(?:\d+\s+)?<\.\.\. \w+ resumed>(.*)$", line)
        if m_res:
            line = pending.pop(pid, "") + m_res.group(1)
        m = _LINE.match(line)
        if not m:
            continue
        name, args, result = m.group(1), _split_args(m.group(2)), m.group(3)
        if result == "?" or int(result) < 0:
            continue
        ret = int(result)

        def fd_of(arg: str) -> int:
            fm = _FD.match(arg)
            if not fm or fm.group(1) == "AT_FDCWD":
                raise NotModeled(f"not a descriptor: {arg}")
            return int(fm.group(1))

        if name in ("open", "openat", "creat"):
            if name == "openat":
                path, flags_s = _path_arg(args[0], args[1]), args[2]
            else:
                path, flags_s = _path_arg(None, args[0]), (args[1] if name == "open" else "O_CREAT|O_WRONLY|O_TRUNC")
            flags = 0
            for f in flags_s.split("|"):
                flags |= getattr(os, f, 0) if f.startswith("O_") else 0
            rec.opened(path, flags, ret)
        elif name == "close":
            rec.closed(fd_of(args[0]))
        elif name in ("write", "pwrite64"):
            fd = fd_of(args[0])
            data = _string(args[1])[:ret]
            if data.startswith(marker):
                rec.mark(data[len(marker) :].decode())
            elif fd in rec.fds:
                if name == "write":
                    raise NotModeled("a plain write() under the world: its offset is not in the trace")
                rec.wrote(fd, int(args[3]), data)
        elif name in ("writev", "pwritev", "pwritev2", "fallocate", "dup", "dup2", "dup3"):
            if fd_of(args[0]) in rec.fds:
                raise NotModeled(f"{name} under the world is not modeled: extend tests/crashfs.py")
        elif name in ("fsync", "fdatasync"):
            rec.synced(fd_of(args[0]))
        elif name == "ftruncate":
            rec.truncated(fd_of(args[0]), int(args[1]))
        elif name in ("unlink", "unlinkat", "rmdir"):
            path = _path_arg(args[0], args[1]) if name == "unlinkat" else _path_arg(None, args[0])
            w = rec.resolve(path)
            if w is not None:
                rec.unlinked(w)
        elif name in ("mkdir", "mkdirat"):
            rec.made_dir(_path_arg(args[0], args[1]) if name == "mkdirat" else _path_arg(None, args[0]))
        elif name in ("rename", "renameat", "renameat2"):
            if name == "rename":
                src, dst = _path_arg(None, args[0]), _path_arg(None, args[1])
            else:
                src, dst = _path_arg(args[0], args[1]), _path_arg(args[2], args[3])
            s = rec.resolve(src)
            if s is not None:
                rec.renamed(s, dst)
            elif rec.resolve(dst) is not None:
                raise NotModeled("a rename into the world from outside it")
        elif name in ("link", "linkat", "symlink", "symlinkat", "truncate") and any(
            a.startswith('"') and os.fsdecode(_string(a)).startswith(rec.world + os.sep) for a in args
        ):
            raise NotModeled(f"{name} under the world is not modeled: extend tests/crashfs.py")


# -- enumeration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrashState:
    point: int  #: operations of the trace executed before the power cut
    acked: int  #: ``ack`` marks among them
    files: dict[str, bytes | None]
    how: str  #: "exhaustive", "ordered" or "sampled"


def _sectors(w: Write) -> int:
    return (w.offset + len(w.data) - 1) // SECTOR - w.offset // SECTOR + 1


def _replay(ops: list[Op], choice: dict[int, Any]) -> Tree:
    """The tree after applying each op whose index is in ``choice`` (value: how; see _variants)."""
    t = Tree()
    for i, op in enumerate(ops):
        how = choice.get(i)
        if how is None or how is False:
            continue
        if isinstance(op, Create):
            if op.is_dir:
                t.dirs.setdefault(op.ino, {})
            else:
                t.data.setdefault(op.ino, bytearray())
            t.dirs.setdefault(op.dir, {})[op.name] = op.ino
        elif isinstance(op, Rename):
            src = t.dirs.setdefault(op.sdir, {})
            if src.get(op.sname) == op.ino:
                del src[op.sname]
            t.dirs.setdefault(op.ddir, {})[op.dname] = op.ino
            if op.ino not in t.dirs:
                t.data.setdefault(op.ino, bytearray())
        elif isinstance(op, Unlink):
            d = t.dirs.setdefault(op.dir, {})
            if d.get(op.name) == op.ino:
                del d[op.name]
        elif isinstance(op, Truncate):
            buf = t.data.setdefault(op.ino, bytearray())
            del buf[op.length :]
            buf.extend(bytes(op.length - len(buf)))
        elif isinstance(op, Write):
            buf = t.data.setdefault(op.ino, bytearray())
            mask, grow = (-1, True) if how is True else how
            end = op.offset + len(op.data)
            old_len = len(buf)
            if grow and end > old_len:
                buf.extend(bytes(end - old_len))
            first = op.offset // SECTOR
            for k in range(_sectors(op)):
                if not (mask >> k) & 1:
                    continue
                lo = max(op.offset, (first + k) * SECTOR)
                hi = min(end, (first + k + 1) * SECTOR, len(buf))
                if hi > lo:
                    buf[lo:hi] = op.data[lo - op.offset : hi - op.offset]
    # Every named inode has a content: one named by a rename whose create never reached the disk is empty.
    for entries in list(t.dirs.values()):
        for ino in entries.values():
            if ino not in t.dirs and ino not in t.data:
                t.data[ino] = bytearray()
    return t


def _variants(op: Op) -> list[Any]:
    """How an unsynced op may have reached the disk: False (not at all), True (whole), or for a
    write (sector mask, whether the size grew)."""
    if isinstance(op, Write):
        n = _sectors(op)
        full = (1 << n) - 1
        out: list[Any] = [False, True]
        for mask in range(1, full + 1):
            for grow in (False, True):
                if (mask, grow) != (full, True):
                    out.append((mask, grow))
        return out
    return [False, True]


def _write_space(op: Write) -> int:
    return 1 + ((1 << _sectors(op)) - 1) * 2


def _random_variant(op: Op, rng: random.Random) -> Any:
    if isinstance(op, Write):
        n = _sectors(op)
        r = rng.random()
        if r < 0.25:
            return False
        if r < 0.4:
            return True
        if r < 0.7:  # a torn prefix: the first k sectors, the common case on real disks
            return ((1 << rng.randrange(1, n + 1)) - 1, rng.random() < 0.5)
        return (rng.randrange(1, 1 << n), rng.random() < 0.5)
    return rng.random() < 0.5


def _first_sync(ops: list[Op]) -> list[float]:
    """For each op, the index of the first later sync that makes it durable (inf when none;
    -1 for syncs and marks, which change nothing on disk).

    Data (writes, truncates) is durable after a sync of its file, unless a sync of that
    file failed first (:class:`FailedSync`: then never); a directory entry after a sync of
    its directory (a cross-directory rename after syncs of both: ours stay in one).
    """
    inf = float("inf")
    out: list[float] = []
    for i, op in enumerate(ops):
        if isinstance(op, (Write, Truncate)):
            targets = {op.ino}
        elif isinstance(op, (Create, Unlink)):
            targets = {op.dir}
        elif isinstance(op, Rename):
            targets = {op.sdir, op.ddir}
        else:
            out.append(-1)
            continue
        found = {t: inf for t in targets}
        for j in range(i + 1, len(ops)):
            o = ops[j]
            if isinstance(o, FailedSync) and o.ino in found and found[o.ino] == inf:
                break  # the page was marked clean: no later sync writes it
            if isinstance(o, Sync) and o.ino in found and found[o.ino] == inf:
                found[o.ino] = j
                if all(v != inf for v in found.values()):
                    break
        out.append(max(found.values()))
    return out


@dataclass
class Stats:
    """What :func:`crash_states` looked at: crash points, states generated, distinct states yielded."""

    points: int = 0
    generated: int = 0
    distinct: int = 0
    sampled_points: int = 0


def crash_states(
    ops: list[Op], *, limit: int = 2048, samples: int = 200, seed: int = 0, stats: Stats | None = None
) -> Iterator[CrashState]:
    """Every crash state the model allows at each crash point after the ``start`` mark (or the
    beginning), deduplicated by content and acknowledgement count; see the module docstring.

    Crash point ``k`` means ``ops[:k]`` were issued. Where the states of a point number more
    than ``limit``, the ordered ones (each prefix of the unsynced ops, whole: what a process
    kill or an in-order file system leaves) and ``samples`` drawn from ``Random(seed)`` stand
    for them.
    """
    stats = stats if stats is not None else Stats()
    rng = random.Random(seed)
    starts = [i for i, op in enumerate(ops) if op == Mark("start")]
    first = starts[0] + 1 if starts else 0
    durable_at = _first_sync(ops)
    seen: set[tuple[int, str]] = set()
    acked = sum(1 for op in ops[:first] if op == Mark("ack"))
    for k in range(first, len(ops) + 1):
        if k > first and ops[k - 1] == Mark("ack"):
            acked += 1
        stats.points += 1
        durable: dict[int, Any] = {}
        optional: list[int] = []
        for i in range(k):
            at = durable_at[i]
            if at < 0:
                continue
            if at < k:
                durable[i] = True
            else:
                optional.append(i)
        space = 1
        for i in optional:
            op_i = ops[i]
            space *= _write_space(op_i) if isinstance(op_i, Write) else 2
            if space > limit:
                break
        choices: Iterator[tuple[Any, ...]]
        if space <= limit:
            how = "exhaustive"
            choices = itertools.product(*(_variants(ops[i]) for i in optional))
        else:
            how = "sampled"
            stats.sampled_points += 1
            ordered = [tuple([True] * m + [False] * (len(optional) - m)) for m in range(len(optional) + 1)]
            drawn = [tuple(_random_variant(ops[i], rng) for i in optional) for _ in range(samples)]
            choices = iter(ordered + drawn)
        for vec in choices:
            stats.generated += 1
            choice = dict(durable)
            choice.update(zip(optional, vec, strict=True))
            files = _replay(ops[:k], choice).files()
            key = (acked, digest(files))
            if key in seen:
                continue
            seen.add(key)
            stats.distinct += 1
            yield CrashState(k, acked, files, how)
