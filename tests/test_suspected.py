"""Suspected defects of issue 12, each pinned by a test that failed before its fix.

* dead-owner detection concludes "dead" only on positive evidence (``kill(pid, 0)``
  answering ESRCH, or a readable ``/proc`` entry with another start time), never from a
  ``/proc`` entry hidden by ``hidepid`` (simulated, and for real in a private mount
  namespace when we are root);
* ``make_private_dirs`` fsyncs the parent of every directory it creates;
* a second SIGTERM/SIGINT exits at once even when stderr cannot be written (the first
  handler's write was interrupted: a reentrant ``BufferedWriter`` raises);
* a lease renewal in flight when the job releases its lease never lands after the release;
* a signal between a draining source's check and its checkpoint boundary never releases
  the lease while its workers still run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from restartable import _lease, _proc, _signals
from restartable._checkpoint import Owner
from restartable._job import run_context
from restartable.stores import open_store
from restartable.stores._localfs import make_private_dirs

# -- dead owners: positive evidence only -------------------------------------------------------


def _owner_of(pid: int) -> Owner:
    host, boot_id, pidns = _proc._machine()
    return Owner(host=host, pid=pid, boot_id=boot_id, pidns=pidns, start_time=_proc._start_time(pid), token="t")


@pytest.fixture
def sleeper() -> Any:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _hide_proc_entry(monkeypatch: pytest.MonkeyPatch, pid: int) -> None:
    """What ``hidepid=2`` shows us of another user's process: nothing under /proc/PID."""
    real_read, real_exists = _proc._read, os.path.exists
    prefix = f"/proc/{pid}"

    def read(path: str) -> str:
        return "" if path == prefix or path.startswith(prefix + "/") else real_read(path)

    def exists(path: Any) -> bool:
        p = os.fspath(path)
        return False if p == prefix or p.startswith(prefix + "/") else real_exists(p)

    monkeypatch.setattr(_proc, "_read", read)
    monkeypatch.setattr(os.path, "exists", exists)


