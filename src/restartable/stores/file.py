"""``file:///dir``: checkpoints as plain files in a directory on a LOCAL disk.

URLs (RFC 8089)::

    file:///var/lib/jobs/ckpt          absolute
    file://localhost/var/lib/jobs/ckpt absolute, with the only host we accept
    file:relative/dir                  relative to the current directory

Use a local filesystem only: the compare-and-set relies on ``flock`` and atomic
``rename``, which NFS and other network filesystems do not reliably give across
machines. For several machines use PostgreSQL or Redis.

Layout, one directory per job (created 0700, files 0600)::

    <dir>/<job>/<run>.ckpt                      current generation
    <dir>/<job>/<run>.ckpt.prev                 previous good generation
    <dir>/<job>/<run>.lock                      flock target for every write
    <dir>/<job>/<run>.markers.<cursor>.jsonl    per-item markers (cursor name hex-encoded)
    <dir>/<job>/.<run>.ckpt.<random>.tmp        a write in progress (or left by a crash)
    <dir>/<job>/.epoch-floor                    the highest epoch of any run of the job deleted
                                                (decimal; absent until the first delete)

A record created again after a delete starts above ``.epoch-floor`` even when the wall
clock that seeds first epochs stepped back (see ``base.first_epoch``): a stale runner of
the deleted record can never match the new one's epoch. ``delete`` raises it, under a
flock on the job directory, before it removes the run's files.

A generation is one document: a header line
``{"format":"restartable-file","version":1,"epoch":E,"sha256":"<hex of the body>"}``
then the body ``{"history":[...],"record":{...}}`` (the record as
:func:`encode_record` writes it; history newest first, capped to HISTORY_LIMIT).

A save takes ``flock(LOCK_EX)`` on the lock file for the whole read-check-write (the
cross-process compare-and-set), checks that the current file is the one this store
last wrote (else reads it and compares its epoch), writes a temp file in the same
directory and fsyncs it, renames current to ``.prev`` and the temp file to current,
and fsyncs the directory. The temp file is the old ``.prev`` renamed aside and
refilled, so a save neither allocates nor frees an inode (see ``_recycle``). A crash
between the two renames leaves only ``.prev``: the newest complete generation,
loaded without a warning. A damaged current generation (torn, empty, bad checksum,
bad header, another format version) falls back to ``.prev`` with a warning on the
"restartable" logger; with both damaged, :class:`CheckpointCorrupt` names both files
and the fix. Reads take no lock unless something looks odd (see ``_read_unlocked``).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import re
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
from ..errors import CheckpointCorrupt, ConfigError, StoreUnavailable, UsageError
from ._localfs import FILE_MODE, atomic_write, flock_exclusive, make_private_dirs, os_errors, write_temp
from .base import HISTORY_LIMIT, Store, Unreadable

__all__ = ["FILE_FORMAT", "FILE_VERSION", "FileStore"]

log = logging.getLogger("restartable")

FILE_FORMAT = "restartable-file"
FILE_VERSION = 1
#: The header is ~150 bytes; reading this much gets it in one read() without the body.
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
    #: False when it came from ``.prev`` (current missing or damaged): the next write must
    #: not rotate current over the good ``.prev``.
    is_current: bool


class _Bad(Exception):
    """A generation file that exists but cannot be used; the message says why."""

    def __init__(self, why: str, *, newer: bool = False):
        super().__init__(why)
        self.newer = newer


def _entry_json(rec: Checkpoint) -> str:
    """One history entry as JSON (built by hand: it is on every save's path; repr of a
    finite float is the JSON number json.dumps would write)."""
    return (
        f'{{"at":{float(rec.updated)!r},"epoch":{int(rec.epoch)},"status":{json.dumps(rec.status)},'
        f'"done":{int(rec.done)},"failed":{int(rec.failed)}}}'
    )


def _parse_header(line: bytes) -> dict[str, Any]:
    """The header of a generation, checked; raises _Bad."""
    try:
        head = json.loads(line)
    except ValueError:
        raise _Bad("its header line is not JSON (torn or overwritten)") from None
    if not isinstance(head, dict) or head.get("format") != FILE_FORMAT:
        raise _Bad(f"its header does not name the format {FILE_FORMAT!r}")
    version = head.get("version")
    if type(version) is not int or version != FILE_VERSION:
        if type(version) is int and version > FILE_VERSION:
            raise _Bad(
                f"it has file format version {version}, newer than this restartable understands "
                f"({FILE_VERSION}): upgrade restartable",
                newer=True,
            )
        raise _Bad(f"it has an unknown file format version {version!r}")
    if type(head.get("epoch")) is not int or not isinstance(head.get("sha256"), str):
        raise _Bad("its header lacks the epoch or the checksum")
    return head


def _read_generation(path: str, where: str, expect: tuple[str, str]) -> _Gen | None:
    """The generation in ``path``, None when the file does not exist; raises _Bad when damaged.

    ``expect`` is the ``(job, run)`` the caller asked for: the record must name it. It is
    passed in, never parsed back out of ``path``: a run may itself be named like one of
    our files (``v1.ckpts``, ``a.ckpt.prev``), so no split of a file name is unambiguous.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if not data:
        raise _Bad("it is empty")
    nl = data.find(b"\n")
    if nl < 0:
        raise _Bad("it is truncated (no complete header line)")
    head = _parse_header(data[:nl])
    body = data[nl + 1 :]
    sha = hashlib.sha256(body).hexdigest()
    if sha != head["sha256"]:
        raise _Bad("its checksum does not match (torn or damaged)")
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
    return _Gen(rec, history[:HISTORY_LIMIT], True)


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
        self, directory: str | os.PathLike[str], *, display: str | None = None, lock_timeout: float = LOCK_TIMEOUT
    ) -> None:
        """Open (creating it 0700 if needed) the store in ``directory``.

        ``lock_timeout`` is how long a write waits for another process's flock on the run.
        """
        self.lock_timeout = lock_timeout
        self.root = os.path.normpath(os.path.abspath(directory))
        self.display = display or f"file://{self.root}"
        self._lock = threading.RLock()
        self._paths: dict[tuple[str, str], _Paths] = {}
        # (job, run) -> (fd, st_dev, st_ino) of its open lock file, least recently used first.
        self._lock_fds: OrderedDict[tuple[str, str], tuple[int, int, int]] = OrderedDict()
        self._pid = os.getpid()
        # The bytes and generation this store last wrote per run: the next save compares the
        # file with them instead of parsing the whole document again.
        self._cache: dict[tuple[str, str], tuple[bytes, _Gen]] = {}
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise ConfigError(f"{self.display}: {self.root} is not a directory; the file store needs one")
        with os_errors(self.root, display=self.display):
            make_private_dirs(self.root)

    @classmethod
    def from_url(cls, url: StoreURL) -> Self:
        return cls(_dir_from_url(url), display=url.display)

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

    def _open_lock(self, key: tuple[str, str], p: _Paths) -> tuple[int, int, int]:
        if self._pid != os.getpid():
            # A forked child shares its parent's open file descriptions, and with them
            # the flocks: never use the inherited ones.
            for fd, _, _ in self._lock_fds.values():
                os.close(fd)
            self._lock_fds.clear()
            self._cache.clear()
            self._pid = os.getpid()
        entry = self._lock_fds.get(key)
        if entry is not None:
            self._lock_fds.move_to_end(key)
            return entry
        make_private_dirs(p.job_dir)
        fd = os.open(p.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        st = os.fstat(fd)
        entry = self._lock_fds[key] = (fd, st.st_dev, st.st_ino)
        while len(self._lock_fds) > _MAX_OPEN_LOCKS:
            old_fd, _, _ = self._lock_fds.popitem(last=False)[1]
            os.close(old_fd)
        return entry

    def _drop_lock_fd(self, key: tuple[str, str]) -> None:
        entry = self._lock_fds.pop(key, None)
        if entry is not None:
            os.close(entry[0])

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
    def _flocked(self, job: str, run: str) -> Iterator[_Paths]:
        """Hold the run's flock (and this store's thread lock); translate OSErrors."""
        p = self._p(job, run)
        key = (job, run)
        with self._lock, os_errors(p.job_dir, display=self.display):
            while True:
                fd, dev, ino = self._open_lock(key, p)
                self._flock(fd, p)
                try:
                    st = os.stat(p.lock)
                    if (st.st_dev, st.st_ino) == (dev, ino):
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
        """The newest readable generation, falling back from current to ``.prev``."""
        where = f"job {job!r} run {run!r} in {self.display}"
        bad_current: _Bad | None = None
        try:
            gen = _read_generation(p.current, where, (job, run))
        except _Bad as exc:
            bad_current = exc
        else:
            if gen is not None:
                return gen
        # Here current is missing (a crash between the two renames, or no record) or damaged.
        try:
            prev = _read_generation(p.prev, where, (job, run))
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
            return None if prev is None else _Gen(prev.record, prev.history, False)
        if prev is None:
            raise CheckpointCorrupt(
                f"no readable checkpoint of {where}: {p.current}: {bad_current}; there is no previous "
                f"generation {p.prev}. {self._fix(job, run, bad_current.newer)}"
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
        return _Gen(prev.record, prev.history, False)

    def _fix(self, job: str, run: str, newer: bool) -> str:
        if newer:
            return "A newer restartable wrote it: upgrade restartable (pip install -U restartable)."
        return (
            f"Restore one of them from a backup, or run `restartable reset {job} --run {run}` "
            f"(store {self.display}) to start the run over."
        )

    def _current(self, job: str, run: str, p: _Paths) -> _Gen | None:
        """The stored generation, under the flock: the cached one when the file is byte for byte
        what this store last wrote (one read and a memcmp, no parsing), else read and checked."""
        cached = self._cache.get((job, run))
        if cached is not None:
            data, gen = cached
            try:
                fd = os.open(p.current, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = -1
            if fd >= 0:
                try:
                    # One byte more than expected: a longer file must not compare equal.
                    same = os.read(fd, len(data) + 1) == data
                finally:
                    os.close(fd)
                # Comparing the whole file, not just the header's checksum, matters: a
                # damaged current must never be rotated over the good .prev.
                if same:
                    return gen
        return self._read(job, run, p)

    # -- writing -------------------------------------------------------------------

    def _write(self, p: _Paths, rec: Checkpoint, history: list[str], *, rotate: bool, text: str | None = None) -> None:
        """Write ``rec`` (whose JSON is ``text`` when given) as the new current generation;
        ``rotate`` keeps the old one as .prev."""
        text = encode_record(rec) if text is None else text
        body = ('{"history":[' + ",".join(history) + '],"record":' + text + "}\n").encode()
        sha = hashlib.sha256(body).hexdigest()
        head = f'{{"format":"{FILE_FORMAT}","version":{FILE_VERSION},"epoch":{rec.epoch},"sha256":"{sha}"}}\n'
        data = head.encode() + body
        tmp = (self._recycle(p, data) if rotate else None) or write_temp(p.job_dir, p.temp_prefix, data)
        try:
            if rotate:
                # From here until the next rename only .prev exists: the newest complete generation.
                os.replace(p.current, p.prev)
            os.replace(tmp, p.current)
        except BaseException:
            _unlink(tmp)
            raise
        self._fsync_dir(p.job_dir)
        key = (rec.job, rec.run)
        self._cache.pop(key, None)
        self._cache[key] = (data, _Gen(rec, history, True))
        if len(self._cache) > _MAX_OPEN_LOCKS:
            del self._cache[next(iter(self._cache))]  # the least recently written run

    def _recycle(self, p: _Paths, data: bytes) -> str | None:
        """Write ``data`` into the old ``.prev`` file, moved aside as the temp file; its path.

        The generation about to be rotated out is overwritten in place instead of a new file
        being created and the old one freed: on ext4 allocating and freeing an inode on
        every save costs more than the rest of the write. The guarantees are those of a
        fresh temp file: the file is renamed away from ``.prev`` first (so no name a
        reader trusts ever shows a partial write), filled, and fdatasynced before it is
        renamed to current. Returns None (the caller makes a fresh file) when there is no
        ``.prev`` or when it has other hard links (a backup's copy must not change).
        """
        tmp = os.path.join(p.job_dir, f"{p.temp_prefix}{os.urandom(8).hex()}.tmp")
        try:
            os.rename(p.prev, tmp)
        except FileNotFoundError:
            return None
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if os.fstat(fd).st_nlink != 1:
                    _unlink(tmp)
                    return None
                view, offset = memoryview(data), 0
                while offset < len(data):
                    offset += os.pwrite(fd, view[offset:], offset)
                os.ftruncate(fd, len(data))
                # fdatasync covers the data and the size, all a reader of the content needs.
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except BaseException:
            _unlink(tmp)
            raise
        return tmp

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
        with self._flocked(job, run) as locked:
            return self._read(job, run, locked)

    def load(self, job: str, run: str) -> Checkpoint | None:
        gen = self._read_unlocked(job, run, self._p(job, run))
        return None if gen is None else gen.record

    def acquire(
        self, job: str, run: str, *, owner: Owner, lease_seconds: float, steal_epoch: int | None = None
    ) -> Checkpoint:
        with self._flocked(job, run) as p:
            self._remove_temps(p)  # under the flock nobody is writing: any temp file is a crash's leftover
            gen = self._read(job, run, p)
            now = self.now()
            if gen is None:
                rec = self._new_record(job, run, owner, now, lease_seconds, floor=self._floor(p.job_dir))
                history: list[str] = []
            else:
                rec = self._take_over(gen.record, owner, now, lease_seconds, steal_epoch)
                history = gen.history
            self._write(
                p, rec, [_entry_json(rec), *history[: HISTORY_LIMIT - 1]], rotate=gen is not None and gen.is_current
            )
            return rec

    def save(self, record: Checkpoint, *, lease_seconds: float | None) -> Checkpoint:
        # Stamped and encoded before the flock is taken: other processes wait for our file
        # operations only, not for our JSON encoding.
        now = self.now()
        rec = record.replace(
            updated=now, heartbeat=now, lease_expires=None if lease_seconds is None else now + lease_seconds
        )
        text = encode_record(rec)
        with self._flocked(record.job, record.run) as p:
            gen = self._held(record.job, record.run, record.epoch, self._current(record.job, record.run, p))
            history = [_entry_json(rec), *gen.history[: HISTORY_LIMIT - 1]]
            self._write(p, rec, history, rotate=gen.is_current, text=text)
            return rec

    def renew(self, job: str, run: str, *, epoch: int, lease_seconds: float) -> float:
        with self._flocked(job, run) as p:
            gen = self._held(job, run, epoch, self._current(job, run, p))
            if gen.record.lease_expires is None:  # released: a late renewal must not take it again
                raise self._released(job, run, epoch)
            now = self.now()
            rec = gen.record.replace(heartbeat=now, lease_expires=now + lease_seconds)
            self._write(p, rec, gen.history, rotate=gen.is_current)
            return now + lease_seconds

    def delete(self, job: str, run: str, *, epoch: int | None = None) -> bool:
        p = self._p(job, run)
        if not os.path.isdir(p.job_dir):
            return False
        with self._flocked(job, run) as p:
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
            # generation or none, never .prev alone (an older one that load would return
            # without a warning). Found by tests/stores/test_crash_states.py.
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
                    head = f.read(_HEAD_BYTES)
            except FileNotFoundError:
                continue
            nl = head.find(b"\n")
            try:
                out.append(int(_parse_header(head[:nl])["epoch"]) if nl > 0 else 0)
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
        """The epoch from the current header alone (no body read); falls back to a full read."""
        try:
            fd = os.open(p.current, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            try:
                head = os.read(fd, _HEAD_BYTES)
            finally:
                os.close(fd)
            nl = head.find(b"\n")
            if nl > 0:
                try:
                    return int(_parse_header(head[:nl])["epoch"])
                except _Bad:
                    pass
        gen = self._read(job, run, p)
        return None if gen is None else gen.record.epoch

    def mark(self, job: str, run: str, cursor: str, key: str, value: Any, *, epoch: int) -> None:
        line = (dumps([key, value], what=f"the marker value of {key!r}") + "\n").encode()
        with self._flocked(job, run) as p:
            stored = self._stored_epoch(job, run, p)
            if stored != epoch:
                raise self._fenced(job, run, epoch, stored)
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
                for fd, _, _ in self._lock_fds.values():
                    os.close(fd)
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
