"""Job semantics in one process: positions, completion, state, fingerprints, errors."""

from __future__ import annotations

import uuid

import pytest

from restartable import (
    ConfigError,
    InputChanged,
    Job,
    RunLocked,
    StateNotSerializable,
    UsageError,
)
from restartable._checkpoint import COMPLETED, FAILED, INTERRUPTED
from restartable.stores import open_store


@pytest.fixture
def url() -> str:
    return f"memory://{uuid.uuid4().hex}"


def job(url: str, name: str = "j", **kw) -> Job:
    kw.setdefault("progress", False)
    return Job(name, store=url, **kw)


def test_full_run_completes(url):
    out = []
    with job(url) as j:
        for i in j.iterate(range(1000), every=100):
            out.append(i)
    assert out == list(range(1000))
    assert j.completed and j.record.status == COMPLETED and j.record.done == 1000


def test_break_leaves_item_in_flight_not_done_and_resumes(url, caplog):
    seen = []
    with job(url) as j:
        for i in j.iterate(list(range(100)), every=10):
            if i == 42:
                break
            seen.append(i)
    assert j.record.status == INTERRUPTED
    assert j.record.positions["0"]["offset"] == 42
    assert "break" in caplog.text
    with job(url) as j:
        rest = list(j.iterate(list(range(100)), every=10))
    assert rest == list(range(42, 100))


def test_exception_marks_failed_and_keeps_checkpoint(url):
    with pytest.raises(ValueError):
        with job(url) as j:
            for i in j.iterate(range(50), every=5):
                if i == 17:
                    raise ValueError("boom")
    rec = open_store(url).load("j", "default")
    assert rec.status == FAILED and rec.positions["0"]["offset"] == 17 and rec.lease_expires is None
    with job(url) as j:
        assert list(j.iterate(range(50))) == list(range(17, 50))


def test_exact_position_with_large_chunks(url):
    # Fast items make chunks grow to thousands; the position must still be exact.
    with pytest.raises(KeyError):
        with job(url) as j:
            for i in j.iterate(range(1_000_000)):
                if i == 654_321:
                    raise KeyError(i)
    assert open_store(url).load("j", "default").positions["0"]["offset"] == 654_321


def test_generator_source_resumes_by_skipping(url):
    def gen():
        yield from ({"n": i} for i in range(300))

    with pytest.raises(RuntimeError):
        with job(url) as j:
            for item in j.iterate(gen(), every=7):
                if item["n"] == 123:
                    raise RuntimeError
    with job(url) as j:
        rest = [x["n"] for x in j.iterate(gen(), every=7)]
    assert rest == list(range(123, 300))


def test_rerun_of_completed_run_does_nothing(url, caplog):
    caplog.set_level("INFO", logger="restartable")
    with job(url, run="2026-11-27") as j:
        list(j.iterate(range(10)))
    with job(url, run="2026-11-27") as j:
        assert j.completed
        assert list(j.iterate(range(10))) == []
    assert "already complete" in caplog.text
    with job(url, run="2026-11-28") as j:  # the next night starts fresh
        assert not j.completed
        assert list(j.iterate(range(3))) == [0, 1, 2]


def test_run_defaults_to_env(url, monkeypatch):
    monkeypatch.setenv("RESTARTABLE_RUN", "uid-123")
    with job(url) as j:
        assert j.run == "uid-123"


def test_several_iterations_have_their_own_cursors(url):
    with pytest.raises(ZeroDivisionError):
        with job(url) as j:
            a = list(j.iterate(range(5)))
            for i in j.iterate(range(10), every=1):
                if i == 4:
                    1 / 0
    assert a == list(range(5))
    with job(url) as j:
        assert list(j.iterate(range(5))) == []  # finished before the crash
        assert list(j.iterate(range(10))) == list(range(4, 10))
    assert j.record.status == COMPLETED and j.record.done == 15


def test_named_cursor_reuse_is_refused(url):
    with job(url) as j:
        list(j.iterate(range(2), name="a"))
        with pytest.raises(UsageError):
            j.iterate(range(2), name="a")


def test_state_saved_with_positions(url):
    with pytest.raises(RuntimeError):
        with job(url) as j:
            for i in j.iterate(range(20), every=5):
                if i == 12:
                    raise RuntimeError
                j.state["sum"] = j.state.get("sum", 0) + i
    with job(url) as j:
        # The state of the last checkpoint (10 items) plus the failure's final save (12 items).
        assert j.state["sum"] == sum(range(12))