def test_a_live_owner_hidden_from_proc_is_alive(
    sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = _owner_of(sleeper.pid)
    assert owner.start_time and not _proc.owner_is_dead(owner)
    _hide_proc_entry(monkeypatch, sleeper.pid)
    assert not _proc.owner_is_dead(owner), "a live pid whose /proc entry is hidden was judged dead"


def test_eperm_means_alive(sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    owner = _owner_of(sleeper.pid)
    _hide_proc_entry(monkeypatch, sleeper.pid)
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        if pid == sleeper.pid and sig == 0:
            raise PermissionError(1, "Operation not permitted")
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    assert not _proc.owner_is_dead(owner)


def test_gone_and_reused_pids_are_dead(sleeper: subprocess.Popen[bytes]) -> None:
    owner = _owner_of(sleeper.pid)
    reused = Owner(**{**owner.to_dict(), "start_time": owner.start_time + 1})
    assert _proc.owner_is_dead(reused), "a pid with another start time is another process"
    sleeper.kill()
    sleeper.wait()
    assert _proc.owner_is_dead(owner), "ESRCH is proof the owner is gone"
    assert not _proc.owner_is_dead(Owner(**{**owner.to_dict(), "pid": 0}))  # a process group, never probed


def _can_mount_private_proc() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux"
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs {tool} (util-linux)"
    return None


@pytest.mark.skipif(_can_mount_private_proc() is not None, reason=str(_can_mount_private_proc()))
def test_hidepid_for_real(sleeper: subprocess.Popen[bytes], tmp_path: Path) -> None:
    """``nobody`` with /proc mounted ``hidepid=2`` judges root's live ``sleep``: alive; a dead pid: dead."""
    owner = _owner_of(sleeper.pid)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = _owner_of(gone.pid)
    dead = Owner(**{**dead.to_dict(), "start_time": owner.start_time})
    src = str(Path(_proc.__file__).resolve().parents[1])
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import os\n"
        "from restartable import _proc\n"
        "from restartable._checkpoint import Owner\n"
        f"live = Owner(**{owner.to_dict()!r}); dead = Owner(**{dead.to_dict()!r})\n"
        "print(os.path.exists(f'/proc/{live.pid}'), _proc.owner_is_dead(live), _proc.owner_is_dead(dead))\n"
    )
    script = (
        "mount -t proc -o hidepid=2 proc /proc && exec setpriv --reuid=65534 --regid=65534 --clear-groups "
        '"$0" -I -c "$1" "$2"'
    )
    res = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, sys.executable, code, src],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    if res.returncode != 0 and "mount" in res.stderr:
        pytest.skip(f"cannot mount a private proc here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    visible, live_dead, dead_dead = res.stdout.split()
    assert visible == "False", "hidepid=2 did not hide root's process: the test proves nothing"
    assert live_dead == "False", "a live owner hidden by hidepid=2 was judged dead: its lease would be taken over"
    assert dead_dead == "True"


# -- directories: fsync the parent of each one created -------------------------------------------


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        try:
            seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            seen.append(f"fd {fd}")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_make_private_dirs_fsyncs_each_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record_fsyncs(monkeypatch)
    make_private_dirs(tmp_path / "a" / "b" / "c")
    assert seen == [str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    seen.clear()
    make_private_dirs(tmp_path / "a" / "b")  # nothing created: nothing to make durable
    assert seen == []


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_local_stores_fsync_the_directories_they_create(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _record_fsyncs(monkeypatch)
    root = tmp_path / "new" / "store"
    url = f"sqlite:///{root}/c.db" if kind == "sqlite" else f"file://{root}"
    with open_store(url) as store:
        store.acquire("j", "r", owner=_owner_of(os.getpid()), lease_seconds=30)
    for d in (tmp_path, tmp_path / "new"):
        assert str(d) in seen, f"{d} was not fsynced after a directory was created in it: {seen}"


# -- a second signal exits at once ---------------------------------------------------------------


class _Exited(BaseException):
    def __init__(self, code: int) -> None:
        self.code = code


class _ReentrantStderr:
    """What ``sys.stderr`` does when a handler writes while the interrupted code was writing."""

    def write(self, s: str) -> int:
        raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

    def flush(self) -> None:
        raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_exits_even_when_stderr_is_reentered(signum: int, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    guard = _signals.SignalGuard(calls.append, "job 't'")
    guard._handle(signum, None)
    assert calls == [signum]

    def exit_(code: int) -> None:
        raise _Exited(code)

    monkeypatch.setattr(os, "_exit", exit_)
    monkeypatch.setattr(sys, "stderr", _ReentrantStderr())
    with pytest.raises(_Exited) as info:
        guard._handle(signum, None)
    assert info.value.code == 128 + signum


def test_second_signal_exits_when_stderr_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = _signals.SignalGuard(lambda s: None, "job 't'")
    guard._handle(signal.SIGTERM, None)

    def exit_(code: int) -> None:
        raise _Exited(code)

    def write(fd: int, data: bytes) -> int:
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(os, "_exit", exit_)
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(sys, "stderr", None)
    with pytest.raises(_Exited) as info:
        guard._handle(signal.SIGTERM, None)
    assert info.value.code == 143


# -- a late lease renewal never lands after the release ---------------------------------------------


def test_renewal_in_flight_at_exit_does_not_extend_the_released_lease(tmp_path: Path) -> None:
    """A renewal held up past the old 5 s join (a store retry) lands before the release, not after."""
    from restartable import Job

    delay = 5.5  # beyond the 5 s bound Heartbeat.stop had: the renewal would land after the release
    in_flight = threading.Event()
    finished = threading.Event()
    with open_store(f"sqlite:///{tmp_path}/c.db") as store:
        real_renew = store.renew

        def slow_renew(job: str, run: str, *, epoch: int, lease_seconds: float) -> float:
            in_flight.set()
            time.sleep(delay)
            try:
                return real_renew(job, run, epoch=epoch, lease_seconds=lease_seconds)
            finally:
                finished.set()

        store.renew = slow_renew  # type: ignore[method-assign]
        with Job("late", run="r", store=store, lease_seconds=0.3, handle_signals=False) as job:
            for _ in job.iterate(range(3)):
                pass
            assert in_flight.wait(5)
        assert finished.wait(delay + 5)
        time.sleep(0.1)
        rec = store.load("late", "r")
        assert rec is not None and rec.status == "completed"
        assert rec.lease_expires is None, "a renewal that landed after the release extended the lease again"


# -- a signal at a draining source's boundary never releases the lease while work runs ----------------


@pytest.fixture
def signal_at_boundary(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``arm(n)``: the n-th checkpoint boundary from now gets a SIGTERM just before it runs.

    That is a signal landing between the source's ``ctx.signal is None`` check and the
    boundary, the window a real signal can hit; the run's handler is called directly.
    """
    from restartable._run import LoopHooks

    real = LoopHooks.boundary
    countdown = [0]

    def boundary(self: Any, cur: Any, count_due: bool) -> None:
        if countdown[0] > 0:
            countdown[0] -= 1
            if countdown[0] == 0:
                self.run.on_signal(signal.SIGTERM)
        real(self, cur, count_due)

    monkeypatch.setattr(LoopHooks, "boundary", boundary)

    def arm(n: int) -> None:
        countdown[0] = n

    return arm


class Releases:
    """Every save that releases the lease, with what ``probe()`` returned at that moment."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.probe: Any = lambda: None


@pytest.fixture
def releases(monkeypatch: pytest.MonkeyPatch) -> Releases:
    from restartable._run import RunContext

    real = RunContext.save
    rec = Releases()

    def save(self: Any, status: str, *, release: bool = False) -> Any:
        if release:
            rec.seen.append(rec.probe())
        return real(self, status, release=release)

    monkeypatch.setattr(RunContext, "save", save)
    return rec


def test_map_signal_at_the_boundary_keeps_the_lease_until_workers_end(
    tmp_path: Path, signal_at_boundary: Any, releases: Releases
) -> None:
    from restartable import Job
    from restartable.errors import Interrupted

    lock = threading.Lock()
    running = [0]
    releases.probe = lambda: running[0]

    def fn(i: int) -> int:
        with lock:
            running[0] += 1
        time.sleep(0 if i == 0 else 0.4)
        with lock:
            running[0] -= 1
        return i

    got = []
    with pytest.raises(Interrupted):
        with Job("race", run="r", store=f"sqlite:///{tmp_path}/c.db", handle_signals=False) as job:
            for r in job.map(fn, range(8), workers=4, grace=20):
                got.append(r)
                if len(got) == 1:
                    signal_at_boundary(1)  # the boundary after this first result
    assert releases.seen == [0], f"the lease was released with {releases.seen} worker(s) still running"
    assert got[0] == 0 and len(got) > 1  # the items running at the signal finished in the grace, yielded
    with open_store(f"sqlite:///{tmp_path}/c.db") as store:
        rec = store.load("race", "r")
        assert rec is not None and rec.status == "interrupted" and rec.lease_expires is None


def test_map_stragglers_past_the_grace_keep_the_lease(tmp_path: Path, releases: Releases) -> None:
    from restartable import Job
    from restartable.errors import Interrupted

    started = threading.Event()
    gate = threading.Event()

    def fn(i: int) -> int:
        started.set()
        gate.wait(10)
        return i

    try:
        with pytest.raises(Interrupted):
            with Job(
                "stragglers", run="r", store=f"sqlite:///{tmp_path}/c.db", handle_signals=False, lease_seconds=30
            ) as job:

                def signal_soon() -> None:
                    started.wait(10)
                    run_context(job).on_signal(signal.SIGTERM)

                threading.Thread(target=signal_soon, daemon=True).start()
                for _ in job.map(fn, range(4), workers=2, grace=0.2):
                    pytest.fail("no result can come before the gate opens")
    finally:
        gate.set()
    assert releases.seen == [], "released while items still ran (a second runner would start them)"
    with open_store(f"sqlite:///{tmp_path}/c.db") as store:
        rec = store.load("stragglers", "r")
        assert rec is not None and rec.status == "interrupted" and rec.lease_expires is not None


def _alive_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line mentions ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(") ", 1)[1][:1]
        except OSError:
            continue
        if marker.encode() in cmd and state != "Z":
            pids.append(int(entry))
    return pids


def test_each_file_signal_at_the_boundary_keeps_the_lease_until_commands_end(
    tmp_path: Path, signal_at_boundary: Any, releases: Releases, monkeypatch: pytest.MonkeyPatch
) -> None:
    from restartable.cli.each_file import each_file
    from restartable.errors import Interrupted

    (tmp_path / "in").mkdir()
    for name, seconds in (("a", "0"), ("b", "2"), ("c", "2")):
        (tmp_path / "in" / f"{name}.txt").write_text(seconds)
    marker = f"MARK-{os.getpid()}-{time.monotonic_ns()}"
    releases.probe = lambda: _alive_with(marker)
    monkeypatch.chdir(tmp_path)
    signal_at_boundary(2)  # the first boundary is before any launch; the second follows a.txt's end
    with pytest.raises(Interrupted):
        each_file.main(
            [
                "--store",
                f"sqlite:///{tmp_path}/c.db",
                "--job",
                "race",
                "-j",
                "2",
                "--grace",
                "20",
                "in/*.txt",
                "--",
                "sh",
                "-c",
                f'sleep "$(cat "$1")" # {marker}',
                "_",
                "{}",
            ],
            standalone_mode=False,
        )
    assert releases.seen == [[]], f"the lease was released while commands {releases.seen} still ran"
    with open_store(f"sqlite:///{tmp_path}/c.db") as store:
        rec = store.load("race", "default")
        assert rec is not None and rec.status == "interrupted" and rec.lease_expires is None
        assert set(store.markers("race", "default", "files")) == {"a.txt"}


# -- each-file: nothing a command started survives a SIGKILLed runner ------------------------------------

LEAVES_CHILDREN = r"""#!/bin/sh
# leaves.sh FILE DIR: a.txt leaves a background child and exits 0; b.txt starts a child in a
# new session (out of the command's group), then runs on.
case "${1##*/}" in
a.txt) sleep 300 & echo "$!" > "$2/a.child"; exit 0 ;;
*) setsid sleep 301 & echo "$!" > "$2/b.child"; echo "$$" > "$2/b.pid"; exec sleep 302 ;;
esac
"""


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def _wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def _runner(tmp_path: Path, *args: str, code: str | None = None) -> subprocess.Popen[bytes]:
    from procs import clean_env

    head = [sys.executable, "-m", "restartable"] if code is None else [sys.executable, "-c", code]
    return subprocess.Popen(
        [*head, "each-file", "--store", f"sqlite:///{tmp_path}/c.db", *args],
        cwd=tmp_path,
        env=clean_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _all_dead(pids: list[int], timeout: float = 5) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = [p for p in pids if _pid_alive(p)]
    for p in left:  # never leave them behind the test
        os.kill(p, signal.SIGKILL)
    return left


def test_each_file_sigkill_leaves_no_grandchild(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "in" / name).write_text(name)
    (tmp_path / "leaves.sh").write_text(LEAVES_CHILDREN)
    proc = _runner(tmp_path, "in/*.txt", "--", "sh", str(tmp_path / "leaves.sh"), "{}", str(tmp_path))
    _wait_for(tmp_path / "b.pid")
    pids = [int((tmp_path / f).read_text()) for f in ("a.child", "b.child", "b.pid")]
    assert all(_pid_alive(p) for p in pids)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _all_dead(pids) == [], "a process the commands started outlived the SIGKILLed runner"


REGISTER_KILLS = r"""
import os, signal, sys
import restartable.cli, restartable._concurrency.processes as m
# SIGKILL the runner in the window after Popen returned and before the reaper knows the command.
m._Reaper.add = lambda self, pgid: os.kill(os.getpid(), signal.SIGKILL)
sys.exit(restartable.cli.main(sys.argv[1:]))
"""


def test_each_file_sigkill_before_the_command_is_registered(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    marker = f"REG-{os.getpid()}-{time.monotonic_ns()}"
    proc = _runner(
        tmp_path,
        "in/*.txt",
        "--",
        "sh",
        "-c",
        f'echo "$$" > "$1"; sleep 303 # {marker}',
        "_",
        str(tmp_path / "a.pid"),
        code=REGISTER_KILLS,
    )
    assert proc.wait(timeout=30) == -signal.SIGKILL
    deadline = time.monotonic() + 3  # the orphaned command runs on, unless the reaper got it first
    while not (tmp_path / "a.pid").exists() and _alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = _all_dead(_alive_with(marker), timeout=3)
    assert left == [], "the command started just before the runner was killed outlived it"


# -- hostile file names: each reaches the command as exactly one argv element ------------------------------

HOSTILE = [
    "with space.txt",
    "new\nline.txt",
    "-leading-dash.txt",
    "{}.txt",
    "{name}.txt",
    "{stem}{out}.txt",
    "ünïcödé-名前.txt",
    "x.txt.done",
    "y.txt.tmp",
    ".x.txt.0123456789abcdef.tmp",
    "tab\there.txt",
    "quote'\"$(touch pwned).txt",
    "back\\slash.txt",
    "[glob]*?.txt",
]


def test_fill_substitutes_once_whatever_the_name() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from restartable._concurrency.processes import fill

    names = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1)

    @given(names, names)
    def prop(name: str, directory: str) -> None:
        path = f"{directory}/{name}"
        stem = "s"
        argv = fill(
            ["{}", "a{name}b", "{stem}", "{out}", "{other}", "{{}}"], {"": path, "name": name, "stem": stem, "out": "o"}
        )
        assert argv == [path, f"a{name}b", stem, "o", "{other}", "{" + path + "}"]

    prop()


def test_each_file_hostile_names(tmp_path: Path) -> None:
    from procs import clean_env

    inp = tmp_path / "in"
    inp.mkdir()
    for name in HOSTILE:
        (inp / name).write_text(name)
    log = tmp_path / "argv.log"
    # Records its argv as JSON, one line per call: each name must arrive whole, as one element.
    recorder = (
        "import json, sys; open(sys.argv[1], 'a').write(json.dumps(sys.argv[2:]) + '\\n'); "
        "open(sys.argv[4], 'w').write(open(sys.argv[2]).read())"
    )
    args = [
        sys.executable,
        "-m",
        "restartable",
        "each-file",
        "--store",
        f"sqlite:///{tmp_path}/c.db",
        "-j",
        "3",
        "--marker-dir",
        str(tmp_path / "markers"),
        "-o",
        str(tmp_path / "out" / "{name}.res"),
        "in/*",
        "--",
        sys.executable,
        "-c",
        recorder,
        str(log),
        "{}",
        "{name}",
        "{out}",
    ]
    for _ in range(2):  # the rerun does nothing: every name was recorded as done
        res = subprocess.run(args, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
    import json

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    visible = sorted(n for n in HOSTILE if not n.startswith("."))
    assert sorted(c[1] for c in calls) == visible
    for path, name, out in calls:
        assert path == os.path.join("in", name) and (tmp_path / "in" / name).read_text() == name
        assert os.path.dirname(out) == str(tmp_path / "out") and os.path.basename(out).startswith(f".{name}.res.")
    assert not (tmp_path / "pwned").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{n}.res" for n in visible)
    assert all((tmp_path / "out" / f"{n}.res").read_text() == n for n in visible)
    assert sorted(p.name for p in (tmp_path / "markers").iterdir()) == sorted(f"{n}.done" for n in visible)


def test_amap_stragglers_are_cancelled_and_unwound_before_the_release(tmp_path: Path, releases: Releases) -> None:
    import asyncio

    from restartable import Job
    from restartable.errors import Interrupted

    state = {"running": 0}
    releases.probe = lambda: state["running"]

    async def fn(i: int) -> int:
        state["running"] += 1
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.05)  # unwinding takes a moment: the release must wait for it
            state["running"] -= 1
        return i

    async def main() -> None:
        with Job("astragglers", run="r", store=f"sqlite:///{tmp_path}/c.db", handle_signals=False) as job:
            asyncio.get_running_loop().call_later(0.2, run_context(job).on_signal, signal.SIGTERM)
            async for _ in job.amap(fn, range(4), workers=2, grace=0.2):
                pytest.fail("no item can finish")

    with pytest.raises(Interrupted):
        asyncio.run(main())
    assert releases.seen == [0], f"released with {releases.seen} task(s) still unwinding"
