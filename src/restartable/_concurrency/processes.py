"""Run a command once per file, N at a time: the process engine, beside the thread and asyncio ones.

``restartable each-file`` (:mod:`restartable.cli.each_file`) parses its arguments and
prints; this module runs the commands. It works on a :class:`~restartable._sources.files.FileSet`
of the run context (:mod:`restartable._run`): a file is done when its command exits 0,
then its output is renamed into place and its marker written (by the worker thread
that waited for it), while the main thread checkpoints. What it guarantees:

* placeholders ``{}``, ``{name}``, ``{stem}``, ``{out}`` are substituted once per
  argument (:func:`fill`); the command runs without a shell, stdin from /dev/null,
  in its own session and process group;
* ``{out}`` is a hidden temp file beside the final output, renamed (after an fsync)
  only when the command exits 0;
* failures are retried ``attempts`` times by the one retry policy
  (:mod:`restartable._retry`), then stop the run or are skipped within a budget;
* nothing a command started outlives the runner (the reaper, or ``PR_SET_PDEATHSIG``);
* on SIGTERM/SIGINT no new command starts, the signal is forwarded, running commands
  get ``grace`` seconds, and the lease is released only once every command ended.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Any

from .._retry import Backoff
from .._run import RunContext
from .._sources.files import Entry, FileSet, commit_output, stale_temps, temp_path_for
from ..errors import (  # CommandFailed re-exported here for compatibility
    CommandFailed,
    ControlSignal,
    Fenced,
    Interrupted,
    SkipBudgetExceeded,
    UsageError,
)

__all__ = ["CommandFailed", "DEFAULT_GRACE", "check_command", "fill", "remove_stale_temps", "run_commands"]

log = logging.getLogger("restartable")

DEFAULT_GRACE = 25.0
#: Use the reaper helper (see :class:`_Reaper`); False selects PR_SET_PDEATHSIG alone.
USE_REAPER = True
_PLACEHOLDER = re.compile(r"\{(|name|stem|out)\}")
_OK, _FAILED, _INTERRUPTED, _ERROR = "ok", "failed", "interrupted", "error"


# -- process handling -------------------------------------------------------------------------


def _make_preexec() -> Callable[[], None] | None:
    """The child's setup when no reaper runs: die with the runner (Linux ``PR_SET_PDEATHSIG``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        # PR_SET_PDEATHSIG = 1. The signal fires when the *thread* that forked us ends:
        # each worker thread waits for its command, so that is when the runner dies.
        prctl(1, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the runner died before prctl ran
            os.kill(os.getpid(), signal.SIGKILL)

    return die_with_parent


#: The environment variable (a prefix, then the runner's random token) set in every
#: command's environment: its children inherit it, so the reaper finds every process the
#: commands started, whatever group or session they moved to.
TOKEN_PREFIX = "RESTARTABLE_EACH_FILE_"

#: The reaper: reads "+PGID" / "-PGID" lines from the runner on stdin; when stdin ends
#: (the runner exited or was killed: the kernel closes its end of the pipe), SIGKILLs
#: every process group still registered, then every process whose environment carries
#: the runner's token (argv[1]): a command started just before the runner died (not yet
#: registered), a script's background child left behind after the script exited, a child
#: that left the group (setsid). Ignores SIGINT/SIGTERM: only the pipe ends it.
_REAPER = r"""
import os, signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
needle = b"\0" + sys.argv[1].encode() + b"="
groups, buf = set(), b""
os.write(1, b"ready\n")
os.close(1)
while True:
    try:
        data = os.read(0, 65536)
    except InterruptedError:
        continue
    if not data:
        break
    buf += data
    *lines, buf = buf.split(b"\n")
    for line in lines:
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
for pgid in groups:
    if pgid <= 1:
        continue
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass

def marked():
    me, found = os.getpid(), []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) in (me, 1):
            continue
        try:
            with open("/proc/" + entry + "/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in b"\0" + env:
            found.append(int(entry))
    return found

# Again until none is left: a process may fork between the scan and its kill (its child
# inherits the token). A killed process's environ reads empty, so it is not found twice.
for _ in range(100):
    pids = marked()
    if not pids:
        break
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


class _Reaper:
    """A helper process that kills the commands' process groups when the runner dies.

    Why not ``PR_SET_PDEATHSIG`` in a ``preexec_fn``: a ``preexec_fn`` makes Python
    ``fork()`` its whole address space instead of ``vfork()``-ing (about 5 ms per file
    here, more than the bash loop's whole per-file cost), and the death signal only
    reaches the command's main process, not the children of a script. The reaper
    costs two pipe writes per file and kills whole groups. It runs in its own
    session, so a signal to the runner's process group does not reach it; it exits
    when its stdin (our pipe) ends. If it cannot be started, or dies, the runner
    falls back to ``PR_SET_PDEATHSIG``.
    """

    def __init__(self, token_var: str) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.fd: int | None = None
        if not USE_REAPER:
            return
        # Without any runner's token (ours, or an outer each-file's): the reaper must not
        # find itself, nor be killed by an outer reaper before it has done its work.
        env = {k: v for k, v in os.environ.items() if not k.startswith(TOKEN_PREFIX)}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _REAPER, token_var],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
                env=env,
            )
            assert self.proc.stdin is not None and self.proc.stdout is not None
            with self.proc.stdout:
                ready = self.proc.stdout.readline()  # it is listening (or it died: EOF)
            if ready != b"ready\n":
                raise OSError(f"it exited with status {self.proc.wait()}")
            self.fd = self.proc.stdin.fileno()
        except OSError as exc:
            log.warning("each-file: cannot start the reaper (%s): falling back to PR_SET_PDEATHSIG", exc)
            self.close()

    @property
    def alive(self) -> bool:
        return self.fd is not None

    def _send(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, line.encode())  # < PIPE_BUF: atomic between threads
        except OSError as exc:
            log.warning("each-file: the reaper is gone (%s): falling back to PR_SET_PDEATHSIG", exc)
            self.fd = None

    def add(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def remove(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.stdin is not None:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
            self.fd = None
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def fill(args: Sequence[str], values: dict[str, str]) -> list[str]:
    """Substitute ``{}``, ``{name}``, ``{stem}``, ``{out}`` in each argument (other braces untouched)."""
    return [_PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), a) for a in args]


def _values(entry: Entry) -> dict[str, str]:
    name = os.path.basename(entry.path)
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return {"": entry.path, "name": name, "stem": stem}


def _describe_rc(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


class _Task:
    __slots__ = ("attempt", "detail", "entry", "error", "freed", "out", "outcome", "st")

    def __init__(self, entry: Entry, st: os.stat_result, out: str | None) -> None:
        self.entry = entry
        self.st = st
        self.out = out
        self.attempt = 0
        self.outcome = _ERROR
        self.detail = ""
        self.error: BaseException | None = None
        self.freed = False  # its command exited 0; the output rename and the marker are under way


class _Runner:
    """Drives the commands: worker threads run them and write markers; the main thread saves."""

    def __init__(
        self,
        job: RunContext,
        fs: FileSet,
        command: list[str],
        *,
        output: str | None,
        jobs: int,
        attempts: int,
        backoff: float,
        on_error: str,
        grace: float,
    ) -> None:
        self.job, self.fs, self.command, self.output = job, fs, command, output
        self.jobs, self.attempts, self.backoff, self.on_error, self.grace = jobs, attempts, backoff, on_error, grace
        self.prefix = jobs > 1
        self.executable = _resolve(command[0])
        # Every command's environment carries this runner's token before it is even forked,
        # so the reaper finds it (and what it starts) with no window after Popen.
        token_var = f"{TOKEN_PREFIX}{os.getpid()}_{os.urandom(6).hex()}"
        self.env = {**os.environ, token_var: "1"}
        self.reaper = _Reaper(token_var)
        self.preexec = _make_preexec()
        #: ("free", task) when a command exited 0 (its slot is free while the worker renames the
        #: output and writes the marker), ("end", task) when the worker is done with the file.
        self.results: queue.Queue[tuple[str, _Task]] = queue.Queue()
        self.lock = threading.Lock()  # guards procs and forwarded
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.forwarded: int | None = None
        self.stopping = threading.Event()
        self.print_lock = threading.Lock()
        self.done_now = 0
        self.made: set[str] = set()  # output directories known to exist

    # -- worker threads --------------------------------------------------------------------------

    def work(self, task: _Task) -> None:
        try:
            task.outcome = self._attempts(task)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            task.outcome, task.error = _ERROR, exc
        finally:
            self.results.put(("end", task))

    def _attempts(self, task: _Task) -> str:
        values = _values(task.entry)
        for attempt in range(1, self.attempts + 1):
            task.attempt = attempt
            if attempt > 1:
                delay = Backoff(self.backoff).delay(attempt - 1)
                log.warning(
                    "%s: %s failed (%s, attempt %d of %d); retrying in %.3gs",
                    self.fs.describe,
                    task.entry.path,
                    task.detail,
                    attempt - 1,
                    self.attempts,
                    delay,
                )
                if self.stopping.wait(delay):
                    return _INTERRUPTED
            tmp = temp_path_for(task.out) if task.out is not None else None
            argv = fill(self.command, {**values, "out": tmp or ""})
            rc = self._spawn(argv, os.path.basename(task.entry.path))
            if rc == 0:
                if tmp is not None and not os.path.lexists(tmp):
                    task.detail = f"exit status 0 but nothing written to {{out}} ({tmp})"
                    continue
                # The next file may start now: the fsyncs of the rename and of the marker
                # overlap with its command instead of adding to every file's time.
                task.freed = True
                self.results.put(("free", task))
                if tmp is not None and task.out is not None:
                    commit_output(tmp, task.out)
                self.fs.mark(task.entry, task.st)
                return _OK
            if tmp is not None:
                _unlink(tmp)
            task.detail = _describe_rc(rc)
            if self.stopping.is_set():
                return _INTERRUPTED  # stopped by the forwarded signal: not a failure of the file
        return _FAILED

    def _spawn(self, argv: list[str], name: str) -> int:
        pipe = subprocess.PIPE if self.prefix else None
        reaper = self.reaper
        try:
            # Without a preexec_fn Python vfork()s: the fast path (see _Reaper).
            proc = subprocess.Popen(
                argv,
                executable=self.executable,
                stdin=subprocess.DEVNULL,
                stdout=pipe,
                stderr=pipe,
                close_fds=True,
                start_new_session=True,
                env=self.env,
                # Only the fallback path has one (it calls nothing but prctl).
                preexec_fn=None if reaper.alive else self.preexec,
            )
        except OSError as exc:
            raise UsageError(
                f"cannot run the command {argv[0]!r}: {exc.strerror or exc}; check the command after "
                "`--` (a path to an executable, or a name on $PATH)"
            ) from exc
        reaper.add(proc.pid)
        with self.lock:
            self.procs[proc.pid] = proc
            if self.forwarded is not None:  # launched just as the signal was being forwarded
                _killpg(proc, self.forwarded)
        try:
            if pipe is not None:
                tag = f"[{name}] ".encode()
                err = threading.Thread(target=self._pump, args=(proc.stderr, tag, sys.stderr), daemon=True)
                err.start()
                self._pump(proc.stdout, tag, sys.stdout)
                err.join()
            return proc.wait()
        finally:
            with self.lock:
                self.procs.pop(proc.pid, None)
            reaper.remove(proc.pid)

    def _pump(self, stream: IO[bytes] | None, tag: bytes, out: Any) -> None:
        assert stream is not None
        target = getattr(out, "buffer", None)
        with stream:
            for line in stream:
                if not line.endswith(b"\n"):
                    line += b"\n"
                with self.print_lock:
                    if target is not None:
                        target.write(tag + line)
                        target.flush()
                    else:
                        out.write((tag + line).decode(errors="replace"))
                        out.flush()

    def _make_dir(self, directory: str) -> None:
        if directory in self.made:
            return
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create the output directory {directory} ({exc.strerror}): fix -o/--output or the permissions"
            ) from exc
        self.made.add(directory)

    # -- signalling the commands -------------------------------------------------------------------

    def forward(self, signum: int) -> None:
        """Stop retries and pass ``signum`` to every running command's process group."""
        self.stopping.set()
        with self.lock:
            self.forwarded = signum
            for proc in self.procs.values():
                _killpg(proc, signum)

    def kill_all(self) -> None:
        self.stopping.set()
        with self.lock:
            self.forwarded = signal.SIGKILL
            for proc in self.procs.values():
                _killpg(proc, signal.SIGKILL)

    # -- the main thread ------------------------------------------------------------------------------

    def settle(self, task: _Task) -> BaseException | None:
        """Account for a finished task; return the error that must stop the run, if any."""
        fs = self.fs
        if task.outcome == _OK:
            fs.count_done(task.entry)
            self.done_now += 1
            return None
        if task.outcome == _INTERRUPTED:
            return None
        if task.outcome == _ERROR:
            return task.error
        what = f"{self.command[0]} failed on {task.entry.path} ({task.detail}) after {task.attempt} attempt(s)"
        if self.on_error == "stop":
            log.error("%s: %s", fs.describe, what)
            return CommandFailed(
                f"{fs.describe}: {what}; it is not marked done: fix it and rerun (the done files "
                "are skipped), or pass --on-error skip"
            )
        try:
            fs.record_failure(task.entry, task.detail)
        except SkipBudgetExceeded as exc:
            return exc
        return None

    def run(self, hooks: Any) -> None:
        fs, job, cursor = self.fs, self.job, self.fs.cursor
        pending = deque(fs.pending)
        running = 0  # commands running
        active = 0  # worker threads alive (a command, or renaming and marking after it)
        stop: BaseException | None = None
        interrupted: Interrupted | None = None
        deadline: float | None = None
        killed = False
        try:
            hooks.boundary(cursor, False)
            while True:
                signum = job.signal
                if (signum is not None or interrupted is not None) and deadline is None:
                    signum = signum or interrupted.signum  # type: ignore[union-attr]
                    if running:
                        log.warning(
                            "%s: %s: launching no more files; forwarded to %d running command(s), waiting up to %gs",
                            fs.describe,
                            signal.Signals(signum).name,
                            running,
                            self.grace,
                        )
                    self.forward(signum)
                    deadline = time.monotonic() + self.grace
                if deadline is not None and not killed and running and time.monotonic() >= deadline:
                    log.warning(
                        "%s: %d command(s) still running after %gs: killing them (their files are not done)",
                        fs.describe,
                        running,
                        self.grace,
                    )
                    self.kill_all()
                    killed = True
                if deadline is None and stop is None:
                    while pending and running < self.jobs and active < 2 * self.jobs:
                        entry = pending.popleft()
                        st = fs.stat(entry)
                        if st is None:
                            continue
                        out = fill([self.output], _values(entry))[0] if self.output else None
                        if out is not None:
                            self._make_dir(os.path.dirname(out) or ".")
                        task = _Task(entry, st, out)
                        threading.Thread(
                            target=self.work, args=(task,), daemon=True, name=f"each-file-{entry.key}"
                        ).start()
                        running += 1
                        active += 1
                if not active:
                    break
                try:
                    kind, task = self.results.get(timeout=0.1)
                except queue.Empty:
                    continue
                if kind == "free":
                    running -= 1
                    continue
                active -= 1
                if not task.freed:
                    running -= 1
                err = self.settle(task)
                if err is not None and stop is None:
                    stop = err
                    if isinstance(err, ControlSignal):  # fenced: a newer runner owns the run, stop writing now
                        self.kill_all()
                        killed = True
                if job.signal is None and interrupted is None and stop is None:
                    try:
                        hooks.boundary(cursor, False)
                    except Interrupted as exc:  # a signal arrived between our check and the boundary's
                        interrupted = exc
                    except Fenced as exc:
                        stop = exc
                        self.kill_all()
                        killed = True
        except BaseException:
            self.kill_all()  # never leave a writer behind on an unexpected error...
            self._await_workers(active)  # ...nor one still running when the job releases the lease
            raise
        if stop is not None:
            raise stop
        if interrupted is not None:
            raise interrupted
        if job.signal is not None:
            # Every command has ended (``active`` is 0): only now may the lease be released.
            hooks.stop_after_save = True
            hooks.boundary(cursor, False)  # checkpoints, releases the lease and raises Interrupted
        hooks.end(cursor)

    def _await_workers(self, active: int, timeout: float = 10.0) -> None:
        """Wait (bounded) for ``active`` worker threads to end after :meth:`kill_all`.

        Their commands got SIGKILL, so this takes milliseconds; what remains of a worker
        after that is a rename and a marker, fenced by the epoch.
        """
        deadline = time.monotonic() + timeout
        while active > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "%s: %d worker(s) still busy %gs after their commands were killed",
                    self.fs.describe,
                    active,
                    timeout,
                )
                return
            try:
                kind, _ = self.results.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            if kind == "end":
                active -= 1


def _resolve(program: str) -> str | None:
    """The command's path, looked up on $PATH once (as bash's hash table does), not once per file."""
    if os.sep in program or _PLACEHOLDER.search(program):
        return None
    found = shutil.which(program)
    if found is None:
        raise UsageError(
            f"the command {program!r} is not found on $PATH; give its path (./{program} for one in "
            "the current directory)"
        )
    return found


def _killpg(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signum)  # the command leads its own group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_stale_temps(fs: FileSet, output: str) -> None:
    """Remove the hidden temp outputs a killed run left beside the outputs still to do."""
    by_dir: dict[str, set[str]] = {}
    for entry in fs.pending:
        out = fill([output], _values(entry))[0]
        by_dir.setdefault(os.path.dirname(out) or ".", set()).add(os.path.basename(out))
    for directory, names in by_dir.items():
        for path in stale_temps(directory, names):
            _unlink(path)


def check_command(command: Sequence[str], output: str | None) -> None:
    if not command:
        raise UsageError("each-file needs a command after `--`, e.g. `-- ./process-file.sh {} out/{name}`")
    uses = {m.group(1) for a in command for m in _PLACEHOLDER.finditer(a)}
    if output is not None:
        if "out" not in uses:
            raise UsageError("with -o/--output the command must write to {out} (the temp file renamed to the output)")
        if not _PLACEHOLDER.search(output) or "{out}" in output:
            raise UsageError(
                f"the output template {output!r} must contain {{name}}, {{stem}} or {{}} so that each "
                "file gets its own output"
            )
    elif "out" in uses:
        raise UsageError("{out} needs -o/--output TEMPLATE (the final path the temp file is renamed to)")


def run_commands(
    ctx: RunContext,
    fs: FileSet,
    command: list[str],
    *,
    output: str | None,
    jobs: int,
    attempts: int,
    backoff: float,
    on_error: str,
    grace: float,
    progress: bool | None,
) -> int:
    """Run ``command`` for every pending file of ``fs``, ``jobs`` at a time; return the files done now.

    Returns when every file is done or skipped; raises CommandFailed (``on_error="stop"``),
    SkipBudgetExceeded, Fenced or Interrupted (after the running commands ended, or were
    killed after ``grace`` seconds, and the checkpoint was saved).
    """
    runner = _Runner(
        ctx, fs, command, output=output, jobs=jobs, attempts=attempts, backoff=backoff, on_error=on_error, grace=grace
    )
    hooks = ctx.loop_hooks(seconds=5.0, progress=progress)
    # A signal is acted on by the runner: it forwards it and waits for the running commands
    # before the lease is released (never at a checkpoint boundary while they still run).
    hooks.stop_after_save = False
    try:
        runner.run(hooks)
    finally:
        hooks.close(fs.cursor)
        runner.reaper.close()
    return runner.done_now
