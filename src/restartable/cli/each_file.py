"""``restartable each-file``: run a command once per input file, resumably, for any language.

::

    restartable each-file 'data/input/*.csv' -- ./process-file.sh {} data/output/{name}
    restartable each-file -j 4 -o 'out/{stem}.json' 'in/*.csv' -- convert {} {out}

It replaces the article's bash loop over ``*.done`` marker files, with the same
inputs and outputs, and the semantics of ``job.files``
(:mod:`restartable.sources.files`): files in sorted order, a marker per file in the
job's store written when its command exits 0, changed files processed again.

* Placeholders in the command: ``{}`` the input path, ``{name}`` its file name,
  ``{stem}`` the name without its extension, ``{out}`` the temp output path (with
  ``-o``); arguments are otherwise passed as they are. The command runs without a
  shell (use ``sh -c '...' _ {}`` for one), with stdin from /dev/null.
* ``-o TEMPLATE`` names the final output (``{}``, ``{name}``, ``{stem}``); the command
  writes ``{out}``, a hidden temp file beside it, renamed into place (after an fsync)
  only when the command exits 0, so a killed command never leaves a partial output
  under the final name.
* ``-j N`` runs N commands at once; each file is marked when its command finishes
  (its output rename and marker are written while the next command already runs,
  so their fsyncs add nothing to a file's time). With N > 1 each output line is
  prefixed with ``[file name]``.
* Failures: ``--attempts`` tries per file, ``--backoff`` seconds before the second,
  doubled after. Then ``--on-error stop`` (default, as the bash loop) launches
  nothing more, lets the running commands finish and exits 1; ``skip`` records the
  file (``restartable show`` lists it) and goes on, up to ``--skip-budget`` files
  (exit 65 beyond).
* Each command runs in its own session and process group, with
  ``RESTARTABLE_EACH_FILE_<token>=1`` in its environment. When the runner ends, killed
  with SIGKILL or not, a helper process (the reaper) SIGKILLs the commands' groups and
  then every process whose environment carries the token: a command started an instant
  before the runner died, a script's background child still running after the script
  exited, a child that moved to its own session. Nothing the commands started survives
  the runner to race its rerun (except a process that cleared its environment, as
  ``env -i`` does). Without the reaper (it could not start), a command gets SIGKILL when
  the runner dies (Linux ``PR_SET_PDEATHSIG``), its children do not.
* SIGTERM/SIGINT: no new file is launched, the signal is forwarded to the running
  commands' process groups, the runner waits up to ``--grace`` seconds (then
  SIGKILLs them), checkpoints and exits 143/130; a rerun does the rest.
* The job is named ``each-file-<8 hex>`` from the pattern, the command and the output
  template unless ``--job`` names it. A run that completed does nothing until
  ``restartable reset`` (or a new ``--run``); it says so, and how many files match
  that it did not do. For a directory that keeps receiving files, use ``--marker-dir``
  (markers that outlive the run's record) or a run id per batch.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
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

import click

from ..errors import (
    ControlSignal,
    Fenced,
    Interrupted,
    RestartableError,
    SkipBudgetExceeded,
    UsageError,
)
from ..job import Job
from ..sources.files import Entry, FileSet, commit_output, stale_temps, temp_path_for

__all__ = ["CommandFailed", "default_job_name", "each_file", "fill"]

log = logging.getLogger("restartable")

DEFAULT_GRACE = 25.0
#: Use the reaper helper (see :class:`_Reaper`); False selects PR_SET_PDEATHSIG alone.
USE_REAPER = True
_PLACEHOLDER = re.compile(r"\{(|name|stem|out)\}")
_OK, _FAILED, _INTERRUPTED, _ERROR = "ok", "failed", "interrupted", "error"


class CommandFailed(RestartableError):
    """A file's command failed on every attempt and ``--on-error stop`` is in force (exit 1)."""


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
            self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _REAPER, token_var],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         close_fds=True, start_new_session=True, env=env)
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


