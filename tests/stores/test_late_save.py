"""A save delayed in the network must never move the checkpoint backwards.

The runner sends save S1; the network holds its bytes; the client gives up after
``read_timeout`` and retries S1 on a new connection (it commits), then saves S2. Then the
held bytes of the first S1 reach the server, which executes them. Both carry the runner's
epoch, so the epoch's compare-and-set cannot refuse the old one: only the save's sequence
number (``save_seq`` in PostgreSQL, ``seq`` in the Redis hash) can.

The network is a FaultProxy whose blackholed links deliver what they held once the hold
ends even when the client has closed meanwhile (the stock proxy drops it): bytes already
in flight are not recalled by a close. PostgreSQL's read deadline also ends the abandoned
session (``_pgconn._end_abandoned``), which alone would stop the late bytes; that is best
effort (the server may be unreachable from here, or the role not allowed), so it is
switched off to test the sequence number itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

import faultproxy
from faultproxy import FaultProxy
from restartable._checkpoint import Owner
from restartable.stores import open_store

ME = Owner(host="late-test", pid=1)
HOLD = 3.0
_original_client_closed = faultproxy._Link._client_closed


def _deliver_after_the_hold(self: faultproxy._Link) -> None:
    if self.hold_until > time.monotonic():
        self.client_gone = True  # what was held still goes up when the hold ends
        try:
            self.client.close()
        except OSError:
            pass
        return
    _original_client_closed(self)


@pytest.fixture
def late_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FaultProxy]]:
    monkeypatch.setattr(faultproxy._Link, "_client_closed", _deliver_after_the_hold)
    yield FaultProxy


def _upstream(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 0


def _play(store, proxy: FaultProxy) -> None:
    rec = store.acquire("job", "r", owner=ME, lease_seconds=60)
    store.save(rec.replace(done=1, state={"v": 1}), lease_seconds=60)  # the connection is made and used
    proxy.blackhole(HOLD, new=False)  # this connection goes silent; new ones work
    time.sleep(0.2)  # the link applies the hold between two polls (10 ms): S1 must not race past it
    t0 = time.monotonic()
    store.save(rec.replace(done=2, state={"v": 2}), lease_seconds=60)  # S1: timed out, retried, committed
    assert time.monotonic() - t0 >= 0.9, "the first attempt was not held"
    store.save(rec.replace(done=3, state={"v": 3}), lease_seconds=60)  # S2
    time.sleep(max(0.0, HOLD + 1.0 - (time.monotonic() - t0)))  # the held S1 has reached the server now
    got = store.load("job", "r")
    assert (got.done, got.state) == (3, {"v": 3}), "a late save moved the checkpoint backwards"
    assert [h.done for h in store.history("job", "r", limit=2)] == [3, 2]


def test_postgres_a_save_held_past_the_deadline_lands_late_and_changes_nothing(
    postgres_url: str, late_proxy: type[FaultProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    from restartable._postgres import conn as _pgconn

    monkeypatch.setattr(_pgconn, "_end_abandoned", lambda *args: None)  # see the module docstring
    with late_proxy(upstream=_upstream(postgres_url)) as proxy:
        with open_store(proxy.url_for(postgres_url) + "&read_timeout=1&retry=20") as store:
            _play(store, proxy)


def test_redis_a_save_held_past_the_deadline_lands_late_and_changes_nothing(
    redis_url: str, late_proxy: type[FaultProxy]
) -> None:
    with late_proxy(upstream=_upstream(redis_url)) as proxy:
        with open_store(proxy.url_for(redis_url) + "&read_timeout=1&retry=20") as store:
            _play(store, proxy)
