"""A TCP fault proxy for PostgreSQL and Redis tests: latency, FIN, RST, silence, lost answers.

The library's network stores must survive what a network does, not only what a server
does. :class:`FaultProxy` listens on a free loopback port and forwards every connection
to one upstream server; the test points its store URL at the proxy (:meth:`FaultProxy.url_for`)
and, at moments it chooses or that a seeded generator chooses, makes the network fail::

    with FaultProxy(upstream=("127.0.0.1", 5432), seed=7) as p:
        url = p.url_for("postgresql://postgres@127.0.0.1:5432/postgres?schema=s")
        ...                       # a Job on `url`
        p.reset_all()             # RST on every connection (SO_LINGER 0, then close)
        p.drop_all()              # FIN on both sides
        p.blackhole(3.0)          # a partition: nothing forwarded for 3 s, no RST, sockets open
        p.delay(200)              # 200 ms more latency on every chunk, both ways
        p.lose_next_answer_to(PG_COMMIT)   # the server gets the COMMIT; its answer never returns
        p.random_faults(rate=5.0)           # seeded random faults, 5 a second on average
        p.landed                  # Counter of the faults that actually hit a live connection

Contracts:

* Stdlib only; one thread accepts, one thread per connection forwards both directions
  (``select`` over the two sockets), so every fault is applied by the thread that owns
  the sockets, between two chunks: never in the middle of a ``send``.
* Bytes from the client are cut into protocol messages before they are forwarded, so a
  fault can land EXACTLY at a message: the PostgreSQL frontend protocol (startup
  packet, then typed messages; a ``Query`` or a ``Parse``/``Bind`` ... ``Sync`` group;
  prepared statements are remembered by name, so a statement psycopg has prepared is
  still recognised when only its ``Bind`` passes) and RESP (arrays of bulk strings:
  ``EVALSHA``, ``EVAL``...). The protocol is sniffed from the first byte of each
  connection (PostgreSQL starts with a length, RESP with ``*``); anything else is
  forwarded raw and only the connection-level faults apply to it.
* A pattern is ``bytes`` (found anywhere in the message's text) or a compiled
  ``re.Pattern[bytes]`` (searched). The text is the SQL of a PostgreSQL message (the
  prepared statement's SQL for a ``Bind``) or the RESP command with its name
  upper-cased and its arguments joined by spaces.
* A blackholed connection keeps reading (so a client that gives up and closes is
  noticed) but forwards nothing until its hold ends; then what was held is delivered
  in order, as TCP does after a partition heals. ``seconds=None`` holds it until the
  client closes: a connection whose NAT entry was dropped while new ones work.
* ``landed`` counts a fault only when it hit a live connection (``reset``, ``drop``,
  ``blackhole``, ``delay``, ``partition``) or when an armed trigger fired (``lose-answer``,
  ``reset-before``). Everything is seeded: the same seed picks the same victims and
  moments for the same sequence of calls.
* PostgreSQL URLs get ``sslmode=disable&gssencmode=disable`` (unless the URL sets them):
  the proxy must read the messages, and an encrypted stream has none to read.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import select
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Self
from urllib.parse import urlsplit, urlunsplit

__all__ = ["FaultProxy", "PG_COMMIT", "PG_SAVE", "REDIS_CAS", "Pattern"]

Pattern = bytes | re.Pattern[bytes]

#: A COMMIT sent as a simple query (psycopg's ``conn.commit()``).
PG_COMMIT: Pattern = re.compile(rb"^\s*COMMIT\b", re.IGNORECASE)
#: The PostgreSQL store's compare-and-set of a checkpoint (``UPDATE <schema>.runs SET status ...``).
PG_SAVE: Pattern = re.compile(rb"UPDATE\s+\S+\.runs\s+SET\s+status\b")
#: The Redis store's compare-and-set scripts (every write of the store is one EVALSHA).
REDIS_CAS: Pattern = re.compile(rb"^EVAL(SHA)?\b")

_CHUNK = 65536
_TICK = 0.01  # how often a link looks at its timers and pending requests
_SSL_REQUEST, _GSSENC_REQUEST, _CANCEL_REQUEST = 80877103, 80877104, 80877102


def _matches(pattern: Pattern, text: bytes) -> bool:
    return pattern in text if isinstance(pattern, bytes) else pattern.search(text) is not None


@dataclass
class _Message:
    """One complete client message, and the text a pattern is matched against."""

    data: bytes
    text: bytes = b""
    #: True where a request ends (a Query, a Sync, a RESP command): a lost answer is cut here.
    ends_request: bool = True


class _PgFramer:
    """Cuts the PostgreSQL frontend stream into messages (see the protocol's "Message Formats")."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.started = False  # the StartupMessage has passed: typed messages follow
        self.prepared: dict[bytes, bytes] = {}
        self.group: list[bytes] = []  # SQL of the Parse/Bind messages since the last Sync

    def feed(self, data: bytes) -> list[_Message]:
        self.buf += data
        out: list[_Message] = []
        while True:
            if not self.started:
                if len(self.buf) < 8:
                    return out
                (length,) = struct.unpack("!I", self.buf[:4])
                if len(self.buf) < length:
                    return out
                (code,) = struct.unpack("!I", self.buf[4:8])
                msg = bytes(self.buf[:length])
                del self.buf[:length]
                # SSLRequest / GSSENCRequest are answered with one byte, then a StartupMessage follows.
                self.started = code not in (_SSL_REQUEST, _GSSENC_REQUEST, _CANCEL_REQUEST)
                out.append(_Message(msg, b"", ends_request=False))
                continue
            if len(self.buf) < 5:
                return out
            kind = self.buf[0:1]
            (length,) = struct.unpack("!I", self.buf[1:5])
            if len(self.buf) < 1 + length:
                return out
            msg = bytes(self.buf[: 1 + length])
            del self.buf[: 1 + length]
            body = msg[5:]
            if kind == b"Q":
                out.append(_Message(msg, body.rstrip(b"\0")))
            elif kind == b"P":
                name, _, rest = body.partition(b"\0")
                query = rest.partition(b"\0")[0]
                self.prepared[name] = query
                self.group.append(query)
                out.append(_Message(msg, query, ends_request=False))
            elif kind == b"B":
                _portal, _, rest = body.partition(b"\0")
                query = self.prepared.get(rest.partition(b"\0")[0], b"")
                self.group.append(query)
                out.append(_Message(msg, query, ends_request=False))
            elif kind == b"S":
                text, self.group = b"\n".join(dict.fromkeys(self.group)), []  # a Bind repeats its Parse
                out.append(_Message(msg, text))
            else:
                out.append(_Message(msg, b"", ends_request=False))


class _RespFramer:
    """Cuts a RESP client stream into commands (arrays of bulk strings, or inline lines)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[_Message]:
        self.buf += data
        out: list[_Message] = []
        while self.buf:
            parsed = self._one()
            if parsed is None:
                return out
            end, parts = parsed
            msg = bytes(self.buf[:end])
            del self.buf[:end]
            if parts:
                parts[0] = parts[0].upper()
            out.append(_Message(msg, b" ".join(parts)))
        return out

    def _one(self) -> tuple[int, list[bytes]] | None:
        buf = self.buf
        eol = buf.find(b"\r\n")
        if eol < 0:
            return None
        if buf[0:1] != b"*":  # an inline command
            return eol + 2, bytes(buf[:eol]).split()
        count = int(buf[1:eol])
        pos, parts = eol + 2, []
        for _ in range(max(count, 0)):
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(buf[pos + 1 : eol])
            start, stop = eol + 2, eol + 2 + size
            if len(buf) < stop + 2:
                return None
            parts.append(bytes(buf[start:stop]))
            pos = stop + 2
        return pos, parts


class _RawFramer:
    def feed(self, data: bytes) -> list[_Message]:
        return [_Message(data, b"", ends_request=False)]


@dataclass
class _Trigger:
    pattern: Pattern
    action: Literal["lose-answer", "reset-before"]
    when: Literal["answered", "sent"] = "answered"
    after: float = 0.0


class _Link(threading.Thread):
    """One proxied connection: forwards both ways, applies the faults requested of it."""

    def __init__(
        self, proxy: FaultProxy, ident: int, client: socket.socket, upstream: socket.socket, hold_until: float
    ) -> None:
        super().__init__(daemon=True, name=f"faultproxy-link-{ident}")
        self.proxy, self.link_id = proxy, ident
        self.client, self.upstream = client, upstream
        self.hold_until = hold_until  # forwards nothing before this monotonic time (inf: until closed)
        self.to_up: deque[tuple[float, bytes]] = deque()
        self.to_client: deque[tuple[float, bytes]] = deque()
        self.framer: _PgFramer | _RespFramer | _RawFramer | None = None
        self.requests: deque[tuple[str, float | None]] = deque()
        self.lock = threading.Lock()
        self.alive = True
        # A lost answer in progress: the client is cut at `cut_at` (or when the server answers).
        self.losing: _Trigger | None = None
        self.cut_at = math.inf
        self.client_gone = False
        self.upstream_deadline = math.inf  # after the client was cut: close upstream once it answered, or then

    # -- requests from other threads (applied by this thread, between chunks) -------------

    def request(self, what: str, arg: float | None = None) -> None:
        with self.lock:
            self.requests.append((what, arg))

    def _apply_requests(self, now: float) -> None:
        with self.lock:
            pending, self.requests = list(self.requests), deque()
        for what, arg in pending:
            if not self.alive:
                return
            if what == "reset":
                self._close(rst=True)
            elif what == "drop":
                self._close(rst=False)
            elif what == "blackhole":
                self.hold_until = math.inf if arg is None else max(self.hold_until, now + arg)

    # -- the forwarding loop ------------------------------------------------------------

    def run(self) -> None:
        try:
            while self.alive:
                now = time.monotonic()
                self._apply_requests(now)
                if not self.alive:
                    break
                socks = [s for s in (self.client if not self.client_gone else None, self.upstream) if s is not None]
                try:
                    readable, _, _ = select.select(socks, [], [], _TICK)
                except (OSError, ValueError):
                    self._close(rst=False)
                    break
                now = time.monotonic()
                for s in readable:
                    try:
                        data = s.recv(_CHUNK)
                    except OSError:
                        data = b""
                    if s is self.client:
                        if not data:
                            self._client_closed()
                        else:
                            self._from_client(data, now)
                    else:
                        if not data:
                            self._close(rst=False)
                        else:
                            self._from_server(data, now)
                    if not self.alive:
                        break
                if self.alive:
                    self._flush(time.monotonic())
        except Exception:  # noqa: BLE001 - a proxy bug must not leave a test hanging: end the link
            self._close(rst=True)
            raise
        finally:
            self.proxy._forget(self)

    def _client_closed(self) -> None:
        if self.losing is not None or self.hold_until > time.monotonic():
            # The client gave up; the server side ends as a server would see it: a FIN.
            self._close(rst=False)
        else:
            self._flush(time.monotonic(), force_up=True)
            self._close(rst=False)

    def _from_client(self, data: bytes, now: float) -> None:
        if self.losing is not None:
            return  # the client is as good as gone: what it sends now never reaches the server
        if self.framer is None:
            first = data[:1]
            self.framer = _RespFramer() if first == b"*" else _PgFramer() if first == b"\0" else _RawFramer()
        due = now + self.proxy._latency
        for msg in self.framer.feed(data):
            trig = self.proxy._take_trigger(msg)
            if trig is not None and trig.action == "reset-before":
                self.proxy._landed("reset-before")
                self._close(rst=True)
                return
            self.to_up.append((due, msg.data))
            if trig is not None:  # lose-answer: the request goes to the server, its answer nowhere
                self.proxy._landed("lose-answer")
                self.losing = trig
                self.cut_at = now + trig.after if trig.when == "sent" else math.inf
                self.upstream_deadline = now + 30.0
                return

    def _from_server(self, data: bytes, now: float) -> None:
        if self.losing is not None:
            # The answer (or the start of it): the server has done the request. Cut the client now
            # unless it was already cut; close our side to the server once it has answered.
            if not self.client_gone:
                self._cut_client()
            self.upstream_deadline = min(self.upstream_deadline, now + 0.2)
            return
        self.to_client.append((now + self.proxy._latency, data))

    def _cut_client(self) -> None:
        _rst(self.client)
        self.client_gone = True

    def _flush(self, now: float, force_up: bool = False) -> None:
        if self.losing is not None:
            if self.to_up and now >= self.hold_until:
                self._send(self.upstream, b"".join(d for _, d in self.to_up))
                self.to_up.clear()
            if not self.client_gone and now >= self.cut_at:
                self._cut_client()
            if self.client_gone and now >= self.upstream_deadline:
                self._close(rst=False)
            return
        if now < self.hold_until and not force_up:
            return
        for queue, sock in ((self.to_up, self.upstream), (self.to_client, self.client)):
            while queue and (queue[0][0] <= now or force_up):
                _, data = queue.popleft()
                if not self._send(sock, data):
                    return

    def _send(self, sock: socket.socket, data: bytes) -> bool:
        try:
            sock.sendall(data)
            return True
        except OSError:
            self._close(rst=False)
            return False

    def _close(self, *, rst: bool) -> None:
        if not self.alive:
            return
        self.alive = False
        for s in (self.client, self.upstream):
            if s is self.client and self.client_gone:
                continue
            if rst:
                _rst(s)
            else:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def _rst(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN: SO_LINGER on with a zero timeout."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultProxy:
    """A loopback TCP proxy to ``upstream`` that injects network faults. See the module docstring."""

    def __init__(self, upstream: tuple[str, int], *, seed: int | str = 0, connect_timeout: float = 5.0) -> None:
        self.upstream = upstream
        self.rng = random.Random(seed)
        self.connect_timeout = connect_timeout
        self.landed: Counter[str] = Counter()
        self.accepted = 0
        self._links: dict[int, _Link] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._latency = 0.0
        self._latency_until = math.inf
        self._partition_until = 0.0  # new connections are held until then
        self._triggers: list[_Trigger] = []
        self._halt = threading.Event()
        self._random: threading.Thread | None = None
        self._random_halt = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name="faultproxy-accept")

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        self._acceptor.start()
        return self

    def close(self) -> None:
        """Stop accepting, stop the random faults and close every connection (FIN)."""
        self.stop_random()
        self._halt.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        for link in self._live():
            link.request("drop")
        for link in list(self._links.values()):
            link.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (and TLS off for PostgreSQL)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.port}"
        query = parts.query
        if parts.scheme.startswith("postgres"):
            for option in ("sslmode=disable", "gssencmode=disable"):
                if option.split("=")[0] + "=" not in query:
                    query = f"{query}&{option}" if query else option
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    # -- faults on demand ----------------------------------------------------------------

    @property
    def connections(self) -> int:
        """How many proxied connections are open now."""
        return len(self._live())

    def reset_all(self) -> int:
        """RST every open connection (both sides); return how many there were."""
        return self._each("reset")

    def drop_all(self) -> int:
        """Close every open connection with a FIN (both sides); return how many there were."""
        return self._each("drop")

    def blackhole(self, seconds: float | None, *, new: bool = True) -> int:
        """Stop forwarding on every open connection for ``seconds`` (None: until each closes).

        No RST, the sockets stay open: to the client the server has gone silent. With
        ``new``, connections accepted in the window are held too (a partition); without,
        they work (silent old connections, as after a dropped NAT entry). Returns how many
        open connections were hit (a partition of new connections counts as one fault).
        """
        if new and seconds is not None:
            self._partition_until = max(self._partition_until, time.monotonic() + seconds)
        hit = self._each("blackhole", seconds, count_as="partition" if new else "blackhole")
        if new and hit == 0 and seconds is not None:
            self._landed("partition")  # no connection open: the next ones meet it
        return hit

    def delay(self, ms: float, *, seconds: float | None = None) -> None:
        """Add ``ms`` of latency to every chunk, both ways, for ``seconds`` (None: until ``delay(0)``)."""
        self._latency = ms / 1000.0
        self._latency_until = math.inf if seconds is None else time.monotonic() + seconds
        if ms > 0:
            self._landed("delay")

    def lose_next_answer_to(
        self, pattern: Pattern, *, when: Literal["answered", "sent"] = "answered", after: float = 0.0
    ) -> None:
        """Arm: the next client message matching ``pattern`` reaches the server, its answer never returns.

        ``when="answered"``: the client's socket is reset as soon as the server starts to
        answer (the server has done the request). ``when="sent"``: it is reset ``after``
        seconds after the request was forwarded, answered or not (a COMMIT may still be in
        progress on the server). Either way the server side is closed with a FIN once the
        server answered (or after 30 s), so the server finishes the request undisturbed.
        """
        with self._lock:
            self._triggers.append(_Trigger(pattern, "lose-answer", when, after))

    def reset_before(self, pattern: Pattern) -> None:
        """Arm: the next client message matching ``pattern`` is never forwarded; its connection is reset."""
        with self._lock:
            self._triggers.append(_Trigger(pattern, "reset-before"))

    def disarm(self) -> int:
        """Drop every armed trigger that has not fired; return how many there were."""
        with self._lock:
            n, self._triggers = len(self._triggers), []
        return n

    @property
    def armed(self) -> int:
        with self._lock:
            return len(self._triggers)

    def random_faults(
        self,
        rate: float,
        kinds: Iterable[str] = ("reset", "drop", "blackhole", "delay"),
        *,
        blackhole_seconds: tuple[float, float] = (0.5, 3.0),
        delay_ms: tuple[float, float] = (20.0, 300.0),
    ) -> None:
        """Inject ``kinds`` at seeded random moments, ``rate`` a second on average, until :meth:`stop_random`.

        ``reset``/``drop``/``blackhole`` hit one random open connection (a blackhole of a
        random length in ``blackhole_seconds``); ``partition`` holds every connection, new
        ones too; ``delay`` adds a random latency for a random second or two; ``commit``
        arms :meth:`lose_next_answer_to` for the stores' compare-and-sets and COMMITs.
        """
        self.stop_random()
        choices = list(kinds)
        self._random_halt = threading.Event()
        halt = self._random_halt

        def loop() -> None:
            while not halt.wait(self.rng.expovariate(rate)):
                kind = self.rng.choice(choices)
                if kind == "partition":
                    self.blackhole(self.rng.uniform(*blackhole_seconds), new=True)
                elif kind == "delay":
                    self.delay(self.rng.uniform(*delay_ms), seconds=self.rng.uniform(0.5, 2.0))
                elif kind == "commit":
                    if not self.armed:
                        self.lose_next_answer_to(
                            re.compile(
                                PG_COMMIT.pattern + rb"|" + PG_SAVE.pattern + rb"|" + REDIS_CAS.pattern, re.IGNORECASE
                            )
                        )
                else:
                    live = self._live()
                    if live:
                        victim = self.rng.choice(live)
                        arg = self.rng.uniform(*blackhole_seconds) if kind == "blackhole" else None
                        victim.request(kind, arg)
                        self._landed(kind)

        self._random = threading.Thread(target=loop, daemon=True, name="faultproxy-random")
        self._random.start()

    def stop_random(self) -> None:
        self._random_halt.set()
        if self._random is not None:
            self._random.join(timeout=5)
            self._random = None

    @property
    def total(self) -> int:
        """Every fault that landed, of every kind."""
        return sum(self.landed.values())

    # -- internals --------------------------------------------------------------------------

    def _live(self) -> list[_Link]:
        with self._lock:
            return [link for link in self._links.values() if link.alive]

    def _each(self, what: str, arg: float | None = None, *, count_as: str | None = None) -> int:
        live = self._live()
        for link in live:
            link.request(what, arg)
        if live:
            self._landed(count_as or what)
        return len(live)

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.pop(link.link_id, None)

    def _landed(self, kind: str) -> None:
        with self._lock:
            self.landed[kind] += 1

    def _take_trigger(self, msg: _Message) -> _Trigger | None:
        if not msg.ends_request or not msg.text:
            return None
        with self._lock:
            for i, trig in enumerate(self._triggers):
                if _matches(trig.pattern, msg.text):
                    return self._triggers.pop(i)
        return None

    def _accept_loop(self) -> None:
        while not self._halt.is_set():
            if time.monotonic() > self._latency_until:
                self._latency, self._latency_until = 0.0, math.inf
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=self.connect_timeout)
            except OSError:
                _rst(client)  # the server is down: the client sees a refused/reset connection
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(10.0)  # a sendall to a peer that stopped reading ends the link, not the test
            link = _Link(self, next(self._ids), client, upstream, hold_until=self._partition_until)
            with self._lock:
                self._links[link.link_id] = link
                self.accepted += 1
            link.start()
