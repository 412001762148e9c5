"""``file:///dir``: checkpoints as plain files in a directory on a LOCAL disk.

URLs (RFC 8089)::

    file:///var/lib/jobs/ckpt          absolute
    file://localhost/var/lib/jobs/ckpt absolute, with the only host we accept
    file:relative/dir                  relative to the current directory

Use a local filesystem only: the compare-and-set relies on ``flock`` and atomic
``rename``, which NFS and other network filesystems do not reliably give across
machines. For several machines use PostgreSQL or Redis.

Layout, one directory per job (created 0700, files 0600)::

    <dir>/<job>/<run>.ckpt                      two slots: the newest generation and the one before
    <dir>/<job>/<run>.ckpt.prev                 version 1 only: the previous generation
    <dir>/<job>/<run>.lock                      flock target for every write
    <dir>/<job>/<run>.markers.<cursor>.jsonl    per-item markers (cursor name hex-encoded)
    <dir>/<job>/.<run>.ckpt.<random>.tmp        a write in progress (or left by a crash)
    <dir>/<job>/.epoch-floor                    the highest epoch of any run of the job deleted
                                                (decimal; absent until the first delete)

A record created again after a delete starts above ``.epoch-floor`` even when the wall
clock that seeds first epochs stepped back (see ``base.first_epoch``): a stale runner of
the deleted record can never match the new one's epoch. ``delete`` raises it, under a
flock on the job directory, before it removes the run's files.

Version 2 (written since issue 17): ``<run>.ckpt`` is two slots of equal size (whole
4 KiB pages), each a header line
``{"format":"restartable-file","version":2,"seq":N,"epoch":E,"length":L,"sha256":"<hex>"}``
then the body of L bytes, ``{"history":[...],"record":{...}}`` (the record as
:func:`encode_record` writes it; history newest first, capped to HISTORY_LIMIT), then
newline padding: the file is a stream of JSON documents.

A save takes ``flock(LOCK_EX)`` on the lock file for the whole read-check-write (the
cross-process compare-and-set), checks that the file is byte for byte what this store
last wrote or read (else reads it and compares its epoch), writes the new generation
(sequence N+1) with one ``pwrite`` into the slot NOT holding the newest one, then one
``fdatasync``: the size and the directory entry never change, so that is the only
sync. The store keeps the run's lock file and ``<run>.ckpt`` open between saves (closed
by ``close``, a delete, a release, and never used in a forked child), checking each
time with one ``statx`` that asks for no timestamps that the path still names the file
held open (see ``_load_statx`` for why no plain stat). The newest generation is never overwritten, so a torn write leaves it readable.
The slow path, a new file through temp + fsync + rename + directory fsync with the
previous generation in its other slot, is for a new run, a record larger than a slot
(slots 1.5x the record), a hard-linked file (a backup's copy must not change), the
first write to a version-1 run, whose ``.prev`` it then removes, and any write to a file
whose two slots this store did not sync itself: a store object's first write to a run,
and the write after a failed one (an EIO from ``fdatasync`` leaves in the page cache a
slot the disk may never hold; see ``_write``).

Recovery takes the valid slot with the higher sequence number. A damaged slot beside a
good one whose whole header names the next sequence number is a save cut short (logged
at INFO); anything else is logged as a WARNING. With no usable slot (or a slot written
by a newer restartable), :class:`CheckpointCorrupt` names the file and the fix. Version
1 (main up to issue 17: one document per file, rotated to ``.prev`` by two renames) is
read as before, falling back from a damaged current to ``.prev`` with a warning. Reads
take no lock unless something looks odd (see ``_read_unlocked``). :func:`raw_record`
shows one file of either version as one JSON document (``restartable show --raw``).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from .._checkpoint import Checkpoint, HistoryEntry, Owner, decode_record, dumps, encode_record, loads
from .._names import check_name
from .._url import StoreURL
from ..errors import CheckpointCorrupt, ConfigError, StoreNotFound, StoreUnavailable, UsageError
from ._localfs import (
    FILE_MODE,
    atomic_write,
    flock_exclusive,
    make_private_dirs,
    os_errors,
    translate_oserror,
    write_temp,
)
from .base import HISTORY_LIMIT, Store, Unreadable

__all__ = ["FILE_FORMAT", "FILE_VERSION", "FileStore", "raw_record"]

log = logging.getLogger("restartable")

FILE_FORMAT = "restartable-file"
#: Version 2: one file of two slots overwritten in turn. Version 1 (one document per file,
#: rotated to ``.prev``) is still read; the first write after an upgrade converts it.
FILE_VERSION = 2
#: Slots are whole pages, so a write to one never shares a disk sector or page with the other.
_PAGE = 4096
#: A header is ~200 bytes and always inside its slot's first sector; reading this much gets it.
_HEAD_BYTES = 512
#: Lock file descriptors (and written generations) kept between operations; most processes use one run.
_MAX_OPEN_LOCKS = 16
#: Seconds a write waits for another process's flock on the same run before StoreUnavailable.
LOCK_TIMEOUT = 10.0
#: Hex-encoded cursor names longer than this are hashed instead (file names are <= 255 bytes).
_MAX_CURSOR_HEX = 96
#: In each job directory: the highest epoch deleted there. Starts with a dot, so it is never a run.
_FLOOR = ".epoch-floor"
#: What atomic_write leaves of a floor write cut short by a crash.
_FLOOR_TEMP = re.compile(r"\.\.epoch-floor\.[0-9a-f]{16}\.tmp")


@dataclass(frozen=True)
class _Paths:
    job_dir: str
    current: str
    prev: str
    lock: str
    temp_prefix: str
    temp_re: re.Pattern[str]
    markers_prefix: str
    markers_re: re.Pattern[str]


@dataclass(frozen=True)
class _Gen:
    """A readable generation: the record, its history (encoded JSON entries, newest first)."""

    record: Checkpoint
    history: list[str]
    #: Its sequence number (version 2; 0 for a version-1 document): the newest valid slot wins.
    seq: int = 0
    #: The slot of the version-2 file holding it; None for a version-1 document.
    slot: int | None = None


class _Bad(Exception):
    """A generation (file or slot) that exists but cannot be used; the message says why."""

    def __init__(self, why: str, *, newer: bool = False, seq: int | None = None):
        super().__init__(why)
        self.newer = newer
        #: The sequence number its header names when the header is whole but the body is not.
        self.seq = seq


@dataclass(slots=True)
class _Open:
    """The descriptors this store keeps open for one run, closed together (least recently
    used beyond _MAX_OPEN_LOCKS runs, delete, close, and in a forked child)."""

    lock: int
    #: ``(st_dev, st_ino)`` of the lock file as opened: a delete unlinks it under our feet.
    lock_id: tuple[int, int]
    #: ``<run>.ckpt`` open for writing in place, or -1 (see FileStore._current).
    data: int = -1
    #: Its ``(device, inode)`` as :func:`_identity` gives them.
    data_id: tuple[int, int] = (0, 0)

    def close_data(self) -> None:
        if self.data >= 0:
            fd, self.data = self.data, -1
            os.close(fd)

    def close(self) -> None:
        self.close_data()
        os.close(self.lock)


class _Absent(Exception):
    """The run has no files and no lock file: a write that needs a record creates nothing."""


@dataclass(frozen=True)
class _File:
    """One generation file as read: its bytes, and what each generation in it turned out to be."""

    data: bytes
    #: The slot size of a version-2 file (its size is twice that); 0 for a version-1 document.
    slot_size: int
    #: Version 1: one entry; version 2: slot 0 and slot 1.
    gens: tuple[_Gen | _Bad, ...]


def _entry_json(rec: Checkpoint) -> str:
    """One history entry as JSON (built by hand: it is on every save's path; repr of a
    finite float is the JSON number json.dumps would write)."""
    return (
        f'{{"at":{float(rec.updated)!r},"epoch":{int(rec.epoch)},"status":{json.dumps(rec.status)},'
        f'"done":{int(rec.done)},"failed":{int(rec.failed)}}}'
    )


def _parse_header(line: bytes) -> dict[str, Any]:
    """The header of a generation (either version), checked; raises _Bad."""
    try:
        head = json.loads(line)
    except ValueError:
        raise _Bad("its header line is not JSON (torn or overwritten)") from None
    if not isinstance(head, dict) or head.get("format") != FILE_FORMAT:
        raise _Bad(f"its header does not name the format {FILE_FORMAT!r}")
    version = head.get("version")
    if type(version) is not int or version not in (1, FILE_VERSION):
        if type(version) is int and version > FILE_VERSION:
            raise _Bad(
                f"it has file format version {version}, newer than this restartable understands "
                f"({FILE_VERSION}): upgrade restartable",
                newer=True,
            )
        raise _Bad(f"it has an unknown file format version {version!r}")
    if type(head.get("epoch")) is not int or not isinstance(head.get("sha256"), str):
        raise _Bad("its header lacks the epoch or the checksum")
    if version == FILE_VERSION and (type(head.get("seq")) is not int or type(head.get("length")) is not int):
        raise _Bad("its header lacks the sequence number or the length")
    return head


def _parse_body(body: bytes, head: dict[str, Any], where: str, expect: tuple[str, str]) -> tuple[Checkpoint, list[str]]:
    """The record and history of a body whose checksum matched ``head``; raises _Bad.

    ``expect`` is the ``(job, run)`` the caller asked for: the record must name it. It is
    passed in, never parsed back out of a path: a run may itself be named like one of
    our files (``v1.ckpts``, ``a.ckpt.prev``), so no split of a file name is unambiguous.
    """
    try:
        doc = json.loads(body)
        entries = doc["history"]
        for h in entries:
            HistoryEntry(**h)  # validates the keys
        history = [json.dumps(h, separators=(",", ":")) for h in entries]
        record_text = json.dumps(doc["record"], separators=(",", ":"), ensure_ascii=False)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise _Bad(f"its body is not a checkpoint document ({str(exc)[:200]})") from None
    # The record must name the run it is stored as (a copied or planted file is refused).
    try:
        rec = decode_record(record_text, where=where, expect=expect)
    except CheckpointCorrupt as exc:
        raise _Bad(str(exc), newer="upgrade restartable" in str(exc)) from None
    if rec.epoch != head["epoch"]:
        raise _Bad("its header and record disagree on the epoch")
    return rec, history[:HISTORY_LIMIT]


def _v1_document(data: bytes, where: str, expect: tuple[str, str]) -> _Gen:
    """A version-1 generation: a header line, then the body; raises _Bad."""
    if not data:
        raise _Bad("it is empty")
    nl = data.find(b"\n")
    if nl < 0:
        raise _Bad("it is truncated (no complete header line)")
    head = _parse_header(data[:nl])
    if head["version"] != 1:
        raise _Bad(f"its header names version {head['version']} but the file is not laid out in slots")
    body = data[nl + 1 :]
    if hashlib.sha256(body).hexdigest() != head["sha256"]:
        raise _Bad("its checksum does not match (torn or damaged)")
    rec, history = _parse_body(body, head, where, expect)
    return _Gen(rec, history)


def _slot_head(data: bytes, offset: int) -> tuple[dict[str, Any], int]:
    """The header at ``offset`` and where its line ends; raises _Bad."""
    nl = data.find(b"\n", offset, offset + _HEAD_BYTES)
    if nl < 0:
        raise _Bad("its header is torn or missing")
    return _parse_header(data[offset:nl]), nl + 1


def _slot(data: bytes, index: int, size: int, where: str, expect: tuple[str, str]) -> _Gen | _Bad:
    """Slot ``index`` of a version-2 file: its generation, or why it cannot be used."""
    offset = index * size
    try:
        head, start = _slot_head(data, offset)
        if head["version"] != FILE_VERSION:
            raise _Bad(f"it has a version-{head['version']} header inside a version-{FILE_VERSION} file")
        seq, length = head["seq"], head["length"]
        if not 0 <= length <= offset + size - start:
            raise _Bad(f"its length {length} runs past the slot", seq=seq)
        body = data[start : start + length]
        if hashlib.sha256(body).hexdigest() != head["sha256"]:
            raise _Bad("its checksum does not match (torn or damaged)", seq=seq)
        rec, history = _parse_body(body, head, where, expect)
        return _Gen(rec, history, seq, index)
    except _Bad as exc:
        return exc


def _layout(data: bytes) -> int:
    """The slot size of a version-2 file, 0 for anything else (a version-1 document, damage).

    A version-2 file is two slots of equal size, a whole number of pages each; either
    slot's header names version 2 or later (one damaged header still leaves the other).
    """
    size = len(data)
    if not size or size % (2 * _PAGE):
        return 0
    versions = []
    for offset in (0, size // 2):
        try:
            versions.append(_slot_head(data, offset)[0]["version"])
        except _Bad as exc:
            versions.append(FILE_VERSION + 1 if exc.newer else None)
    if versions[0] == 1:
        return 0
    return size // 2 if any(v is not None and v >= FILE_VERSION for v in versions) else 0


def _load(path: str, where: str, expect: tuple[str, str]) -> _File | None:
    """The generation file at ``path`` as read (None when it does not exist); never raises _Bad."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    size = _layout(data)
    if size:
        return _File(data, size, (_slot(data, 0, size, where, expect), _slot(data, 1, size, where, expect)))
    try:
        gen: _Gen | _Bad = _v1_document(data, where, expect)
    except _Bad as exc:
        gen = exc
    return _File(data, 0, (gen,))


