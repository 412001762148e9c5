"""The checkpoint record and its JSON codec.

A checkpoint belongs to one run of a job, the pair ``(job, run)``. It is written
whole and atomically by a store; nothing in it is pickled. The codec is JSON with
tagged values, so a record round-trips tuples, datetimes, dates, decimals, UUIDs
and bytes (keyset positions keep their types)::

    {"$tuple": [...]}   {"$datetime": "2026-11-27T10:00:00+00:00"}   {"$date": "2026-11-27"}
    {"$decimal": "1.50"}   {"$uuid": "..."}   {"$bytes": "<base64>"}   {"$dict": {...}}

A plain dict whose keys start with ``$`` is wrapped in ``{"$dict": ...}`` so it can
never be mistaken for a tag. NaN and infinities are refused, as are non-string keys,
lists/tuples/dicts nested deeper than :data:`MAX_DEPTH` (or containing themselves) and
ints of more than 4300 digits: each of those could be written but never read back.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from ._text import short_repr
from .errors import CheckpointCorrupt, StateNotSerializable

try:  # the fast JSON encoder and decoder: pip install restartable[speed]
    import msgspec as _msgspec
except ImportError:  # the standard library's json, with the same results
    _msgspec = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_VERSION",
    "MAX_DEPTH",
    "STATUSES",
    "Owner",
    "Checkpoint",
    "HistoryEntry",
    "encode_value",
    "decode_value",
    "dumps",
    "loads",
    "encode_record",
    "decode_record",
]

#: The record's format. 2 (this release): Redis keeps every stored time in Unix seconds
#: under field names that end in their unit (``updated_at_s``, history ``at_s``), as the
#: SQL stores do; the record's JSON is unchanged. A reader accepts every version from
#: :data:`OLDEST_FORMAT_VERSION` up, and refuses a newer one with "upgrade restartable".
FORMAT_VERSION = 2
#: The oldest format still read (version 1: every store up to format 2, Redis times in ms).
OLDEST_FORMAT_VERSION = 1

RUNNING, INTERRUPTED, FAILED, COMPLETED = "running", "interrupted", "failed", "completed"
STATUSES = (RUNNING, INTERRUPTED, FAILED, COMPLETED)


class _Unencodable(Exception):
    def __init__(self, path: str, value: object, reason: str = ""):
        super().__init__(path)
        self.path = path
        self.value = value
        #: Why, when the value's type is not the reason ("nested deeper than ...").
        self.reason = reason


_PLAIN = frozenset({str, int, bool, type(None)})
_INF = (float("inf"), float("-inf"))

#: The deepest nesting of lists, tuples and dicts a checkpoint holds, the state dict
#: included. The JSON codec and the decoder recurse once per level (a tuple or a
#: ``$``-keyed dict costs two), so much deeper state (10,000 levels) would raise
#: RecursionError, and state a little under the interpreter's limit would be written
#: but fail to load from a deeper stack: a checkpoint that cannot be read back. A
#: list that contains itself is caught by the same bound.
MAX_DEPTH = 100
#: CPython refuses to turn an int of more than 4300 digits into text (and back) by
#: default (sys.set_int_max_str_digits). 2**14284 < 10**4300, so an int of at most
#: this many bits always fits, whatever limit the writing process set.
_MAX_INT_BITS = 14_284
_DEEP = f"nested deeper than {MAX_DEPTH} lists, tuples and dicts (or contains itself)"
_LONG_INT = "an int of more than 4300 digits, which JSON text cannot carry back (store it as a str)"

# The fast path: msgspec's JSON encoder and decoder when it is installed (tests set these to
# None to run the standard library's path). msgspec rather than orjson: orjson refuses ints
# wider than 64 bits when writing, and parses them back as floats without a word when
# reading, where msgspec carries them exactly both ways. Whatever msgspec refuses (a lone
# surrogate, an int past the digit limit, "1e400" when reading) goes the standard library's
# way, which gives today's text, value or error message: the fast path changes speed only.
if _msgspec is not None:
    _fast_encode: Callable[[Any], bytes] | None = _msgspec.json.Encoder().encode
    _fast_decode: Callable[[str | bytes], Any] | None = _msgspec.json.Decoder().decode
    _FAST_ERRORS: tuple[type[BaseException], ...] = (
        ValueError,
        TypeError,
        OverflowError,
        RecursionError,
        _msgspec.MsgspecError,
    )
else:
    _fast_encode = _fast_decode = None
    _FAST_ERRORS = ()


def _parse(text: str | bytes, **options: Any) -> Any:
    """``json.loads(text, **options)``, through msgspec when it is installed.

    msgspec is stricter than ``json`` (never NaN, lone surrogates or out-of-range
    floats), so what it refuses is handed to ``json``, which accepts or refuses it as
    it always did. ``options`` are json.loads's (``parse_constant``).
    """
    decode = _fast_decode
    if decode is not None:
        try:
            return decode(text)
        except _FAST_ERRORS:
            pass  # json says what it makes of it, with its own message
    return json.loads(text, **options)


def _enc(value: Any, depth: int = 0) -> Any:
    """encode_value without path bookkeeping: the hot path of every checkpoint."""
    t = type(value)
    if t in _PLAIN:
        return value
    if t is float:
        if value != value or value in _INF:
            raise _Unencodable("$", value)
        return value
    if t is dict:
        if depth >= MAX_DEPTH:
            raise _Unencodable("$", value, _DEEP)
        out = {}
        dollar = False
        for k, v in value.items():
            if type(k) is not str:
                raise _Unencodable("$", k)
            if k[:1] == "$":
                dollar = True
            # Plain values and finite floats inline (x - x is NaN for NaN and infinities):
            # a call per value would cost more than the copy.
            out[k] = v if (tv := type(v)) in _PLAIN or (tv is float and v - v == 0.0) else _enc(v, depth + 1)
        return {"$dict": out} if dollar else out
    if t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise _Unencodable("$", value, _DEEP)
        items = [
            v if (tv := type(v)) in _PLAIN or (tv is float and v - v == 0.0) else _enc(v, depth + 1) for v in value
        ]
        return items if t is list else {"$tuple": items}
    if t is _dt.datetime:
        return {"$datetime": value.isoformat()}
    if t is _dt.date:
        return {"$date": value.isoformat()}
    if t is Decimal:
        if not value.is_finite():
            raise _Unencodable("$", value)
        return {"$decimal": str(value)}
    if t is uuid.UUID:
        return {"$uuid": str(value)}
    if t is bytes:
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    raise _Unencodable("$", value)


def _locate(value: Any, path: str, depth: int = 0) -> _Unencodable | None:
    """The path of the first value :func:`_enc` refuses, or of an over-long int (the slow path)."""
    t = type(value)
    if (t is dict or t is list or t is tuple) and depth >= MAX_DEPTH:
        return _Unencodable(path, value, _DEEP)
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                return _Unencodable(f"{path}[{_short(k)}]", k)
            found = _locate(v, f"{path}[{_short(k)}]", depth + 1)
            if found:
                return found
        return None
    if t is list or t is tuple:
        for i, v in enumerate(value):
            found = _locate(v, f"{path}[{i}]", depth + 1)
            if found:
                return found
        return None
    if t is int and value.bit_length() > _MAX_INT_BITS:
        return _Unencodable(path, value, _LONG_INT)
    try:
        _enc(value)
    except _Unencodable:
        return _Unencodable(path, value)
    return None


def _find(value: Any, path: str) -> _Unencodable:
    """The refusal to report for ``value``, located as well as the stack allows."""
    try:
        found = _locate(value, path)
    except RecursionError:  # the caller's own stack is already deep
        found = None
    return found or _Unencodable(path, value, "nested too deeply for this thread's stack")


def encode_value(value: Any, path: str = "$") -> Any:
    """Turn ``value`` into plain JSON data with tagged values. Raises on anything else."""
    try:
        return _enc(value)
    except (_Unencodable, RecursionError):
        raise _find(value, path) from None


def _short(value: object) -> str:
    """A repr for a message: bounded in length and depth, cut with an ellipsis, never raising."""
    return short_repr(value)


def _json_text(data: Any, value: Any, path: str, **options: Any) -> str:
    """``json.dumps(data)``, refusing ints that no reader could parse back.

    ``value`` is what ``data`` was encoded from (where to look for the culprit).
    """
    try:
        text = json.dumps(data, allow_nan=False, **options)
    except (ValueError, RecursionError):  # an int over this process's digit limit
        raise _find(value, path) from None
    limit = sys.get_int_max_str_digits()
    if limit == 0 or limit > 4300:  # raised here: the text may hold ints a reader refuses
        found = _locate(value, path)
        if found:
            raise found
    return text


def _clip(path: str) -> str:
    """A key path short enough for a one-line message (a deep one is 100 levels long)."""
    return path if len(path) <= 120 else f"{path[:80]}...{path[-30:]}"


def _problem(exc: _Unencodable) -> str:
    return exc.reason or f"a {type(exc.value).__name__} ({_short(exc.value)}), which a JSON checkpoint cannot hold"


_TAGS: dict[str, Any] = {
    "$datetime": _dt.datetime.fromisoformat,
    "$date": _dt.date.fromisoformat,
    "$decimal": Decimal,
    "$uuid": uuid.UUID,
    "$bytes": lambda v: base64.b64decode(v.encode("ascii"), validate=True),
}


#: What parsed JSON holds besides lists and dicts: returned as they are, without a call.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def decode_value(data: Any) -> Any:
    """The inverse of :func:`encode_value`, on parsed JSON data. Raises ValueError on a bad tag.

    ``data`` is not changed: the result is built anew.
    """
    t = type(data)
    # Scalars are taken inline rather than through a call each: a state's lists of numbers
    # are most of what a typical record holds.
    if t is list:
        return [v if type(v) in _SCALARS else decode_value(v) for v in data]
    if t is not dict:
        return data
    if len(data) == 1:
        ((tag, v),) = data.items()
        if tag == "$dict" and type(v) is dict:
            return {k: x if type(x) in _SCALARS else decode_value(x) for k, x in v.items()}
        if tag == "$tuple" and type(v) is list:
            return tuple([x if type(x) in _SCALARS else decode_value(x) for x in v])
        conv = _TAGS.get(tag)
        if conv is not None and type(v) is str:
            return conv(v)
    for k in data:
        if k[:1] == "$":
            raise ValueError(f"unknown tag in {sorted(data)!r}")
    return {k: x if type(x) in _SCALARS else decode_value(x) for k, x in data.items()}


def dumps(value: Any, *, what: str = "value") -> str:
    """Canonical JSON text of ``value`` (sorted keys, no spaces) with tagged values.

    Raises :class:`StateNotSerializable` naming the key path of the first bad value.
    """
    try:
        data = encode_value(value)
        return _json_text(data, value, "$", sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except _Unencodable as exc:
        raise StateNotSerializable(
            f"{what} at {_clip(exc.path)} is {_problem(exc)}: store str, int, float, bool, None, list, dict "
            "(str keys), tuple, datetime, date, Decimal, UUID or bytes"
        ) from None


def loads(text: str | bytes) -> Any:
    """Parse canonical JSON text written by :func:`dumps`. Raises ``ValueError`` when malformed."""
    return decode_value(_parse(text))


@dataclass(frozen=True)
class Owner:
    """Who holds a run's lease: the process, and the pod when Kubernetes names one.

    ``boot_id`` and ``pidns`` tell whether ``pid`` can be checked from here: a pid
    means the same process only on the same boot and in the same pid namespace,
    and ``start_time`` (clock ticks since boot) tells a reused pid apart.
    """

    host: str
    pid: int
    boot_id: str = ""
    pidns: str = ""
    start_time: int = 0
    pod: str = ""
    pod_uid: str = ""
    node: str = ""
    #: Random per runner (per Job), so two runners in one process are two owners.
    token: str = ""

    def describe(self) -> str:
        where = f"pod {self.pod} on {self.node or self.host}" if self.pod else f"host {self.host}"
        return f"pid {self.pid} on {where}"

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (asdict would deep-copy: this runs on every checkpoint)."""
        out: dict[str, Any] = {"host": self.host, "pid": self.pid}
        for k in _OWNER_OPTIONAL:
            v = getattr(self, k)
            if v:
                out[k] = v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Owner:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


