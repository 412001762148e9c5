"""Every PostgreSQL connection restartable opens: bounded connect, and a deadline on every read.

A connection can go silent: a network partition, a dropped NAT or conntrack entry, a
frozen server or backend, a middlebox that ACKs and forwards nothing. No RST ever
arrives, so the kernel reports nothing, and TCP keepalives and ``tcp_user_timeout``
cannot tell a peer whose kernel still ACKs from a slow statement. Without a deadline
of our own, psycopg waits in its socket read for good, and a job hangs while its
heartbeat (on another, healthy connection) keeps its lease alive, so no other runner
can take over. Only a deadline in our own code catches that.

So each connection made by :func:`connect` is a :class:`DeadlineConnection`: every wait
for the server (a statement, a fetch, COMMIT, ROLLBACK, COPY) ends after at most
``read_timeout`` seconds, the URL option ``?read_timeout=`` (default 60 s; ``0`` for no
deadline). The deadline runs in the waiting thread itself, through the timeout of
psycopg's wait function (psycopg >= 3.2): no watchdog thread, no timer per statement,
and nothing happens to a connection from another thread. When it expires:

* the connection is closed at once (``conn.broken`` becomes True), because a statement
  whose answer never came leaves the connection in an unknown state, and a later
  answer must never be taken for the next statement's;
* the abandoned server session is ended from a new connection (``pg_terminate_backend``
  matched by pid AND the session's start time, so no other session is ever touched; best
  effort, bounded by a few seconds, never raising, see :func:`_end_abandoned`). A
  session whose client gave up keeps its locks until the server notices the client is
  gone, which behind a silent network is hours later (TCP keepalive): an UPDATE in an
  open transaction of the connection ``job.transaction()`` handed out would hold the
  run's row lock, and the retry and the next runner's acquire would wait behind it;
* :class:`ReadTimeout`, a :class:`psycopg.OperationalError`, is raised: the stores and
  :class:`~restartable.PostgresTable` treat it like any lost connection (reconnect and
  retry within the ``retry`` budget, then StoreUnavailable, exit 75), and a COMMIT that
  ends this way is "outcome unknown" (``conn.broken``), which
  :func:`restartable._sources.transaction` resolves by reading the checkpoint back.

The other side of a partition is the server's: a client host that vanishes (a node lost,
a partition that does not heal) while its session holds row locks (an open
``job.transaction()``) leaves the session "idle in transaction" until the server's TCP
keepalive gives up on it, after the operating system's default: 2 h 11 min on Linux.
Until then no runner can take the run over (its acquire waits on the row lock). So every
session we open asks the server for keepalive probes after :data:`SERVER_KEEPALIVE`
(60 s idle, then every 10 s, 6 unanswered: the session ends about 2 minutes after its
client went silent) and a ``tcp_user_timeout`` (PostgreSQL 12+) for data the client
never acknowledges; a client whose kernel still answers (a live process, however slow
or stopped) is never cut off. A URL whose ``options`` set any ``tcp_keepalives_*`` or
``tcp_user_timeout`` keeps its own values. On a Unix socket the settings are ignored.

The deadline bounds one wait, so it also bounds a statement that is legitimately slow
(a long query in ``job.transaction()``, a lock wait): raise ``read_timeout`` above your
longest statement, or set ``0``. ``conn.notifies(timeout=...)`` keeps its own timeout.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from .._url import parse_duration
from ..errors import ConfigError, MissingDriver
from . import xact as _xact

__all__ = [
    "DEFAULT_READ_TIMEOUT",
    "OPTION",
    "DeadlineConnection",
    "ReadTimeout",
    "connect",
    "parse_read_timeout",
    "split_read_timeout",
]

log = logging.getLogger("restartable")

#: The URL option's name, and its default in seconds.
OPTION = "read_timeout"
DEFAULT_READ_TIMEOUT = 60.0

# psycopg's poll interval (it wakes this often to notice Ctrl-C); the deadline is
# checked at each wake-up, so it fires within this much of its time.
_INTERVAL: float = getattr(psycopg.connection, "_WAIT_INTERVAL", 0.1)
_WaitTimeout: type[BaseException] | None = getattr(pg_errors, "_WaitTimeout", None)


class ReadTimeout(psycopg.OperationalError):
    """The server did not answer within ``read_timeout``; the connection was closed (it is ``broken``)."""


class DeadlineConnection(psycopg.Connection):  # type: ignore[type-arg]  # rows are whatever the caller asks
    """A psycopg connection whose every wait for the server lasts at most :attr:`read_timeout` seconds.

    Made by :func:`connect`; otherwise an ordinary :class:`psycopg.Connection`. When a
    wait exceeds the deadline the connection is closed (``broken`` is True) and
    :class:`ReadTimeout` is raised. ``read_timeout`` 0 means no deadline. A caller that
    passes its own timeout to the wait (``notifies(timeout=...)``) keeps it.
    """

    read_timeout: float = DEFAULT_READ_TIMEOUT
    #: What ends the abandoned session after a deadline: the conninfo to reach the server
    #: again and the session's ``backend_start`` (set by :func:`connect`; None: not ended).
    _reap_conninfo: str | None = None
    _backend_start: dt.datetime | None = None

    def wait(self, gen: Any, interval: float = _INTERVAL, timeout: float | None = None) -> Any:
        limit = self.read_timeout
        if timeout is not None or not limit:
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(gen, interval, limit)
        except _WaitTimeout:  # type: ignore[misc]  # never None here: connect() makes no connection without it
            pid = self.pgconn.backend_pid
            # The statement's fate and the protocol state are unknown: drop the socket,
            # so nothing arriving later can be read as the answer to something else.
            self.pgconn.finish()
            log.warning(
                "PostgreSQL backend %s did not answer within %gs (read_timeout); closed the connection", pid, limit
            )
            if self._reap_conninfo is not None and self._backend_start is not None:
                _end_abandoned(self._reap_conninfo, pid, self._backend_start, limit)
            raise ReadTimeout(
                f"the PostgreSQL server did not answer within {limit:g}s (read_timeout) and the connection was closed: "
                "it went silent (a network partition, a dropped NAT entry, a frozen server); if statements "
                "legitimately take longer, raise the URL option ?read_timeout=SECONDS (0: no deadline)"
            ) from None


#: The session's own start, which with its pid names it uniquely (a pid is reused, the pair never).
_BACKEND_START = "SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
#: The server's TCP keepalive for our sessions: idle seconds before the first probe, seconds
#: between probes, unanswered probes before the server ends the session (see the module docstring).
SERVER_KEEPALIVE: tuple[int, int, int] = (60, 10, 6)
#: ``tcp_user_timeout`` (ms) asked of PostgreSQL 12 and newer: data unacknowledged this long ends the session.
SERVER_USER_TIMEOUT_MS = 120_000
#: Bounds of the attempt to end an abandoned session (seconds): it must never hold up the
#: caller, who is already past its deadline, by more than a few seconds.
_REAP_MAX = 5.0


def _end_abandoned(conninfo: str, pid: int, started: dt.datetime, limit: float) -> None:
    """End server session ``pid`` (started at ``started``) from a NEW connection; never raises.

    Best effort: the connection is bounded (``connect_timeout`` of 2 to 5 s, libpq's
    minimum is 2) and so is the statement (a read deadline of at most 5 s, without this
    reaping of its own). A server that cannot be reached, or a role that may not signal
    the session, leaves it to the server's own timeouts, with a warning.
    """
    bound = min(_REAP_MAX, max(1.0, limit))
    try:
        conn = DeadlineConnection.connect(conninfo, autocommit=True, connect_timeout=max(2, math.ceil(bound)))
    except Exception as exc:  # noqa: BLE001 - best effort: the caller raises ReadTimeout anyway
        log.warning(
            "could not reach the PostgreSQL server to end the abandoned backend %s (%s); its locks "
            "go when the server notices",
            pid,
            _one_line(exc),
        )
        return
    try:
        conn.read_timeout = bound
        if _xact.end_session(conn, pid, started=started):
            log.warning("ended the abandoned PostgreSQL backend %s, so that its locks go now", pid)
    except Exception as exc:  # noqa: BLE001 - e.g. not allowed to signal it (another role, no pg_signal_backend)
        log.warning(
            "could not end the abandoned PostgreSQL backend %s (%s); its locks go when the server notices",
            pid,
            _one_line(exc),
        )
    finally:
        conn.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _keepalive_settings(server_version: int, options: str) -> list[tuple[str, str]]:
    """The session settings that make the server notice a vanished client (module docstring)."""
    if "tcp_keepalives" in options or "tcp_user_timeout" in options:
        return []  # the URL's own choice
    idle, interval, count = SERVER_KEEPALIVE
    out = [
        ("tcp_keepalives_idle", str(idle)),
        ("tcp_keepalives_interval", str(interval)),
        ("tcp_keepalives_count", str(count)),
    ]
    if server_version >= 120000:
        out.append(("tcp_user_timeout", str(SERVER_USER_TIMEOUT_MS)))
    return out


def _prepare_session(
    conn: DeadlineConnection, conninfo: str, autocommit: bool, *, remember: bool, options: str
) -> None:
    """Ask for the server's keepalive (:func:`_keepalive_settings`) and, when ``remember``,
    remember what :func:`_end_abandoned` needs: how to reach the server, the session's start.

    One round trip per connection, never in a transaction (autocommit is switched on
    around it, client side only). When a server or pooler refuses it (one that hides
    ``pg_stat_activity``, or refuses a setting), each half is tried alone; without the
    session's start the session is simply not ended after a deadline.
    """
    settings = _keepalive_settings(conn.info.server_version, options)
    calls = [sql.SQL("set_config({}, {}, false)").format(name, value) for name, value in settings]
    if not remember and not calls:
        return
    start = sql.SQL("(") + sql.SQL(_BACKEND_START) + sql.SQL(")") if remember else sql.SQL("NULL")
    # One round trip; when it is refused, each half alone (so one refused part costs the other nothing).
    attempts = [sql.SQL("SELECT ") + sql.SQL(", ").join([start, *calls])]
    if remember and calls:
        attempts += [sql.SQL("SELECT ") + start, sql.SQL("SELECT NULL, ") + sql.SQL(", ").join(calls)]
    row = None
    try:
        conn.autocommit = True
        for statement in attempts:
            try:
                got = conn.execute(statement).fetchone()
            except psycopg.Error:
                if conn.broken or conn.closed:
                    raise
                continue
            if row is None or row[0] is None:
                row = got
            if len(attempts) == 1 or statement is attempts[0]:
                break
    finally:
        if not conn.closed and not conn.broken:
            conn.autocommit = autocommit
    if remember and row is not None and isinstance(row[0], dt.datetime):
        conn._backend_start = row[0]
        conn._reap_conninfo = conninfo


def parse_read_timeout(value: str | float | None, display: str) -> float:
    """Seconds from the option's text (``30``, ``30s``, ``2m``, ``0``); None gives the default.

    Raises ConfigError naming the option and the URL (``display``, already redacted).
    """
    if value is None:
        return DEFAULT_READ_TIMEOUT
    try:
        return parse_duration(value, f"{OPTION} option")
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} (in {display}): {OPTION} is how long to wait for the server's answer before giving the "
            "connection up; 0 means no deadline"
        ) from None


def split_read_timeout(conninfo: str, display: str) -> tuple[str, float | None]:
    """``conninfo`` without its ``read_timeout`` option, and that option's seconds (None if absent).

    Only a URL carries options of ours; a ``key=value`` conninfo is returned as is
    (libpq would refuse an unknown keyword there). Every other query parameter is kept
    byte for byte: re-encoding would change what libpq reads (it does not decode ``+``).
    """
    if "://" not in conninfo or OPTION not in conninfo:
        return conninfo, None
    parts = urlsplit(conninfo)
    kept: list[str] = []
    values: list[str] = []
    for segment in parts.query.split("&"):
        key, _, value = segment.partition("=")
        if unquote(key) == OPTION:
            values.append(unquote(value))
        else:
            kept.append(segment)
    if not values:
        return conninfo, None
    rest = urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(kept), parts.fragment))
    return rest, parse_read_timeout(values[-1], display)


def connect(
    conninfo: str,
    *,
    autocommit: bool,
    display: str,
    read_timeout: float | None = None,
    connect_timeout: int = 10,
    application_name: str = "restartable",
) -> DeadlineConnection:
    """A new :class:`DeadlineConnection` to ``conninfo`` (a libpq URL or ``key=value`` string).

    ``read_timeout`` (seconds, 0: none) wins; else the URL's ``?read_timeout=``, which is
    taken out before libpq sees the URL; else :data:`DEFAULT_READ_TIMEOUT`.
    ``connect_timeout`` and ``application_name`` are defaults that the conninfo may
    override. Driver errors (``psycopg.Error``) propagate for the caller to translate;
    a bad ``read_timeout`` is a ConfigError naming the option.
    """
    if _WaitTimeout is None:  # psycopg < 3.2 has no deadline in its wait functions
        raise MissingDriver(
            f"the connection to {display} needs psycopg 3.2 or newer for its read deadline "
            f"(found {psycopg.__version__}): pip install -U 'restartable[postgres]'"
        )
    conninfo, from_url = split_read_timeout(conninfo, display)
    limit = read_timeout if read_timeout is not None else from_url
    limit = DEFAULT_READ_TIMEOUT if limit is None else limit
    given = psycopg.conninfo.conninfo_to_dict(conninfo)
    # A server that stops answering must not hang the connect either.
    extra: dict[str, Any] = {
        k: v
        for k, v in (("connect_timeout", connect_timeout), ("application_name", application_name))
        if k not in given
    }
    conn = DeadlineConnection.connect(conninfo, autocommit=autocommit, **extra)
    conn.read_timeout = limit
    try:
        # Without a deadline no session is ever abandoned: nothing to remember.
        _prepare_session(conn, conninfo, autocommit, remember=bool(limit), options=str(given.get("options", "")))
    except BaseException:
        conn.close()
        raise
    return conn