def default_job_name(pattern: str, command: Sequence[str], output: str | None) -> str:
    """``each-file-<8 hex>``: stable for the same pattern, command and output template."""
    digest = hashlib.sha256(json.dumps([pattern, list(command), output]).encode()).hexdigest()
    return f"each-file-{digest[:8]}"


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

    def __init__(self, job: Job, fs: FileSet, command: list[str], *, output: str | None, jobs: int, attempts: int,
                 backoff: float, on_error: str, grace: float) -> None:
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
                delay = self.backoff * 2 ** (attempt - 2)
                log.warning("%s: %s failed (%s, attempt %d of %d); retrying in %.3gs", self.fs.describe,
                            task.entry.path, task.detail, attempt - 1, self.attempts, delay)
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
            proc = subprocess.Popen(argv, executable=self.executable, stdin=subprocess.DEVNULL, stdout=pipe,
                                    stderr=pipe, close_fds=True, start_new_session=True, env=self.env,
                                    # Only the fallback path has one (it calls nothing but prctl).
                                    preexec_fn=None if reaper.alive else self.preexec)  # noqa: PLW1509
        except OSError as exc:
            raise UsageError(f"cannot run the command {argv[0]!r}: {exc.strerror or exc}; check the command after "
                             "`--` (a path to an executable, or a name on $PATH)") from exc
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
            raise UsageError(f"cannot create the output directory {directory} ({exc.strerror}): fix -o/--output or "
                             "the permissions") from exc
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
            return CommandFailed(f"{fs.describe}: {what}; it is not marked done: fix it and rerun (the done files "
                                 "are skipped), or pass --on-error skip")
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
                signum = job._signal
                if (signum is not None or interrupted is not None) and deadline is None:
                    signum = signum or interrupted.signum  # type: ignore[union-attr]
                    if running:
                        log.warning("%s: %s: launching no more files; forwarded to %d running command(s), waiting "
                                    "up to %gs", fs.describe, signal.Signals(signum).name, running, self.grace)
                    self.forward(signum)
                    deadline = time.monotonic() + self.grace
                if deadline is not None and not killed and running and time.monotonic() >= deadline:
                    log.warning("%s: %d command(s) still running after %gs: killing them (their files are not "
                                "done)", fs.describe, running, self.grace)
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
                        threading.Thread(target=self.work, args=(task,), daemon=True,
                                         name=f"each-file-{entry.key}").start()
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
                if job._signal is None and interrupted is None and stop is None:
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
        if job._signal is not None:
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
                log.warning("%s: %d worker(s) still busy %gs after their commands were killed", self.fs.describe,
                            active, timeout)
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
        raise UsageError(f"the command {program!r} is not found on $PATH; give its path (./{program} for one in "
                         "the current directory)")
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


def _remove_stale_temps(fs: FileSet, output: str) -> None:
    """Remove the hidden temp outputs a killed run left beside the outputs still to do."""
    by_dir: dict[str, set[str]] = {}
    for entry in fs.pending:
        out = fill([output], _values(entry))[0]
        by_dir.setdefault(os.path.dirname(out) or ".", set()).add(os.path.basename(out))
    for directory, names in by_dir.items():
        for path in stale_temps(directory, names):
            _unlink(path)


def _check_command(command: Sequence[str], output: str | None) -> None:
    if not command:
        raise UsageError("each-file needs a command after `--`, e.g. `-- ./process-file.sh {} out/{name}`")
    uses = {m.group(1) for a in command for m in _PLACEHOLDER.finditer(a)}
    if output is not None:
        if "out" not in uses:
            raise UsageError("with -o/--output the command must write to {out} (the temp file renamed to the output)")
        if not _PLACEHOLDER.search(output) or "{out}" in output:
            raise UsageError(f"the output template {output!r} must contain {{name}}, {{stem}} or {{}} so that each "
                             "file gets its own output")
    elif "out" in uses:
        raise UsageError("{out} needs -o/--output TEMPLATE (the final path the temp file is renamed to)")


@click.command("each-file", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("pattern")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--store", "store_url", envvar="RESTARTABLE_STORE", default=None, metavar="URL",
              help="Store URL (default: $RESTARTABLE_STORE, else sqlite:///.restartable/checkpoints.db).")
@click.option("--job", "job_name", default=None, help="Job name (default: each-file-<hash of pattern and command>).")
@click.option("--run", default=None, help="Run id (default: $RESTARTABLE_RUN, else 'default').")
@click.option("-j", "--jobs", default=1, show_default=True, type=click.IntRange(1, 1024),
              help="Files processed in parallel.")
@click.option("-o", "--output", default=None, metavar="TEMPLATE",
              help="Final output path, e.g. 'out/{name}'; the command writes {out}, renamed into place on success.")
