"""A session given up after its read deadline must not keep its row locks for hours.

When a statement's answer does not come within ``read_timeout``, the client closes its
socket. Behind a partition the server never learns it: the backend sits "idle in
transaction" with its row locks until TCP keepalive notices, hours later, and the retry
and the next runner's acquire wait behind it. So the deadline also ends the old session
from a new connection, matched by pid AND its start time (``_pgconn._end_abandoned``).

The partition is a FaultProxy whose blackholed links, unlike the stock proxy's, do not
pass the client's close on to the server (a partition eats the FIN too); new connections
work (a dropped NAT entry, or a partition that healed for new flows).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

import faultproxy
from faultproxy import FaultProxy

psycopg = pytest.importorskip("psycopg")

from restartable._checkpoint import Owner  # noqa: E402
from restartable._postgres import conn as _pgconn  # noqa: E402
from restartable._postgres import xact as _xact  # noqa: E402
from restartable.stores import open_store  # noqa: E402

OWNER = Owner(host="abandoned-test", pid=1)
_original_client_closed = faultproxy._Link._client_closed


def _close_lost_in_the_partition(self: faultproxy._Link) -> None:
    """A client that closes during a hold: the server side hears nothing (no FIN, no RST)."""
    if self.hold_until > time.monotonic():
        self.client_gone = True
        try:
            self.client.close()
        except OSError:
            pass
        return
    _original_client_closed(self)


@pytest.fixture
def partition_proxy(postgres_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    monkeypatch.setattr(faultproxy._Link, "_client_closed", _close_lost_in_the_partition)
    parts = urlsplit(postgres_server)
    with FaultProxy(upstream=(parts.hostname or "127.0.0.1", parts.port or 5432)) as proxy:
        yield proxy


@pytest.fixture
def table(postgres_server: str) -> Iterator[str]:
    name = f"rt_abandoned_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE TABLE public.{name} (id int PRIMARY KEY, v int NOT NULL)")
        admin.execute(f"INSERT INTO public.{name} VALUES (1, 0)")
    yield name
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute("SET lock_timeout = '20s'")  # never hang the suite behind a session left over
        admin.execute(f"DROP TABLE IF EXISTS public.{name}")


def _update_within(url: str, statement: str, seconds: float) -> float:
    """Run ``statement`` on a new connection with a lock_timeout of ``seconds``; how long it took."""
    t0 = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"SET lock_timeout = '{int(seconds * 1000)}ms'")
        conn.execute(statement)
    return time.monotonic() - t0


def test_a_deadline_ends_the_abandoned_session_so_its_row_lock_goes(
    postgres_server: str, table: str, partition_proxy: FaultProxy
) -> None:
    # (table before partition_proxy: the proxy closes first, so a regression's leftover
    # session ends before the table is dropped.)
    conn = _pgconn.connect(partition_proxy.url_for(postgres_server), autocommit=False, display="test", read_timeout=1)
    try:
        pid = conn.info.backend_pid
        conn.execute(f"UPDATE public.{table} SET v = 1 WHERE id = 1")  # the row lock, transaction open
        partition_proxy.blackhole(None, new=False)
        with pytest.raises(_pgconn.ReadTimeout):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    # The server ended the old session: the row is free at once, not after TCP keepalive.
    assert _update_within(postgres_server, f"UPDATE public.{table} SET v = 2 WHERE id = 1", 10) < 3
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        assert admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()[0] == 0
        assert admin.execute(f"SELECT v FROM public.{table}").fetchone()[0] == 2  # the old UPDATE rolled back


def test_the_runs_row_held_by_a_transaction_connection_is_freed_for_the_heartbeat(
    postgres_url: str, partition_proxy: FaultProxy
) -> None:
    """The reported case: job.transaction()'s connection wrote the checkpoint row, then went silent."""
    # Bounded, so that a regression fails in seconds instead of waiting out the defaults.
    with open_store(postgres_url + "&read_timeout=5&retry=1s") as store:
        rec = store.acquire("j", "r", owner=OWNER, lease_seconds=60)
        proxied = open_store(partition_proxy.url_for(postgres_url) + "&read_timeout=1")
        try:
            tx = proxied._connect()
            try:
                proxied._save_in(tx, rec.replace(done=1), lease_seconds=60)  # the runs row is locked now
                partition_proxy.blackhole(None, new=False)
                with pytest.raises(_pgconn.ReadTimeout):
                    tx.execute("SELECT 1")
            finally:
                tx.close()
        finally:
            proxied.close()
        t0 = time.monotonic()
        store.renew("j", "r", epoch=rec.epoch, lease_seconds=60)  # on the store's own, direct connection
        assert time.monotonic() - t0 < 3
        assert store.load("j", "r").done == 0  # the abandoned save never committed


def test_end_session_touches_only_the_session_it_names(postgres_server: str) -> None:
    with (
        psycopg.connect(postgres_server, autocommit=True) as victim,
        psycopg.connect(postgres_server, autocommit=True) as admin,
    ):
        pid = victim.info.backend_pid
        started = admin.execute("SELECT backend_start FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()[0]
        # Same pid, another start (the pid reused by a later session): untouched.
        assert not _xact.end_session(admin, pid, started=started + dt.timedelta(microseconds=1))
        assert victim.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(ValueError):
            _xact.end_session(admin, pid)
        assert _xact.end_session(admin, pid, started=started)
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")


def test_an_unreachable_server_leaves_the_session_alone_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    # A port nobody listens on: the attempt ends quickly with a warning, never an error.
    t0 = time.monotonic()
    _pgconn._end_abandoned("postgresql://postgres@127.0.0.1:1/postgres", 12345, dt.datetime.now(dt.timezone.utc), 1.0)
    assert time.monotonic() - t0 < 5
    assert "could not reach" in caplog.text
