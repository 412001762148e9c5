"""Resolving a PostgreSQL COMMIT whose answer was lost: did it commit, or not?

A COMMIT whose connection drops before the answer arrives may have committed, may
not have, or may still be committing on the server (a deferred trigger, a slow WAL
flush, a synchronous standby). Reading the data back at once cannot tell "did not
commit" from "has not committed yet", and anything written meanwhile at the same
fencing token races with the commit still landing (issue 12, defect 1). So:

* before COMMIT, :func:`note` reads the transaction's id and its server process
  (one round trip, inside the transaction);
* after a lost answer, :func:`resolve` asks the server on NEW connections, with the
  backoff of :mod:`restartable._retry`, until the answer is final:

  - the caller's proof (``shows_commit``: what the transaction wrote, read back) is
    there: **committed**. Checked first, and required before "committed" is
    believed: after a failover a transaction id may name another transaction;
  - ``pg_xact_status`` says ``aborted``, or NULL (too old for the commit log, so long
    over, and the proof is not there): **aborted**. An aborted transaction never
    commits later, so this is final;
  - ``committed`` but the proof not visible yet (the session is still finishing, or
    waits for a synchronous standby): ask again;
  - ``in progress``: the orphaned server session is ended, once, with
    ``pg_terminate_backend`` matched by pid AND transaction id (no other session is
    touched). That makes the outcome final at once: a transaction not yet committing
    rolls back, one inside its commit record finishes, and either way its row locks
    go (an idle orphan behind a silent connection would otherwise hold them until
    TCP keepalive notices, hours later). Then ask again. When the COMMIT ended by the
    read deadline, :mod:`restartable._postgres.conn` has usually ended the session
    already (matched by pid and its start time, through :func:`end_session` too).

* past ``budget`` seconds without a final answer: **unknown**. The caller must then
  write nothing that could race with the transaction (see
  :mod:`restartable._postgres.transaction`); the next runner, which takes a new epoch
  and whose acquire waits for the orphan's row lock, decides from what is stored.

PostgreSQL 13+ uses ``pg_current_xact_id``/``pg_xact_status``; 10-12 their older
names ``txid_current``/``txid_status``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .._retry import STORE_BACKOFF

__all__ = ["COMMITTED", "ABORTED", "UNKNOWN", "Outcome", "XactRef", "backoff", "end_session", "note", "resolve"]

log = logging.getLogger("restartable")

COMMITTED: Literal["committed"] = "committed"
ABORTED: Literal["aborted"] = "aborted"
UNKNOWN: Literal["unknown"] = "unknown"
Outcome = Literal["committed", "aborted", "unknown"]


@dataclass(frozen=True)
class XactRef:
    """What identifies a transaction on its server: its 64-bit id and its backend's pid."""

    xid: int
    pid: int
    modern: bool  # PostgreSQL 13+: xid8 functions; else the txid_* ones

    @property
    def status_sql(self) -> str:
        return "SELECT pg_xact_status(%s::xid8)" if self.modern else "SELECT txid_status(%s::bigint)"


def note(conn: Any) -> XactRef:
    """Inside the open transaction on ``conn``, before COMMIT: its id (assigned now if not yet) and pid."""
    modern = conn.info.server_version >= 130000
    row = conn.execute("SELECT pg_current_xact_id()::text" if modern else "SELECT txid_current()::text").fetchone()
    return XactRef(xid=int(row[0]), pid=int(conn.info.backend_pid), modern=modern)


def backoff(attempt: int) -> float:
    """The delay before retry number ``attempt`` (1, 2, ...): the stores' policy (:data:`restartable._retry.STORE_BACKOFF`)."""
    return STORE_BACKOFF.delay(attempt)


# A session is ours only while the pid still runs it: matching the transaction id (or the
# session's start time) as well as the pid means a pid reused by a new session after ours
# ended is never touched.
_TERMINATE = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %(pid)s "
    "AND (%(xid32)s::text IS NULL OR backend_xid::text = %(xid32)s::text) "
    "AND (%(started)s::timestamptz IS NULL OR backend_start = %(started)s::timestamptz)"
)


