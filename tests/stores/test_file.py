"""file:// specifics: the two generations and their fallback, layout, modes, markers, races.

Real files under tmp_path, real processes. Privilege-dependent checks run in a child
that drops to uid/gid 65534 (root ignores file modes).
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from restartable._checkpoint import Owner
from restartable.errors import (
    CheckpointCorrupt,
    ConfigError,
    Fenced,
    PermissionDenied,
    RunLocked,
    StoreUnavailable,
    UsageError,
)
from restartable.stores import open_store
from restartable.stores._localfs import atomic_write, os_errors, translate_oserror
from restartable.stores.base import EPOCH_STEP, HISTORY_LIMIT
from restartable.stores.file import FileStore, raw_record

ME = Owner(host="host-a", pid=111)
OTHER = Owner(host="host-b", pid=222)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "ckpt"


@pytest.fixture
def store(root):
    s = open_store(f"file://{root}")
    yield s
    s.close()


def _two_generations(store):
    """A run whose current generation has done=2 and whose .prev has done=1."""
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    rec = store.save(rec.replace(done=1, state={"n": 1}), lease_seconds=30)
    rec = store.save(rec.replace(done=2, state={"n": 2}), lease_seconds=30)
    return rec


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "restartable" and r.levelno >= logging.WARNING]


# The damage table (a damaged generation falls back to the other one with a warning), the
# two layouts' own tests and the upgrade from version 1 are in tests/stores/test_file_slots.py.


def test_damaged_current_without_prev_is_checkpoint_corrupt(store, root):
    store.acquire("job", "r1", owner=ME, lease_seconds=30)  # one generation only
    current = root / "job" / "r1.ckpt"
    current.write_bytes(b"")
    with pytest.raises(CheckpointCorrupt, match="no previous generation"):
        store.load("job", "r1")


def test_a_crash_between_the_renames_loads_prev_without_a_warning(store, root, caplog):
    rec = _two_generations(store)
    current, prev = root / "job" / "r1.ckpt", root / "job" / "r1.ckpt.prev"
    os.replace(current, prev)  # exactly the state after the first rename of a save
    caplog.set_level(logging.DEBUG, logger="restartable")
    fresh = FileStore(root)
    loaded = fresh.load("job", "r1")
    assert loaded.done == 2
    assert _warnings(caplog) == []
    # and the store carries on from there
    fresh.save(rec.replace(done=3), lease_seconds=30)
    assert fresh.load("job", "r1").done == 3 and current.exists()
    assert [r.run for r in fresh.list_runs()] == ["r1"]


def test_leftover_temp_files_are_ignored_and_removed_on_acquire(store, root):
    rec = _two_generations(store)
    leftover = root / "job" / ".r1.ckpt.0123456789abcdef.tmp"
    leftover.write_bytes(b'{"format":"restartable-file"')  # a torn write
    unrelated = root / "job" / ".r1.ckpt.x.ckpt.0123456789abcdef.tmp"  # another run's name shape
    unrelated.write_bytes(b"")
    assert store.load("job", "r1").done == 2
    assert [r.run for r in store.list_runs()] == ["r1"]
    store.save(store.load("job", "r1").replace(status="interrupted"), lease_seconds=None)
    store.acquire("job", "r1", owner=OTHER, lease_seconds=30)
    assert not leftover.exists() and unrelated.exists()
    assert 0 < store.load("job", "r1").epoch - rec.epoch <= EPOCH_STEP


@pytest.mark.parametrize(
    ("job", "run"), [("..", "r1"), ("job", ".."), ("job", "../../escape"), ("a/b", "r1"), ("", "r1"), (".h", "r")]
)
def test_a_path_escaping_the_directory_is_impossible(tmp_path, job, run):
    store = FileStore(tmp_path / "inner" / "ckpt")
    with pytest.raises(UsageError):
        store.acquire(job, run, owner=ME, lease_seconds=30)
    with pytest.raises(UsageError):
        store.load(job, run)
    with pytest.raises(UsageError):
        store.mark(job, run, "c", "k", 1, epoch=1)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ckpt", "inner"]


def test_layout_and_permissions(tmp_path):
    root = tmp_path / "a" / "b" / "ckpt"
    with FileStore(root) as store:
        rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
        store.save(rec, lease_seconds=30)
        store.mark("job", "r1", "files", "x.csv", 1, epoch=rec.epoch)
    for d in (tmp_path / "a", tmp_path / "a" / "b", root, root / "job"):
        assert _mode(d) == 0o700, d
    names = sorted(os.listdir(root / "job"))
    assert names == ["r1.ckpt", "r1.lock", f"r1.markers.{b'files'.hex()}.jsonl"]
    for name in names:
        assert _mode(root / "job" / name) == 0o600, name


def test_history_is_capped_in_the_document(store, root):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    for i in range(HISTORY_LIMIT + 10):
        rec = store.save(rec.replace(done=i), lease_seconds=30)
    assert len(raw_record(str(root / "job" / "r1.ckpt"))["history"]) == HISTORY_LIMIT
    assert store.history("job", "r1", limit=3)[0].done == HISTORY_LIMIT + 9


def test_two_store_objects_see_each_others_writes(root):
    a, b = FileStore(root), FileStore(root)
    old = a.acquire("job", "r1", owner=ME, lease_seconds=30)
    a.save(old.replace(done=1), lease_seconds=30)  # a's cache now holds its own generation
    new = b.acquire("job", "r1", owner=OTHER, lease_seconds=30, steal_epoch=old.epoch)
    with pytest.raises(Fenced):
        a.save(old.replace(done=99), lease_seconds=30)
    with pytest.raises(Fenced):
        a.renew("job", "r1", epoch=old.epoch, lease_seconds=30)
    b.save(new.replace(done=5), lease_seconds=30)
    assert a.load("job", "r1").done == 5
    # b deletes the run (and its lock file) while a holds the old lock file open.
    assert b.delete("job", "r1")
    again = a.acquire("job", "r1", owner=ME, lease_seconds=30)
    with pytest.raises(RunLocked):
        b.acquire("job", "r1", owner=OTHER, lease_seconds=30)
    assert again.epoch > new.epoch


def test_markers_survive_a_torn_last_line(store, root):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    store.mark("job", "r1", "files", "a", {"size": 1}, epoch=rec.epoch)
    store.mark("job", "r1", "files", "b", (2, "x"), epoch=rec.epoch)
    path = root / "job" / f"r1.markers.{b'files'.hex()}.jsonl"
    with open(path, "ab") as f:
        f.write(b'["c",{"si')  # a crash in the middle of an append
    assert store.markers("job", "r1", "files") == {"a": {"size": 1}, "b": (2, "x")}
    store.mark("job", "r1", "files", "d", 4, epoch=rec.epoch)
    assert store.markers("job", "r1", "files") == {"a": {"size": 1}, "b": (2, "x"), "d": 4}
    assert path.read_bytes().endswith(b'\n["d",4]\n')


def test_markers_with_any_cursor_name(store, root):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    cursors = ["a/b/../c", "ü ✓ .jsonl", "x" * 300, ""]
    for i, cursor in enumerate(cursors):
        store.mark("job", "r1", cursor, "k", i, epoch=rec.epoch)
    for i, cursor in enumerate(cursors):
        assert store.markers("job", "r1", cursor) == {"k": i}
    assert all(p.parent == root / "job" for p in root.rglob("*.jsonl"))
    assert store.delete("job", "r1")
    assert list(root.rglob("*.jsonl")) == []


def test_a_run_named_like_anothers_files_stays_separate(store):
    a = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    b = store.acquire("job", "r1.markers.66", owner=ME, lease_seconds=30)
    store.mark("job", "r1.markers.66", "c", "k", "b's", epoch=b.epoch)
    store.mark("job", "r1", "c", "k", "a's", epoch=a.epoch)
    assert store.delete("job", "r1")
    assert store.markers("job", "r1.markers.66", "c") == {"k": "b's"}
    assert [r.run for r in store.list_runs()] == ["r1.markers.66"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [("file:///{tmp}/d", "{tmp}/d"), ("file://localhost/{tmp}/d", "{tmp}/d"), ("file:/{tmp}/d", "{tmp}/d")],
)
def test_absolute_url_forms(tmp_path, url, expected):
    tmp = str(tmp_path).lstrip("/")
    with open_store(url.format(tmp=tmp)) as s:
        assert s.root == "/" + expected.format(tmp=tmp)
        s.acquire("job", "r1", owner=ME, lease_seconds=30)
    assert (tmp_path / "d" / "job" / "r1.ckpt").is_file()


def test_relative_url_form(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_store("file:rel/dir") as s:
        assert s.root == str(tmp_path / "rel" / "dir")
    assert _mode(tmp_path / "rel") == 0o700


@pytest.mark.parametrize("url", ["file://otherhost/dir", "file:", "file://", "file:///x?mode=1"])
def test_bad_urls_are_config_errors(url):
    with pytest.raises(ConfigError) as info:
        open_store(url)
    assert "file:///absolute/dir" in str(info.value) and "file:relative/dir" in str(info.value)


# -- permissions (a child that drops root) -----------------------------------------------

_AS_NOBODY = textwrap.dedent(
    """
    import os, sys
    from restartable._checkpoint import Owner
    from restartable.stores import open_store
    from restartable.stores import file  # import while we can still read the code
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
    try:
        with open_store(sys.argv[1]) as s:
            print("loaded", s.load("job", "r1"))
            s.acquire("job", "r1", owner=Owner(host="h", pid=1), lease_seconds=30)
    except BaseException as exc:
        print(type(exc).__name__)
        print(exc)
    else:
        print("OK")
    """
)


def _as_nobody(url: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, url], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.splitlines()


@pytest.fixture
def public_dir():
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory another uid cannot write (root ignores modes)")
    path = tempfile.mkdtemp(prefix="rt-perm-", dir="/tmp")  # pytest's tmp dirs are 0700
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_permission_denied_for_a_directory_of_another_user(public_dir):
    locked = os.path.join(public_dir, "locked")
    os.mkdir(locked, 0o700)
    lines = _as_nobody(f"file://{locked}/sub")
    assert lines[0] == "PermissionDenied", lines
    assert locked in lines[1] and "uid 65534" in lines[1]


def test_permission_denied_for_a_read_only_store_directory(public_dir):
    root = os.path.join(public_dir, "ckpt")
    os.mkdir(root, 0o755)  # readable by everyone, writable by root only
    lines = _as_nobody(f"file://{root}")
    assert lines[0] == "loaded None", lines  # reading works
    assert lines[1] == "PermissionDenied", lines
    assert root in lines[2]


# -- OSError translation ---------------------------------------------------------------------


def test_a_real_enospc_is_store_unavailable_disk_full():
    with (
        pytest.raises(StoreUnavailable) as info,
        os_errors("/dev/full", display="file:///x"),
        open("/dev/full", "wb") as f,
    ):
        f.write(b"x" * 10)  # the real ENOSPC comes at close
    msg = str(info.value)
    assert "disk full" in msg and "free space" in msg and "/dev/full" in msg and "file:///x" in msg


@pytest.mark.parametrize(
    ("code", "kind", "words"),
    [
        (errno.ENOSPC, StoreUnavailable, "disk full"),
        (errno.EDQUOT, StoreUnavailable, "quota"),
        (errno.EACCES, PermissionDenied, "readable and writable"),
        (errno.EPERM, PermissionDenied, "readable and writable"),
        (errno.EROFS, PermissionDenied, "read-only"),
        (errno.EIO, StoreUnavailable, "EIO"),
    ],
)
def test_translate_oserror(code, kind, words):
    err = translate_oserror(OSError(code, os.strerror(code)), path="/p/x.ckpt", display="file:///p")
    assert isinstance(err, kind)
    assert words in str(err) and "/p/x.ckpt" in str(err) and "file:///p" in str(err)


def test_atomic_write_leaves_no_temp_and_a_private_file(tmp_path):
    target = tmp_path / "f"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two" and _mode(target) == 0o600
    assert os.listdir(tmp_path) == ["f"]


# -- processes -------------------------------------------------------------------------------


def _marker_worker(url: str, epoch: int, idx: int, barrier) -> None:
    from restartable.stores import open_store as _open

    with _open(url) as s:
        barrier.wait()
        for i in range(25):
            s.mark("job", "race", "files", f"{idx}-{i}", {"i": i}, epoch=epoch)


def test_processes_appending_markers_lose_none(root):
    url = f"file://{root}"
    with open_store(url) as s:
        rec = s.acquire("job", "race", owner=ME, lease_seconds=30)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_marker_worker, args=(url, rec.epoch, i, barrier)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with open_store(url) as s:
        got = s.markers("job", "race", "files")
    assert got == {f"{i}-{j}": {"i": j} for i in range(4) for j in range(25)}


def _steal_and_save(url: str, idx: int, barrier, results) -> None:
    from restartable.errors import Fenced as _Fenced
    from restartable.errors import RunLocked as _RunLocked
    from restartable.stores import open_store as _open

    saved = 0
    with _open(url) as s:
        barrier.wait()
        for i in range(12):
            cur = s.load("job", "race")
            try:
                rec = s.acquire(
                    "job", "race", owner=Owner(host="h", pid=1000 + idx), lease_seconds=30, steal_epoch=cur.epoch
                )
            except _RunLocked:
                continue  # another process stole it between our load and our acquire
            for j in range(3):
                try:
                    rec = s.save(rec.replace(done=idx * 1000 + i * 10 + j, state={"by": idx}), lease_seconds=30)
                except _Fenced:
                    break
                saved += 1
    results.put(saved)


def test_processes_stealing_and_saving_never_write_with_a_stale_epoch(root, caplog):
    url = f"file://{root}"
    with open_store(url) as s:
        s.acquire("job", "race", owner=ME, lease_seconds=30)
    ctx = multiprocessing.get_context("spawn")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_steal_and_save, args=(url, i, barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
        assert p.exitcode == 0
    assert sum(results.get(timeout=5) for _ in range(n)) > 0
    caplog.set_level(logging.WARNING, logger="restartable")
    with open_store(url) as s:
        final = s.load("job", "race")
        hist = s.history("job", "race", limit=HISTORY_LIMIT)
    assert _warnings(caplog) == []
    assert final.state == {"by": final.done // 1000} or final.done == 0
    # Newest first: a save with a stale epoch would put an older epoch above a newer one.
    epochs = [h.epoch for h in hist]
    assert epochs == sorted(epochs, reverse=True)
    assert hist[0].epoch == final.epoch


_SAVER = textwrap.dedent(
    """
    import sys
    from restartable._checkpoint import Owner
    from restartable.stores import open_store
    s = open_store(sys.argv[1])
    rec = s.acquire("job", "k", owner=Owner(host="h", pid=1), lease_seconds=60)
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        rec = s.save(rec.replace(done=i, state={"pad": "x" * 5000, "i": i}), lease_seconds=60)
    """
)


def test_sigkill_in_the_middle_of_saves_leaves_a_readable_checkpoint(root, caplog):
    url = f"file://{root}"
    caplog.set_level(logging.WARNING, logger="restartable")
    seen = []
    for kill in range(6):
        child = subprocess.Popen([sys.executable, "-c", _SAVER, url], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.03 * kill)  # a different moment of the save cycle each time
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        child.stdout.close()
        rec = FileStore(root).load("job", "k")
        # Always a whole generation: the record's parts come from one save.
        assert rec is not None and rec.state.get("i", 0) == rec.done
        seen.append(rec.done)
    assert _warnings(caplog) == []
    assert any(seen), seen
    # The next acquire removes whatever temp file a kill left behind.
    FileStore(root).acquire("job", "k", owner=Owner(host="h", pid=1), lease_seconds=60)
    assert not [n for n in os.listdir(root / "job") if n.endswith(".tmp")]


def test_a_stuck_lock_holder_is_store_unavailable_not_a_hang(root):
    import fcntl

    store = FileStore(root, lock_timeout=0.3)
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    fd = os.open(root / "job" / "r1.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: conflicts like another process
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="stayed locked"):
            store.save(rec.replace(done=1), lease_seconds=30)
        assert 0.25 < time.monotonic() - t0 < 5
    finally:
        os.close(fd)
    store.save(rec.replace(done=1), lease_seconds=30)


def _child_saves(store, conn) -> None:
    try:
        rec = store.load("job", "r1")
        store.save(rec.replace(done=7), lease_seconds=30)
        conn.send("ok")
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent
        conn.send(repr(exc))


def test_a_forked_child_uses_its_own_lock_descriptors(store):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    store.save(rec, lease_seconds=30)  # the parent now holds an open lock fd and a cache
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_child_saves, args=(store, child_end))
    child.start()
    child.join(30)
    assert parent_end.recv() == "ok"
    # The parent's cached generation is stale now: its next save must see the child's write.
    saved = store.save(rec.replace(done=8), lease_seconds=30)
    assert saved.done == 8 and store.history("job", "r1", limit=3)[1].done == 7


def test_a_regular_file_is_not_a_store_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        open_store(f"file://{tmp_path}/f")


_WRITER = textwrap.dedent(
    """
    import sys, time
    from restartable._checkpoint import Owner
    from restartable.stores import open_store
    s = open_store(sys.argv[1])
    rec = s.load("job", "k")
    print("ready", flush=True)
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        rec = s.save(rec.replace(done=rec.done + 1, state={"i": rec.done + 1}), lease_seconds=60)
    """
)


def test_readers_racing_a_writer_never_see_damage(root, caplog):
    url = f"file://{root}"
    with open_store(url) as s:
        s.save(s.acquire("job", "k", owner=ME, lease_seconds=60), lease_seconds=60)
    caplog.set_level(logging.WARNING, logger="restartable")
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, url, "1.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        reader, last, reads = FileStore(root), 0, 0
        while writer.poll() is None:
            rec = reader.load("job", "k")
            assert rec.state.get("i", 0) == rec.done >= last
            last, reads = rec.done, reads + 1
            assert len(reader.history("job", "k", limit=2)) >= 1
            assert [r.run for r in reader.list_runs("job")] == ["k"]
    finally:
        writer.wait(30)
        writer.stdout.close()
    assert writer.returncode == 0 and reads > 10 and last > 0
    assert _warnings(caplog) == []


def test_delete_keeps_a_private_epoch_floor_that_new_records_start_above(store, root, monkeypatch):
    """``.epoch-floor`` (one per job directory) is written before a delete removes the files;
    a record created again, by any store object, starts above it even with the clock set back;
    deletes of other runs never lower it; a floor write cut short by a crash is swept."""
    a = store.acquire("job", "a", owner=ME, lease_seconds=30)
    b = store.acquire("job", "b", owner=ME, lease_seconds=30)
    assert not (root / "job" / ".epoch-floor").exists()  # the old layout: no floor until a delete
    (root / "job" / "..epoch-floor.0123456789abcdef.tmp").write_bytes(b"9")
    assert store.delete("job", "b")
    assert store.delete("job", "a")  # the lower epoch: the floor stays at b's
    floor = root / "job" / ".epoch-floor"
    assert int(floor.read_text()) == b.epoch and _mode(floor) == 0o600
    assert sorted(p.name for p in (root / "job").iterdir()) == [".epoch-floor"]
    monkeypatch.setattr(time, "time_ns", lambda: a.epoch * 1000)  # the clock went back
    with open_store(f"file://{root}") as fresh:
        again = fresh.acquire("job", "a", owner=OTHER, lease_seconds=30)
        assert 0 < again.epoch - b.epoch <= EPOCH_STEP
        assert [r.run for r in fresh.list_runs()] == ["a"]
    with pytest.raises(Fenced):
        store.save(a, lease_seconds=30)


def test_delete_of_a_run_with_unreadable_generations_still_works(store, root):
    rec = store.acquire("job", "r1", owner=ME, lease_seconds=30)
    (root / "job" / "r1.ckpt").write_bytes(b"garbage")
    assert store.delete("job", "r1")  # `reset` of a damaged run: the header was unreadable
    assert store.load("job", "r1") is None
    assert store.acquire("job", "r1", owner=ME, lease_seconds=30).epoch != rec.epoch