def _read_generation(path: str, where: str, expect: tuple[str, str]) -> _Gen | None:
    """The generation in ``path`` when the file is wholly sound, None when it does not exist.

    Raises _Bad when anything in it is unusable (a damaged document, either slot damaged):
    the caller then reads under the flock (:meth:`FileStore._read`), which tells a save in
    progress from damage and picks the newest good generation.
    """
    f = _load(path, where, expect)
    if f is None:
        return None
    good = []
    for g in f.gens:
        if isinstance(g, _Bad):
            raise g
        good.append(g)
    return max(good, key=lambda g: g.seq)


def _slot_bytes(rec: Checkpoint, history: list[str], seq: int, text: str | None) -> bytes:
    """One version-2 generation: its header line, then its body (``text`` is ``rec`` encoded, when known)."""
    text = encode_record(rec) if text is None else text
    body = ('{"history":[' + ",".join(history) + '],"record":' + text + "}\n").encode()
    sha = hashlib.sha256(body).hexdigest()
    head = (
        f'{{"format":"{FILE_FORMAT}","version":{FILE_VERSION},"seq":{seq},"epoch":{rec.epoch},'
        f'"length":{len(body)},"sha256":"{sha}"}}\n'
    )
    return head.encode() + body


def _load_statx() -> Any:
    """The C library's ``statx``, or None where there is none (not Linux, an old C library or
    kernel, a seccomp filter): :func:`_identity` then uses ``os.stat``.

    Why not ``os.stat``: since Linux 6.13 (multigrain timestamps: ext4, XFS, btrfs, tmpfs)
    a stat that returns a file's ctime or mtime flags its inode, and the next write must
    give it a new fine-grained ctime: on every save the inode is dirtied and the save's
    ``fdatasync`` commits the journal too. Measured on ext4 (kernel 6.18): a stat before
    each ``pwrite`` + ``fdatasync`` took the sync from 86 to 120-155 µs. A statx that asks
    for the inode number and the link count only flags nothing.
    """
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return None
    try:
        statx = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):  # glibc before 2.28, musl before 1.2.5
        return None
    statx.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)
    statx.restype = ctypes.c_int
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if statx(_AT_FDCWD, os.fsencode(os.curdir), 0, _STATX_WANT, buf) != 0:  # ENOSYS: a kernel before 4.11
        return None
    return statx