def end_session(conn: Any, pid: int, *, xid: int | None = None, started: Any = None) -> bool:
    """End the server session ``pid`` with ``pg_terminate_backend``, run on ``conn`` (another session).

    Only the session that is still the one meant is touched: the one running transaction
    ``xid`` (its 64-bit id), or the one that started at ``started`` (its
    ``pg_stat_activity.backend_start``); one of the two is required. Why end it: an
    abandoned session (its client gave up on it) keeps its row locks until the server
    notices the client is gone, which behind a silent network is hours later (TCP
    keepalive), and every runner that wants those rows waits for it. Ending it rolls
    back a transaction not yet committing (one inside its commit record finishes).
    Returns whether a session was signalled. Errors propagate (the callers decide:
    a lost connection is retried by ``resolve``, anything is swallowed by the read deadline).
    """
    if xid is None and started is None:
        raise ValueError("end_session needs the transaction id or the session's start to know the session")
    row = conn.execute(
        _TERMINATE, {"pid": pid, "xid32": None if xid is None else str(xid % 2**32), "started": started}
    ).fetchone()
    return bool(row is not None and row[0])


def resolve(
    ref: XactRef,
    *,
    connect: Callable[[], Any],
    shows_commit: Callable[[Any], bool],
    budget: float,
    what: str,
    transient: tuple[type[BaseException], ...],
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """The final outcome of the transaction ``ref`` whose COMMIT's answer was lost; see the module docstring.

    ``connect()`` opens a NEW autocommit connection (never one a lock-holding thread
    may be using); ``shows_commit(conn)`` returns True when what the transaction wrote
    is visible on it (it may raise, for example Fenced). ``transient`` errors (a lost
    connection, a server restarting) are retried until ``budget`` seconds are spent;
    any other error ends the search with UNKNOWN, as does the budget.
    """
    deadline = time.monotonic() + budget
    attempt = 0
    ended_orphan = False
    last = "no answer yet"
    while True:
        conn = None
        try:
            conn = connect()
            while True:
                if shows_commit(conn):
                    return COMMITTED
                status = conn.execute(ref.status_sql, [str(ref.xid)]).fetchone()[0]
                if status is None or status == ABORTED:
                    return ABORTED
                last = f"the server says {status!r}"
                if status == "in progress" and not ended_orphan:
                    _end_orphan(conn, ref, what, transient)
                    ended_orphan = True
                attempt += 1
                if not _pause(deadline, attempt, sleep):
                    break
        except transient as exc:
            last = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            attempt += 1
            if _pause(deadline, attempt, sleep):
                continue
        except Exception as exc:  # noqa: BLE001 - e.g. "transaction ID is in the future": another cluster
            log.error("%s: the COMMIT's outcome cannot be asked (%s: %s)", what, type(exc).__name__, exc)
            return UNKNOWN
        finally:
            if conn is not None:
                conn.close()
        log.error("%s: the COMMIT's outcome is still unknown after %gs (%s)", what, budget, last)
        return UNKNOWN


def _end_orphan(conn: Any, ref: XactRef, what: str, transient: tuple[type[BaseException], ...]) -> None:
    """End the server session still running our transaction, so that its outcome becomes final."""
    try:
        ended = end_session(conn, ref.pid, xid=ref.xid)
    except transient:
        raise  # a lost connection: asked again on the next one
    except Exception as exc:  # noqa: BLE001 - not allowed (another role): wait for it instead
        log.warning(
            "%s: could not end the orphaned server session %d (%s); waiting for its commit to finish",
            what,
            ref.pid,
            exc,
        )
        return
    if ended:
        log.warning(
            "%s: ended the orphaned server session %d still running the transaction, so that its outcome is final",
            what,
            ref.pid,
        )


def _pause(deadline: float, attempt: int, sleep: Callable[[float], None]) -> bool:
    """Sleep before the next question; False when the budget is spent."""
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    sleep(min(backoff(attempt), left))
    return True
