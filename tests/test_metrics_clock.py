"""The duration metric is measured on the store's clock and the monotonic clock, never this
machine's wall clock: ``started`` is stamped by the store (the server, for PostgreSQL and
Redis), which may be minutes off this machine, and a wall clock steps (NTP, a resumed VM)."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("prometheus_client")

from restartable import Job  # noqa: E402
from restartable.metrics import attach  # noqa: E402
from restartable.stores.memory import MemoryStore  # noqa: E402

SKEW = -3600.0  # the store's clock runs an hour behind this machine's


class _SkewedStore(MemoryStore):
    def now(self) -> float:
        return time.time() + SKEW


@pytest.mark.parametrize("wall_step", [0.0, 86400.0, -86400.0])
def test_the_duration_ignores_clock_skew_and_wall_clock_steps(monkeypatch, wall_step: float) -> None:
    store = _SkewedStore()
    # An address nobody listens on: pushes fail (a warning), the values are what is checked.
    pusher = attach(Job("m", store=store, progress=False, handle_signals=False), gateway="127.0.0.1:1")
    with pusher:
        time.sleep(0.2)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + wall_step)  # the wall clock steps
        duration = pusher._families(final=False)._values[1]
        monkeypatch.undo()
    assert 0.15 <= duration < 5, duration
