"""The record codec: JSON only, typed values round-trip, bad documents are refused."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restartable._checkpoint import Checkpoint, Owner, decode_record, dumps, encode_record, loads
from restartable.errors import CheckpointCorrupt, StateNotSerializable

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.binary(max_size=64),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.uuids(),
    st.dates(),
    st.datetimes(timezones=st.one_of(st.none(), st.just(dt.timezone.utc))),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
    ),
    max_leaves=20,
)


@given(values)
@settings(max_examples=300, deadline=None)
def test_codec_round_trips_every_value_it_accepts(value):
    assert loads(dumps(value)) == value


@given(st.dictionaries(st.text(max_size=8), values, max_size=6))
@settings(max_examples=100, deadline=None)
def test_record_round_trips(state):
    rec = Checkpoint(
        job="j",
        run="r",
        epoch=5,
        state=state,
        positions={"0": {"offset": 3, "key": (1, "a")}},
        owner=Owner(host="h", pid=1, boot_id="b"),
        started=1.0,
        updated=2.0,
        heartbeat=2.0,
    )
    back = decode_record(encode_record(rec))
    assert back == rec


@pytest.mark.parametrize("bad", [object(), {1: "int key"}, float("nan"), float("inf"), {1, 2}, Decimal("NaN")])
def test_unencodable_values_are_refused(bad):
    with pytest.raises(StateNotSerializable):
        dumps({"k": bad})


def test_error_names_the_key_path():
    rec = Checkpoint(job="j", run="r", epoch=1, state={"a": {"b": [1, object()]}})
    with pytest.raises(StateNotSerializable, match=r"job.state\['a'\]\['b'\]\[1\]"):
        encode_record(rec)


def test_tag_shaped_user_dicts_survive():
    value = {"$tuple": [1, 2], "$x": 1}
    assert loads(dumps(value)) == value
    assert loads(dumps({"$bytes": "not base64"})) == {"$bytes": "not base64"}


def test_typed_values_keep_types():
    v = (
        1,
        dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        Decimal("1.10"),
        uuid.UUID(int=1),
        b"x",
        dt.date(2026, 1, 2),
    )
    back = loads(dumps(v))
    assert back == v and [type(x) for x in back] == [type(x) for x in v]


GOOD = json.loads(encode_record(Checkpoint(job="j", run="r", epoch=1, started=1.0, updated=1.0, heartbeat=1.0)))


@pytest.mark.parametrize(
    "doc,match",
    [
        ("", "not valid"),
        ("{", "not valid"),
        ("[]", "not a JSON object"),
        (json.dumps({**GOOD, "version": 99}), "upgrade"),
        (json.dumps({**GOOD, "version": "1"}), "unknown format"),
        (json.dumps({**GOOD, "epoch": "5"}), "epoch"),
        (json.dumps({**GOOD, "status": "weird"}), "status"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "positions"}), "positions"),
        (json.dumps({**GOOD, "done": True}), "done"),
        (b"\xff\xfe garbage", "not valid"),
    ],
)
def test_invalid_documents_are_refused(doc, match):
    with pytest.raises(CheckpointCorrupt, match=match):
        decode_record(doc)


def test_never_pickle():
    import restartable._checkpoint as mod

    assert "pickle" not in open(mod.__file__).read().replace("never pickle", "").replace("nothing in it is pickled", "")
