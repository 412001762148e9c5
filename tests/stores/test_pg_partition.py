"""A client host that vanishes while its session holds a row lock: the server lets go in minutes, not hours.

A node is lost (or cut off for good) while one of our sessions is inside a transaction
(``job.transaction()``, or a store write between its UPDATE and COMMIT). The client's
kernel is gone with it, so no FIN or RST ever reaches the server, and the session sits
"idle in transaction" with its row locks until the server's TCP keepalive gives up: the
operating system's default is 2 h 11 min. Every runner that wants those rows (the next
runner's acquire, its transaction) waits that long. Our sessions ask the server for
keepalive probes (``_postgres/conn.py``, ``SERVER_KEEPALIVE``), so it ends them minutes
after the client went silent.

The partition is real, not a proxy (a proxy's own socket would answer the server's
probes): the client runs in a network namespace of its own, joined to this one by a veth
pair, against a private server listening on the veth's address. The test takes the link
down, SIGKILLs the client (its goodbye is lost on the dead link), and times how long a
new session waits for the row. The keepalive is shortened for the test (2 s idle, 1 s
apart, 2 probes); the negative control runs the client without our settings, as the
server's default, and the row is still held when the test gives up on it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ci_env import unavailable
from pgserver import PgServer, new_server

psycopg = pytest.importorskip("psycopg")

CLIENT = textwrap.dedent(
    """
    import sys, time
    from restartable._postgres import conn as c
    url, mode = sys.argv[1], sys.argv[2]
    if mode == "ours":
        c.SERVER_KEEPALIVE = (2, 1, 2)
        c.SERVER_USER_TIMEOUT_MS = 4000
    else:  # the server's defaults, as before our sessions asked for a keepalive
        c._keepalive_settings = lambda *args: []
    k = c.connect(url, autocommit=False, display="partition test", read_timeout=0)
    k.execute("UPDATE held SET v = v + 1 WHERE id = 1")
    print("holding", k.execute("SHOW tcp_keepalives_idle").fetchone()[0], flush=True)
    time.sleep(600)
    """
)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


@dataclass
class Net:
    ns: str
    host_if: str
    host_ip: str
    client_ip: str


@pytest.fixture
def net() -> Iterator[Net]:
    if shutil.which("ip") is None:
        unavailable("the ip command (Debian's iproute2) is needed to make a network namespace")
    tag = uuid.uuid4().hex[:6]
    third = random.Random(tag).randrange(1, 255)
    n = Net(f"rt-part-{tag}", f"rtp{tag}h", f"10.231.{third}.1", f"10.231.{third}.2")
    made = _ip("netns", "add", n.ns, check=False)
    if made.returncode != 0:
        unavailable(f"cannot make a network namespace (needs root and CAP_NET_ADMIN): {made.stderr.strip()}")
    try:
        _ip("link", "add", n.host_if, "type", "veth", "peer", "name", f"rtp{tag}c")
        _ip("link", "set", f"rtp{tag}c", "netns", n.ns)
        _ip("addr", "add", f"{n.host_ip}/30", "dev", n.host_if)
        _ip("link", "set", n.host_if, "up")
        _ip("-n", n.ns, "addr", "add", f"{n.client_ip}/30", "dev", f"rtp{tag}c")
        _ip("-n", n.ns, "link", "set", f"rtp{tag}c", "up")
        _ip("-n", n.ns, "link", "set", "lo", "up")
        yield n
    finally:
        _ip("link", "del", n.host_if, check=False)
        _ip("netns", "del", n.ns, check=False)


@pytest.fixture
def server(net: Net) -> Iterator[PgServer]:
    s = new_server(hba=[f"host all all {net.client_ip}/32 trust"], listen=f"127.0.0.1,{net.host_ip}")
    try:
        s.execute("CREATE TABLE held (id int PRIMARY KEY, v int NOT NULL)")
        s.execute("INSERT INTO held VALUES (1, 0)")
        yield s
    finally:
        s.destroy()


def _partition_a_holder(net: Net, server: PgServer, mode: str) -> subprocess.Popen[str]:
    """A client in the namespace holding the row's lock; then the link goes down and the client dies."""
    client = subprocess.Popen(
        ["ip", "netns", "exec", net.ns, sys.executable, "-c", CLIENT, server.url(host=net.host_ip), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = client.stdout.readline() if client.stdout else ""
    if not line.startswith("holding"):
        client.kill()
        _, err = client.communicate(timeout=10)
        pytest.fail(f"the client in the namespace did not take the row: {line!r} {err}")
    idle = int(line.split()[1])
    assert idle == 2 if mode == "ours" else idle >= 600, line  # the OS default: 7200 s on Linux
    _ip("link", "set", net.host_if, "down")  # the partition: nothing crosses any more, either way
    os.killpg(client.pid, signal.SIGKILL)  # the node is lost: its FIN or RST dies on the dead link
    client.wait(timeout=10)
    return client


def _wait_for_the_row(server: PgServer, give_up: float) -> float | None:
    """Seconds until a new session could update the row, or None when it was still held after ``give_up``."""
    t0 = time.monotonic()
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute("SET lock_timeout = '500ms'")
        while time.monotonic() - t0 < give_up:
            try:
                conn.execute("UPDATE held SET v = v + 1 WHERE id = 1")
                return time.monotonic() - t0
            except psycopg.errors.LockNotAvailable:
                continue
    return None


def test_a_vanished_client_releases_its_row_lock_within_seconds(net: Net, server: PgServer) -> None:
    _partition_a_holder(net, server, "ours")
    took = _wait_for_the_row(server, give_up=30)
    # 2 s idle + 2 probes 1 s apart, then the server ends the session and rolls it back.
    assert took is not None, "the row was still held 30 s after the client vanished"
    assert took < 20, took
    with psycopg.connect(server.url(), autocommit=True) as conn:
        assert conn.execute("SELECT v FROM held").fetchone() == (1,)  # the vanished update was rolled back


def test_negative_control_without_the_keepalive_the_row_stays_held(net: Net, server: PgServer) -> None:
    _partition_a_holder(net, server, "server-default")
    assert _wait_for_the_row(server, give_up=12) is None, "the server let go without our keepalive settings"
    with psycopg.connect(server.url(), autocommit=True) as conn:  # free it for the clean-up
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE state = 'idle in transaction' "
            "AND pid <> pg_backend_pid()"
        )


def test_every_session_asks_for_the_keepalive_unless_the_url_sets_its_own(postgres_url: str) -> None:
    from restartable._postgres import conn as _pgconn

    def shown(conn: psycopg.Connection) -> list[str]:
        names = ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")
        return [conn.execute(f"SHOW {n}").fetchone()[0] for n in names]

    base = postgres_url.split("?")[0]
    for read_timeout in (None, 0):  # with and without the deadline's bookkeeping on the same round trip
        with _pgconn.connect(base, autocommit=False, display="t", read_timeout=read_timeout) as conn:
            assert shown(conn) == ["60", "10", "6", "120000"]
            assert conn.autocommit is False and (conn._backend_start is None) == (read_timeout == 0)
    own = base + "?options=-c%20tcp_keepalives_idle%3D7"
    with _pgconn.connect(own, autocommit=True, display="t") as conn:
        assert shown(conn)[0] == "7" and shown(conn)[1] != "10"


def test_a_refused_setting_costs_the_session_its_keepalive_only(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooler or server that refuses a setting: the session's start is still remembered (and vice versa)."""
    from restartable._postgres import conn as _pgconn

    monkeypatch.setattr(_pgconn, "_keepalive_settings", lambda *args: [("no_such_setting", "1")])
    with _pgconn.connect(postgres_url.split("?")[0], autocommit=False, display="t") as conn:
        assert conn._backend_start is not None and conn.autocommit is False
        assert conn.execute("SELECT 1").fetchone() == (1,)
    monkeypatch.setattr(_pgconn, "_BACKEND_START", "SELECT no_such_column FROM pg_stat_activity")
    monkeypatch.setattr(_pgconn, "_keepalive_settings", lambda *args: [("tcp_keepalives_idle", "61")])
    with _pgconn.connect(postgres_url.split("?")[0], autocommit=True, display="t") as conn:
        assert conn._backend_start is None
        assert conn.execute("SHOW tcp_keepalives_idle").fetchone() == ("61",)
