"""``redis://`` and ``rediss://``: checkpoints in Redis (redis-py, extra ``restartable[redis]``).

URL: ``redis://[[user]:password@]host:port/db`` (``rediss://`` for TLS); redis-py's
own query parameters (``ssl_ca_certs``, ``ssl_cert_reqs``, ``socket_timeout``, ...)
pass through, restartable's are taken out first:

``prefix``  key prefix, default ``restartable:``
``ttl``     retention after the last update, default ``7d`` (``0`` keeps keys forever);
            keys live between ``ttl`` and ``ttl`` plus a tenth of it (at most a minute)
``retry``   how long to ride out an unreachable server, default 60s
``read_timeout``  the deadline for each reply, default 60s (``0``: none); an
            answer that does not come in time is a transient failure, retried
            within ``retry``. redis-py's ``socket_timeout`` is still accepted,
            but not together with ``read_timeout``

Keys of one run (names follow the name grammar, so they hold no ``:``; cursor
names may hold anything and are percent-encoded)::

    {prefix}run:{job}:{run}                hash: the record + epoch + lease (see _redis_lua)
    {prefix}hist:{job}:{run}               list: the last HISTORY_LIMIT saves, newest first
    {prefix}markers:{job}:{run}:{cursor}   hash: item key -> JSON value
    {prefix}runs                           zset: "job\\0run" -> the run's expiry (Unix seconds)
    {prefix}instance                       string: a random id, made once, never expires
    {prefix}epoch-floor                    string: the highest epoch ever handed out or deleted
                                           under the prefix (never expires; see _redis_lua)

The pattern this replaces is the article's ``SET checkpoint:{job_id} <json> EX 604800``:
one JSON value per job that silently vanishes seven days after it was written.
Here ``checkpoint:{job_id}`` becomes ``{prefix}run:{job}:{run}`` (a job may have
several runs) and the 7-day ``EX`` becomes the ``ttl`` option, with two changes:
every write (acquire, save, renew, mark) refreshes the retention of *all* the
run's keys together, so it counts from the last update, never from the first
write; and the write is a compare-and-set on the epoch inside a Lua script, so a
stale runner can never overwrite a newer checkpoint (a plain SET cannot refuse).
``cleanup`` still removes completed runs earlier than their retention.

Lease times are the server's clock (``TIME`` inside the scripts). Every stored time is
Unix seconds with millisecond decimals, in a field whose name ends in ``_s``
(``updated_at_s``, ``lease_until_s``, history entries' ``at_s``), the unit of the SQL
stores; runs written before record format 2 kept milliseconds under the bare names
(``updated``, ``lease``, ``at``) and are still read, and rewritten at their next acquire
(see _redis_lua).
A Redis without persistence loses every key when it restarts (so does FLUSHALL).
The store tells a lost record from a reset one by the ``instance`` key, which a
loss destroys and a reset does not: a run hash that is missing while the
instance id is still the one this store saw at ``acquire`` was deleted, and the
runner is fenced, whatever happened to the server meanwhile (a restart with
``appendonly yes`` keeps both); a missing hash whose instance id is gone or new
was lost, and :class:`~restartable.errors.CheckpointLost` lets the job write its
in-memory record back with :meth:`RedisStore.restore`, itself a compare-and-set
on that same judgement. A store written before the instance key existed gets it
at the next ``acquire``. Markers and history of a lost run are gone for good:
enable ``appendonly yes`` on servers that matter, and never delete
``{prefix}instance`` by hand (the next reset would look like a loss).
"""

from __future__ import annotations

import functools
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from .._checkpoint import (
    COMPLETED,
    STATUSES,
    Checkpoint,
    HistoryEntry,
    Owner,
    decode_record,
    dumps,
    encode_record,
    loads,
)
from .._retry import DEFAULT_RETRY_SECONDS, call_with_retry
from .._url import StoreURL, parse_duration
from ..errors import (
    CheckpointCorrupt,
    CheckpointLost,
    ConfigError,
    MissingDriver,
    PermissionDenied,
    StoreUnavailable,
)
from ..stores.base import HISTORY_LIMIT, Store, Unreadable, epoch_step, first_epoch
from . import lua as _redis_lua

