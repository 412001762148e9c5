"""Helpers for the process-level tests: a tiny job script run in real subprocesses.

The script (:data:`WORKER`) is written to ``tmp_path`` and run with
``subprocess.Popen([sys.executable, script, CONFIG_JSON])``. It runs one
:class:`restartable.Job` over ``range(n)`` (or a list, or a generator) and appends
to an *items log*, opened with ``O_APPEND`` and written with one ``write(2)`` per
line, so every line survives a SIGKILL the moment it is written:

``b I``   item I was handed out (first line of the loop body)
``I``     item I was processed (last line of the loop body); the ground truth of
          what was done, an item may appear twice
``s K``   the K-th checkpoint of this process is about to be written
          (``job.on_checkpoint`` callback, called before each save)
``= L``   written by the test before it lets a worker go: a segment separator

On stdout the script prints ``ready`` (imported; with ``handshake`` it then waits
for ``go [JSON]`` on stdin, the JSON adding settings), ``started key=value ...`` once
the job holds its lease, ``holding`` while the save after a signal is held
(``hold_stopping``), ``in-save`` while the first periodic save is held
(``hold_save``), and ``finished yielded=N`` after its loop.

Settings (the JSON config): ``store``, ``job``, ``run`` (omitted: the Job's default),
``lease_seconds``, ``wait``, ``log``, ``n``, ``kind`` (range, list or gen), ``every``,
``seconds``, ``sleep`` (work per item), ``blob`` (size of a state string changed at
every checkpoint), ``entrypoint`` (default true), ``thread`` (run the job in a
non-main thread), ``handshake``, ``hold_stopping``, ``hold_save``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest

WORKER = r"""
import json, os, signal, sys, threading, time

cfg = json.loads(sys.argv[1])
job_started = threading.Event()