_OWNER_OPTIONAL = ("boot_id", "pidns", "start_time", "pod", "pod_uid", "node", "token")


@dataclass(frozen=True)
class HistoryEntry:
    """One saved checkpoint of a run, as ``show`` lists them (newest first)."""

    at: float
    epoch: int
    status: str
    done: int
    failed: int = 0


@dataclass(frozen=True)
class Checkpoint:
    """Everything saved for one run of a job, written atomically as one record.

    ``positions`` maps each cursor name to ``{"offset": items done, "finished": bool}``
    plus cursor-specific keys (a keyset source adds ``"key"``). ``fingerprints`` maps
    cursor names to the fingerprint of their input. ``epoch`` is the fencing token:
    every save is a compare-and-set on it. ``lease_expires`` and ``heartbeat`` are
    times on the store's clock (Unix seconds); ``lease_expires`` is None when no
    runner holds the lease.
    """

    job: str
    run: str
    epoch: int
    status: str = RUNNING
    positions: dict[str, dict[str, Any]] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    owner: Owner | None = None
    started: float = 0.0
    updated: float = 0.0
    heartbeat: float = 0.0
    lease_expires: float | None = None
    fingerprints: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def replace(self, **changes: Any) -> Checkpoint:
        """A copy with ``changes`` (shallow: the dicts are shared, as with dataclasses.replace).

        Hand-rolled because a save makes three copies and ``dataclasses.replace`` (which
        introspects the fields on each call) costs about 10 µs apiece: a tenth of a
        save's Python time with ``every=1``.
        """
        if not changes.keys() <= _CHECKPOINT_FIELDS:
            raise TypeError(f"Checkpoint has no field(s) {sorted(changes.keys() - _CHECKPOINT_FIELDS)}")
        new = object.__new__(Checkpoint)
        new.__dict__.update(self.__dict__, **changes)
        return new

    @property
    def finished(self) -> bool:
        return self.status == COMPLETED

    def history_entry(self) -> HistoryEntry:
        return HistoryEntry(at=self.updated, epoch=self.epoch, status=self.status, done=self.done, failed=self.failed)


