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
import reprlib
import sys
import uuid
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from .errors import CheckpointCorrupt, StateNotSerializable

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

FORMAT_VERSION = 1

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
            out[k] = v if type(v) in _PLAIN else _enc(v, depth + 1)
        return {"$dict": out} if dollar else out
    if t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise _Unencodable("$", value, _DEEP)
        items = [v if type(v) in _PLAIN else _enc(v, depth + 1) for v in value]
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
    """A repr for a message: bounded in length and depth, never raising."""
    try:
        return reprlib.repr(value)
    except (ValueError, RecursionError):  # an int too long for text, a pathological __repr__
        return f"<{type(value).__name__}>"


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


def decode_value(data: Any) -> Any:
    """The inverse of :func:`encode_value`, on parsed JSON data. Raises ValueError on a bad tag."""
    t = type(data)
    if t is list:
        return [decode_value(v) for v in data]
    if t is not dict:
        return data
    if len(data) == 1:
        ((tag, v),) = data.items()
        if tag == "$dict" and type(v) is dict:
            return {k: decode_value(x) for k, x in v.items()}
        if tag == "$tuple" and type(v) is list:
            return tuple(decode_value(x) for x in v)
        conv = _TAGS.get(tag)
        if conv is not None and type(v) is str:
            return conv(v)
    if any(k.startswith("$") for k in data):
        raise ValueError(f"unknown tag in {sorted(data)!r}")
    return {k: decode_value(x) for k, x in data.items()}


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
    return decode_value(json.loads(text))


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
        "started": rec.started,
        "updated": rec.updated,
        "heartbeat": rec.heartbeat,
        "lease_expires": rec.lease_expires,
        "fingerprints": rec.fingerprints,
    }
    return data


def encode_record(rec: Checkpoint) -> str:
    """The record as canonical JSON text. Raises :class:`StateNotSerializable`."""
    try:
        encoded = _record_data(rec)
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
        data = decode_value(json.loads(text, parse_constant=_no_constant))
    except (ValueError, UnicodeDecodeError, TypeError, ArithmeticError, RecursionError) as exc:
        raise CheckpointCorrupt(f"{where} is not valid checkpoint JSON ({str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise CheckpointCorrupt(f"{where} is not a JSON object")
    version = data.get("version")
    if version != FORMAT_VERSION:
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise CheckpointCorrupt(
                f"{where} has format version {version}, newer than this restartable understands "
                f"({FORMAT_VERSION}): upgrade restartable"
            )
        raise CheckpointCorrupt(f"{where} has an unknown format version {version!r}")
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