def test_non_json_state_names_the_key_and_keeps_last_good(url):
    with pytest.raises(StateNotSerializable, match=r"job.state\['bad'\]"):
        with job(url) as j:
            for i in j.iterate(range(20), every=5):
                j.state["ok"] = i
                if i == 7:
                    j.state["bad"] = object()
    rec = open_store(url).load("j", "default")
    assert rec.status == FAILED and rec.positions["0"]["offset"] == 5 and "bad" not in rec.state


def test_complete_marks_completion_explicitly(url):
    with job(url) as j:
        for i in j.iterate(range(100)):
            if i == 10:
                j.complete()
                break
    assert j.completed and j.record.status == COMPLETED


def test_cleanup_delete_removes_record(url):
    with job(url, cleanup="delete") as j:
        list(j.iterate(range(3)))
    assert open_store(url).load("j", "default") is None


def test_input_change_before_position_is_refused(url):
    data = [{"id": i} for i in range(100)]
    with pytest.raises(RuntimeError):
        with job(url) as j:
            for x in j.iterate(data, every=10):
                if x["id"] == 50:
                    raise RuntimeError
    changed = list(data)
    changed[3] = {"id": "other"}
    with pytest.raises(InputChanged, match="item 3"):
        with job(url) as j:
            list(j.iterate(changed))
    with job(url, on_change="restart") as j:
        assert len(list(j.iterate(changed))) == 100
    assert j.record.status == COMPLETED


def test_input_grown_at_the_end_resumes(url):
    data = list(range(100))
    with pytest.raises(RuntimeError):
        with job(url) as j:
            for x in j.iterate(data, every=10):
                if x == 50:
                    raise RuntimeError
    with job(url) as j:
        assert list(j.iterate(data + [100, 101])) == list(range(50, 102))


def test_input_shrunk_below_position_is_refused_or_forced(url):
    with pytest.raises(RuntimeError):
        with job(url) as j:
            for x in j.iterate(list(range(100)), every=10):
                if x == 50:
                    raise RuntimeError
    with pytest.raises(InputChanged, match="40 items"):
        with job(url) as j:
            list(j.iterate(list(range(40))))
    with job(url, on_change="force") as j:
        assert list(j.iterate(list(range(60)))) == list(range(50, 60))


def test_second_runner_is_refused_with_owner(url):
    with job(url, lease_seconds=30) as j1:
        with pytest.raises(RunLocked, match="pid"):
            with job(url, lease_seconds=30):
                pass
        assert list(j1.iterate(range(3))) == [0, 1, 2]


def test_bad_names_and_urls():
    with pytest.raises(UsageError):
        Job("../etc/passwd")
    with pytest.raises(UsageError):
        Job("ok", run="a b")
    with pytest.raises(UsageError):
        Job("x'; DROP TABLE runs; --")
    with pytest.raises(ConfigError, match="scheme"):
        with Job("ok", store="mysql://u:secret@h/db"):
            pass
    try:
        with Job("ok", store="mysql://u:secret@h/db"):
            pass
    except ConfigError as exc:
        assert "secret" not in str(exc)


def test_checkpoint_on_demand_excludes_item_in_flight(url):
    with job(url) as j:
        for i in j.iterate(range(10), every=1000):
            if i == 6:
                j.checkpoint()
                rec = open_store(url).load("j", "default")
                assert rec.positions["0"]["offset"] == 6
    assert j.record.done == 10


def test_on_checkpoint_runs_before_each_save(url):
    calls = []
    with job(url) as j:
        j.on_checkpoint(lambda: calls.append(j.record.done if j.record else None))
        list(j.iterate(range(30), every=10))
    assert len(calls) >= 3


def test_shards_split_the_input_and_keep_their_own_checkpoints(url):
    seen = []
    for i in range(3):
        with job(url, run="r1", shard=(i, 3)) as j:
            assert j.run == f"r1.shard-{i}-of-3"
            seen.extend(j.iterate(list(range(10)), shard="auto"))
    assert sorted(seen) == list(range(10))
    runs = sorted(r.run for r in open_store(url).list_runs("j"))
    assert runs == ["r1.shard-0-of-3", "r1.shard-1-of-3", "r1.shard-2-of-3"]


def test_shard_from_kubernetes_env(url, monkeypatch):
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("RESTARTABLE_SHARDS", "2")
    with job(url, run="uid") as j:
        assert j.shard == (1, 2) and j.run == "uid.shard-1-of-2"
        assert list(j.iterate(iter(range(6)), shard="auto")) == [1, 3, 5]
    monkeypatch.delenv("RESTARTABLE_SHARDS")
    with pytest.raises(UsageError, match="RESTARTABLE_SHARDS"):
        Job("j", store=url)


def test_shard_auto_outside_a_sharded_job_is_refused(url):
    with job(url) as j:
        with pytest.raises(UsageError, match="shard"):
            j.iterate(range(3), shard="auto")