_CHECKPOINT_FIELDS = frozenset(f.name for f in fields(Checkpoint))


def _record_data(rec: Checkpoint) -> dict[str, Any]:
    """The record as JSON data. Only positions and state hold user values that need the codec."""
    data = {
        "version": rec.version,
        "job": rec.job,
        "run": rec.run,
        "epoch": rec.epoch,
        "status": rec.status,
        "positions": encode_value(rec.positions, "$['positions']"),
        "state": encode_value(rec.state, "$['state']"),
        "done": rec.done,
        "failed": rec.failed,
        "owner": rec.owner.to_dict() if rec.owner else None,
        # Unix seconds; the names say so (format 2), as every store's own time fields do.
        "started_at_s": rec.started,
        "updated_at_s": rec.updated,
        "heartbeat_at_s": rec.heartbeat,
        "lease_expires_at_s": rec.lease_expires,
        "fingerprints": rec.fingerprints,
    }
    return data


#: Format 1's time keys (no unit in the name) -> format 2's.
_TIME_KEYS = {
    "started": "started_at_s",
    "updated": "updated_at_s",
    "heartbeat": "heartbeat_at_s",
    "lease_expires": "lease_expires_at_s",
}


def _finite(x: float | None) -> bool:
    return x is None or x - x == 0  # inf - inf and NaN - NaN are NaN


