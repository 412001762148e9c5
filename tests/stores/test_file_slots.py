"""file:// layout version 2: two slots written in turn, one ``fdatasync`` a save.

What each slot holds, how a damaged one falls back to the other, how a save cut short
is told from damage, the slow path (a new run, a record outgrowing its slot, a
hard-linked file), the upgrade from version 1 (the layout of main at 145aab9: a
document in ``<run>.ckpt`` and the previous one in ``<run>.ckpt.prev``), ``raw_record``,
and no lock file left behind by a fenced runner. The crash states of these write
sequences are enumerated in tests/stores/test_crash_states.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from restartable import Job
from restartable._checkpoint import Owner, encode_record
from restartable.errors import CheckpointCorrupt, Fenced, StoreUnavailable, UsageError
from restartable.stores import open_store
from restartable.stores.file import FileStore, _entry_json, raw_record

ME = Owner(host="host-a", pid=111)
OTHER = Owner(host="host-b", pid=222)
JOB, RUN = "job", "r1"


@pytest.fixture
def root(tmp_path):
    return tmp_path / "ckpt"


@pytest.fixture
def store(root):
    s = FileStore(root)
    yield s
    s.close()


def _path(root):
    return root / JOB / f"{RUN}.ckpt"


def _two_saves(store):
    """A run whose newest slot has done=2 and whose other slot has done=1."""
    rec = store.acquire(JOB, RUN, owner=ME, lease_seconds=30)
    rec = store.save(rec.replace(done=1, state={"n": 1}), lease_seconds=30)
    return store.save(rec.replace(done=2, state={"n": 2}), lease_seconds=30)


def _logged(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "restartable" and r.levelno == level]


def _slot(path, index: int) -> tuple[int, bytes]:
    """(offset, bytes) of slot ``index`` of the version-2 file at ``path``."""
    data = path.read_bytes()
    size = len(data) // 2
    return index * size, data[index * size : (index + 1) * size]


def _put(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _with_header(region: bytes, **changes) -> bytes:
    nl = region.index(b"\n")
    head = json.loads(region[:nl])
    head.update(changes)
    out = json.dumps(head, separators=(",", ":")).encode() + region[nl:]
    return out[: len(region)]


def _body_flip(region: bytes) -> bytes:
    nl = region.index(b"\n")
    at = nl + 20
    return region[:at] + bytes([region[at] ^ 0x5A]) + region[at + 1 :]


def _pad(region: bytes, size: int) -> bytes:
    return region + b"\n" * (size - len(region))


# name -> (mutation of the newest slot, the level logged, what the message says)
_DAMAGE = {
    "zeroed": (lambda r: bytes(len(r)), logging.WARNING, "torn or missing"),
    "torn in header": (lambda r: _pad(r[:10] + b"\n", len(r)), logging.WARNING, "not JSON"),
    "bad header": (lambda r: b"#garbage!" + r[9:], logging.WARNING, "header"),
    "wrong format": (lambda r: _with_header(r, format="something-else"), logging.WARNING, "format"),
    "wrong version": (lambda r: _with_header(r, version=0), logging.WARNING, "unknown file format version"),
    "epoch disagrees": (lambda r: _with_header(r, epoch=1), logging.WARNING, "disagree"),
    # A whole header naming the next sequence number over a bad body: what a process killed in
    # the middle of its pwrite leaves (the kernel copies a write in page order). Not damage.
    "body torn": (lambda r: _pad(r[: r.index(b"\n") + 30], len(r)), logging.INFO, "did not complete"),
    "body bit flipped": (_body_flip, logging.INFO, "did not complete"),
}


@pytest.mark.parametrize("damage", list(_DAMAGE))
def test_a_damaged_newest_slot_falls_back_to_the_other_one(store, root, caplog, damage):
    _two_saves(store)
    path = _path(root)
    newest = raw_record(str(path))["newest"]
    offset, region = _slot(path, newest)
    mutate, level, words = _DAMAGE[damage]
    _put(path, offset, mutate(region))
    caplog.set_level(logging.DEBUG, logger="restartable")
    loaded = FileStore(root).load(JOB, RUN)
    assert loaded.done == 1 and loaded.state == {"n": 1}
    (msg,) = _logged(caplog, level)
    assert str(path) in msg and words in msg, msg
    other = logging.INFO if level == logging.WARNING else logging.WARNING
    assert _logged(caplog, other) == []


def test_a_newer_slot_is_never_skipped_for_an_older_one(store, root):
    """A slot a newer restartable wrote may be the newest save: refuse, do not go back."""
    _two_saves(store)
    path = _path(root)
    offset, region = _slot(path, raw_record(str(path))["newest"])
    _put(path, offset, _with_header(region, version=99))
    with pytest.raises(CheckpointCorrupt, match="upgrade restartable") as info:
        FileStore(root).load(JOB, RUN)
    assert info.value.exit_code == 65


def test_both_slots_damaged_is_checkpoint_corrupt_and_reset_still_works(store, root):
    _two_saves(store)
    path = _path(root)
    for index in (0, 1):
        offset, region = _slot(path, index)
        _put(path, offset, _body_flip(region))
    with pytest.raises(CheckpointCorrupt) as info:
        FileStore(root).load(JOB, RUN)
    msg = str(info.value)
    assert str(path) in msg and "both of its slots" in msg and "restartable reset job --run r1" in msg
    assert "previous generation" not in msg  # the version-1 file name means nothing here
    with pytest.raises(CheckpointCorrupt):
        store.acquire(JOB, RUN, owner=ME, lease_seconds=30)
    assert store.delete(JOB, RUN)
    assert store.load(JOB, RUN) is None
    assert sorted(os.listdir(root / JOB)) == [".epoch-floor"]


def test_a_save_after_a_fallback_overwrites_the_damaged_slot_and_keeps_the_good_one(store, root, caplog):
    rec = _two_saves(store)
    path = _path(root)
    bad = raw_record(str(path))["newest"]
    offset, region = _slot(path, bad)
    _put(path, offset, bytes(len(region)))
    caplog.set_level(logging.WARNING, logger="restartable")
    fresh = FileStore(root)
    assert fresh.load(JOB, RUN).done == 1
    fresh.save(rec.replace(done=3), lease_seconds=30)
    raw = raw_record(str(path))
    assert raw["newest"] == bad and raw["record"]["done"] == 3
    assert [g["error"] for g in raw["generations"]] == [None, None]
    assert raw["generations"][1 - bad]["header"]["seq"] == raw["header"]["seq"] - 1  # done=1, kept
    assert FileStore(root).load(JOB, RUN).done == 3


class _Calls:
    """Counts the os calls a block makes (the store's own write sequence)."""

    NAMES = ("open", "pwrite", "write", "fsync", "fdatasync", "rename", "replace", "unlink", "ftruncate", "mkdir")

    def __init__(self, monkeypatch):
        self.counts: dict[str, int] = dict.fromkeys(self.NAMES, 0)
        self.created = 0
        for name in self.NAMES:
            real = getattr(os, name)

            def wrapper(*args, _real=real, _name=name, **kw):
                self.counts[_name] += 1
                if _name == "open" and len(args) > 1 and args[1] & os.O_CREAT:
                    self.created += 1
                return _real(*args, **kw)

            monkeypatch.setattr(os, name, wrapper)


def test_a_steady_state_save_is_one_pwrite_and_one_fdatasync(store, root, monkeypatch):
    rec = _two_saves(store)
    path = _path(root)
    before = os.stat(path)
    with monkeypatch.context() as m:
        calls = _Calls(m)
        for i in range(10):
            rec = store.save(rec.replace(done=10 + i, state={"i": i}), lease_seconds=30)
        store.renew(JOB, RUN, epoch=rec.epoch, lease_seconds=30)
    # Per save: one pwrite, one fdatasync; nothing else that writes, and nothing opened (the
    # store keeps the file open between saves: tests/stores/test_file_save_path.py).
    assert calls.counts["pwrite"] == 11 and calls.counts["fdatasync"] == 11
    assert calls.counts["open"] == 0 and calls.created == 0
    for name in ("write", "fsync", "rename", "replace", "unlink", "ftruncate", "mkdir"):
        assert calls.counts[name] == 0, name
    after = os.stat(path)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert FileStore(root).load(JOB, RUN).done == 19


def _eio(fd):
    raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_after_a_failed_fdatasync_the_next_save_writes_a_new_file(store, root, monkeypatch):
    """fsyncgate: after EIO the page cache shows a slot the disk may never hold, so the next
    save must not overwrite the other slot (the last good save) in place (the crash states
    are enumerated in test_crash_states.py, "fdatasync-fails")."""
    rec = _two_saves(store)
    path = _path(root)
    ino = path.stat().st_ino
    with monkeypatch.context() as m:
        m.setattr(os, "fdatasync", _eio)
        with pytest.raises(StoreUnavailable, match="EIO"):
            store.save(rec.replace(done=3), lease_seconds=30)
    with monkeypatch.context() as m:
        calls = _Calls(m)
        rec = store.save(rec.replace(done=4), lease_seconds=30)
    # A whole new file, both slots synced before it replaces the old one.
    assert calls.counts["replace"] == 1 and calls.counts["pwrite"] == 0 and path.stat().st_ino != ino
    with monkeypatch.context() as m:
        calls = _Calls(m)
        store.save(rec.replace(done=5), lease_seconds=30)
    assert calls.counts["replace"] == 0 and calls.counts["pwrite"] == calls.counts["fdatasync"] == 1
    assert FileStore(root).load(JOB, RUN).done == 5


def test_a_process_first_write_to_a_run_is_a_new_file(store, root, monkeypatch):
    """What another process left may be a slot whose sync failed: its first write starts anew."""
    rec = _two_saves(store)
    heir = FileStore(root)
    try:
        with monkeypatch.context() as m:
            calls = _Calls(m)
            taken = heir.acquire(JOB, RUN, owner=OTHER, lease_seconds=30, steal_epoch=rec.epoch)
        assert calls.counts["replace"] == 1 and calls.counts["pwrite"] == 0
        with monkeypatch.context() as m:
            calls = _Calls(m)
            heir.save(taken.replace(done=3), lease_seconds=30)
        assert calls.counts["replace"] == 0 and calls.counts["pwrite"] == 1
    finally:
        heir.close()


def test_a_job_whose_fdatasync_fails_stops_and_its_rerun_loses_nothing(root, monkeypatch):
    url = f"file://{root}"
    real, syncs, seen = os.fdatasync, [0], []

    def fifth_fails(fd):
        syncs[0] += 1
        if syncs[0] == 5:
            _eio(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fifth_fails)
    with pytest.raises(StoreUnavailable, match="EIO"):
        with Job("eio", store=url, progress=False, handle_signals=False) as job:
            for i in job.iterate(range(10), every=1):
                seen.append(i)
    monkeypatch.setattr(os, "fdatasync", real)
    with Job("eio", store=url, progress=False, handle_signals=False) as job:
        rest = list(job.iterate(range(10), every=1))
    # Resumed at the failed save or the one before it (never further back): at most one item again.
    assert rest and rest == list(range(rest[0], 10)) and rest[0] >= len(seen) - 1, (seen, rest)
    assert job.record.status == "completed"


def test_a_record_larger_than_its_slot_takes_the_slow_path_once(store, root, monkeypatch):
    rec = _two_saves(store)
    path = _path(root)
    small = path.stat().st_size
    big = {"pad": "x" * 3 * small}
    with monkeypatch.context() as m:
        calls = _Calls(m)
        rec = store.save(rec.replace(done=3, state=big), lease_seconds=30)
    # A new, larger file: temp + fsync + rename + directory fsync.
    assert calls.counts["replace"] == 1 and calls.counts["fsync"] == 2
    assert path.stat().st_size > small and path.stat().st_size % 8192 == 0
    raw = raw_record(str(path))
    assert raw["record"]["done"] == 3 and raw["generations"][1 - raw["newest"]]["error"] is None
    with monkeypatch.context() as m:
        calls = _Calls(m)
        rec = store.save(rec.replace(done=4), lease_seconds=30)
    assert calls.counts["replace"] == 0 and calls.counts["fdatasync"] == 1
    # And back to a small record: the slot keeps its size; the tail is blanked, not left stale.
    rec = store.save(rec.replace(done=5, state={}), lease_seconds=30)
    assert FileStore(root).load(JOB, RUN).done == 5
    _, region = _slot(path, raw_record(str(path))["newest"])
    assert b"xxxx" not in region


def test_a_hard_linked_file_is_never_written_in_place(store, root):
    rec = _two_saves(store)
    path = _path(root)
    backup = root / "backup.ckpt"
    os.link(path, backup)
    before = backup.read_bytes()
    rec = store.save(rec.replace(done=20), lease_seconds=30)
    assert backup.read_bytes() == before
    assert path.stat().st_nlink == 1
    rec = store.save(rec.replace(done=21), lease_seconds=30)
    assert backup.read_bytes() == before and store.load(JOB, RUN).done == 21


def test_files_are_owner_only_and_jq_reads_the_file_itself(store, root):
    _two_saves(store)
    path = _path(root)
    assert path.stat().st_mode & 0o777 == 0o600
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed")
    # Header, body, header, body, separated by newlines: a stream of JSON documents.
    out = subprocess.run([jq, "-c", "select(.record) | .record.done"], input=path.read_bytes(), capture_output=True)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == [b"1", b"2"]


# -- raw_record ----------------------------------------------------------------------------


def test_raw_record_is_one_json_document_that_jq_reads(store, root):
    _two_saves(store)
    raw = raw_record(str(_path(root)))
    text = json.dumps(raw)
    assert (
        raw["version"] == 2 and raw["record"]["state"] == {"n": 2} and raw["header"]["epoch"] == raw["record"]["epoch"]
    )
    assert [h["done"] for h in raw["history"]] == [2, 1, 0]
    assert raw["layout"].startswith("two slots of ")
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed")
    out = subprocess.run([jq, "-c", ".record.state"], input=text.encode(), capture_output=True, check=True)
    assert out.stdout.strip() == b'{"n":2}'


def test_raw_record_shows_a_damaged_slot_and_refuses_a_missing_file(store, root, tmp_path):
    _two_saves(store)
    path = _path(root)
    newest = raw_record(str(path))["newest"]
    offset, region = _slot(path, newest)
    _put(path, offset, bytes(len(region)))
    raw = raw_record(str(path))
    assert raw["newest"] == 1 - newest and raw["record"]["done"] == 1
    assert "torn or missing" in raw["generations"][newest]["error"]
    path.write_bytes(b"junk")
    raw = raw_record(str(path))
    assert raw["record"] is None and raw["newest"] is None and raw["generations"][0]["error"]
    with pytest.raises(UsageError, match="no such record file"):
        raw_record(str(tmp_path / "nope.ckpt"))


# -- the upgrade from version 1 ----------------------------------------------------------------


def _v1_bytes(rec, history: list[str]) -> bytes:
    """A generation exactly as main at 145aab9 wrote it: a header line, then the body."""
    body = ('{"history":[' + ",".join(history) + '],"record":' + encode_record(rec) + "}\n").encode()
    sha = hashlib.sha256(body).hexdigest()
    return f'{{"format":"restartable-file","version":1,"epoch":{rec.epoch},"sha256":"{sha}"}}\n'.encode() + body


def _version_1_run(root):
    """A run in the version-1 layout: current done=2, .prev done=1; its records."""
    with FileStore(root) as s:
        a = s.acquire(JOB, RUN, owner=ME, lease_seconds=30)
        one = s.save(a.replace(done=1, state={"n": 1}), lease_seconds=30)
        two = s.save(one.replace(done=2, state={"n": 2}), lease_seconds=30)
    path = _path(root)
    path.write_bytes(_v1_bytes(two, [_entry_json(two), _entry_json(one), _entry_json(a)]))
    (root / JOB / f"{RUN}.ckpt.prev").write_bytes(_v1_bytes(one, [_entry_json(one), _entry_json(a)]))
    return one, two


def test_a_version_1_run_loads_and_its_first_save_moves_it_to_two_slots(root, caplog):
    _, two = _version_1_run(root)
    caplog.set_level(logging.INFO, logger="restartable")
    with FileStore(root) as s:
        assert s.load(JOB, RUN).state == {"n": 2}
        assert [h.done for h in s.history(JOB, RUN)] == [2, 1, 0]
        s.save(two.replace(done=3, state={"n": 3}), lease_seconds=30)
    assert _logged(caplog, logging.WARNING) == []
    assert sorted(os.listdir(root / JOB)) == [f"{RUN}.ckpt", f"{RUN}.lock"]  # .prev is inside the file now
    raw = raw_record(str(_path(root)))
    assert raw["version"] == 2 and raw["record"]["done"] == 3
    older = raw["generations"][1 - raw["newest"]]
    assert older["error"] is None and older["header"]["seq"] == raw["header"]["seq"] - 1
    with FileStore(root) as s:
        assert [h.done for h in s.history(JOB, RUN)] == [3, 2, 1, 0]


def test_a_damaged_version_1_current_falls_back_to_its_prev(root, caplog):
    _version_1_run(root)
    path = _path(root)
    path.write_bytes(path.read_bytes()[:-5])
    caplog.set_level(logging.WARNING, logger="restartable")
    with FileStore(root) as s:
        assert s.load(JOB, RUN).done == 1
    (msg,) = _logged(caplog, logging.WARNING)
    assert str(path) in msg and f"{path}.prev" in msg and "checksum" in msg


def test_raw_record_reads_a_version_1_file(root):
    _version_1_run(root)
    raw = raw_record(str(_path(root)))
    assert raw["version"] == 1 and raw["record"]["done"] == 2 and raw["layout"] == "one document (version 1)"


# -- no lock file left behind -------------------------------------------------------------------


def test_a_runner_fenced_by_reset_force_leaves_no_lock_file(root):
    from restartable.cli import cli

    url = f"file://{root}"
    runner = FileStore(root)
    rec = runner.save(runner.acquire(JOB, RUN, owner=ME, lease_seconds=600), lease_seconds=600)
    runner.mark(JOB, RUN, "files", "a", 1, epoch=rec.epoch)
    out = CliRunner().invoke(cli, ["reset", JOB, "--run", RUN, "--force", "--store", url])
    assert out.exit_code == 0, out.output
    assert sorted(os.listdir(root / JOB)) == [".epoch-floor"]
    # The runner goes on for a moment: every write is fenced, and none creates a file.
    with pytest.raises(Fenced):
        runner.renew(JOB, RUN, epoch=rec.epoch, lease_seconds=600)
    with pytest.raises(Fenced):
        runner.save(rec.replace(done=5), lease_seconds=600)
    with pytest.raises(Fenced):
        runner.mark(JOB, RUN, "files", "b", 2, epoch=rec.epoch)
    assert runner.delete(JOB, RUN) is False
    assert runner.delete("never-was", RUN) is False
    assert sorted(os.listdir(root / JOB)) == [".epoch-floor"]
    assert sorted(os.listdir(root)) == [JOB]
    runner.close()


def test_cleanup_and_delete_leave_no_lock_file(root):
    with open_store(f"file://{root}") as s:
        rec = s.acquire(JOB, RUN, owner=ME, lease_seconds=30)
        s.save(rec.replace(status="completed"), lease_seconds=None)
        assert [r.run for r in s.cleanup(older_than=0)] == [RUN]
        rec = s.acquire(JOB, "r2", owner=ME, lease_seconds=30)
        assert s.delete(JOB, "r2", epoch=rec.epoch)
    assert sorted(os.listdir(root / JOB)) == [".epoch-floor"]