_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_EMPTY_PATH = 0x1000
#: STATX_NLINK | STATX_INO: no timestamps (see _load_statx).
_STATX_WANT = 0x4 | 0x100
_STATX_SIZE = 256  # sizeof(struct statx), fixed by the kernel ABI
#: stx_mask (offset 0), stx_nlink (16), stx_ino (32), stx_dev_major and stx_dev_minor (136).
_STATX_FIELDS = struct.Struct("<I12xI12xQ96xII")
_statx = _load_statx()


def _identity(*, fd: int = _AT_FDCWD, path: str = "") -> tuple[int, int, int]:
    """``(device, inode, link count)`` of the open file ``fd``, or of ``path`` (a symlink
    itself, not its target), without asking for timestamps (see :func:`_load_statx`).

    The device is encoded as ``statx`` gives it, not as ``st_dev``: compare identities
    only with each other. Raises OSError (FileNotFoundError for a missing path).
    """
    if _statx is not None:
        buf = ctypes.create_string_buffer(_STATX_SIZE)
        flags = _AT_SYMLINK_NOFOLLOW if path else _AT_EMPTY_PATH
        if _statx(fd, os.fsencode(path), flags, _STATX_WANT, buf) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), path or None)
        mask, links, ino, major, minor = _STATX_FIELDS.unpack_from(buf)
        if mask & _STATX_WANT == _STATX_WANT:  # the kernel filled both
            return major << 32 | minor, ino, links
    st = os.stat(path, follow_symlinks=False) if path else os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_nlink


def _used(image: bytearray, offset: int, size: int) -> int:
    """How many bytes of the slot at ``offset`` are not newline padding."""
    return len(image[offset : offset + size].rstrip(b"\n"))


def _dir_from_url(url: StoreURL) -> str:
    forms = "file:///absolute/dir, file://localhost/absolute/dir or file:relative/dir"
    parts = urlsplit(url.raw)
    if parts.query or parts.fragment:
        raise ConfigError(f"the file store URL {url.display!r} takes no query options: use {forms}")
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(
            f"the file store URL {url.display!r} names the host {parts.netloc!r}: the file store is for "
            f"a local directory only; use {forms}"
        )
    path = unquote(parts.path)
    if not path:
        raise ConfigError(f"the file store URL {url.display!r} names no directory: use {forms}")
    return path


