"""The record codec's fast path (msgspec) against the standard library's, value for value.

Every test that compares runs the codec twice: as installed (msgspec's encoder and
decoder) and with them switched off (``_fast_encode`` / ``_fast_decode`` set to None,
as on an install without the ``speed`` extra). Both must give the same values, the
same refusals with the same messages, and read each other's text: a record written
before the fast path (ASCII-escaped standard-library JSON) still loads.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import restartable._checkpoint as codec
from restartable._checkpoint import Checkpoint, Owner, decode_record, dumps, encode_record, loads
from restartable.errors import CheckpointCorrupt, StateNotSerializable

FAST = codec._fast_encode is not None


@pytest.fixture(autouse=True)
def _require_the_fast_path():
    if not FAST:
        if os.environ.get("CI") == "true":
            pytest.fail("msgspec is not installed: .ci/run installs .[dev], which must include it (the speed extra)")
        pytest.skip("msgspec is not installed (pip install restartable[speed])")


def stdlib(fn: Callable[[], Any]) -> Any:
    """``fn()`` with the fast encoder and decoder switched off."""
    saved = codec._fast_encode, codec._fast_decode
    codec._fast_encode = codec._fast_decode = None
    try:
        return fn()
    finally:
        codec._fast_encode, codec._fast_decode = saved


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except (StateNotSerializable, CheckpointCorrupt, ValueError) as exc:
        return type(exc).__name__, str(exc)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (True is not 1, a tuple not a list)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return repr(a) == repr(b)
    return a == b


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    # One lone surrogate per string: a high and a low one side by side come back as the
    # one character they encode in UTF-16, on both paths alike (json's own behaviour).
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=1),
    st.binary(max_size=32),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.uuids(),
    st.dates(),
    st.datetimes(timezones=st.one_of(st.none(), st.just(dt.UTC))),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
        st.dictionaries(st.sampled_from(["$tuple", "$x", "$dict", "a"]), inner, max_size=3),
    ),
    max_leaves=20,
)


def record(state: dict[str, Any], **changes: Any) -> Checkpoint:
    rec = Checkpoint(
        job="j",
        run="r",
        epoch=5,
        state=state,
        positions={"0": {"offset": 3, "finished": False, "key": (2**70, "é", dt.date(2026, 1, 2))}},
        owner=Owner(host="h", pid=1, boot_id="b"),
        fingerprints={"0": {"len": 10, "samples": {"0": "ab"}}},
        started=1.0,
        updated=2.5,
        heartbeat=2.5,
        lease_expires=32.5,
    )
    return rec.replace(**changes)


@given(st.dictionaries(st.text(max_size=8), values, max_size=6))
@settings(max_examples=300, deadline=None)
def test_both_paths_round_trip_every_record_exactly_and_read_each_other(state):
    rec = record(state)
    fast_text = encode_record(rec)
    slow_text = stdlib(lambda: encode_record(rec))
    for text in (fast_text, slow_text):
        for back in (decode_record(text), stdlib(lambda t=text: decode_record(t))):
            assert same(back.state, rec.state) and same(back.positions, rec.positions)
            assert back == rec


@given(values)
@settings(max_examples=200, deadline=None)
def test_loads_reads_the_same_values_on_both_paths(value):
    text = dumps(value)
    assert same(loads(text), value) and same(stdlib(lambda: loads(text)), value)


# A record as the codec wrote it before the fast path: ASCII-escaped, spaces after separators.
OLD = (
    '{"version": 1, "job": "j", "run": "r", "epoch": 7, "status": "running", "positions": {"0": '
    '{"offset": 4, "finished": false, "key": {"$tuple": [18446744073709551621, "\\u00e9"]}}}, '
    '"state": {"big": -1267650600228229401496703205376, "when": {"$datetime": "2026-11-27T02:00:00+00:00"}, '
    '"d": {"$decimal": "1.50"}, "b": {"$bytes": "AAE="}, "u": {"$uuid": "12345678-1234-5678-1234-567812345678"}, '
    '"s": "\\ud800", "x": {"$dict": {"$tag": [1, 2.5]}}}, "done": 4, "failed": 0, "owner": {"host": "h", "pid": 1}, '
    '"started": 1.0, "updated": 2.0, "heartbeat": 2.0, "lease_expires": null, "fingerprints": {}}'
)


def test_a_record_written_before_the_fast_path_still_loads():
    want = {
        "big": -(2**100),
        "when": dt.datetime(2026, 11, 27, 2, tzinfo=dt.UTC),
        "d": Decimal("1.50"),
        "b": b"\x00\x01",
        "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "s": "\ud800",
        "x": {"$tag": [1, 2.5]},
    }
    for rec in (decode_record(OLD), stdlib(lambda: decode_record(OLD))):
        assert same(rec.state, want)
        assert same(rec.positions["0"]["key"], (2**64 + 5, "é"))


@pytest.mark.parametrize(
    "state",
    [{"n": 2**64}, {"n": -(2**64) - 1}, {"n": 10**4299}, {"k": ("a", b"\xff", Decimal("-0.000"))}],
    ids=["u64+1", "i64-1", "4300-digits", "tuple"],
)
def test_ints_wider_than_64_bits_round_trip_through_the_fast_path(state):
    rec = record(state)
    text = encode_record(rec)
    assert "é" in text  # msgspec wrote it (json escapes non-ASCII)
    assert same(decode_record(text).state, state) and same(stdlib(lambda: decode_record(text)).state, state)


def test_a_lone_surrogate_goes_the_standard_way_and_round_trips():
    rec = record({"s": "lone \udc80 surrogate"})
    text = encode_record(rec)  # msgspec refuses to write it as UTF-8; json escapes it
    assert text == stdlib(lambda: encode_record(rec))
    assert decode_record(text).state == {"s": "lone \udc80 surrogate"}


@pytest.mark.parametrize(
    "state",
    [
        {"x": float("nan")},
        {"x": [1, float("inf")]},
        {"x": object()},
        {"x": {1: 2}},
        {"x": {1, 2}},
        {"x": Decimal("NaN")},
        {"x": 10**4300},
    ],
    ids=["nan", "inf", "object", "int-key", "set", "decimal-nan", "4301-digits"],
)
def test_refusals_and_their_messages_are_the_same_on_both_paths(state):
    rec = record(state)
    fast = outcome(lambda: encode_record(rec))
    assert fast[0] == "StateNotSerializable"
    assert fast == stdlib(lambda: outcome(lambda: encode_record(rec)))
    assert outcome(lambda: dumps(state)) == stdlib(lambda: outcome(lambda: dumps(state)))


@pytest.mark.parametrize("field", ["updated", "heartbeat", "started", "lease_expires"])
def test_a_record_time_that_is_not_finite_is_never_written_as_null(field):
    # msgspec would write NaN as null (a lease_expires of null is a released lease):
    # the fast path leaves such a record to json, which refuses it as it always did.
    rec = record({}, **{field: float("nan")})
    fast = outcome(lambda: encode_record(rec))
    assert fast[0] != "ok" or "NaN" in fast[1]
    assert fast == stdlib(lambda: outcome(lambda: encode_record(rec)))


def test_a_raised_int_digit_limit_is_enforced_on_the_fast_path_too():
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        rec = record({"n": 10**5000})
        fast = outcome(lambda: encode_record(rec))
        assert fast[0] == "StateNotSerializable" and "4300 digits" in fast[1]
        assert fast == stdlib(lambda: outcome(lambda: encode_record(rec)))
    finally:
        sys.set_int_max_str_digits(old)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"version": 1, "x": NaN}',
        '{"version": 1, "x": Infinity}',
        OLD.replace('"done": 4', '"done": 1e400'),
        OLD.replace('"done": 4', '"done": 4, "done": 5'),
        OLD.replace('"s": "\\ud800"', '"s": "\x01"'),
        OLD.replace('"b": {"$bytes": "AAE="}', '"b": {"$bytes": "***"}'),
        OLD.replace('"d": {"$decimal": "1.50"}', '"d": {"$nope": "1.50"}'),
        "[" * 5000 + "]" * 5000,
        "\ufeff" + OLD,
    ],
    ids=[
        "empty",
        "truncated",
        "array",
        "nan",
        "infinity",
        "1e400",
        "duplicate-key",
        "control-char",
        "bad-bytes",
        "unknown-tag",
        "deep",
        "bom",
    ],
)
def test_malformed_text_gives_the_same_answer_on_both_paths(text):
    for t in (text, text.encode("utf-8", "surrogatepass")):
        assert outcome(lambda t=t: decode_record(t)) == stdlib(lambda t=t: outcome(lambda: decode_record(t)))


def test_invalid_utf8_bytes_give_the_same_answer_on_both_paths():
    raw = OLD.encode().replace(b'"h"', b'"\xff"')
    assert outcome(lambda: decode_record(raw)) == stdlib(lambda: outcome(lambda: decode_record(raw)))


def test_without_msgspec_installed_the_codec_uses_the_standard_library():
    code = (
        "import sys; sys.modules['msgspec'] = None\n"  # import msgspec now raises ImportError
        "import restartable._checkpoint as c\n"
        "assert c._fast_encode is None and c._fast_decode is None\n"
        "rec = c.Checkpoint(job='j', run='r', epoch=1, state={'n': 2**70, 't': (1, 'é')})\n"
        "text = c.encode_record(rec)\n"
        "assert '\\\\u00e9' in text, text\n"  # the standard library's ASCII-escaped text
        "assert c.decode_record(text) == rec\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_fast_path_is_the_one_taken_when_installed():
    rec = record({"name": "é"})
    assert "é" in encode_record(rec)  # msgspec writes UTF-8; json would have escaped it
    assert "\\u00e9" in stdlib(lambda: encode_record(rec))
    assert json.loads(encode_record(rec))["state"] == {"name": "é"}
