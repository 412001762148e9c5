"""The fault proxy of the torture suite (tests/faultproxy.py) does what it says, quickly.

Each fault is checked against a real peer: a raw echo server for the connection-level
faults, the shared PostgreSQL and Redis for the faults cut at a protocol message (the
server did the request, the client never heard). The framers are checked by a property:
however the stream is cut into chunks, the same messages come out.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faultproxy import PG_COMMIT, PG_SAVE, REDIS_CAS, FaultProxy, _PgFramer, _RespFramer


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A loopback echo server (one thread per connection)."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)
    halt = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept() -> None:
        while not halt.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield ("127.0.0.1", srv.getsockname()[1])
    halt.set()
    t.join()
    srv.close()


def _client(p: FaultProxy) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.settimeout(5)
    return s


def test_forwards_and_resets_with_an_rst(echo: tuple[str, int]) -> None:
    with FaultProxy(echo, seed=1) as p:
        s = _client(p)
        s.sendall(b"hello")
        assert s.recv(100) == b"hello"
        assert p.reset_all() == 1
        with pytest.raises(ConnectionResetError):
            s.recv(100)  # an RST, not an orderly end
        s.close()
        assert p.landed["reset"] == 1


def test_drop_ends_with_a_fin(echo: tuple[str, int]) -> None:
    with FaultProxy(echo) as p:
        s = _client(p)
        s.sendall(b"x")
        assert s.recv(10) == b"x"
        p.drop_all()
        assert s.recv(10) == b""  # EOF: a FIN
        s.close()


def test_a_blackhole_is_silence_then_delivers_in_order(echo: tuple[str, int]) -> None:
    with FaultProxy(echo) as p:
        s = _client(p)
        s.sendall(b"a")
        assert s.recv(10) == b"a"
        p.blackhole(0.6, new=True)
        time.sleep(0.05)
        s.sendall(b"bc")
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(10)  # no RST, no FIN, nothing
        late = _client(p)  # a new connection meets the partition too
        late.sendall(b"z")
        late.settimeout(0.2)
        with pytest.raises(TimeoutError):
            late.recv(10)
        s.settimeout(3)
        late.settimeout(3)
        got = b""
        while len(got) < 2:
            got += s.recv(10)
        assert got == b"bc"  # the partition healed: the held bytes arrive, in order
        assert late.recv(10) == b"z"
        s.close()
        late.close()


def test_a_silent_old_connection_beside_working_new_ones(echo: tuple[str, int]) -> None:
    with FaultProxy(echo) as p:
        old = _client(p)
        old.sendall(b"1")
        assert old.recv(10) == b"1"
        p.blackhole(None, new=False)  # a dropped NAT entry: the old one is silent for good
        time.sleep(0.05)
        fresh = _client(p)
        fresh.sendall(b"2")
        assert fresh.recv(10) == b"2"
        old.sendall(b"3")
        old.settimeout(0.3)
        with pytest.raises(TimeoutError):
            old.recv(10)
        old.close()
        fresh.close()
        assert p.landed["blackhole"] == 1


def test_delay_adds_latency(echo: tuple[str, int]) -> None:
    with FaultProxy(echo) as p:
        s = _client(p)
        p.delay(150)
        t0 = time.monotonic()
        s.sendall(b"x")
        assert s.recv(10) == b"x"
        assert time.monotonic() - t0 >= 0.28  # 150 ms each way
        p.delay(0)
        t0 = time.monotonic()
        s.sendall(b"y")
        assert s.recv(10) == b"y"
        assert time.monotonic() - t0 < 0.1
        s.close()


def test_random_faults_are_seeded_and_counted(echo: tuple[str, int]) -> None:
    def victims(seed: int) -> list[str]:
        with FaultProxy(echo, seed=seed) as p:
            socks = [_client(p) for _ in range(3)]
            for s in socks:
                s.sendall(b"x")
                s.recv(10)
            return [f"{p.rng.expovariate(1.0):.6f}" for _ in range(3)]

    assert victims(5) == victims(5) != victims(6)
    with FaultProxy(echo, seed=3) as p:
        socks = [_client(p) for _ in range(4)]
        for s in socks:
            s.sendall(b"x")
            s.recv(10)
        p.random_faults(rate=40.0, kinds=("reset", "drop"))
        time.sleep(0.5)
        p.stop_random()
        assert p.landed["reset"] + p.landed["drop"] >= 1
        for s in socks:
            s.close()


# -- protocol messages -----------------------------------------------------------------


def _pg_proxy(postgres_server: str, seed: int = 0) -> FaultProxy:
    from urllib.parse import urlsplit

    u = urlsplit(postgres_server)
    return FaultProxy((u.hostname or "127.0.0.1", u.port or 5432), seed=seed)


def test_a_commit_whose_answer_is_lost_commits_on_the_server(postgres_server: str) -> None:
    import psycopg

    with _pg_proxy(postgres_server) as p, psycopg.connect(postgres_server, autocommit=True) as direct:
        direct.execute("CREATE TEMP TABLE IF NOT EXISTS probe_dummy (x int)")  # the direct session works
        table = f"rt_fp_{int(time.time() * 1000) % 10**9}"
        direct.execute(f"CREATE TABLE {table} (x int)")
        try:
            conn = psycopg.connect(p.url_for(postgres_server), connect_timeout=5)
            conn.execute(f"INSERT INTO {table} VALUES (1)")
            p.lose_next_answer_to(PG_COMMIT)
            with pytest.raises(psycopg.OperationalError):
                conn.commit()
            assert conn.broken
            assert p.landed["lose-answer"] == 1
            deadline = time.monotonic() + 5
            while direct.execute(f"SELECT count(*) FROM {table}").fetchone() != (1,):
                assert time.monotonic() < deadline, "the COMMIT never reached the server"
                time.sleep(0.05)
            # reset_before: the next COMMIT never reaches the server, so nothing commits.
            conn = psycopg.connect(p.url_for(postgres_server), connect_timeout=5)
            conn.execute(f"INSERT INTO {table} VALUES (2)")
            p.reset_before(PG_COMMIT)
            with pytest.raises(psycopg.OperationalError):
                conn.commit()
            time.sleep(0.3)
            assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
        finally:
            direct.execute(f"DROP TABLE {table}")


def test_a_prepared_statement_is_recognised_by_its_bind(postgres_server: str) -> None:
    import psycopg

    with _pg_proxy(postgres_server) as p:
        conn = psycopg.connect(p.url_for(postgres_server), autocommit=True, connect_timeout=5)
        stmt = "UPDATE pg_temp.runs SET status = %s WHERE false"
        conn.execute("CREATE TEMP TABLE runs (status text)")
        for _ in range(3):
            conn.execute(stmt, ["x"], prepare=True)  # Parse once; later only Bind/Execute/Sync
        p.lose_next_answer_to(PG_SAVE)
        with pytest.raises(psycopg.OperationalError):
            conn.execute(stmt, ["y"], prepare=True)
        assert p.landed["lose-answer"] == 1


def test_a_compare_and_set_whose_answer_is_lost_ran_on_redis(redis_server: str) -> None:
    from urllib.parse import urlsplit

    import redis

    u = urlsplit(redis_server)
    key = f"rt_fp_{time.time_ns()}"
    direct = redis.Redis.from_url(redis_server, socket_timeout=5)
    with FaultProxy((u.hostname or "127.0.0.1", u.port or 6379)) as p:
        client = redis.Redis.from_url(p.url_for(redis_server), socket_timeout=5, retry_on_timeout=False)
        cas = client.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
        cas(keys=[key], args=["1"])
        p.lose_next_answer_to(REDIS_CAS)
        with pytest.raises(redis.exceptions.ConnectionError):
            cas(keys=[key], args=["2"])
        assert direct.get(key) == b"2"  # it ran; the client never heard
        assert p.landed["lose-answer"] == 1
        client.close()
    direct.delete(key)
    direct.close()


# -- the framers: a property ------------------------------------------------------------


def _pg_msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


_sql = st.binary(min_size=0, max_size=40).map(lambda b: b.replace(b"\0", b"_"))


@settings(max_examples=150, deadline=None)
@given(queries=st.lists(_sql, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_pg_framer_cuts_the_same_messages_however_the_stream_is_chunked(queries: list[bytes], cuts: list[int]) -> None:
    startup = struct.pack("!II", 8 + 5, 196608) + b"user\0"
    startup = struct.pack("!I", len(startup)) + startup[4:]
    msgs = [startup]
    for i, q in enumerate(queries):
        if i % 2:
            msgs.append(_pg_msg(b"Q", q + b"\0"))
        else:
            msgs += [
                _pg_msg(b"P", b"s%d\0" % i + q + b"\0\0\0"),
                _pg_msg(b"B", b"\0s%d\0" % i + b"\0" * 6),
                _pg_msg(b"E", b"\0\0\0\0\0"),
                _pg_msg(b"S", b""),
            ]
    stream = b"".join(msgs)
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    framer = _PgFramer()
    out = [m for a, b in zip(bounds, bounds[1:]) for m in framer.feed(stream[a:b])]
    assert [m.data for m in out] == msgs
    requests = [m.text for m in out if m.ends_request]
    assert requests == [q for q in queries]  # each Query, and each Parse/Bind group at its Sync


@settings(max_examples=150, deadline=None)
@given(
    cmds=st.lists(st.lists(st.binary(max_size=20), min_size=1, max_size=4), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 300), max_size=8),
)
def test_resp_framer_cuts_the_same_commands_however_the_stream_is_chunked(
    cmds: list[list[bytes]], cuts: list[int]
) -> None:
    def encode(parts: list[bytes]) -> bytes:
        return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in parts)

    stream = b"".join(encode(c) for c in cmds)
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    framer = _RespFramer()
    out = [m for a, b in zip(bounds, bounds[1:]) for m in framer.feed(stream[a:b])]
    assert [m.data for m in out] == [encode(c) for c in cmds]
    assert [m.text for m in out] == [b" ".join([c[0].upper(), *c[1:]]) for c in cmds]
