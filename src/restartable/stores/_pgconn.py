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
* :class:`ReadTimeout`, a :class:`psycopg.OperationalError`, is raised: the stores and
  :class:`~restartable.PostgresTable` treat it like any lost connection (reconnect and
  retry within the ``retry`` budget, then StoreUnavailable, exit 75), and a COMMIT that
  ends this way is "outcome unknown" (``conn.broken``), which
  :func:`restartable.sources.transaction` resolves by reading the checkpoint back.

The deadline bounds one wait, so it also bounds a statement that is legitimately slow
(a long query in ``job.transaction()``, a lock wait): raise ``read_timeout`` above your
longest statement, or set ``0``. ``conn.notifies(timeout=...)`` keeps its own timeout.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors

from .._url import parse_duration
from ..errors import ConfigError, MissingDriver

__all__ = ["DEFAULT_READ_TIMEOUT", "OPTION", "DeadlineConnection", "ReadTimeout", "connect", "parse_read_timeout",
           "split_read_timeout"]

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
            raise ReadTimeout(
                f"the PostgreSQL server did not answer within {limit:g}s (read_timeout) and the connection was closed: "
                "it went silent (a network partition, a dropped NAT entry, a frozen server); if statements "
                "legitimately take longer, raise the URL option ?read_timeout=SECONDS (0: no deadline)"
            ) from None


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
    extra = {k: v for k, v in (("connect_timeout", connect_timeout), ("application_name", application_name))
             if k not in given}
    conn = DeadlineConnection.connect(conninfo, autocommit=autocommit, **extra)
    conn.read_timeout = limit
    return conn
