"""Functions that ``job.map(executor="processes")`` tests send to worker processes.

They live in a module of their own, importable by name in the workers (a test module
would be imported there with pytest and its fixtures). Markers that must survive a
worker's death are files: ``fn`` creates them with ``O_EXCL`` so that exactly one
attempt wins.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

#: Set in each worker by :func:`init` (the initializer) and read by :func:`initialized`.
INIT: dict[str, Any] = {}


def square(x: int) -> int:
    return x * x


def burn(seconds: float) -> tuple[int, float, float, float]:
    """Spin the CPU for ``seconds`` of this process's CPU time: (pid, cpu seconds, wall start, wall end)."""
    start, cpu = time.time(), time.process_time()
    while time.process_time() - cpu < seconds:
        pass
    return os.getpid(), time.process_time() - cpu, start, time.time()


def _first_time(directory: str, name: str) -> bool:
    try:
        os.close(os.open(Path(directory) / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        return False


def kill_once(arg: tuple[str, int, int]) -> int:
    """Item ``victim`` SIGKILLs its own worker process the first time it runs; every call is logged."""
    directory, victim, x = arg
    with open(Path(directory) / "calls.log", "a") as log:
        log.write(f"{x} {os.getpid()}\n")
    if x == victim and _first_time(directory, f"killed-{x}"):
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.02)
    return x


def kill_always(arg: tuple[str, int, int]) -> int:
    """Item ``victim`` SIGKILLs its worker every time; every call is logged."""
    directory, victim, x = arg
    with open(Path(directory) / "calls.log", "a") as log:
        log.write(f"{x} {os.getpid()}\n")
    if x == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.02)
    return x


def hang_on(arg: tuple[str, int, int]) -> int:
    """Item ``victim`` sleeps for a minute (writing its pid first); the others return at once."""
    directory, victim, x = arg
    if x == victim:
        (Path(directory) / "hung.pid").write_text(str(os.getpid()))
        time.sleep(60)
    return x


def init(tag: str) -> None:
    INIT["tag"] = tag
    INIT["pid"] = os.getpid()


def init_fails(tag: str) -> None:
    raise RuntimeError(f"cannot initialize {tag}")


def initialized(x: int) -> tuple[int, str, int]:
    return x, INIT.get("tag", ""), INIT.get("pid", 0)


def pid_of(x: int) -> int:
    return os.getpid()


def slow(x: int) -> int:
    time.sleep(0.05)
    return x