if TYPE_CHECKING:
    import redis as _redis

__all__ = ["DEFAULT_PREFIX", "DEFAULT_READ_TIMEOUT", "DEFAULT_TTL", "RedisStore"]

T = TypeVar("T")

DEFAULT_PREFIX = "restartable:"
#: Retention of a run's keys after its last update (the article's 7-day expiry).
DEFAULT_TTL = 7 * 86400.0
#: Seconds to wait for each reply before the attempt counts as failed (URL option ``read_timeout``).
DEFAULT_READ_TIMEOUT = 60.0


def _driver() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise MissingDriver(
            f"the redis:// store needs {exc.name or 'redis-py'}, which is not installed: "
            "pip install 'restartable[redis]'"
        ) from None
    return redis


def _ms(seconds: float) -> str:
    return str(max(0, round(seconds * 1000)))


def _sec(ms: bytes | str) -> float:
    # A time in a script's answer (whole ms: the scripts' protocol, not what is stored).
    return int(ms) / 1000


def _stored_time(fields: dict[bytes, bytes], name: bytes, legacy: bytes) -> float | None:
    """A stored time in seconds, None for "" (a released lease).

    ``name`` is the field in Unix seconds (``b"updated_at_s"``); a run written before
    record format 2 has only ``legacy`` (``b"updated"``), in milliseconds. KeyError when
    the hash has neither.
    """
    value = fields.get(name)
    if value is not None:
        return float(value) if value else None
    value = fields[legacy]
    return int(value) / 1000 if value else None


def _required_time(fields: dict[bytes, bytes], name: bytes, legacy: bytes) -> float:
    value = _stored_time(fields, name, legacy)
    if value is None:
        raise ValueError(f"{name.decode()} is empty")
    return value


@functools.lru_cache(maxsize=64)
def _owner_json(owner: Owner | None) -> str:
    # Canonical, so the acquire script can compare owners as strings (Owner equality).
    return "" if owner is None else json.dumps(owner.to_dict(), sort_keys=True, separators=(",", ":"))


_STATUS_JSON = {s: json.dumps(s) for s in STATUSES}


def _history_tail(rec: Checkpoint) -> str:
    # The history entry minus its leading '{"at":N,' which the script adds from TIME.
    status = _STATUS_JSON.get(rec.status) or json.dumps(rec.status)
    return f'"done":{int(rec.done)},"epoch":{int(rec.epoch)},"failed":{int(rec.failed)},"status":{status}}}'


def _cursor_name(cursor: str) -> str:
    # Percent-encoded: no ':' to confuse the key layout, no glob characters for SCAN,
    # no spaces (the scripts keep the names space-separated). "%" alone, which no
    # encoding produces, stands for the empty name.
    return quote(cursor, safe="", errors="surrogateescape") or "%"


def _text(raw: str) -> bytes:
    # Item keys and cursor names may come from file names with undecodable bytes.
    return raw.encode("utf-8", "surrogateescape")


