"""Shared helpers for the benchmarks: timing, medians, the ratio table.

Every benchmark measures its baseline beside the code under test in the same run,
repeats both several times, and reports medians and the ratio: absolute times on a
shared virtual disk move by tens of percent from run to run, ratios much less.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (for CI and smoke runs)")
    p.add_argument("--repeat", type=int, default=None, help="repetitions of each measurement (median taken)")
    return p


def per_op(fn: Callable[[int], None], n: int, *, repeat: int = 5) -> float:
    """Median seconds per operation of ``fn(n)``, which performs ``n`` operations."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(n)
        samples.append((time.perf_counter() - t0) / n)
    return statistics.median(samples)


def interleaved(cases: dict[str, Callable[[int], None]], n: int, *, repeat: int = 5) -> dict[str, float]:
    """Like :func:`per_op` for several cases, alternating them so drift hits all alike."""
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeat):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn(n)
            samples[name].append((time.perf_counter() - t0) / n)
    return {k: statistics.median(v) for k, v in samples.items()}


def fmt(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:8.1f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.1f} µs"
    return f"{seconds * 1e3:8.2f} ms"


def report(title: str, rows: list[tuple[str, float, str, float, float | None]]) -> None:
    """Print ``(case, time, baseline name, baseline time, target)`` rows with their ratios."""
    print(f"\n== {title}")
    print(f"{'case':<44} {'time':>11}   {'baseline':<34} {'time':>11}  {'ratio':>6}  target")
    for name, t, bname, bt, target in rows:
        ratio = t / bt if bt else float("nan")
        verdict = "" if target is None else (f"<= {target:g}x " + ("ok" if ratio <= target else "MISSED"))
        print(f"{name:<44} {fmt(t)}   {bname:<34} {fmt(bt)}  {ratio:5.2f}x  {verdict}")
