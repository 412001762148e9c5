"""Who this process is, and whether a lease owner's process still exists."""

from __future__ import annotations

import os
import socket
import uuid
from functools import lru_cache

from ._checkpoint import Owner


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> int:
    """Clock ticks since boot at which ``pid`` started (field 22 of /proc/PID/stat), or 0."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return 0
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0


@lru_cache(maxsize=1)
def _machine() -> tuple[str, str, str]:
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), pidns


def current_owner() -> Owner:
    """This runner as a lease owner: the process, a random token, and the pod when the manifest names it."""
    host, boot_id, pidns = _machine()
    pid = os.getpid()
    env = os.environ
    return Owner(
        host=host,
        pid=pid,
        boot_id=boot_id,
        pidns=pidns,
        start_time=_start_time(pid),
        pod=env.get("RESTARTABLE_POD_NAME", env.get("POD_NAME", "")),
        pod_uid=env.get("RESTARTABLE_POD_UID", env.get("POD_UID", "")),
        node=env.get("RESTARTABLE_NODE_NAME", env.get("NODE_NAME", "")),
        token=uuid.uuid4().hex[:12],
    )


def _pid_exists(pid: int) -> bool:
    """Whether a process has ``pid`` in our pid namespace, by ``kill(pid, 0)``.

    Only ESRCH is proof that no process has it: EPERM means one exists that belongs to
    another user. ``/proc/PID`` is no proof either way: with ``hidepid=1/2`` (or a proc
    mounted for another pid namespace) another user's live process has no entry there.
    """
    if pid <= 0:  # 0 and negative pids name process groups: never probe those
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_is_dead(owner: Owner) -> bool:
    """True only when ``owner`` provably no longer exists.

    That needs the same boot and the same pid namespace (so the pid means the same
    process here) and then positive evidence: ``kill(pid, 0)`` answering ESRCH (no such
    pid), or a readable ``/proc/PID/stat`` showing another start time (pids are reused,
    and in a container the job is often pid 1) or a zombie. Anything we cannot check
    counts as alive (a pid that exists but whose ``/proc`` entry is hidden by
    ``hidepid``, or unreadable): the lease then expires by the store's clock instead.
    """
    host, boot_id, pidns = _machine()
    if not owner.boot_id or owner.boot_id != boot_id or not owner.pidns or owner.pidns != pidns:
        return False
    if owner.host != host:
        return False
    if owner.pid == os.getpid() and owner.start_time == _start_time(os.getpid()):
        return False
    if not _pid_exists(owner.pid):
        return True
    started = _start_time(owner.pid)
    if started == 0:  # the pid exists but its /proc entry is hidden or unreadable: no proof
        return False
    if owner.start_time and started != owner.start_time:
        return True
    # A zombie (exited, not yet reaped) has finished its work: treat it as dead.
    stat = _read(f"/proc/{owner.pid}/stat")
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "Z"
