"""The one retry policy (restartable._retry): its formula, as a property, and its use by tenacity."""

from __future__ import annotations

import random

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st

from restartable._retry import DEFAULT_BACKOFF, DEFAULT_BACKOFF_SECONDS, STORE_BACKOFF, Backoff


@given(
    backoff=st.floats(0, 100, allow_nan=False),
    cap=st.floats(0.001, 1000, allow_nan=False),
    jitter=st.floats(0, 2, allow_nan=False),
    failures=st.integers(1, 80),
    seed=st.integers(0, 2**32),
)
def test_delay_is_the_documented_formula(backoff: float, cap: float, jitter: float, failures: int, seed: int) -> None:
    policy = Backoff(backoff, cap=cap, jitter=jitter)
    nominal = min(cap, backoff * 2.0 ** (failures - 1))
    assert policy.nominal(failures) == pytest.approx(nominal)
    delay = policy.delay(failures, rng=random.Random(seed))
    # Never less than the nominal wait (callers count on it), never more than jitter above it nor the cap.
    assert nominal * (1 - 1e-9) <= delay <= min(cap, nominal * (1 + jitter)) * (1 + 1e-9)


def test_the_defaults() -> None:
    assert DEFAULT_BACKOFF_SECONDS == 1.0 and DEFAULT_BACKOFF.backoff == 1.0 and DEFAULT_BACKOFF.cap == 60.0
    assert [STORE_BACKOFF.nominal(n) for n in (1, 2, 3, 8, 20)] == pytest.approx([0.05, 0.1, 0.2, 5.0, 5.0])
    assert Backoff(0).delay(5) == 0.0


def test_jitter_spreads_retries_that_failed_together() -> None:
    rng = random.Random(7)
    delays = {round(DEFAULT_BACKOFF.delay(1, rng=rng), 6) for _ in range(50)}
    assert len(delays) > 40 and min(delays) >= 1.0 and max(delays) <= 1.5


def test_tenacity_waits_by_the_policy() -> None:
    slept: list[float] = []
    calls = [0]

    def flaky() -> str:
        calls[0] += 1
        if calls[0] < 4:
            raise ConnectionError("down")
        return "up"

    policy = Backoff(0.01, cap=0.03)
    retrying = tenacity.Retrying(
        wait=policy.wait(), sleep=slept.append, reraise=True, retry=tenacity.retry_if_exception_type(ConnectionError)
    )
    assert retrying(flaky) == "up"
    assert len(slept) == 3
    for n, seconds in enumerate(slept, start=1):
        assert policy.nominal(n) <= seconds <= min(0.03, policy.nominal(n) * 1.5) + 1e-12