@click.option("--attempts", default=1, show_default=True, type=click.IntRange(1), help="Tries per file.")
@click.option("--backoff", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Seconds before the second try, doubled after each.")
@click.option("--on-error", type=click.Choice(["stop", "skip"]), default="stop", show_default=True,
              help="After the last failed try: stop the run, or skip the file and go on.")
@click.option("--skip-budget", type=click.IntRange(0), default=None, help="Most files that may be skipped (exit 65 beyond).")
@click.option("--marker-dir", default=None, type=click.Path(file_okay=False),
              help="Also write (and honour) <dir>/<file>.done markers, as the bash loop does.")
@click.option("--no-recheck", is_flag=True, help="Do not process again a done file whose size or mtime changed.")
@click.option("--allow-empty", is_flag=True, help="Accept a pattern that matches no file.")
@click.option("--grace", default=DEFAULT_GRACE, show_default=True, type=click.FloatRange(0),
              help="On SIGTERM, seconds to wait for running commands before killing them.")
@click.option("--progress/--no-progress", default=False, show_default=True, help="Show a progress bar on stderr.")
def each_file(pattern: str, command: tuple[str, ...], store_url: str | None, job_name: str | None, run: str | None,
              jobs: int, output: str | None, attempts: int, backoff: float, on_error: str, skip_budget: int | None,
              marker_dir: str | None, no_recheck: bool, allow_empty: bool, grace: float, progress: bool) -> None:
    """Run a command once per file of PATTERN (a glob or a directory), resuming where it stopped.

    \b
    restartable each-file 'data/input/*.csv' -- ./process-file.sh {} data/output/{name}
    restartable each-file -j 4 -o 'out/{stem}.json' 'in/*.csv' -- convert {} {out}

    Placeholders: {} the input path, {name} its file name, {stem} without extension,
    {out} the temp output (with -o). A file is done when its command exits 0; a rerun
    skips done files and redoes changed ones. SIGTERM: no new launches, the signal is
    forwarded, running commands get --grace seconds, exit 143.
    """
    argv = list(command)
    _check_command(argv, output)
    if job_name is None:
        job_name = default_job_name(pattern, argv, output)
        click.echo(f"restartable: each-file job {job_name} (name it with --job)", err=True)
    settings = {"pattern": pattern, "command": argv, "output": output}
    with Job(job_name, run=run, store=store_url, progress=progress) as job:
        if job.completed:
            _report_completed(job, pattern, marker_dir, not no_recheck)
            return
        previous = job.state.get("each_file")
        if previous is not None and previous != settings:
            log.warning("%s was started with %s; continuing with %s (the done files stay done)", job.label,
                        previous, settings)
        job.state["each_file"] = settings
        fs = FileSet(job, pattern, name="files", recheck=not no_recheck, marker_dir=marker_dir,
                     allow_empty=allow_empty, skip_budget=skip_budget if on_error == "skip" else None,
                     label=f"{job.label} each-file {pattern!r}")
        if output is not None:
            _remove_stale_temps(fs, output)
        runner = _Runner(job, fs, argv, output=output, jobs=jobs, attempts=attempts, backoff=backoff,
                         on_error=on_error, grace=grace)
        hooks = job._loop_hooks(seconds=5.0, progress=progress)
        # A signal is acted on by the runner: it forwards it and waits for the running commands
        # before the lease is released (never at a checkpoint boundary while they still run).
        hooks.stop_after_save = False
        try:
            runner.run(hooks)
        finally:
            hooks.close(fs.cursor)
            runner.reaper.close()
        total, failed = fs.cursor.total or 0, len(fs.failed)
        click.echo(f"restartable: each-file: {fs.cursor.offset:,}/{total:,} files done ({runner.done_now:,} in this "
                   f"run)" + (f", {failed} failed and skipped: {', '.join(sorted(fs.failed)[:5])}" if failed else ""),
                   err=True)


def _report_completed(job: Job, pattern: str, marker_dir: str | None, recheck: bool) -> None:
    """A completed run does nothing; say how many matching files it did not do."""
    try:
        fs = FileSet(job, pattern, name="files", recheck=recheck, marker_dir=marker_dir, allow_empty=True,
                     skip_budget=None)
        todo = len(fs.pending)
    except RestartableError:
        todo = 0
    extra = (f"; {todo} matching file(s) are not done (new or changed): `restartable reset {job.name}"
             f"{'' if job.run == 'default' else ' --run ' + job.run}` or a new --run processes them") if todo else ""
    click.echo(f"restartable: {job.label} is already complete{extra}", err=True)
