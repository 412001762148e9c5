"""Run a job, then stay up idle: the StatefulSet's entry point.

::

    python -m restartable.kube.idle --marker /data/COMPLETED -- python /app/job.py ARGS

A StatefulSet restarts its container whenever it exits (``restartPolicy: Always`` is the
only one allowed), so a finished job must not exit. This wrapper:

* runs the command as its child, in exec form, passing SIGTERM and SIGINT on to it (the
  job checkpoints and exits 143/130), and reaps orphans while it is pid 1;
* on exit 0, writes the marker atomically (temp file, fsync, rename, fsync of the
  directory) and idles until SIGTERM, then exits 0; the readiness probe
  ``test -f MARKER`` then reports the job done;
* when the marker already exists, idles at once: a restarted container never runs the
  job again (delete the marker, and ``restartable reset`` the run, to run it again);
* on a permanent exit code (2, 65, 77, 78) idles too, never ready and without the
  marker, instead of crash-looping on an error that a retry cannot fix; the reason is
  the job's last log line;
* on any other exit (a temporary error, 1, a signal) exits with the child's code, so the
  kubelet restarts the container (with its back-off) and the job resumes.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

from .._entry import PERMANENT_CODES

__all__ = ["main", "write_marker"]

PROG = "restartable-idle"


def _say(text: str) -> None:
    sys.stderr.write(f"{PROG}: {text}\n")
    sys.stderr.flush()


def write_marker(path: str, text: str) -> None:
    """Create ``path`` atomically and durably with ``text`` (mode 0600)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class _Signals:
    """Remembers SIGTERM/SIGINT and passes them on to the child while it runs."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.event = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        child = self.child
        if child is not None and child.returncode is None:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass
        self.event.set()


def _reap_orphans() -> None:
    """As pid 1 we inherit the job's orphans: collect the ones that exited."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _idle(signals: _Signals, code: int) -> int:
    """Sleep until SIGTERM/SIGINT; then exit with ``code``."""
    while not signals.event.wait(5.0):
        _reap_orphans()
    _say(f"{signal.Signals(signals.received or signal.SIGTERM).name} received while idle: exiting")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m restartable.kube.idle", description=__doc__.split("\n")[0])
    parser.add_argument("--marker", default="/data/COMPLETED", help="the file written when the job succeeded")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command: give it after `--`")
    signals = _Signals()
    signals.install()
    if os.path.exists(args.marker):
        _say(f"{args.marker} exists: the job already completed; idling (delete it to run the job again)")
        return _idle(signals, 0)
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        _say(f"cannot run {command[0]!r}: {exc}")
        return 2  # a usage error: permanent
    signals.child = child
    if signals.received is not None:  # a signal that came before the child existed
        child.send_signal(signals.received)
    rc = child.wait()
    code = 128 - rc if rc < 0 else rc
    if code == 0:
        write_marker(args.marker, f"completed {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        _say(f"the job completed: wrote {args.marker}; idling")
        return 0 if signals.received is not None else _idle(signals, 0)
    if signals.received is not None:
        return code  # the pod is terminating: leave with the job's code
    if code in PERMANENT_CODES:
        _say(
            f"the job failed permanently (exit {code}; see its error above): idling instead of restarting; "
            "fix the cause, then delete the pod"
        )
        return _idle(signals, code)
    _say(f"the job exited with {code}: exiting so that the container is restarted and the job resumes")
    return code


if __name__ == "__main__":
    sys.exit(main())