def encode_record(rec: Checkpoint) -> str:
    """The record as JSON text. Raises :class:`StateNotSerializable`.

    The text is not canonical (keys in the record's order, and its bytes depend on
    whether msgspec is installed): a record is compared by value, never as text.
    """
    try:
        encoded = _record_data(rec)
        encode = _fast_encode
        # msgspec writes NaN and infinities as null where json refuses them (the user's values
        # were checked by encode_value; the record's own times are checked here), and it takes
        # no notice of a raised int digit limit, which the standard library's path enforces.
        if (
            encode is not None
            and 0 < sys.get_int_max_str_digits() <= 4300
            and _finite(rec.updated)
            and _finite(rec.heartbeat)
            and _finite(rec.started)
            and _finite(rec.lease_expires)
        ):
            try:
                return encode(encoded).decode()
            except _FAST_ERRORS:
                pass  # a lone surrogate, an int past the digit limit: the path below escapes or names it
        # Not sorted, ASCII-escaped: the C encoder's fastest path (a record is not compared as text).
        return _json_text(encoded, {"positions": rec.positions, "state": rec.state}, "$", separators=(",", ":"))
    except _Unencodable as exc:
        path = _clip(exc.path.replace("$['state']", "job.state", 1))
        raise StateNotSerializable(
            f"job {rec.job!r} run {rec.run!r}: {path} is {_problem(exc)}: store str, int, float, bool, "
            "None, list, dict with str keys, tuple, datetime, date, Decimal, UUID or bytes"
        ) from None


