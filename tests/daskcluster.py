"""A real Dask cluster for the tests, and the driver script that runs ``job.map`` on it or on processes.

:class:`DaskCluster` starts a scheduler and N workers as separate processes on 127.0.0.1
(``python -m distributed.cli.dask_scheduler`` / ``dask_worker``, port 0, no dashboard,
``--no-nanny`` so a killed worker stays dead, memory limits off), each in a session of
its own, with its log in a file under the test's directory. It waits until every worker
has registered, and gives the kill helpers the tests need: :meth:`~DaskCluster.kill_worker`,
:meth:`~DaskCluster.kill_scheduler`, :meth:`~DaskCluster.stop`. :class:`Clusters` (the
``dask_clusters`` fixture of the test modules) starts as many clusters as a test asks for
and kills every process group it started at the end, on failure too, then checks that
none is left.

:data:`DRIVER` is the job under test, run as a real process (``procs.Worker``). It maps
``work`` over ``range(n)`` with ``executor="processes"`` or a ``distributed.Client``,
and appends one line per event to the *events log* (``O_APPEND``, one ``write(2)`` per
line, so a line survives a SIGKILL the moment it is written and lines of concurrent
writers never interleave):

``s I G P``   item I started in ``fn``, called by driver generation G, in process P
``d I G P``   item I finished in ``fn`` (G, P as above)
``c I G``     the result of item I reached driver G's loop body
``= G``       written by the test just before it lets driver G go (a segment marker)
``= kill``    written by the test right after it killed something

An item's *attempts* are its ``s`` lines; the test tells a redo (the same item started
again) from its first run by the generation and the process. Generations are numbered
by the test: a driver knows its own from its config, and ``fn`` carries it to the worker
(cloudpickle ships ``work`` by value with its globals; a process pool's children import
the script as ``__mp_main__`` with the same ``sys.argv``).
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from ci_env import unavailable
from procs import Worker, clean_env

#: Dask settings for every process of a test cluster and for the drivers: short connect
#: timeouts so a lost scheduler is noticed in seconds, not the default 30 s.
DASK_ENV = {
    "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s",
    "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
    "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "info",
}


def require_distributed() -> None:
    """Skip (fail with ``CI=true``) when ``distributed`` is not installed."""
    if importlib.util.find_spec("distributed") is None:
        unavailable("dask.distributed is not installed (pip install 'restartable[dask]')")


def dask_env(**extra: str) -> dict[str, str]:
    """The test's clean environment (no ``RESTARTABLE_*``) with :data:`DASK_ENV` and ``extra``."""
    return clean_env(**DASK_ENV, **extra)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """The pids of every live process below ``pid`` (children, their children...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    """Wait until none of ``pids`` is alive; return those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in pids if alive(p)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@dataclass
class Member:
    """One process of a cluster: the scheduler or a worker, its log file, its address."""

    role: str
    proc: subprocess.Popen[bytes]
    log: Path
    address: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process's whole group (its session: nothing it started survives) and reap it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait for a line of this process's log matching ``pattern``; fail with the log if it ends first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            m = rx.search(text)
            if m:
                return m
            if not self.running() or time.monotonic() > deadline:
                why = f"exited {self.proc.returncode}" if not self.running() else f"no match after {timeout}s"
                raise AssertionError(f"dask {self.role} (pid {self.pid}) {why} waiting for {pattern!r}; log:\n{text}")
            time.sleep(0.02)