class FileStore(Store):
    """The Store contract on a directory tree. Thread-safe; processes coordinate by flock."""

    schemes = ("file",)
    local = True

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        display: str | None = None,
        lock_timeout: float = LOCK_TIMEOUT,
        read_only: bool = False,
    ) -> None:
        """Open (creating it 0700 if needed) the store in ``directory``.

        ``lock_timeout`` is how long a write waits for another process's flock on the run.
        ``read_only``: create nothing; a missing directory raises StoreNotFound, and a read
        that must wait for a writer locks an existing lock file only (see ``_read_unlocked``).
        """
        self.lock_timeout = lock_timeout
        self.root = os.path.normpath(os.path.abspath(directory))
        self.display = display or f"file://{self.root}"
        self._lock = threading.RLock()
        self._paths: dict[tuple[str, str], _Paths] = {}
        # (job, run) -> its open lock file (and checkpoint file), least recently used first.
        self._lock_fds: OrderedDict[tuple[str, str], _Open] = OrderedDict()
        self._pid = os.getpid()
        # Per run, the bytes and generation this store last wrote or read, how many bytes of
        # each slot are not padding, and whether this store made both slots durable itself:
        # the next save compares the file with them instead of parsing the whole document
        # again, and writes in place only over bytes it knows are on the disk.
        self._cache: dict[tuple[str, str], tuple[bytearray, _Gen, list[int], bool]] = {}
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise ConfigError(f"{self.display}: {self.root} is not a directory; the file store needs one")
        if read_only:
            self._make_read_only()
            if not os.path.isdir(self.root):
                raise StoreNotFound(
                    f"no file store at {self.root} ({self.display}): the directory does not exist; a job's "
                    "first run creates it, so check the path (--store or $RESTARTABLE_STORE) or run the job first"
                )
            return
        with os_errors(self.root, display=self.display):
            make_private_dirs(self.root)

    @classmethod
    def from_url(cls, url: StoreURL, *, read_only: bool = False) -> Self:
        return cls(_dir_from_url(url), display=url.display, read_only=read_only)

    # -- paths and locks -------------------------------------------------------

    def _p(self, job: str, run: str) -> _Paths:
        p = self._paths.get((job, run))
        if p is not None:
            return p
        check_name(job, "job name")
        check_name(run, "run id")
        job_dir = os.path.join(self.root, job)
        # Defence in depth: the grammar already excludes separators and leading dots.
        if os.path.dirname(os.path.normpath(job_dir)) != self.root:
            raise UsageError(f"job name {job!r} would leave the store directory {self.display}")
        base = os.path.join(job_dir, run)
        if os.path.dirname(os.path.normpath(base)) != job_dir:
            raise UsageError(f"run id {run!r} would leave the store directory {self.display}")
        r = re.escape(run)
        p = _Paths(
            job_dir=job_dir,
            current=base + ".ckpt",
            prev=base + ".ckpt.prev",
            lock=base + ".lock",
            temp_prefix=f".{run}.ckpt.",
            temp_re=re.compile(rf"\.{r}\.ckpt\.[0-9a-f]{{16}}\.tmp"),
            markers_prefix=base + ".markers.",
            markers_re=re.compile(rf"{r}\.markers\.(?:s[0-9a-f]{{64}}|[0-9a-f]*)\.jsonl"),
        )
        if len(self._paths) > 1024:
            self._paths.clear()
        self._paths[(job, run)] = p
        return p

    def _open_lock(self, key: tuple[str, str], p: _Paths, *, create: bool = True) -> _Open:
        """The run's open descriptors, with its lock file opened (and made) when not cached.

        ``create=False`` (a write that needs an existing record) raises _Absent instead of
        making a lock file, or the job directory, for a run with no files: a runner fenced
        off by ``restartable reset --force`` must not leave an empty lock file behind.
        """
        if self._pid != os.getpid():
            # A forked child shares its parent's open file descriptions, and with them
            # the flocks: never use the inherited ones.
            for inherited in self._lock_fds.values():
                inherited.close()
            self._lock_fds.clear()
            self._cache.clear()
            self._pid = os.getpid()
        cached = self._lock_fds.get(key)
        if cached is not None:
            self._lock_fds.move_to_end(key)
            return cached
        try:
            fd = os.open(p.lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            # No lock file: a new run, a deleted one, or (rarely) files copied without it.
            if not create and not (os.path.exists(p.current) or os.path.exists(p.prev)):
                raise _Absent from None
            make_private_dirs(p.job_dir)
            fd = os.open(p.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        st = os.fstat(fd)
        entry = self._lock_fds[key] = _Open(fd, (st.st_dev, st.st_ino))
        while len(self._lock_fds) > _MAX_OPEN_LOCKS:
            self._lock_fds.popitem(last=False)[1].close()
        return entry

    def _drop_lock_fd(self, key: tuple[str, str]) -> None:
        entry = self._lock_fds.pop(key, None)
        if entry is not None:
            entry.close()

    def _flock(self, fd: int, p: _Paths) -> None:
        """``flock(LOCK_EX)``, waiting at most ``lock_timeout`` seconds (then StoreUnavailable)."""
        flock_exclusive(
            fd,
            self.lock_timeout,
            lambda: StoreUnavailable(
                f"{p.lock} stayed locked by another process for {self.lock_timeout:g}s "
                f"({self.display}): retry, or find the stuck process with `fuser {p.lock}`"
            ),
        )

    @contextmanager
    def _flocked(self, job: str, run: str, *, create: bool = True) -> Iterator[_Paths]:
        """Hold the run's flock (and this store's thread lock); translate OSErrors.

        ``create=False``: raise _Absent, creating nothing, when the run has no files (see
        :meth:`_open_lock`).
        """
        p = self._p(job, run)
        key = (job, run)
        with self._lock, os_errors(p.job_dir, display=self.display):
            while True:
                entry = self._open_lock(key, p, create=create)
                fd = entry.lock
                self._flock(fd, p)
                try:
                    st = os.stat(p.lock)
                    if (st.st_dev, st.st_ino) == entry.lock_id:
                        break
                except FileNotFoundError:
                    pass
                # delete() removed the lock file after we opened it: a lock on that inode
                # excludes nobody who opens the path now. Reopen and lock again.
                fcntl.flock(fd, fcntl.LOCK_UN)
                self._drop_lock_fd(key)
            try:
                yield p
            finally:
                # delete() closes the descriptor itself (which released the lock).
                if key in self._lock_fds:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    # -- reading -------------------------------------------------------------------

    def _read(self, job: str, run: str, p: _Paths) -> _Gen | None:
        """The newest readable generation: of the two slots, or from current then ``.prev``
        for a version-1 run (and a delete cut short, which renames current to ``.prev``)."""
        where = f"job {job!r} run {run!r} in {self.display}"
        bad_current: _Bad | None = None
        current = _load(p.current, where, (job, run))
        if current is not None:
            try:
                gen = self._newest(current, p.current, job, run)
            except _Bad as exc:
                bad_current = exc
            else:
                if current.slot_size:
                    # Read, not written: what the page cache shows may be a write whose sync
                    # failed (ours or a dead process's) and that the disk will never hold.
                    self._remember((job, run), bytearray(current.data), gen, durable=False)
                return gen
        # Here current is missing (no record, a version-1 crash between the two renames, a
        # delete cut short) or damaged.
        prev_file = _load(p.prev, where, (job, run))
        try:
            prev = None if prev_file is None else self._newest(prev_file, p.prev, job, run)
        except _Bad as exc:
            if bad_current is None:
                raise CheckpointCorrupt(
                    f"no readable checkpoint of {where}: {p.current} is missing and {p.prev} is "
                    f"unusable: {exc}. {self._fix(job, run, exc.newer)}"
                ) from None
            raise CheckpointCorrupt(
                f"no readable checkpoint of {where}: {p.current}: {bad_current}; {p.prev}: {exc}. "
                f"{self._fix(job, run, bad_current.newer and exc.newer)}"
            ) from None
        if bad_current is None:
            return prev
        if prev is None:
            older = "" if current is not None and current.slot_size else f"; there is no previous generation {p.prev}"
            raise CheckpointCorrupt(
                f"no readable checkpoint of {where}: {p.current}: {bad_current}{older}. "
                f"{self._fix(job, run, bad_current.newer)}"
            )
        log.warning(
            "checkpoint %s of job %r run %r is unusable (%s); using the previous generation %s "
            "(the work saved since then will be redone)",
            p.current,
            job,
            run,
            bad_current,
            p.prev,
        )
        return prev

    def _newest(self, f: _File, path: str, job: str, run: str) -> _Gen:
        """The generation to use from one file; raises _Bad when it has none.

        Of two slots, the valid one with the higher sequence number. A damaged slot beside
        a good one is what a crash in the middle of a save leaves (the slot being written
        is always the older one) or real damage: the first is told by a whole header naming
        the next sequence number (a process killed mid-write leaves a prefix) and logged
        at INFO; anything else is a WARNING, since the newest save may be what was lost.
        """
        if not f.slot_size:
            (g,) = f.gens
            if isinstance(g, _Bad):
                raise g
            return g
        good = [g for g in f.gens if isinstance(g, _Gen)]
        bad = [g for g in f.gens if isinstance(g, _Bad)]
        if any(b.newer for b in bad):
            (b,) = [b for b in bad if b.newer]
            raise CheckpointCorrupt(
                f"{path} (job {job!r} run {run!r} in {self.display}) holds a generation {b}. "
                f"{self._fix(job, run, True)}"
            )
        if not good:
            why = "; ".join(f"slot {i}: {g}" for i, g in enumerate(f.gens))
            raise _Bad(f"both of its slots are unusable ({why})")
        best = max(good, key=lambda g: g.seq)
        if bad:
            other = 1 - (best.slot or 0)
            if bad[0].seq == best.seq + 1:
                log.info(
                    "checkpoint %s of job %r run %r: the save in progress when a process stopped did not "
                    "complete (slot %d holds part of sequence %d); using sequence %d, the last complete save",
                    path,
                    job,
                    run,
                    other,
                    best.seq + 1,
                    best.seq,
                )
            else:
                log.warning(
                    "checkpoint %s of job %r run %r: slot %d is unusable (%s: a save cut short by a power "
                    "loss, or damage); using slot %d, sequence %d (any work saved after it will be redone)",
                    path,
                    job,
                    run,
                    other,
                    bad[0],
                    best.slot,
                    best.seq,
                )
        return best

    def _fix(self, job: str, run: str, newer: bool) -> str:
        if newer:
            return "A newer restartable wrote it: upgrade restartable (pip install -U restartable)."
        return (
            f"Restore one of them from a backup, or run `restartable reset {job} --run {run}` "
            f"(store {self.display}) to start the run over."
        )

    def _remember(
        self, key: tuple[str, str], image: bytearray, gen: _Gen, used: list[int] | None = None, *, durable: bool
    ) -> None:
        """Keep ``image`` (the whole version-2 file, as on disk now), its newest generation,
        per slot how many bytes are not padding (``used``; counted here when not given), and
        whether this store synced both slots itself (``durable``)."""
        if used is None:
            size = len(image) // 2
            used = [_used(image, 0, size), _used(image, size, size)]
        self._cache.pop(key, None)
        self._cache[key] = (image, gen, used, durable)
        if len(self._cache) > _MAX_OPEN_LOCKS:
            del self._cache[next(iter(self._cache))]  # the least recently used run

    def _current(self, job: str, run: str, p: _Paths) -> tuple[_Gen | None, int]:
        """The stored generation, under the flock, and the current file open for writing in
        place (-1 when there is none, or when it must not be written in place).

        The cached generation when the file is byte for byte what this store last wrote or
        read (one read and a memcmp, no parsing), else read and checked. The whole file is
        compared, both slots: another store object's (or process's) save writes the slot
        this one would write next, and must be seen.

        The descriptor stays open between saves (it belongs to the run's :class:`_Open`;
        the caller must not close it). Each call checks by one ``statx`` of the path that
        it is still the file there: a slow-path save (ours or another process's) renames a
        new file over it, and a delete renames it away; then it is opened again.
        """
        held = self._lock_fds[(job, run)]  # _flocked opened it
        try:
            dev, ino, links = _identity(path=p.current)
        except FileNotFoundError:
            held.close_data()
            return self._read(job, run, p), -1
        if held.data >= 0 and held.data_id != (dev, ino):
            held.close_data()
        if held.data < 0 and links == 1:
            fd = os.open(p.current, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                # The file as opened (the path is checked again on the next call).
                dev, ino, links = _identity(fd=fd)
            except BaseException:
                os.close(fd)
                raise
            held.data, held.data_id = fd, (dev, ino)
        # A file with other hard links (a backup made with cp -al or rsnapshot) must never
        # change under them: it is replaced by a new file instead (the slow path).
        if links != 1:
            held.close_data()
            return self._read(job, run, p), -1
        cached = self._cache.get((job, run))
        # One byte more than expected: a longer file must not compare equal.
        if cached is not None and os.pread(held.data, len(cached[0]) + 1, 0) == cached[0]:
            return cached[1], held.data
        return self._read(job, run, p), held.data

    # -- writing -------------------------------------------------------------------

    def _write(
        self, p: _Paths, rec: Checkpoint, history: list[str], *, base: _Gen | None, fd: int, text: str | None = None
    ) -> None:
        """Write ``rec`` (whose JSON is ``text`` when given) as the generation after ``base``.

        The steady state is one ``pwrite`` into the slot that does not hold ``base`` and one
        ``fdatasync``: the file keeps its size and its directory entry, so nothing but its
        data reaches the disk. ``fd`` is the current file as :meth:`_current` returned it,
        checked against the cache (-1: it cannot be written in place). Anything else
        (a new run, a version-1 run, a record larger than its slot, a hard-linked file)
        writes a whole new file through temp + fsync + rename + directory fsync.

        In place only over a file whose two slots this store synced itself: ``base``, the
        slot kept, must be on the disk. A file read instead (the first write of a process,
        a file another process wrote) may show in its newest slot a write whose sync failed:
        after an EIO from ``fdatasync`` Linux marks those pages clean, so the page cache
        shows bytes the disk may never get ("fsyncgate"), and overwriting the other slot
        in place could leave no good generation on the disk. Such a file is written anew
        once (the slow path syncs both slots), and a failed in-place write forgets the
        cache so that the next write is such a first write.
        """
        key = (rec.job, rec.run)
        seq = base.seq + 1 if base is not None else 1
        block = _slot_bytes(rec, history, seq, text)
        cached = self._cache.get(key)
        if (
            fd >= 0
            and base is not None
            and base.slot is not None
            and cached is not None
            and cached[1] is base
            and cached[3]
        ):
            image, _, used, _ = cached  # changed only once the write is durable
            size = len(image) // 2
            if len(block) <= size:
                target = 1 - base.slot
                offset = target * size
                end = len(block)
                # Blank what is left of the slot's previous (longer) content, so the file stays
                # a stream of JSON documents separated by newlines (`jq` reads it).
                if used[target] > end:
                    block += b"\n" * (used[target] - end)
                view, done = memoryview(block), 0
                try:
                    while done < len(block):
                        done += os.pwrite(fd, view[done:], offset + done)
                    # fdatasync: the data only; the size and the directory entry did not change.
                    os.fdatasync(fd)
                except BaseException:
                    # The slot is in doubt for good (see above): the next write starts anew.
                    self._cache.pop(key, None)
                    raise
                image[offset : offset + len(block)] = block
                used[target] = end
                self._remember(key, image, _Gen(rec, history, seq, target), used, durable=True)
                return
        # The slow path: a whole new file. The other slot keeps the generation this one
        # follows (a copy of this one for a new run), so a later damage has a fallback.
        target = 1 if base is None or base.slot is None else 1 - base.slot
        if base is None:
            older = _slot_bytes(rec, history, 0, text)
        else:
            older = _slot_bytes(base.record, base.history, base.seq, None)
        size = max(_PAGE, -(-(max(len(block), len(older)) * 3 // 2) // _PAGE) * _PAGE)
        image = bytearray(b"\n" * (2 * size))
        image[target * size : target * size + len(block)] = block
        image[(1 - target) * size : (1 - target) * size + len(older)] = older
        tmp = write_temp(p.job_dir, p.temp_prefix, bytes(image))
        held = self._lock_fds.get(key)
        if held is not None:
            held.close_data()  # the file it names is about to be replaced
        try:
            os.replace(tmp, p.current)
        except BaseException:
            _unlink(tmp)
            raise
        # A version-1 run's previous generation is inside the new file now.
        _unlink(p.prev)
        self._fsync_dir(p.job_dir)
        self._remember(key, image, _Gen(rec, history, seq, target), durable=True)

    def _fsync_dir(self, directory: str) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _held(self, job: str, run: str, epoch: int, gen: _Gen | None) -> _Gen:
        """``gen`` when it is at ``epoch`` (the compare of compare-and-set), else raise Fenced."""
        if gen is None or gen.record.epoch != epoch:
            self._cache.pop((job, run), None)
            raise self._fenced(job, run, epoch, None if gen is None else gen.record.epoch)
        return gen

    # -- the contract ----------------------------------------------------------------

    def _read_unlocked(self, job: str, run: str, p: _Paths) -> _Gen | None:
        """The newest generation, read without the flock when all is well.

        A good current file (its checksum proves it whole) or no files at all are
        answered at once. Anything else (current missing or failing its checksum) may
        be a writer at work, which renames files and refills a rotated-out one in place:
        that case is read again under the flock, so only real damage is ever reported.
        A read-only store creates no lock file for that: it locks the run's lock file
        when there is one (every writer makes it before writing) and reads without a
        lock when there is none.
        """
        where = f"job {job!r} run {run!r} in {self.display}"
        with os_errors(p.job_dir, display=self.display):
            try:
                gen = _read_generation(p.current, where, (job, run))
            except _Bad:
                gen = None
            else:
                if gen is not None or not os.path.exists(p.prev):
                    return gen
        if self.read_only:
            return self._read_sharing_lock(job, run, p)
        with self._flocked(job, run) as locked:
            return self._read(job, run, locked)

    def _read_sharing_lock(self, job: str, run: str, p: _Paths) -> _Gen | None:
        """Read-only: :meth:`_read` under the run's flock, taken on the existing lock file only."""
        with self._lock, os_errors(p.job_dir, display=self.display):
            try:
                # O_RDONLY without O_CREAT: flock needs no write access, and nothing is created.
                fd = os.open(p.lock, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return self._read(job, run, p)  # no writer ever locked the run, or a delete removed it
            try:
                self._flock(fd, p)
                return self._read(job, run, p)
            finally:
                os.close(fd)  # releases the flock

    def load(self, job: str, run: str) -> Checkpoint | None:
        gen = self._read_unlocked(job, run, self._p(job, run))
        return None if gen is None else gen.record

    def acquire(
        self, job: str, run: str, *, owner: Owner, lease_seconds: float, steal_epoch: int | None = None
    ) -> Checkpoint:
        with self._flocked(job, run) as p:
            self._remove_temps(p)  # under the flock nobody is writing: any temp file is a crash's leftover
            gen, fd = self._current(job, run, p)
            now = self.now()
            if gen is None:
                rec = self._new_record(job, run, owner, now, lease_seconds, floor=self._floor(p.job_dir))
                history: list[str] = []
            else:
                rec = self._take_over(gen.record, owner, now, lease_seconds, steal_epoch)
                history = gen.history
            self._write(p, rec, [_entry_json(rec), *history[: HISTORY_LIMIT - 1]], base=gen, fd=fd)
            return rec

    def save(self, record: Checkpoint, *, lease_seconds: float | None) -> Checkpoint:
        # Stamped and encoded before the flock is taken: other processes wait for our file
        # operations only, not for our JSON encoding.
        now = self.now()
        rec = record.replace(
            updated=now, heartbeat=now, lease_expires=None if lease_seconds is None else now + lease_seconds
        )
        text = encode_record(rec)
        job, run = record.job, record.run
        try:
            with self._flocked(job, run, create=False) as p:
                gen, fd = self._current(job, run, p)
                gen = self._held(job, run, record.epoch, gen)
                history = [_entry_json(rec), *gen.history[: HISTORY_LIMIT - 1]]
                self._write(p, rec, history, base=gen, fd=fd, text=text)
                if lease_seconds is None:
                    # Released (completed, failed, paused): this process is done with the run.
                    self._lock_fds[(job, run)].close_data()
        except _Absent:
            raise self._fenced(job, run, record.epoch, None) from None
        return rec

    def renew(self, job: str, run: str, *, epoch: int, lease_seconds: float) -> float:
        try:
            with self._flocked(job, run, create=False) as p:
                gen, fd = self._current(job, run, p)
                gen = self._held(job, run, epoch, gen)
                if gen.record.lease_expires is None:  # released: a late renewal must not take it again
                    raise self._released(job, run, epoch)
                now = self.now()
                rec = gen.record.replace(heartbeat=now, lease_expires=now + lease_seconds)
                self._write(p, rec, gen.history, base=gen, fd=fd)
        except _Absent:
            raise self._fenced(job, run, epoch, None) from None
        return now + lease_seconds

    def delete(self, job: str, run: str, *, epoch: int | None = None) -> bool:
        try:
            with self._flocked(job, run, create=False) as p:
                return self._delete_locked(job, run, p, epoch)
        except _Absent:
            return False  # no files, no lock file: nothing to delete, and nothing is created

    def _delete_locked(self, job: str, run: str, p: _Paths, epoch: int | None) -> bool:
        if epoch is not None:
            gen = self._read(job, run, p)
            if gen is None or gen.record.epoch != epoch:
                return False
        # Without an epoch nothing is read but the headers: `reset` must work on a damaged run too.
        existed = os.path.exists(p.current) or os.path.exists(p.prev)
        # Raised (durably) before the files go: whoever creates the run again, under the
        # run's flock we hold, seeds its epoch above this one.
        self._raise_floor(p.job_dir, max(self._header_epochs(p), default=0))
        # Current over .prev first: one atomic rename, so a crash leaves the newest
        # generation or none, never an older .prev alone (which load would return without
        # a warning). Found by tests/stores/test_crash_states.py. Either layout: _read
        # reads a two-slot file under the .prev name too.
        try:
            os.replace(p.current, p.prev)
        except FileNotFoundError:
            pass
        for path in (p.prev, *self._marker_files(p)):
            _unlink(path)
        self._remove_temps(p)
        # Last, while we hold its flock: a waiter then sees the inode gone and reopens.
        _unlink(p.lock)
        self._fsync_dir(p.job_dir)
        self._cache.pop((job, run), None)
        self._drop_lock_fd((job, run))
        return existed

    # -- the epoch floor -------------------------------------------------------------

    def _floor(self, job_dir: str) -> int:
        """The highest epoch deleted in ``job_dir`` (0 when none was)."""
        path = os.path.join(job_dir, _FLOOR)
        try:
            with open(path, "rb") as f:
                text = f.read(64)
        except FileNotFoundError:
            return 0
        try:
            return int(text)
        except ValueError:
            # atomic_write never leaves a partial file: this one was edited by hand.
            log.warning("%s is not a number (%r); new runs are seeded from the clock alone", path, text[:32])
            return 0

    def _raise_floor(self, job_dir: str, epoch: int) -> None:
        """Make the floor of ``job_dir`` at least ``epoch``, durably.

        Deletes of different runs of the job may run at once: they serialize on a flock
        on the directory itself, so no one lowers a floor another one just raised.
        """
        if epoch <= 0:
            return
        fd = os.open(job_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            flock_exclusive(
                fd,
                self.lock_timeout,
                lambda: StoreUnavailable(
                    f"the directory {job_dir} stayed locked by another process for {self.lock_timeout:g}s "
                    f"({self.display}): retry, or find the stuck process with `fuser {job_dir}`"
                ),
            )
            for name in os.listdir(job_dir):
                if _FLOOR_TEMP.fullmatch(name):  # a floor write cut short by a crash
                    _unlink(os.path.join(job_dir, name))
            if self._floor(job_dir) < epoch:
                atomic_write(os.path.join(job_dir, _FLOOR), b"%d\n" % epoch)
        finally:
            os.close(fd)  # releases the flock

    def _header_epochs(self, p: _Paths) -> list[int]:
        """The epochs named by the headers of the run's generation files that have readable ones."""
        out = []
        for path in (p.current, p.prev):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            size = _layout(data)
            # Both slots of a version-2 file: a damaged body's header still names an epoch
            # that was handed out, and the floor must be above it too.
            for offset in (0, size) if size else (0,):
                try:
                    out.append(int(_slot_head(data, offset)[0]["epoch"]))
                except _Bad:
                    continue
        return out

    def list_runs(self, job: str | None = None, *, corrupt: list[Unreadable] | None = None) -> list[Checkpoint]:
        with os_errors(self.root, display=self.display):
            jobs = [job] if job is not None else sorted(os.listdir(self.root))
            out: list[Checkpoint] = []
            for j in jobs:
                job_dir = os.path.join(self.root, j)
                if not _valid(j) or not os.path.isdir(job_dir):
                    continue
                runs = set()
                for name in os.listdir(job_dir):
                    if name.endswith(".ckpt"):
                        runs.add(name[: -len(".ckpt")])
                    elif name.endswith(".ckpt.prev"):
                        runs.add(name[: -len(".ckpt.prev")])
                out += self._readable(
                    ((j, run, run) for run in sorted(r for r in runs if _valid(r))),
                    functools.partial(self._record_of, j),
                    corrupt,
                )
        return out

    def _record_of(self, job: str, run: str) -> Checkpoint | None:
        gen = self._read_unlocked(job, run, self._p(job, run))
        return gen.record if gen else None

    def history(self, job: str, run: str, *, limit: int = 20) -> list[HistoryEntry]:
        gen = self._read_unlocked(job, run, self._p(job, run))
        if gen is None:
            return []
        return [HistoryEntry(**json.loads(h)) for h in gen.history[: max(0, limit)]]

    # -- markers ----------------------------------------------------------------------

    def _marker_path(self, p: _Paths, cursor: str) -> str:
        enc = cursor.encode("utf-8").hex()
        if len(enc) > _MAX_CURSOR_HEX:
            enc = "s" + hashlib.sha256(cursor.encode("utf-8")).hexdigest()
        return f"{p.markers_prefix}{enc}.jsonl"

    def _marker_files(self, p: _Paths) -> list[str]:
        try:
            names = os.listdir(p.job_dir)
        except FileNotFoundError:
            return []
        return [os.path.join(p.job_dir, n) for n in names if p.markers_re.fullmatch(n)]

    def _remove_temps(self, p: _Paths) -> None:
        for name in os.listdir(p.job_dir):
            if p.temp_re.fullmatch(name):
                _unlink(os.path.join(p.job_dir, name))

    def _stored_epoch(self, job: str, run: str, p: _Paths) -> int | None:
        """The stored epoch: the cached generation's when the file is unchanged, else read."""
        gen, _ = self._current(job, run, p)
        return None if gen is None else gen.record.epoch

    def mark(self, job: str, run: str, cursor: str, key: str, value: Any, *, epoch: int) -> None:
        line = (dumps([key, value], what=f"the marker value of {key!r}") + "\n").encode()
        try:
            with self._flocked(job, run, create=False) as p:
                stored = self._stored_epoch(job, run, p)
                if stored != epoch:
                    raise self._fenced(job, run, epoch, stored)
                self._append_marker(p, cursor, line)
        except _Absent:
            raise self._fenced(job, run, epoch, None) from None

    def _append_marker(self, p: _Paths, cursor: str, line: bytes) -> None:
        """Append ``line`` to the marker file of ``cursor``, durably (under the run's flock)."""
        path = self._marker_path(p, cursor)
        created = True
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            created = False
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        try:
            size = 0 if created else os.fstat(fd).st_size
            # A crash mid-append leaves a torn last line; start ours on a fresh line so the
            # fragment stays one unparseable line (skipped on read) and ours stays whole.
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        finally:
            os.close(fd)
        if created:
            self._fsync_dir(p.job_dir)

    def markers(self, job: str, run: str, cursor: str) -> dict[str, Any]:
        p = self._p(job, run)
        path = self._marker_path(p, cursor)
        with os_errors(path, display=self.display):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return {}
        out: dict[str, Any] = {}
        lines = data.split(b"\n")
        # The last element is b"" after a final newline, else a torn line: ignored either way.
        for raw in lines[:-1]:
            try:
                k, v = loads(raw)
            except (ValueError, TypeError):
                continue  # a torn line from a crash mid-append, ended by the next append
            if isinstance(k, str):
                out[k] = v
        return out

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for entry in self._lock_fds.values():
                    entry.close()
            self._lock_fds.clear()
            self._cache.clear()


def _valid(name: str) -> bool:
    try:
        check_name(name)
    except UsageError:
        return False
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def raw_record(path: str) -> dict[str, Any]:
    """One record file of a file store, of either layout, as ONE JSON-able document.

    For ``restartable show --raw PATH`` (and ``| jq .record.state``): a version-2 file
    holds two generations and a version-1 file a header line and a body, neither of which
    ``jq`` reads as one value. Nothing is written, no lock is taken, nothing is repaired::

        {"path": "/abs/path/run.ckpt", "format": "restartable-file", "version": 2,
         "layout": "two slots of 8192 bytes",
         "newest": 1,                    # which generation a load would use (None: none is usable)
         "header": {...},                # that generation's header: seq, epoch, length, sha256
         "record": {...},                # its record, as stored (the tagged JSON of the codec)
         "history": [{...}, ...],        # its history, newest first
         "generations": [{"slot": 0, "header": {...}, "error": None}, {"slot": 1, ...}]}

    ``error`` says why a generation is unusable (torn, checksum, not our format); the
    record itself is not decoded, so a record a newer restartable wrote still shows.
    Raises UsageError when ``path`` is not a file, PermissionDenied when it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UsageError(f"{path}: no such record file; pass a <dir>/<job>/<run>.ckpt file of a file store") from None
    except OSError as exc:
        raise translate_oserror(exc, path=path, display=path) from exc
    size = _layout(data)
    regions = [(0, size), (size, size)] if size else [(0, len(data))]
    gens: list[dict[str, Any]] = []
    docs: list[dict[str, Any] | None] = []
    for index, (offset, length) in enumerate(regions):
        gen: dict[str, Any] = {"slot": index if size else None, "header": None, "error": None}
        doc = None
        try:
            head, start = _slot_head(data, offset)
            gen["header"] = head
            end = offset + length
            if head["version"] == FILE_VERSION:
                if not 0 <= head["length"] <= end - start:
                    raise _Bad(f"its length {head['length']} runs past the slot")
                end = start + head["length"]
            body = data[start:end]
            if hashlib.sha256(body).hexdigest() != head["sha256"]:
                raise _Bad("its checksum does not match (torn or damaged)")
            doc = json.loads(body)
            if not isinstance(doc, dict) or not isinstance(doc.get("record"), dict):
                raise _Bad("its body is not a checkpoint document")
            if doc["record"].get("epoch") != head["epoch"]:
                raise _Bad("its header and record disagree on the epoch")
        except (_Bad, ValueError, RecursionError) as exc:
            gen["error"] = str(exc) or type(exc).__name__
            doc = None
        gens.append(gen)
        docs.append(doc)
    usable = [i for i, d in enumerate(docs) if d is not None]
    newest = max(usable, key=lambda i: gens[i]["header"].get("seq", 0)) if usable else None
    first_head = next((g["header"] for g in gens if g["header"] is not None), None)
    chosen = docs[newest] if newest is not None else None
    return {
        "path": os.path.abspath(path),
        "format": FILE_FORMAT,
        "version": FILE_VERSION if size else (first_head or {}).get("version"),
        "layout": f"two slots of {size} bytes" if size else "one document (version 1)",
        "newest": newest,
        "header": None if newest is None else gens[newest]["header"],
        "record": None if chosen is None else chosen["record"],
        "history": None if chosen is None else chosen.get("history"),
        "generations": gens,
    }