_TYPES: dict[str, tuple[type, ...]] = {
    "job": (str,),
    "run": (str,),
    "epoch": (int,),
    "status": (str,),
    "positions": (dict,),
    "state": (dict,),
    "done": (int,),
    "failed": (int,),
    "started": (int, float),
    "updated": (int, float),
    "heartbeat": (int, float),
    "fingerprints": (dict,),
}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number a checkpoint can hold")


def decode_record(text: str | bytes, *, where: str = "checkpoint", expect: tuple[str, str] | None = None) -> Checkpoint:
    """Parse and validate a record. Raises :class:`CheckpointCorrupt` naming what is wrong.

    ``expect`` is the ``(job, run)`` the record was stored under: a record that names
    another run is refused too (it was copied or planted in the wrong place).
    """
    try:
        data = decode_value(_parse(text, parse_constant=_no_constant))
    except (ValueError, UnicodeDecodeError, TypeError, ArithmeticError, RecursionError) as exc:
        raise CheckpointCorrupt(f"{where} is not valid checkpoint JSON ({str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise CheckpointCorrupt(f"{where} is not a JSON object")
    version = data.get("version")
    if type(version) is not int or not OLDEST_FORMAT_VERSION <= version <= FORMAT_VERSION:
        if type(version) is int and version > FORMAT_VERSION:
            raise CheckpointCorrupt(
                f"{where} has format version {version}, newer than this restartable understands "
                f"({FORMAT_VERSION}): upgrade restartable"
            )
        raise CheckpointCorrupt(f"{where} has an unknown format version {version!r}")
    if version >= 2:  # the time keys name their unit; read under format 1's names below
        for old_key, new_key in _TIME_KEYS.items():
            if new_key in data:
                data[old_key] = data.pop(new_key)
            else:
                data.pop(old_key, None)  # format 2 never writes the old name: do not trust one
    for key, types in _TYPES.items():
        value = data.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise CheckpointCorrupt(f"{where}: field {key!r} is missing or has the wrong type")
    if data["status"] not in STATUSES:
        raise CheckpointCorrupt(f"{where}: unknown status {data['status']!r}")
    for name, pos in data["positions"].items():
        if not isinstance(pos, dict) or type(pos.get("offset", 0)) is not int or pos.get("offset", 0) < 0:
            raise CheckpointCorrupt(f"{where}: the position of iteration {name!r} is not valid ({pos!r:.80})")
    if expect is not None and (data["job"], data["run"]) != expect:
        raise CheckpointCorrupt(
            f"{where} holds the record of job {data['job']!r} run {data['run']!r}, not of job {expect[0]!r} "
            f"run {expect[1]!r}: it was copied into the wrong place; restore the right one or reset the run"
        )
    lease = data.get("lease_expires")
    owner = data.get("owner")
    try:
        return Checkpoint(
            job=data["job"],
            run=data["run"],
            epoch=data["epoch"],
            status=data["status"],
            positions=data["positions"],
            state=data["state"],
            done=data["done"],
            failed=data["failed"],
            owner=Owner.from_dict(owner) if isinstance(owner, dict) else None,
            started=float(data["started"]),
            updated=float(data["updated"]),
            heartbeat=float(data["heartbeat"]),
            lease_expires=float(lease) if isinstance(lease, (int, float)) else None,
            fingerprints=data["fingerprints"],
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointCorrupt(f"{where}: {exc}") from None