@dataclass
class DaskCluster:
    """A scheduler and ``workers`` single-process workers on 127.0.0.1, started by :meth:`start`."""

    directory: Path
    workers: int = 2
    nthreads: int = 1
    #: Workers under a nanny, which restarts a worker process that dies (default: none, a killed worker stays dead).
    nanny: bool = False
    #: Extra environment (Dask settings: ``DASK_DISTRIBUTED__...``) for every process of the cluster.
    env: dict[str, str] = field(default_factory=dict)
    scheduler: Member | None = None
    members: list[Member] = field(default_factory=list)
    killed: list[Member] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The scheduler's address, ``tcp://127.0.0.1:PORT``."""
        assert self.scheduler is not None, "the cluster is not started"
        return self.scheduler.address

    @property
    def worker_members(self) -> list[Member]:
        """The workers started, in order (killed ones included)."""
        return [m for m in self.members if m.role.startswith("worker")]

    def _spawn(self, role: str, args: list[str]) -> Member:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / f"{role}.log"
        with open(log, "ab") as out:
            # A session of its own: the kill helpers and the cleanup kill the whole group, never a
            # process we did not start.
            proc = subprocess.Popen(
                [sys.executable, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dask_env(**self.env),
                cwd=self.directory,
                start_new_session=True,
            )
        member = Member(role, proc, log)
        self.members.append(member)
        return member

    def start(self, *, timeout: float = 60.0) -> Self:
        """Start the scheduler, then the workers; return once every worker has registered."""
        self.scheduler = self._spawn(
            "scheduler",
            ["-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
        )
        self.scheduler.address = self.scheduler.wait_line(r"Scheduler at:\s+(tcp://\S+)", timeout).group(1)
        for _ in range(self.workers):
            self.add_worker()
        for w in self.worker_members:
            w.address = w.wait_line(r"Start worker at:\s+(tcp://\S+)", timeout).group(1)
            w.wait_line(r"Registered to:", timeout)
        return self

    def add_worker(self) -> Member:
        """Start one more worker (it registers in the background: see :meth:`start`)."""
        n = len(self.worker_members)
        return self._spawn(
            f"worker{n}",
            [
                "-m",
                "distributed.cli.dask_worker",
                self.address,
                "--host",
                "127.0.0.1",
                "--nthreads",
                str(self.nthreads),
                "--nworkers",
                "1",
                "--nanny" if self.nanny else "--no-nanny",  # without one a SIGKILLed worker stays dead: a lost node
                "--no-dashboard",
                "--memory-limit",
                "0",
                "--death-timeout",
                "15",  # a worker whose scheduler is gone exits on its own (we kill it anyway)
                "--local-directory",
                str(self.directory / f"scratch{n}"),
                "--name",
                f"w{n}",
            ],
        )

    def kill_worker(self, index: int = 0) -> Member:
        """SIGKILL worker ``index`` (no nanny: it stays dead) and return it."""
        member = self.worker_members[index]
        member.kill()
        self.killed.append(member)
        return member

    def kill_scheduler(self) -> Member:
        """SIGKILL the scheduler; the workers stay up (they exit after ``--death-timeout``)."""
        assert self.scheduler is not None
        self.scheduler.kill()
        self.killed.append(self.scheduler)
        return self.scheduler

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.worker_members]

    def stop(self) -> None:
        """Kill every process of this cluster (workers first) and reap them."""
        for member in reversed(self.members):
            member.kill()


@dataclass
class Clusters:
    """The clusters one test started; :meth:`close` kills them all and checks that none survived."""

    directory: Path
    started: list[DaskCluster] = field(default_factory=list)

    def __call__(self, *, workers: int = 2, nthreads: int = 1, nanny: bool = False, **env: str) -> DaskCluster:
        directory = self.directory / f"cluster{len(self.started)}"
        cluster = DaskCluster(directory, workers=workers, nthreads=nthreads, nanny=nanny, env=env)
        self.started.append(cluster)
        return cluster.start()

    def close(self) -> None:
        pids = set()
        for cluster in self.started:
            pids |= {m.pid for m in cluster.members}
            cluster.stop()
        left = wait_gone(pids, timeout=5)
        assert not left, f"dask processes still alive after the test: {sorted(left)}"

    def __enter__(self) -> Self:
        require_distributed()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the driver ------------------------------------------------------------------------

DRIVER = r"""
import json, os, sys, time

cfg = json.loads(sys.argv[1])
LOG, GEN, SLEEP = cfg["log"], cfg["gen"], cfg["sleep"]


def note(line):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def work(i):
    me = os.getpid()
    note(f"s {i} {GEN} {me}")
    if i == cfg.get("poison"):
        os.kill(me, 9)  # this item kills the process that runs it, every time
    time.sleep(SLEEP)
    note(f"d {i} {GEN} {me}")
    return i


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(executor):
    from restartable import Job

    opts = {"workers": cfg["workers"], "every": cfg["every"], "attempts": cfg.get("attempts", 1)}
    for opt in ("backoff", "on_error"):
        if cfg.get(opt) is not None:
            opts[opt] = cfg[opt]
    with Job("exec", run=cfg["run"], store=cfg["store"], progress=False, lease_seconds=60) as job:
        say(f"started pid={os.getpid()} done={job.record.done} status={job.record.status}")
        for i in job.map(work, range(cfg["n"]), executor=executor, **opts):
            note(f"c {i} {GEN}")
        say("finished")


if __name__ == "__main__":
    import restartable

    client = None
    if cfg["executor"] == "dask":
        from distributed import Client

        # Connected before "ready": a standby driver is warm when the test lets it go.
        client = Client(cfg["address"], timeout=10, set_as_default=False)
        executor = client
    else:
        executor = cfg["executor"]
    say("ready")
    if sys.stdin.readline().strip() != "go":
        sys.exit(3)
    try:
        restartable.entrypoint(main)(executor)
    finally:
        if client is not None:
            try:
                client.close(timeout=2)
            except BaseException:
                pass
"""


def write_driver(directory: Path) -> Path:
    """Write :data:`DRIVER` into ``directory`` and return its path."""
    path = directory / "driver.py"
    path.write_text(DRIVER)
    return path


@dataclass(frozen=True)
class Event:
    """One line of the events log; ``kind`` is ``s``, ``d``, ``c`` or ``=`` (a marker)."""

    seq: int
    kind: str
    item: int = -1
    gen: int = -1
    pid: int = 0
    label: str = ""


def read_events(log: Path) -> list[Event]:
    """Every line of the events log, in order (``seq`` is the line number)."""
    events: list[Event] = []
    if not log.exists():
        return events
    for seq, line in enumerate(log.read_text().splitlines()):
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "=":
            events.append(Event(seq, "=", label=" ".join(parts[1:])))
        elif parts[0] in ("s", "d"):
            events.append(Event(seq, parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
        elif parts[0] == "c":
            events.append(Event(seq, "c", int(parts[1]), int(parts[2])))
    return events


def mark(log: Path, label: object) -> int:
    """Append a ``= label`` marker line."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"= {label}\n".encode())
    finally:
        os.close(fd)
    return 0


def marker_seq(events: list[Event], label: object) -> int:
    """The line number of the (first) ``= label`` marker."""
    for e in events:
        if e.kind == "=" and e.label == str(label):
            return e.seq
    raise AssertionError(f"no marker {label!r} in the events log")


def collected(events: list[Event], gen: int | None = None) -> list[int]:
    """The items whose results reached a driver's loop (of generation ``gen``, or any)."""
    return [e.item for e in events if e.kind == "c" and (gen is None or e.gen == gen)]


def wait_collected(log: Path, count: int, gen: int, timeout: float = 30.0) -> None:
    """Wait until driver ``gen`` collected at least ``count`` results."""
    deadline = time.monotonic() + timeout
    while len(collected(read_events(log), gen)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"driver {gen} collected fewer than {count} results after {timeout}s")
        time.sleep(0.01)


# -- driver kills ----------------------------------------------------------------------


def kill_seed() -> int:
    """The seed of the kill moments: ``$RESTARTABLE_TORTURE_SEED``, or a fresh one (printed by the tests)."""
    env = os.environ.get("RESTARTABLE_TORTURE_SEED")
    return int(env) if env else random.randrange(1 << 30)


@dataclass
class KillReport:
    """What :func:`kill_drivers` saw, for the test's printout and its assertions."""

    seed: int
    kills: int = 0
    campaigns: int = 0
    worst_redo: int = 0
    redone: int = 0
    #: Items of a killed driver still running on the executor after the next driver started.
    late: int = 0
    #: Of those, items the next driver had started again while the killed driver's run went on.
    doubled: int = 0
    #: Results each killed driver's loop received before its kill (0: killed while starting).
    progress: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"seed {self.seed}: {self.kills} driver kills in {self.campaigns} run(s); worst redo per kill "
            f"{self.worst_redo}, {self.redone} redone in all; {self.late} items of a killed driver still running "
            f"after the next one started, {self.doubled} of them started again by it meanwhile; results "
            f"per killed driver {sorted(self.progress)}"
        )


def kill_drivers(
    spawn: Callable[..., Worker],
    cfg: dict[str, Any],
    *,
    directory: Path,
    kills: int,
    seed: int,
    delay: tuple[float, float] = (0.05, 0.6),
) -> KillReport:
    """SIGKILL drivers at ``kills`` random moments (seeded) and check every kill; return the figures.

    ``cfg`` is the driver config without ``run``, ``log`` and ``gen`` (this fills them in);
    ``cfg["store"]`` is read after each kill. A campaign is one run: drivers are started
    one after the other (the next one imported and connected while the current one works:
    a *standby*) and the current one is killed ``delay`` seconds after it was let go, until
    a driver completes the run. After every kill:

    * the checkpoint is readable and claims only items ``fn`` finished: nothing is lost;
    * the processes the driver had started (its pool) are gone within 10 s (checked before
      the driver's pipes are read to their end: a survivor holding them would hang the test);

    and once the run completed, for every kill:

    * no later driver started an item the checkpoint at that kill held;
    * the items the killed driver's ``fn`` finished but the checkpoint did not hold (its
      redo) are at most ``workers + every``;

    and every item of ``range(n)`` was collected, the run is complete with ``done == n``.
    """
    from restartable._checkpoint import COMPLETED, RUNNING
    from restartable._concurrency.window import DoneSet
    from restartable.stores import open_store

    n, bound = cfg["n"], cfg["workers"] + cfg["every"]
    rng = random.Random(seed)
    report = KillReport(seed)
    env = dask_env()

    def record(run: str) -> Any:
        with open_store(cfg["store"]) as store:
            return store.load("exec", run)

    def done_set(rec: Any) -> set[int]:
        if rec is None:
            return set()
        pos = rec.positions.get("0", {})
        d = DoneSet.decode(int(pos.get("offset", 0)), pos.get("done"), where="test")
        return set(range(d.low)) | d.above

    gen = 0
    while report.kills < kills:
        report.campaigns += 1
        run, log = f"k{report.campaigns}", directory / f"events-{report.campaigns}.log"

        def driver(g: int, run: str = run, log: Path = log) -> Worker:
            return spawn({**cfg, "run": run, "log": str(log), "gen": g}, env=env)

        at_kill: dict[int, set[int]] = {}  # generation killed -> the checkpoint's done set then
        standby: Worker | None = None
        while True:
            gen += 1
            w = standby or driver(gen)
            standby = None
            w.expect("ready", timeout=60)
            mark(log, gen)
            w.go()
            if report.kills >= kills:
                rc = w.finish(timeout=120)
                assert rc == 0, f"[{report}] driver {gen} exited {rc}; stderr:\n{w.stderr}"
                break
            standby = driver(gen + 1)
            time.sleep(rng.uniform(*delay))
            below = descendants(w.pid)
            w.signal(signal.SIGKILL)
            w.proc.wait(timeout=60)
            # Before anything reads the driver's pipes to their end: a survivor holding them would hang it.
            left = wait_gone(below, timeout=10)
            for pid in left:  # ours (started below our driver): killed so the test ends, then reported
                os.kill(pid, signal.SIGKILL)
            assert not left, f"[{report}] processes of killed driver {gen} still alive 10 s later: {sorted(left)}"
            rc = w.finish(timeout=60)
            if rc == 0:
                break  # it completed the run before the kill: the campaign is over
            assert rc == -signal.SIGKILL, f"[{report}] driver {gen} exited {rc}; stderr:\n{w.stderr}"
            report.kills += 1
            rec = record(run)
            assert rec is None or rec.status in (RUNNING, COMPLETED), rec
            done = done_set(rec)
            finished = {e.item for e in read_events(log) if e.kind == "d"}
            assert done <= finished, f"[{report}] run {run}: checkpoint claims unfinished {sorted(done - finished)}"
            at_kill[gen] = done
        if standby is not None:
            standby.stop()
        assert_no_traceback_of_ours(w.stderr)
        rec = record(run)
        assert rec is not None and rec.status == COMPLETED and rec.done == n, f"[{report}] {rec}"
        events = read_events(log)
        assert sorted(set(collected(events))) == list(range(n)), f"[{report}] run {run}: an item was never collected"
        for g, done in at_kill.items():
            again = {e.item for e in events if e.kind == "s" and e.gen > g} & done
            assert not again, f"[{report}] run {run}: items {sorted(again)} checkpointed at kill of {g} were redone"
            redo = {e.item for e in events if e.kind == "d" and e.gen == g} - done
            assert len(redo) <= bound, f"[{report}] kill of driver {g}: {len(redo)} redone > {bound}: {sorted(redo)}"
            report.progress.append(len(collected(events, g)))
            report.worst_redo = max(report.worst_redo, len(redo))
            report.redone += len(redo)
            # Tasks of the killed driver that outlived it: its lines after the next driver's marker.
            nxt = marker_seq(events, g + 1)
            late = {e.item for e in events if e.gen == g and e.kind in "sd" and e.seq > nxt}
            report.late += len(late)
            for i in late:
                ends = [e.seq for e in events if e.item == i and e.gen == g and e.kind == "d"]
                starts = [e.seq for e in events if e.item == i and e.gen == g + 1 and e.kind == "s"]
                if starts and (not ends or starts[0] < ends[-1]):
                    report.doubled += 1
    return report


def assert_no_traceback_of_ours(stderr: str) -> None:
    """No traceback through restartable or the driver script: Dask's own loggers may print theirs
    (``distributed.client`` logs its lost connections with a traceback), which the user configures."""
    for block in stderr.split("Traceback (most recent call last):")[1:]:
        frames = re.findall(r'File "([^"]+)"', block)
        ours = [f for f in frames if "/restartable/" in f or f.endswith("driver.py")]
        assert not ours, f"a traceback through {ours[0]} on stderr:\n{stderr}"
