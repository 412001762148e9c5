"""An acknowledged save survives a power cut: enumerated crash states (issue 17, point 4).

The method of ALICE (OSDI 2014) and CrashMonkey (OSDI 2018), without special hardware:
record the file-system operations a sequence of store calls issues (tests/crashfs.py:
the ``os`` functions wrapped for the file store, ``strace`` for SQLite), enumerate every
directory tree a power cut could leave under a model of the page cache (unsynced data
lost, torn at 512 B or reordered; unsynced directory entries each there or not; synced
data kept), build each as a real directory and recover from it with a FRESH store.

Each state must give:

* a readable checkpoint: ``load`` never raises CheckpointCorrupt (no readable generation);
* no older than the last acknowledged operation (one that returned before the cut) and no
  newer than the one in flight: exactly one of those two records (compared on epoch,
  status, done, state and positions: a mixture of two saves matches neither);
* a run that goes on: a new owner takes it over (``acquire`` with ``steal_epoch``) at that record.

The negative controls prove the enumeration can find a lost save: the same store with its
directory fsyncs (or its file fsyncs) left out of the trace, and the naive
``json.dump``-over-the-file writer, must each fail the check.

Each test prints its counts (``-s`` shows them): crash points, states generated, distinct
states recovered.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from ci_env import unavailable
from crashfs import STRACE_CALLS, Mark, Recorder, Stats, crash_states, materialize, parse_strace
from restartable._checkpoint import Checkpoint, Owner
from restartable.errors import CheckpointCorrupt, RestartableError, StoreUnavailable
from restartable.stores import open_store

JOB, RUN = "crash-job", "run-1"
ME = Owner(host="host-a", pid=111)
HEIR = Owner(host="host-b", pid=222)
LEASE = 600.0

Key = tuple[Any, ...] | None


def key(rec: Checkpoint | None) -> Key:
    """What must survive of a record: who wrote it (epoch), how far it got, and its state."""
    if rec is None:
        return None
    return (
        rec.epoch,
        rec.status,
        rec.done,
        json.dumps(rec.state, sort_keys=True),
        json.dumps(rec.positions, sort_keys=True),
    )


def _pad(size: int, n: int) -> str:
    # Distinct per save, so a mixture of two records' bytes can never pass its checksum by chance.
    unit = f"<save {n}>"
    return (unit * (size // len(unit) + 1))[:size]


# -- steps: one store call each; returns the record it left (the outcome once acknowledged) --

Step = Callable[[Any, Checkpoint | None], Checkpoint | None]


def acquire(store: Any, cur: Checkpoint | None) -> Checkpoint:
    return store.acquire(JOB, RUN, owner=ME, lease_seconds=LEASE)


def save(n: int, size: int = 64) -> Step:
    def step(store: Any, cur: Checkpoint | None) -> Checkpoint:
        assert cur is not None
        return store.save(
            cur.replace(done=n, positions={"items": {"i": n}}, state={"n": n, "pad": _pad(size, n)}),
            lease_seconds=LEASE,
        )

    return step


@dataclass(frozen=True)
class Failed:
    """What a step returns when its store call failed (a sync that returned EIO): the record it
    tried to write may or may not be what a crash leaves, and the run goes on from it."""

    attempted: Checkpoint


@dataclass(frozen=True)
class InDoubt:
    """The outcome of a failed step: any of these records is a correct recovery."""

    keys: tuple[Key, ...]


#: The recorder of the case being recorded (a step that injects a fault reaches it here).
_RECORDING: list[Recorder] = []


def failing_save(n: int) -> Step:
    """A save whose ``fdatasync`` returns EIO ("fsyncgate"): the store must report it, and no
    later write may then lose the last acknowledged save (see crashfs.FailedSync)."""

    def step(store: Any, cur: Checkpoint | None) -> Failed:
        assert cur is not None
        attempted = cur.replace(done=n, positions={"items": {"i": n}}, state={"n": n, "pad": _pad(64, n)})
        _RECORDING[-1].fail_file_syncs(1)
        with pytest.raises(StoreUnavailable, match="EIO"):
            store.save(attempted, lease_seconds=LEASE)
        got = store.load(JOB, RUN)  # what the page cache now says
        assert got is not None and got.done in (cur.done, n)
        return Failed(attempted)

    return step


def takeover(store: Any, cur: Checkpoint | None) -> Checkpoint:
    """Another process (a fresh store object, an empty cache) takes the run over."""
    assert cur is not None
    other = open_store(f"file://{store.root}")
    try:
        return other.acquire(JOB, RUN, owner=HEIR, lease_seconds=LEASE, steal_epoch=cur.epoch)
    finally:
        other.close()


def delete(store: Any, cur: Checkpoint | None) -> None:
    store.delete(JOB, RUN)
    return None


def renew(store: Any, cur: Checkpoint | None) -> Checkpoint:
    assert cur is not None
    store.renew(JOB, RUN, epoch=cur.epoch, lease_seconds=LEASE)
    got = store.load(JOB, RUN)
    assert got is not None
    return got


def _v1_bytes(rec: Checkpoint) -> bytes:
    """A generation as main at 145aab9 wrote it (layout version 1): a header line, then the body."""
    from restartable._checkpoint import encode_record
    from restartable.stores.file import _entry_json

    body = ('{"history":[' + _entry_json(rec) + '],"record":' + encode_record(rec) + "}\n").encode()
    sha = hashlib.sha256(body).hexdigest()
    return f'{{"format":"restartable-file","version":1,"epoch":{rec.epoch},"sha256":"{sha}"}}\n'.encode() + body


def to_version_1(store: Any, cur: Checkpoint | None) -> Checkpoint:
    """Rewrite the run, durably, in the version-1 layout: the record in ``<run>.ckpt`` and an
    older one (which was never acknowledged: recovering it is a violation) in ``.ckpt.prev``."""
    rec = store.load(JOB, RUN)
    assert rec is not None
    base = os.path.join(store.root, JOB, f"{RUN}.ckpt")
    older = rec.replace(done=rec.done + 1000, state={"n": "never acknowledged"})
    for path, r in ((base + ".prev", older), (base, rec)):
        tmp = path + ".v1tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, _v1_bytes(r))
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, path)
    dfd = os.open(os.path.dirname(base), os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    return rec


# -- recording and checking --------------------------------------------------------------------


def record_file_store(
    world: str,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[Step],
    *,
    start_after: int,
    drop_syncs: frozenset[str] = frozenset(),
) -> tuple[list[Any], list[Key]]:
    """Run ``steps`` on a file store in ``world/store`` under the recorder.

    Crash points start after step ``start_after`` returned (0: before the store is even
    opened, its directory creation included). ``outcomes[a]`` is what the store must hold
    once ``a`` steps were acknowledged (``outcomes[0]``: nothing).
    """
    os.mkdir(world, 0o700)
    rec = Recorder(world, drop_syncs=drop_syncs)
    outcomes: list[Key | InDoubt] = [None]
    _RECORDING.append(rec)
    with monkeypatch.context() as m:
        rec.patch(m)
        if start_after == 0:
            rec.mark("start")
        store = open_store(f"file://{world}/store")
        cur: Checkpoint | None = None
        for n, step in enumerate(steps, 1):
            done = step(store, cur)
            if isinstance(done, Failed):
                # Still in doubt after it: whatever was before it (itself in doubt, perhaps), or its record.
                before = outcomes[-1]
                outcomes.append(
                    InDoubt((*(before.keys if isinstance(before, InDoubt) else (before,)), key(done.attempted)))
                )
                cur = done.attempted
            else:
                cur = done
                outcomes.append(key(cur))
            rec.mark("ack")
            if n == start_after:
                rec.mark("start")
        store.close()
    _RECORDING.remove(rec)
    return rec.ops, outcomes


@dataclass
class Violation:
    point: int
    acked: int
    got: Any
    valid: list[Key]
    files: list[str]

    def __str__(self) -> str:
        return (
            f"crash after op {self.point}, {self.acked} acknowledged: recovered {self.got!r:.300}, "
            f"expected one of {[None if v is None else v[:3] for v in self.valid]}; files {self.files}"
        )


def _recover(url: str) -> Key:
    """What a restart finds at ``url``; the run then goes on from there (a new owner takes it over)."""
    store = open_store(url)
    try:
        got = store.load(JOB, RUN)
        if got is not None:
            taken = store.acquire(JOB, RUN, owner=HEIR, lease_seconds=LEASE, steal_epoch=got.epoch)
            assert (taken.done, taken.state) == (got.done, got.state), "the takeover moved the run"
        return key(got)
    finally:
        store.close()


def _recover_file(root: str) -> Key:
    return _recover(f"file://{root}/store")


def check(
    ops: list[Any],
    outcomes: list[Key | InDoubt],
    scratch: str,
    recover: Callable[[str], Key],
    **enum: Any,
) -> tuple[Stats, list[Violation]]:
    """Recover from every crash state of ``ops``; the violations of the contract in the module docstring."""
    stats = Stats()
    bad: list[Violation] = []
    for st in crash_states(ops, stats=stats, **enum):
        materialize(st.files, scratch)
        # The last acknowledged outcome or the one in flight (either of a failed step's).
        valid = [k for o in outcomes[st.acked : st.acked + 2] for k in (o.keys if isinstance(o, InDoubt) else (o,))]
        try:
            got: Any = recover(scratch)
        except RestartableError as exc:  # CheckpointCorrupt, or a store that does not even open
            got = f"{type(exc).__name__}: {exc}"
        if got not in valid:
            bad.append(
                Violation(
                    st.point,
                    st.acked,
                    got,
                    valid,
                    [f"{p}:{'dir' if c is None else len(c)}" for p, c in st.files.items()],
                )
            )
    return stats, bad


def _report(name: str, stats: Stats, seconds: float, bad: list[Violation]) -> None:
    print(
        f"\n{name}: {stats.points} crash points, {stats.generated} states generated "
        f"({stats.sampled_points} points sampled), {stats.distinct} distinct recovered, "
        f"{len(bad)} violations, {seconds:.2f}s"
    )


def run_file_case(
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    steps: list[Step],
    *,
    start_after: int,
    drop_syncs: frozenset[str] = frozenset(),
    **enum: Any,
) -> tuple[Stats, list[Violation]]:
    t0 = time.monotonic()
    ops, outcomes = record_file_store(
        str(tmp_path / "world"), monkeypatch, steps, start_after=start_after, drop_syncs=drop_syncs
    )
    stats, bad = check(ops, outcomes, str(tmp_path / "crash"), _recover_file, **enum)
    _report(name, stats, time.monotonic() - t0, bad)
    assert stats.distinct > 0
    return stats, bad


# -- the file store ------------------------------------------------------------------------------

FILE_CASES = {
    # The store directory, the job directory, the lock file and the first file (both slots,
    # temp + fsync + rename + directory fsync) are all created here; save 1 is a pwrite.
    "first-save": ([acquire, save(1)], 0),
    # The steady state: each save one pwrite into the older slot and one fdatasync, the
    # file's size and directory untouched; save 4 shrinks (the slot's stale tail is blanked).
    "steady-state": ([acquire, save(1), save(2, 400), save(3, 600), save(4, 64)], 3),
    # A renewal is the same in-place write; a save follows it.
    "renew": ([acquire, save(1), renew, save(2), renew], 2),
    # A record of ~10 KB spans 20+ sectors and several pages: torn writes are sampled.
    "larger-than-a-page": ([acquire, save(1, 10_000), save(2, 10_000), save(3, 10_000)], 2),
    # Save 2 outgrows the slot: a new, larger file renamed over the old one (the slow path),
    # then in-place writes into its bigger slots, growing and shrinking.
    "outgrows-its-slot": ([acquire, save(1), save(2, 10_000), save(3, 12_000), save(4, 64)], 2),
    # A run in the layout of main at 145aab9 (current + .prev documents): its first save
    # writes a two-slot file (the old record in the other slot) and removes .prev.
    "upgrade-from-version-1": ([acquire, save(1), to_version_1, save(2), save(3)], 3),
    # After an acknowledged delete the run is created again (a new lock file, a fresh first generation).
    "save-after-delete": ([acquire, save(1), save(2), delete, acquire, save(3), save(4)], 4),
    # A sync that fails (EIO) leaves its slot in doubt for good: the page cache shows the new
    # bytes, the disk may never get them. The next save must not overwrite the other slot,
    # the last acknowledged save, in place: it writes a whole new file first.
    "fdatasync-fails": ([acquire, save(1), failing_save(2), save(3), save(4)], 2),
    # Twice in a row: the disk keeps failing, the last good save must still be there.
    "fdatasync-fails-twice": ([acquire, save(1), failing_save(2), failing_save(3), save(4)], 2),
    # The process that saw the EIO dies; the next one reads the page cache's version and takes over.
    "fdatasync-fails-then-takeover": ([acquire, save(1), failing_save(2), takeover], 2),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_file_store_acknowledged_save_survives_every_crash_state(tmp_path, monkeypatch, case):
    steps, start_after = FILE_CASES[case]
    _, bad = run_file_case(tmp_path, monkeypatch, f"file {case}", steps, start_after=start_after)
    assert not bad, f"{len(bad)} crash states lose or mix a save; first: " + "\n".join(map(str, bad[:5]))


def test_file_store_delete_never_resurrects_an_older_generation(tmp_path, monkeypatch):
    _, bad = run_file_case(tmp_path, monkeypatch, "file delete", [acquire, save(1), save(2), delete], start_after=3)
    assert not bad, f"{len(bad)} crash states; first: " + "\n".join(map(str, bad[:5]))


# -- negative controls: the enumeration must find a lost save when there is one ---------------------


@pytest.mark.parametrize("drop", ["dir", "file"])
def test_negative_control_file_store_without_its_fsyncs_fails(tmp_path, monkeypatch, drop):
    # Directory fsyncs matter where the directory changes: the slow path's rename.
    steps, start_after = FILE_CASES["outgrows-its-slot" if drop == "dir" else "steady-state"]
    _, bad = run_file_case(
        tmp_path,
        monkeypatch,
        f"file without {drop} fsyncs",
        steps,
        start_after=start_after,
        drop_syncs=frozenset({drop}),
    )
    assert bad, f"with its {drop} fsyncs removed the store must lose an acknowledged save in some crash state"
    # Not only torn garbage: a state that silently goes BACK to an older record exists.
    assert any(isinstance(v.got, tuple) for v in bad)


def _naive_save(path: str, n: int) -> Key:
    """The article's writer: ``json.dump`` over the checkpoint file, no temp file, no fsync."""
    doc = {"done": n, "state": {"n": n, "pad": _pad(700, n)}}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(doc).encode())
    finally:
        os.close(fd)
    return (n,)