class RedisStore(Store):
    """The Store contract on Redis, every write one Lua script. Thread-safe (one connection pool)."""

    schemes = ("redis", "rediss")
    options = frozenset({"prefix", "ttl", "retry", "read_timeout"})

    def __init__(
        self,
        driver_url: str,
        *,
        display: str,
        prefix: str = DEFAULT_PREFIX,
        ttl: float = DEFAULT_TTL,
        retry: float = DEFAULT_RETRY_SECONDS,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        read_only: bool = False,
        quick: bool = False,
    ) -> None:
        """Open a client on ``driver_url`` (a redis-py URL without restartable's options).

        Connects lazily: the first operation reaches the server, retrying for ``retry``
        seconds. ``display`` is the redacted URL used in every message. Every reply
        must arrive within ``read_timeout`` seconds (``0`` or None: no deadline), else
        the attempt fails and is retried like a lost connection; a ``socket_timeout``
        in ``driver_url`` overrides it.
        """
        redis = _driver()
        self.display = display
        self._prefix = prefix
        self._ttl_ms = "0" if ttl <= 0 else str(max(1, round(ttl * 1000)))
        self._retry = retry
        self._exc = redis.exceptions
        self._transient: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.BusyLoadingError,
        )
        self._client: _redis.Redis = make_client(
            driver_url,
            display=display,
            retry=retry,
            read_timeout=read_timeout,
            options="prefix, ttl, retry and read_timeout",
        )
        self._index = f"{prefix}runs"
        c = self._client
        self._acquire = c.register_script(_redis_lua.ACQUIRE)
        self._save = c.register_script(_redis_lua.SAVE)
        self._restore = c.register_script(_redis_lua.RESTORE)
        self._renew = c.register_script(_redis_lua.RENEW)
        self._delete = c.register_script(_redis_lua.DELETE)
        self._mark = c.register_script(_redis_lua.MARK)
        # (job, run) -> (instance id, server run_id) seen when this store acquired or
        # restored it: the instance id tells a reset from a loss, the run_id is for the message.
        self._seen: dict[tuple[str, str], tuple[str, str]] = {}
        self._seen_lock = threading.Lock()
        self._last_seq = 0
        # Opening writes nothing (scripts load at their first call, a write): read-only
        # only refuses the writes. quick: see call_with_retry.
        self._quick = quick
        if read_only:
            self._make_read_only()

    @classmethod
    def from_url(cls, url: StoreURL, *, read_only: bool = False) -> Self:
        opts = url.options
        return cls(
            url.driver_url,
            display=url.display,
            prefix=opts.get("prefix", DEFAULT_PREFIX),
            ttl=parse_duration(opts.get("ttl", DEFAULT_TTL), "ttl (retention) of the Redis store"),
            retry=parse_duration(opts.get("retry", DEFAULT_RETRY_SECONDS), "retry budget of the Redis store"),
            read_timeout=read_timeout_of(url),
            read_only=read_only,
            quick=url.quick,
        )

    # -- keys ------------------------------------------------------------------

    def _keys(self, job: str, run: str) -> list[str]:
        p = self._prefix
        return [f"{p}run:{job}:{run}", f"{p}hist:{job}:{run}", self._index, f"{p}instance"]

    def _floored(self, job: str, run: str) -> list[str]:
        """The keys of acquire, delete and restore: the four of every write plus the epoch floor."""
        return [*self._keys(job, run), f"{self._prefix}epoch-floor"]

    def _common(self, job: str, run: str) -> list[str]:
        return [f"{job}\0{run}", f"{self._prefix}markers:{job}:{run}:", self._ttl_ms, str(HISTORY_LIMIT)]

    def _marker_key(self, job: str, run: str, cursor: str) -> str:
        return f"{self._prefix}markers:{job}:{run}:{_cursor_name(cursor)}"

    # -- calling the server ------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries through connection loss; translate the driver's errors."""
        exc_mod = self._exc

        def attempt() -> T:
            try:
                return fn()
            except (exc_mod.AuthenticationError, exc_mod.AuthorizationError) as exc:
                raise PermissionDenied(
                    f"{what}: {self.display} refused the credentials ({exc}): put the right user and "
                    "password in the URL (redis://USER:PASSWORD@host:port/db, or redis://:PASSWORD@... "
                    "for requirepass)"
                ) from None
            except exc_mod.NoPermissionError as exc:
                raise PermissionDenied(
                    f"{what}: {self.display} denied a command ({exc}): the ACL user needs "
                    f"+@read +@write +@scripting +time +info on keys ~{self._prefix}*"
                ) from None
            except exc_mod.BusyLoadingError:
                raise
            except exc_mod.ConnectionError as exc:
                if _is_tls_failure(exc):
                    raise ConfigError(
                        f"{what}: the TLS handshake with {self.display} failed ({exc}): pass the server's "
                        "CA with ?ssl_ca_certs=/path/ca.pem (or ?ssl_cert_reqs=none to skip verification)"
                    ) from None
                raise
            except exc_mod.ResponseError as exc:
                if str(exc).startswith("WRONGTYPE"):
                    raise CheckpointCorrupt(
                        f"{what}: a key under {self._prefix!r} in {self.display} is not one restartable "
                        f"wrote ({exc}); another program uses the prefix: choose another with ?prefix="
                    ) from None
                raise StoreUnavailable(f"{what}: {self.display} refused the write ({exc})") from None

        # call_with_retry makes the first attempt bare (tenacity is set up only after a
        # failure) and logs it; a second bare attempt here would cost one more read_timeout
        # against a silent server and log the failure twice.
        return call_with_retry(
            attempt, seconds=self._retry, transient=self._transient, display=self.display, what=what, quick=self._quick
        )

    def _refusal(self, job: str, run: str, epoch: int, res: list[bytes]) -> BaseException:
        """The error for a script's {"fenced", epoch} or {"missing", instance id, run_id} answer.

        A missing run is lost only when the instance id differs from the one this store
        saw at its acquire (or restore); the same id means the data survived and the run
        was deleted: Fenced. A store that never acquired the run cannot tell, and fences.
        """
        if res[0] == b"fenced":
            return self._fenced(job, run, epoch, int(res[1]))
        instance, server = res[1].decode(), res[2].decode()
        with self._seen_lock:
            seen = self._seen.get((job, run))
        if seen is None or seen[0] == instance:
            return self._fenced(job, run, epoch, None)
        if seen[1] != server:
            how = f"restarted (server run_id {seen[1][:8]} -> {server[:8]}) without persistence and lost every key"
        else:
            how = (
                "lost every key under the prefix without restarting (FLUSHALL or FLUSHDB, eviction "
                "under maxmemory, or a failover to a replica that never received them)"
            )
        return CheckpointLost(
            f"job {job!r} run {run!r}: THE CHECKPOINT WAS LOST: {self.display} {how}. This runner still "
            f"holds epoch {epoch} in memory and writes it back; the run's history and markers are gone. "
            "Enable persistence (appendonly yes) and maxmemory-policy noeviction on that Redis"
        )

    def _seen_server(self, job: str, run: str, instance: bytes, server: bytes) -> None:
        with self._seen_lock:
            self._seen[(job, run)] = (instance.decode(), server.decode())

    # -- records -----------------------------------------------------------------

    def _record(self, job: str, run: str, fields: dict[bytes, bytes]) -> Checkpoint:
        where = f"the checkpoint of job {job!r} run {run!r} in {self.display}"
        body = fields.get(b"body")
        if body is None:
            raise CheckpointCorrupt(f"{where} has no body: reset the run (restartable reset)")
        rec = decode_record(body, where=where)
        try:
            status = fields[b"status"].decode()
            owner = fields[b"owner"]
            if status not in STATUSES or (rec.job, rec.run) != (job, run):
                raise ValueError("status or name")
            return rec.replace(
                epoch=int(fields[b"epoch"]),
                status=status,
                owner=Owner.from_dict(json.loads(owner)) if owner else None,
                started=_required_time(fields, b"started_at_s", b"started"),
                updated=_required_time(fields, b"updated_at_s", b"updated"),
                heartbeat=_required_time(fields, b"heartbeat_at_s", b"heartbeat"),
                lease_expires=_stored_time(fields, b"lease_until_s", b"lease"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointCorrupt(f"{where} has a missing or malformed field ({exc})") from None

    def load(self, job: str, run: str) -> Checkpoint | None:
        key = self._keys(job, run)[0]
        # The client returns bytes (decode_responses is off); redis-py's annotations allow str too.
        fields = cast(
            "dict[bytes, bytes]", self._call(f"loading job {job!r} run {run!r}", lambda: self._client.hgetall(key))
        )
        return self._record(job, run, fields) if fields else None

    def acquire(
        self, job: str, run: str, *, owner: Owner, lease_seconds: float, steal_epoch: int | None = None
    ) -> Checkpoint:
        body = encode_record(self._new_record(job, run, owner, 0.0, lease_seconds))
        args = self._common(job, run) + [
            str(first_epoch()),
            body,
            _owner_json(owner),
            _ms(lease_seconds),
            "" if steal_epoch is None else str(steal_epoch),
            secrets.token_hex(16),
            str(epoch_step()),  # a takeover's random step (base.next_epoch)
        ]
        keys = self._floored(job, run)
        res = self._call(f"acquiring job {job!r} run {run!r}", lambda: self._acquire(keys=keys, args=args))
        if res[0] == b"locked":
            now_ms, held_by, heartbeat, lease = res[1:5]
            holder = Checkpoint(
                job=job,
                run=run,
                epoch=0,
                owner=Owner.from_dict(json.loads(held_by)) if held_by else None,
                heartbeat=_sec(heartbeat or b"0"),
                lease_expires=_sec(lease) if lease else None,
            )
            raise self._locked(holder, _sec(now_ms))
        self._seen_server(job, run, res[1], res[2])
        fields = dict(zip(res[3::2], res[4::2], strict=False))
        return self._record(job, run, fields)

    def _write_args(self, job: str, run: str, record: Checkpoint, lease_seconds: float | None) -> list[str]:
        return self._common(job, run) + [
            str(record.epoch),
            encode_record(record),
            record.status,
            _owner_json(record.owner),
            _ms(record.started),
            str(record.done),
            str(record.failed),
            "" if lease_seconds is None else _ms(lease_seconds),
            _history_tail(record),
            str(self._next_seq()),
        ]

    def _next_seq(self) -> int:
        """A save's sequence number (ARGV[14]): above every one this store object gave before.

        Monotonic microseconds, so that two store objects of one process keep one order
        too; the counter part breaks ties. Only the order of one epoch's saves matters (an
        acquire resets the stored number to 0). Microseconds, not nanoseconds: Lua numbers
        are doubles, exact only below 2**53, which nanoseconds since boot pass after 104
        days of uptime (and two saves could then compare equal); microseconds, never.
        """
        with self._seen_lock:
            self._last_seq = max(self._last_seq + 1, time.monotonic_ns() // 1000)
            return self._last_seq

    def save(self, record: Checkpoint, *, lease_seconds: float | None) -> Checkpoint:
        job, run = record.job, record.run
        args = self._write_args(job, run, record, lease_seconds)  # encodes before any I/O
        keys = self._keys(job, run)
        res = self._call(f"saving job {job!r} run {run!r}", lambda: self._save(keys=keys, args=args))
        if res[0] != b"ok":
            raise self._refusal(job, run, record.epoch, res)
        now = _sec(res[1])
        return record.replace(
            started=_sec(args[8]), updated=now, heartbeat=now, lease_expires=_sec(res[2]) if res[2] else None
        )

    def restore(self, record: Checkpoint, *, lease_seconds: float) -> Checkpoint:
        """Write ``record`` back after :class:`CheckpointLost`, holding the lease.

        Never unconditional: one script writes only while the run is still missing and
        the instance key still says the data was lost (or the run is back at this
        record's epoch: a retried restore). Raises Fenced when the run was reset
        meanwhile, or when another runner created it again.
        """
        job, run = record.job, record.run
        with self._seen_lock:
            seen = self._seen.get((job, run))
        args = self._write_args(job, run, record, lease_seconds) + [
            "" if seen is None else seen[0],
            secrets.token_hex(16),
        ]
        keys = self._floored(job, run)
        # One token for every attempt: a retry can then tell an instance key its own lost
        # attempt made (written back, then reset) from one that a loss left behind.
        res = self._call(f"restoring job {job!r} run {run!r}", lambda: self._restore(keys=keys, args=args))
        if res[0] == b"missing":  # the script found no loss to repair: the run was reset
            raise self._fenced(job, run, record.epoch, None)
        if res[0] != b"ok":
            raise self._refusal(job, run, record.epoch, res)
        self._seen_server(job, run, res[3], res[4])
        now = _sec(res[1])
        return record.replace(
            started=_sec(args[8]), updated=now, heartbeat=now, lease_expires=_sec(res[2]) if res[2] else None
        )

    def renew(self, job: str, run: str, *, epoch: int, lease_seconds: float) -> float:
        args = self._common(job, run) + [str(epoch), _ms(lease_seconds)]
        keys = self._keys(job, run)
        res = self._call(f"renewing the lease of job {job!r} run {run!r}", lambda: self._renew(keys=keys, args=args))
        if res[0] == b"released":
            raise self._released(job, run, epoch)
        if res[0] != b"ok":
            raise self._refusal(job, run, epoch, res)
        return _sec(res[1])

    def delete(self, job: str, run: str, *, epoch: int | None = None) -> bool:
        args = self._common(job, run) + ["" if epoch is None else str(epoch)]
        keys = self._floored(job, run)
        return bool(self._call(f"deleting job {job!r} run {run!r}", lambda: self._delete(keys=keys, args=args)))

    def list_runs(self, job: str | None = None, *, corrupt: list[Unreadable] | None = None) -> list[Checkpoint]:
        def fetch() -> tuple[list[tuple[str, str]], list[dict[bytes, bytes]]]:
            names = []
            for member in cast("list[bytes]", self._client.zrange(self._index, 0, -1)):
                j, _, r = member.decode().partition("\0")
                if job is None or j == job:
                    names.append((j, r))
            pipe = self._client.pipeline(transaction=False)
            for j, r in names:
                pipe.hgetall(self._keys(j, r)[0])
            return names, pipe.execute()

        names, rows = self._call("listing runs", fetch)
        # A row is empty when its keys expired a moment ago; the next write prunes the index.
        records = self._readable(
            ((j, r, (j, r, f)) for (j, r), f in zip(names, rows, strict=False) if f),
            lambda x: self._record(*x),
            corrupt,
        )
        return sorted(records, key=lambda rec: (rec.job, rec.run))

    def history(self, job: str, run: str, *, limit: int = 20) -> list[HistoryEntry]:
        if limit <= 0:
            return []
        key = self._keys(job, run)[1]
        # The scripts trim the list in batches: never read past the limit.
        last = min(limit, HISTORY_LIMIT) - 1
        raw = self._call(f"reading the history of job {job!r} run {run!r}", lambda: self._client.lrange(key, 0, last))
        try:
            entries = [json.loads(e) for e in raw]
            return [
                HistoryEntry(
                    # at_s in seconds; "at" in ms in entries written before record format 2.
                    at=float(e["at_s"]) if "at_s" in e else e["at"] / 1000,
                    epoch=e["epoch"],
                    status=e["status"],
                    done=e["done"],
                    failed=e.get("failed", 0),
                )
                for e in entries
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointCorrupt(
                f"the history of job {job!r} run {run!r} in {self.display} is malformed ({exc})"
            ) from None

    def mark(self, job: str, run: str, cursor: str, key: str, value: Any, *, epoch: int) -> None:
        """Record ``key`` done, fenced on ``epoch``; raises CheckpointLost like ``save``."""
        value_json = dumps(value, what=f"the marker value of {key!r}")
        common = self._common(job, run)
        encoded = _cursor_name(cursor)
        keys = self._keys(job, run) + [common[1] + encoded]  # KEYS[5]: the cursor's marker hash
        args: list[str | bytes] = [*common, str(epoch), encoded, _text(key), value_json]
        res = self._call(f"marking {key!r} in job {job!r} run {run!r}", lambda: self._mark(keys=keys, args=args))
        if res[0] != b"ok":
            raise self._refusal(job, run, epoch, res)

    def markers(self, job: str, run: str, cursor: str) -> dict[str, Any]:
        mkey = self._marker_key(job, run, cursor)
        raw = cast(
            "dict[bytes, bytes]",
            self._call(f"reading the markers of job {job!r} run {run!r}", lambda: self._client.hgetall(mkey)),
        )
        try:
            return {k.decode("utf-8", "surrogateescape"): loads(v) for k, v in raw.items()}
        except ValueError as exc:
            raise CheckpointCorrupt(
                f"a marker of job {job!r} run {run!r} cursor {cursor!r} in {self.display} is malformed ({exc})"
            ) from None

    def now(self) -> float:
        sec, usec = self._call("reading the server clock", self._client.time)
        return sec + usec / 1e6

    def cleanup(self, *, older_than: float, job: str | None = None) -> list[Checkpoint]:
        """Delete completed runs last updated more than ``older_than`` seconds ago, in one round trip.

        Keys also expire by themselves ``ttl`` after their last update, whatever the
        status; this removes completed runs sooner. Each delete is conditional on the
        epoch seen, so a run restarted meanwhile survives.
        """
        cutoff = self.now() - older_than
        old = [r for r in self.list_runs(job, corrupt=[]) if r.status == COMPLETED and r.updated <= cutoff]
        if not old:
            return []

        def delete_all() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for rec in old:
                args = self._common(rec.job, rec.run) + [str(rec.epoch)]
                self._delete(keys=self._floored(rec.job, rec.run), args=args, client=pipe)
            return pipe.execute()

        done = self._call("cleaning up completed runs", delete_all)
        return [rec for rec, removed in zip(old, done, strict=False) if removed]

    @property
    def retry_seconds(self) -> float:
        return float(self._retry)

    def close(self) -> None:
        self._client.close()


# The two helpers below are shared with the Redis work queue (restartable._redis.queue);
# internal, so not in __all__.


def read_timeout_of(url: StoreURL) -> float:
    """The ``read_timeout`` option of a parsed Redis URL in seconds (default 60, ``0``: no deadline).

    Refuses it together with redis-py's ``socket_timeout``, which means the same thing.
    """
    if "read_timeout" in url.options and any(
        k == "socket_timeout" for k, _ in parse_qsl(urlsplit(url.driver_url).query)
    ):
        raise ConfigError(
            f"the Redis URL {url.display} sets both read_timeout and redis-py's socket_timeout, "
            "which mean the same: keep only ?read_timeout=SECONDS"
        )
    return parse_duration(
        url.options.get("read_timeout", DEFAULT_READ_TIMEOUT), "read_timeout (reply deadline) of the Redis URL"
    )


def make_client(driver_url: str, *, display: str, retry: float, read_timeout: float | None, options: str) -> Any:
    """A ``redis.Redis`` for ``driver_url`` (restartable's options already taken out), checked now.

    The one client setup of the Redis store and the Redis work queue: redis-py's own
    retries off (``call_with_retry`` of the caller owns the budget; its default client
    retries every timeout again, so one silent server would cost many deadlines), a
    connect bounded by ``retry`` (1-5 s), and every reply bounded by ``read_timeout``
    (``0`` or None: no deadline); a ``socket_timeout`` in the URL wins. Every mistake in
    the URL is a ConfigError naming ``display`` and ``options`` (restartable's own,
    listed in the message), here rather than at the first command.
    """
    redis = _driver()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    _check_db(driver_url, display)
    try:
        # Query parameters in the URL win over these defaults.
        client = redis.Redis.from_url(
            driver_url,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=max(1.0, min(5.0, retry)),
            # A frozen server (SIGSTOP, a stalled VM, a silent network) accepts the
            # request and never answers: without a deadline the job would hang there.
            socket_timeout=read_timeout or None,
        )
        pool = client.connection_pool
        # The pool makes connections lazily; make one now (unconnected) so an unknown
        # or malformed query parameter is a ConfigError here, not an error mid-run.
        pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError, redis.exceptions.RedisError) as exc:
        # RedisError: redis-py refuses some values itself (ssl_cert_reqs=bogus).
        raise ConfigError(
            f"invalid Redis URL {display}: {' '.join(str(exc).split())}; restartable's options are {options}, "
            "the rest must be redis-py's (ssl_ca_certs, ssl_cert_reqs, ...)"
        ) from None
    return client


def _check_db(driver_url: str, display: str) -> None:
    """Refuse a path that is not a database number: redis-py would quietly open database 0."""
    try:
        path = unquote(urlsplit(driver_url).path)
    except ValueError:
        return  # redis-py reports the malformed URL itself
    if path not in ("", "/") and not (path[1:].isdigit() and path[1:].isascii()):
        raise ConfigError(
            f"invalid Redis URL {display}: the path {path!r} is not a database number; use "
            "redis://host:port/N with N a number (0 when absent)"
        )


def _is_tls_failure(exc: BaseException) -> bool:
    """True when a connection error is a failed TLS verification (retrying cannot help)."""
    import ssl

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