import restartable
from restartable import Job


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    fd = os.open(cfg["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def log(line):
        os.write(fd, (line + "\n").encode())

    kwargs = {"store": cfg["store"], "progress": False}
    for opt in ("run", "lease_seconds", "wait"):
        if opt in cfg:
            kwargs[opt] = cfg[opt]
    with Job(cfg.get("job", "crash"), **kwargs) as job:
        rec = job.record
        say(f"started pid={os.getpid()} run={job.run} epoch={job.epoch} resumed={job.resumed} "
            f"completed={job.completed} done={rec.done} status={rec.status}")
        job_started.set()
        saves = 0

        def before_save():
            nonlocal saves
            saves += 1
            log(f"s {saves}")
            if cfg.get("blob"):
                # A large state, changed at every checkpoint: most of a save is spent writing it.
                n = job.state.get("saves", 0) + 1
                job.state["saves"] = n
                job.state["blob"] = chr(97 + n % 26) * cfg["blob"]
            if job.stopping and cfg.get("hold_stopping"):
                say("holding")
                time.sleep(cfg["hold_stopping"])
            elif not job.stopping and cfg.get("hold_save") and saves == 1:
                say("in-save")  # the first periodic save is held, so a signal can land inside it
                time.sleep(cfg["hold_save"])

        job.on_checkpoint(before_save)
        n = cfg["n"]
        kind = cfg.get("kind", "range")
        items = range(n) if kind == "range" else list(range(n)) if kind == "list" else (i for i in range(n))
        work = cfg.get("sleep", 0.0)
        yielded = 0
        for i in job.iterate(items, every=cfg.get("every"), seconds=cfg.get("seconds")):
            log(f"b {i}")
            yielded += 1
            if work:
                time.sleep(work)
            log(str(i))
        say(f"finished yielded={yielded}")


if cfg.get("handshake"):
    say("ready")
    line = sys.stdin.readline().split(None, 1)
    if not line or line[0] != "go":
        sys.exit(3)
    if len(line) > 1:
        cfg.update(json.loads(line[1]))  # late settings: a standby worker serves any run

if cfg.get("thread"):
    # The job runs in a non-main thread: restartable installs no signal handlers there.
    outcome = {}

    def body():
        try:
            main()
        except BaseException as exc:
            outcome["exc"] = exc

    t = threading.Thread(target=body, name="job-thread")
    t.start()
    while t.is_alive() and not job_started.wait(0.01):
        pass
    say(f"handler={signal.getsignal(signal.SIGTERM)!r}")
    t.join()
    sys.exit(restartable.exit_code_for(outcome.get("exc")))
elif cfg.get("entrypoint", True):
    restartable.entrypoint(main)()
else:
    main()
"""


def write_worker(directory: Path) -> Path:
    """Write the worker script into ``directory`` and return its path."""
    path = directory / "worker.py"
    path.write_text(WORKER)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without RESTARTABLE_* or Kubernetes settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RESTARTABLE_") and k not in ("KUBERNETES_SERVICE_HOST", "POD_NAME", "POD_UID", "NODE_NAME")
    }
    env.update(extra)
    return env


class Worker:
    """One worker process: its stdout lines (read by a thread), its stderr, its exit code."""

    def __init__(self, script: Path, cfg: dict[str, Any], *, env: dict[str, str] | None = None) -> None:
        self.cfg = dict(cfg)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env if env is not None else clean_env(),
            cwd=script.parent,
        )
        self.pid = self.proc.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump_out, daemon=True),
            threading.Thread(target=self._pump_err, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def expect(self, prefix: str, timeout: float = 20.0) -> str:
        """Wait for a stdout line starting with ``prefix``; fail with stderr if the worker ends first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"worker {self.pid}: no {prefix!r} line after {timeout}s; "
                    f"stdout {self.seen}, stderr:\n{self.stderr}"
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)  # keep the end marker for later calls
                rc = self.proc.wait()
                time.sleep(0.05)  # let the stderr reader catch up
                raise AssertionError(
                    f"worker {self.pid} exited {rc} before printing {prefix!r}; "
                    f"stdout {self.seen}, stderr:\n{self.stderr}"
                )
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def started(self, timeout: float = 20.0) -> dict[str, str]:
        """Wait for the ``started`` line and return its ``key=value`` fields."""
        return fields(self.expect("started", timeout))

    def go(self, **late: Any) -> None:
        """Let a ``handshake`` worker enter its job, with ``late`` settings added to its config."""
        assert self.proc.stdin is not None
        self.cfg.update(late)
        self.proc.stdin.write(f"go {json.dumps(late)}\n" if late else "go\n")
        self.proc.stdin.flush()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the exit and the readers; return the exit code (negative: killed by a signal)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker {self.pid} still running after {timeout}s; stderr:\n{self.stderr}") from None
        for t in self._readers:
            t.join(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        while True:  # drain the stdout lines nobody waited for into `seen`
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self.lines.put(None)
                break
            self.seen.append(line)
        return rc

    def stop(self) -> None:
        """Kill this worker if it still runs (cleanup after a failed test)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def fields(line: str) -> dict[str, str]:
    """``"started a=1 b=x"`` -> ``{"a": "1", "b": "x"}``."""
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


@dataclass
class Spawner:
    """Starts workers of one script; as a context manager, kills any still running at exit.

    Each test module turns it into its ``spawn`` fixture::

        @pytest.fixture
        def spawn(tmp_path):
            with Spawner(write_worker(tmp_path)) as s:
                yield s
    """

    script: Path
    workers: list[Worker] = field(default_factory=list)

    def __call__(self, cfg: dict[str, Any], *, env: dict[str, str] | None = None) -> Worker:
        w = Worker(self.script, cfg, env=env)
        self.workers.append(w)
        return w

    def close(self) -> None:
        """Kill every worker still running."""
        for w in self.workers:
            w.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- stores --------------------------------------------------------------------------


def local_store_url(kind: str, tmp_path: Path) -> str:
    """A fresh sqlite or file store under ``tmp_path``; skip while the file store is not written yet."""
    module = {"sqlite": "restartable._sqlite.store"}.get(kind, f"restartable.stores.{kind}")
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"the {kind} store is not implemented yet ({module})")
    return f"sqlite:///{tmp_path}/ckpt.db" if kind == "sqlite" else f"file://{tmp_path}/ckpt"


def store_url_for(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of ``kind``: a local one under ``tmp_path``, a private memory one, or
    the shared PostgreSQL or Redis server's (their fixtures skip, or fail in CI, without one)."""
    if kind in ("sqlite", "file"):
        return local_store_url(kind, tmp_path)
    if kind == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return request.getfixturevalue("postgres_url" if kind == "postgresql" else "redis_url")


# -- the items log -----------------------------------------------------------------


def mark_segment(log: Path, label: object) -> None:
    """Append a segment separator: the lines after it belong to the next worker."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"= {label}\n".encode())
    finally:
        os.close(fd)


@dataclass
class Segment:
    """The log lines of one worker: ``events`` as ``(kind, number)``, kind in b/item/s."""

    label: str
    events: list[tuple[str, int]] = field(default_factory=list)

    @property
    def items(self) -> list[int]:
        """The items this worker processed, in order."""
        return [n for kind, n in self.events if kind == "item"]

    @property
    def begun(self) -> list[int]:
        return [n for kind, n in self.events if kind == "b"]

    @property
    def last(self) -> str | None:
        """The kind of the last event (``b``, ``item``, ``s``), or None when empty."""
        return self.events[-1][0] if self.events else None


def read_log(log: Path) -> list[Segment]:
    """The items log split into segments at the ``=`` separators."""
    segments: list[Segment] = []
    if not log.exists():
        return segments
    for line in log.read_text().splitlines():
        if not line:
            continue
        if line.startswith("= "):
            segments.append(Segment(line[2:]))
            continue
        if not segments:
            segments.append(Segment("(unmarked)"))
        if line.startswith("b "):
            segments[-1].events.append(("b", int(line[2:])))
        elif line.startswith("s "):
            segments[-1].events.append(("s", int(line[2:])))
        else:
            segments[-1].events.append(("item", int(line)))
    return segments


def items_done(log: Path) -> list[int]:
    """Every processed item in the log, in order (with repeats)."""
    return [i for seg in read_log(log) for i in seg.items]


def wait_items(log: Path, count: int, timeout: float = 20.0) -> list[int]:
    """Wait until the log's last segment holds at least ``count`` processed items; return them."""
    deadline = time.monotonic() + timeout
    while True:
        segs = read_log(log)
        done = segs[-1].items if segs else []
        if len(done) >= count:
            return done
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(done)} of {count} items in {log} after {timeout}s")
        time.sleep(0.005)