def _naive_recover(root: str) -> Key:
    try:
        with open(os.path.join(root, "ckpt.json"), "rb") as f:
            return (json.loads(f.read())["done"],)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise CheckpointCorrupt(f"torn: {exc}") from None


def test_negative_control_naive_json_overwrite_fails(tmp_path, monkeypatch):
    world = str(tmp_path / "world")
    os.mkdir(world)
    rec = Recorder(world)
    outcomes: list[Key] = [None]
    with monkeypatch.context() as m:
        rec.patch(m)
        for n in (1, 2, 3):
            outcomes.append(_naive_save(os.path.join(world, "ckpt.json"), n))
            rec.mark("ack")
            if n == 1:
                rec.mark("start")
    t0 = time.monotonic()
    stats, bad = check(rec.ops, outcomes, str(tmp_path / "crash"), _naive_recover)
    _report("naive json overwrite", stats, time.monotonic() - t0, bad)
    assert any(isinstance(v.got, str) and "torn" in v.got for v in bad), "a torn checkpoint must be found"
    assert any(v.got in (None, (1,)) and v.acked >= 2 for v in bad), "a lost acknowledged save must be found"


# -- SQLite, through strace ----------------------------------------------------------------------

# The traced child: the steps named on its command line, an acknowledgement after each
# (a write of "CRASHFS:ack" to /dev/null, which the trace shows in order with SQLite's
# own calls), the keys of the records it left as JSON on stdout.
_SQLITE_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from restartable._checkpoint import Owner
    from restartable.stores import open_store

    db, plan, start_after = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    mark_fd = os.open("/dev/null", os.O_WRONLY)

    def mark(label):
        os.write(mark_fd, b"CRASHFS:" + label.encode())

    def key(rec):
        if rec is None:
            return None
        return [rec.epoch, rec.status, rec.done, json.dumps(rec.state, sort_keys=True),
                json.dumps(rec.positions, sort_keys=True)]

    if start_after == 0:
        mark("start")
    store = open_store("sqlite:///" + db)
    cur, out = None, []
    for n, (what, *args) in enumerate(plan, 1):
        if what == "acquire":
            cur = store.acquire(%(job)r, %(run)r, owner=Owner(host="host-a", pid=111), lease_seconds=%(lease)r)
        elif what == "save":
            i, size = args
            unit = f"<save {i}>"
            pad = (unit * (size // len(unit) + 1))[:size]
            cur = store.save(cur.replace(done=i, positions={"items": {"i": i}}, state={"n": i, "pad": pad}),
                             lease_seconds=%(lease)r)
        elif what == "delete":
            store.delete(%(job)r, %(run)r)
            cur = None
        out.append(key(cur))
        mark("ack")
        if n == start_after:
            mark("start")
    store.close()
    mark("closed")
    print(json.dumps(out))
    """
) % {"job": JOB, "run": RUN, "lease": LEASE}


def _recover_sqlite(root: str) -> Key:
    return _recover(f"sqlite:///{root}/db/checkpoints.db")


def record_sqlite(
    tmp_path: Any, plan: list[list[Any]], *, start_after: int, drop_syncs: frozenset[str] = frozenset()
) -> tuple[list[Any], list[Key]]:
    """Run ``plan`` on a SQLite store in a child under strace; the trace as ops, and the outcomes."""
    strace = shutil.which("strace")
    if strace is None:
        unavailable("strace is not installed (apt-get install strace): the SQLite crash states need it")
    world = str(tmp_path / "world")
    os.mkdir(world, 0o700)
    log = str(tmp_path / "strace.log")
    cmd = [
        strace,
        "-f",
        "-y",
        "-xx",
        "-s",
        "1000000",
        "-e",
        f"trace={STRACE_CALLS}",
        "-o",
        log,
        sys.executable,
        "-c",
        _SQLITE_CHILD,
        f"{world}/db/checkpoints.db",
        json.dumps(plan),
        str(start_after),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTARTABLE_")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if proc.returncode != 0 and "PTRACE" in proc.stderr.upper():
        unavailable(f"strace cannot trace here (ptrace refused): {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes: list[Key] = [None] + [None if k is None else tuple(k) for k in json.loads(proc.stdout)]
    rec = Recorder(world, drop_syncs=drop_syncs)
    with open(log, encoding="utf-8", errors="surrogateescape") as f:
        parse_strace(f.read(), rec)
    ops = rec.ops
    # Crash points go on through the close (SQLite copies the WAL into the database, truncates
    # and deletes it): a cut there must keep the last acknowledged save too. The interpreter's
    # exit after the "closed" mark touches nothing of the store.
    closed = ops.index(Mark("closed"))
    assert ops.count(Mark("ack")) == len(plan), "the trace lost an acknowledgement"
    return ops[:closed], outcomes


SQLITE_CASES = {
    "first-save": ([["acquire"], ["save", 1, 64]], 0),
    "steady-state": ([["acquire"], ["save", 1, 64], ["save", 2, 400], ["save", 3, 600], ["save", 4, 64]], 2),
    "larger-than-a-page": ([["acquire"], ["save", 1, 10_000], ["save", 2, 10_000], ["save", 3, 10_000]], 1),
    "save-after-delete": ([["acquire"], ["save", 1, 64], ["save", 2, 64], ["delete"], ["acquire"], ["save", 3, 64]], 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SQLITE_CASES))
def test_sqlite_store_acknowledged_save_survives_every_crash_state(tmp_path, case):
    plan, start_after = SQLITE_CASES[case]
    t0 = time.monotonic()
    ops, outcomes = record_sqlite(tmp_path, plan, start_after=start_after)
    stats, bad = check(ops, outcomes, str(tmp_path / "crash"), _recover_sqlite, samples=60)
    _report(f"sqlite {case}", stats, time.monotonic() - t0, bad)
    assert stats.distinct > 0
    assert not bad, f"{len(bad)} crash states lose or mix a save; first: " + "\n".join(map(str, bad[:5]))


@pytest.mark.slow
def test_negative_control_sqlite_without_its_fsyncs_fails(tmp_path):
    """The same SQLite trace with every file fsync left out (as ``synchronous=OFF`` would) must lose a save."""
    plan, start_after = SQLITE_CASES["steady-state"]
    t0 = time.monotonic()
    ops, outcomes = record_sqlite(tmp_path, plan, start_after=start_after, drop_syncs=frozenset({"file"}))
    stats, bad = check(ops, outcomes, str(tmp_path / "crash"), _recover_sqlite, samples=20)
    _report("sqlite without file fsyncs", stats, time.monotonic() - t0, bad)
    assert bad, "without fsyncs SQLite must lose an acknowledged save in some crash state"


def test_the_model_on_a_hand_counted_trace():
    """The enumeration itself, on a trace small enough to count by hand: a 2-sector write to a
    new file, then its fsync, then a rename, then the directory's fsync."""
    from crashfs import Create, Rename, Sync, Write

    x = b"x" * 1024
    ops = [Mark("start"), Create(0, "f", 1, False), Write(1, 0, x), Sync(1), Rename(0, "f", 0, "g", 1), Sync(0)]
    trees = {tuple(sorted(st.files.items())) for st in crash_states(ops)}
    zeros, half = bytes(512), b"x" * 512
    assert trees == {
        (),  # nothing reached the disk
        (("f", b""),),  # the name did, the unsynced write did not
        (("f", half + zeros),),  # a torn write: one sector of two, the size grown over a hole of zeros
        (("f", zeros + half),),  # the other sector only
        (("f", x),),  # the whole write
        (("g", x),),  # the rename (only ever of the synced, whole data)
    }
