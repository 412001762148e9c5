"""Every name the grammar allows round-trips through every store (issue 12, defect 4).

The file store once took the run name from a file name at its first ``.ckpt``: a run
named ``v1.ckpts``, ``a.ckpt.prev`` or ``2026-12-04.ckpt`` completed (answered from the
writer's in-memory copy) and then failed to load in a fresh process with
CheckpointCorrupt. The property here writes a few runs whose names are drawn from the
grammar with a strong bias toward our own suffixes (``.ckpt``, ``.prev``, ``.lock``,
``.markers.<hex>.jsonl``, ``.shard-0-of-2`` ...), dots and the longest names, closes the
store, and reads everything back through a FRESH store object on the same URL: load,
list_runs under the exact job and run, history, markers, a fenced delete of one run that
leaves its look-alike neighbours whole, and the delete of the rest.

One store per test function (hypothesis runs many examples on it); each example starts
by deleting the names it is about to use, so a replayed or shrunk example starts clean.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from restartable._checkpoint import COMPLETED, Owner
from restartable._names import check_name
from restartable.stores import open_store

ME = Owner(host="host-a", pid=111)

_FIRST = string.ascii_letters + string.digits
_REST = _FIRST + "._-"
#: What our stores and runners append to names, or name their own keys and files with.
SUFFIXES = (
    ".ckpt",
    ".prev",
    ".ckpt.prev",
    ".tmp",
    ".lock",
    ".done",
    ".shard-0-of-2",
    ".shard-1-of-2",
    ".markers.",
    ".markers.63",
    ".markers.63.jsonl",
    ".jsonl",
    ".0123456789abcdef.tmp",
    ".ckpt.0123456789abcdef.tmp",
    "-wal",
    "-shm",
    ".db",
    "..",
    ".",
    "-",
    "_",
)
#: Words our key layouts use (redis: run:, hist:, markers:, runs).
WORDS = ("run", "runs", "hist", "markers", "ckpt", "lock", "prev")


def _name(first: str, pieces: list[str], pad_to: int | None) -> str:
    name = first + "".join(pieces)
    if pad_to is not None and len(name) < pad_to:
        # The longest names, ending in the drawn suffixes: file names near the 255-byte limit.
        tail = "".join(pieces)[-40:]
        name = (first * pad_to)[: pad_to - len(tail)] + tail
    return check_name(name[:128], "test name")


def names() -> st.SearchStrategy[str]:
    """Names from the grammar ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``, biased to our suffixes."""
    piece = st.one_of(
        st.sampled_from(SUFFIXES),
        st.sampled_from(WORDS),
        st.text(_REST, min_size=1, max_size=6),
    )
    return st.builds(
        _name,
        st.sampled_from(_FIRST),
        st.lists(piece, max_size=5),
        st.one_of(st.none(), st.integers(100, 128)),
    )


@st.composite
def name_sets(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A few (job, run) pairs: a drawn run, runs named like its files, a job named like another's."""
    job = draw(names())
    base = draw(names())
    runs = [base]
    for suffix in draw(st.lists(st.sampled_from(SUFFIXES), max_size=2)):
        runs.append((base + suffix)[:128])
    runs += draw(st.lists(names(), max_size=1))
    pairs = [(job, run) for run in runs]
    if draw(st.booleans()):
        pairs.append(((job + draw(st.sampled_from(SUFFIXES)))[:128], base))
    return list(dict.fromkeys(pairs))  # unique, in order


def _write(url: str, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """acquire, mark, save completed (lease released) for each pair; the epochs written."""
    epochs = {}
    store = open_store(url)
    try:
        for job, run in pairs:
            store.delete(job, run)  # a replayed example starts clean
        for job, run in pairs:
            rec = store.acquire(job, run, owner=ME, lease_seconds=60)
            store.mark(job, run, run, job, [job, run], epoch=rec.epoch)
            store.save(rec.replace(status=COMPLETED, done=7, state={"job": job, "run": run}), lease_seconds=None)
            epochs[(job, run)] = rec.epoch
    finally:
        store.close()
    return epochs


def _check_present(store, job: str, run: str, epoch: int) -> None:
    rec = store.load(job, run)
    assert rec is not None, f"{job}/{run} did not load in a fresh store"
    assert (rec.job, rec.run, rec.epoch, rec.status, rec.done) == (job, run, epoch, COMPLETED, 7)
    assert rec.state == {"job": job, "run": run}
    newest = store.history(job, run, limit=5)[0]
    assert (newest.epoch, newest.status, newest.done) == (epoch, COMPLETED, 7)
    assert store.markers(job, run, run) == {job: [job, run]}


def _check_gone(store, job: str, run: str) -> None:
    assert store.load(job, run) is None
    assert store.history(job, run) == []
    assert store.markers(job, run, run) == {}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pairs=name_sets())
@example(pairs=[("job", "v1.ckpts"), ("job", "v1")])
@example(pairs=[("job", "a.ckpt.prev"), ("job", "a"), ("job", "a.ckpt")])
@example(pairs=[("2026-12-04.ckpt", "2026-12-04.ckpt"), ("2026-12-04", "2026-12-04.ckpt")])
@example(pairs=[("j", "r.markers.72.jsonl"), ("j", "r"), ("j", "r.lock")])
@example(pairs=[("j", "x" * 118 + ".ckpt.prev"), ("j", "x" * 128)])
def test_every_name_round_trips_through_a_fresh_store(store_url, pairs):
    epochs = _write(store_url, pairs)
    with open_store(store_url) as fresh:
        for (job, run), epoch in epochs.items():
            _check_present(fresh, job, run, epoch)
        listed = fresh.list_runs()
        keys = [(r.job, r.run) for r in listed]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert set(epochs) <= set(keys)
        for job in {j for j, _ in pairs}:
            under = [(r.job, r.run) for r in fresh.list_runs(job)]
            assert {p for p in epochs if p[0] == job} <= set(under)
            assert all(j == job for j, _ in under), f"list_runs({job!r}) listed another job's run"
        # A fenced delete of one run leaves its look-alike neighbours whole.
        (job, run), *rest = pairs
        assert not fresh.delete(job, run, epoch=epochs[(job, run)] - 1)
        assert fresh.delete(job, run, epoch=epochs[(job, run)])
    with open_store(store_url) as fresh:
        _check_gone(fresh, job, run)
        assert (job, run) not in {(r.job, r.run) for r in fresh.list_runs()}
        for other in rest:
            _check_present(fresh, *other, epochs[other])
            assert fresh.delete(*other)
    with open_store(store_url) as fresh:
        for job, run in pairs:
            _check_gone(fresh, job, run)
        assert not set(pairs) & {(r.job, r.run) for r in fresh.list_runs()}
