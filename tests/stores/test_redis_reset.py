"""Redis: a reset is never undone by loss detection, and a loss is still written back.

The Redis store tells a run that was deleted (``restartable reset``, ``Store.delete``)
from one the server lost (a restart without persistence, FLUSHALL/FLUSHDB) by the
prefix's ``instance`` key, which a loss destroys and a reset does not. The defect this
guards against (issue 12, defect 3): the old rule, "missing and the server's run_id
changed", took a reset after a restart WITH persistence (``appendonly yes``: data kept,
run_id new) for a loss, wrote the run back from memory and carried on.

Every test uses a private redis-server (tests/redisserver.py); FLUSHDB and restarts
never touch the shared one.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# tests/ holds the private-server and worker helpers; put it on the path whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import procs
import redisserver
from redisserver import RedisServer
from restartable._checkpoint import Checkpoint, Owner, encode_record
from restartable._redis.store import RedisStore, _owner_json
from restartable.errors import EXIT_TEMPORARY, EXIT_USAGE, CheckpointLost, Fenced, RunLocked
from restartable.stores import open_store
from restartable.stores.base import EPOCH_STEP, first_epoch

redis_server_factory = redisserver.redis_server_factory

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ME = Owner(host="host-a", pid=111)
OTHER = Owner(host="host-b", pid=222)
RESTARTABLE = Path(sys.executable).with_name("restartable")


@pytest.fixture
def durable_redis(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A private server with ``appendonly yes``: a restart keeps every key, only run_id changes."""
    return redis_server_factory(appendonly=True)


@pytest.fixture
def volatile_redis(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A private server without persistence: a restart loses every key."""
    return redis_server_factory()


def _open(server: RedisServer, **options: str) -> RedisStore:
    query = "&".join(f"{k}={v}" for k, v in {"retry": "10s", **options}.items())
    store = open_store(f"{server.url}?{query}")
    assert isinstance(store, RedisStore)
    return store


def _raw(server: RedisServer):
    import redis

    return redis.Redis.from_url(server.url, socket_timeout=10)


def _run_id(server: RedisServer) -> str:
    return _raw(server).info("server")["run_id"]


WRITES: dict[str, Callable[[RedisStore, Checkpoint], object]] = {
    "save": lambda s, rec: s.save(rec.replace(done=rec.done + 1), lease_seconds=30),
    "renew": lambda s, rec: s.renew(rec.job, rec.run, epoch=rec.epoch, lease_seconds=30),
    "mark": lambda s, rec: s.mark(rec.job, rec.run, "files", "a.csv", 1, epoch=rec.epoch),
}


# -- the defect: a restart that kept the data, then a reset ---------------------------------


@pytest.mark.parametrize("write", sorted(WRITES))
@pytest.mark.parametrize("how", ["restart", "crash"])
def test_reset_after_a_restart_that_kept_the_data_fences_the_runner(durable_redis, write, how):
    """Regression (issue 12, defect 3): the runner is Fenced, and nothing writes the run back."""
    with _open(durable_redis) as runner, _open(durable_redis) as operator:
        rec = runner.acquire("job", "r1", owner=ME, lease_seconds=30)
        rec = runner.save(rec.replace(done=40), lease_seconds=30)
        before = _run_id(durable_redis)
        if how == "crash":
            durable_redis.kill()  # SIGKILL: the AOF (appendfsync always) still has every write
            durable_redis.start()
        else:
            durable_redis.restart()
        assert _run_id(durable_redis) != before  # what the old rule took for a loss
        assert operator.load("job", "r1").done == 40  # the data survived
        assert operator.delete("job", "r1")  # restartable reset --force
        with pytest.raises(Fenced, match="was reset"):
            WRITES[write](runner, rec)
        # The write-back the job would attempt is refused too, in the same script as the check.
        with pytest.raises(Fenced):
            runner.restore(rec, lease_seconds=30)
        assert operator.load("job", "r1") is None and operator.list_runs() == []


def test_reset_after_a_restart_fences_a_real_job_reset_from_the_cli(durable_redis, tmp_path):
    """End to end: a Job in a worker process, the server restarted (data kept), then
    ``restartable reset --force`` from another process: the worker stops with exit 75,
    says it was fenced, never claims a loss, and the run stays reset."""
    url = f"{durable_redis.url}?retry=10s"
    with procs.Spawner(procs.write_worker(tmp_path)) as spawn:
        worker = spawn(
            {
                "store": url,
                "job": "crash",
                "run": "r1",
                "n": 100_000,
                "sleep": 0.005,
                "seconds": 0.05,
                "lease_seconds": 3,
                "log": str(tmp_path / "items.log"),
            }
        )
        worker.started()
        procs.wait_items(tmp_path / "items.log", 20)
        durable_redis.restart()
        reset = subprocess.run(
            [str(RESTARTABLE), "reset", "crash", "--run", "r1", "--force", "--store", url],
            capture_output=True,
            text=True,
            timeout=60,
            env=procs.clean_env(),
        )
        assert reset.returncode == 0, reset.stderr
        assert "reset job crash run r1" in reset.stdout
        rc = worker.finish(timeout=60)
        assert rc == EXIT_TEMPORARY, worker.stderr
        assert "fenced" in worker.stderr and "LOST" not in worker.stderr
    with _open(durable_redis) as s:
        assert s.load("crash", "r1") is None


# -- a loss is still a loss -------------------------------------------------------------


@pytest.mark.parametrize("flush", ["flushdb", "flushall", "restart"])
def test_a_loss_is_written_back_then_a_reset_fences(volatile_redis, flush):
    with _open(volatile_redis) as s:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        rec = s.save(rec.replace(done=40, state={"k": 1}), lease_seconds=30)
        if flush == "restart":
            volatile_redis.restart()
        else:
            getattr(_raw(volatile_redis), flush)()
        for write in sorted(WRITES):
            with pytest.raises(CheckpointLost, match="LOST") as info:
                WRITES[write](s, rec)
            # The message says what happened: a restart, or keys gone from a running server.
            assert ("restarted" in str(info.value)) == (flush == "restart")
            assert flush == "restart" or "FLUSHALL" in str(info.value)
        s.restore(rec.replace(done=41), lease_seconds=30)
        assert s.load("job", "r1").done == 41 and s.load("job", "r1").epoch == rec.epoch
        WRITES["save"](s, rec)
        # After the write-back a reset is a reset again.
        assert s.delete("job", "r1")
        with pytest.raises(Fenced):
            WRITES["renew"](s, rec)


def test_a_retried_restore_whose_first_answer_was_lost_succeeds(volatile_redis):
    """The commit-unknown case of the write-back: the server ran RESTORE, the reply never came."""
    import faultproxy  # tests/faultproxy.py: a TCP proxy that drops the answer to a chosen command

    with faultproxy.FaultProxy(upstream=("127.0.0.1", volatile_redis.port)) as proxy:
        with open_store(proxy.url_for(volatile_redis.url) + "?retry=10s") as s:
            assert isinstance(s, RedisStore)
            rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
            _raw(volatile_redis).flushall()
            with pytest.raises(CheckpointLost):
                WRITES["save"](s, rec)
            proxy.lose_next_answer_to(s._restore.sha.encode())
            restored = s.restore(rec.replace(done=7), lease_seconds=30)
            assert proxy.landed["lose-answer"] == 1
            assert restored.epoch == rec.epoch and s.load("job", "r1").done == 7
            WRITES["save"](s, rec)


def test_a_reset_between_a_lost_restore_answer_and_its_retry_fences(volatile_redis):
    """The write-back committed, its answer was lost, a reset deleted the run before the
    retry: the retry must not write it back a second time."""
    import redis

    with _open(volatile_redis) as s, _open(volatile_redis) as operator:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        _raw(volatile_redis).flushall()
        with pytest.raises(CheckpointLost):
            WRITES["save"](s, rec)
        real, attempts = s._restore, []

        def answer_lost_then_reset(**kwargs):
            result = real(**kwargs)  # the server runs the script...
            attempts.append(result)
            if len(attempts) == 1:
                assert operator.delete("job", "r1")  # ...a reset lands before the retry...
                raise redis.exceptions.ConnectionError("connection reset while reading the answer")
            return result

        s._restore = answer_lost_then_reset
        with pytest.raises(Fenced):
            s.restore(rec, lease_seconds=30)
        assert len(attempts) == 2 and operator.load("job", "r1") is None


# -- two runners after a loss: never two writers ------------------------------------------


def test_a_new_runner_after_a_loss_fences_the_old_one(volatile_redis):
    with _open(volatile_redis) as a, _open(volatile_redis) as b:
        old = a.acquire("job", "r1", owner=ME, lease_seconds=30)
        volatile_redis.restart()
        new = b.acquire("job", "r1", owner=OTHER, lease_seconds=30)  # the record was gone: a fresh run
        for write in sorted(WRITES):
            with pytest.raises(Fenced, match=str(new.epoch)):
                WRITES[write](a, old)
        with pytest.raises(Fenced, match=str(new.epoch)):
            a.restore(old, lease_seconds=30)
        assert b.load("job", "r1").owner == OTHER


def test_restore_and_a_new_acquire_race_with_exactly_one_winner(volatile_redis):
    """The restore of the old runner and the acquire of a new one, started together many times:
    each time exactly one of them owns the run, and the stored epoch is the winner's."""
    with _open(volatile_redis) as a, _open(volatile_redis) as b:
        raw = _raw(volatile_redis)
        outcomes = set()
        for i in range(30):
            run = f"r{i}"
            old = a.acquire("job", run, owner=ME, lease_seconds=30)
            raw.flushall()
            with pytest.raises(CheckpointLost):
                a.renew("job", run, epoch=old.epoch, lease_seconds=30)
            result: dict[str, object] = {}
            go = threading.Barrier(2)

            def restore() -> None:
                go.wait()
                try:
                    result["a"] = a.restore(old, lease_seconds=30)
                except Fenced as exc:
                    result["a"] = exc

            def acquire() -> None:
                go.wait()
                try:
                    result["b"] = b.acquire("job", run, owner=OTHER, lease_seconds=30)
                except RunLocked as exc:
                    result["b"] = exc

            threads = [threading.Thread(target=restore), threading.Thread(target=acquire)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            a_won, b_won = isinstance(result["a"], Checkpoint), isinstance(result["b"], Checkpoint)
            assert a_won != b_won, result
            stored = b.load("job", run)
            assert stored.epoch == (old.epoch if a_won else result["b"].epoch)
            assert stored.owner == (ME if a_won else OTHER)
            outcomes.add(a_won)
        # Which side wins depends on scheduling (both did, measured on an idle 2-core machine);
        # the property holds either way, so neither order is required.
        assert outcomes


# -- the judgement as a property ---------------------------------------------------------

EVENTS = st.lists(st.sampled_from(["reset", "flush", "restart", "other-run", "reset-other"]), max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=EVENTS, write=st.sampled_from(sorted(WRITES)))
def test_the_last_destructive_event_decides(durable_redis, events, write):
    """Between two writes of a runner, any sequence of: a reset of its run (from another
    store object), a reset of another run, a loss of every key (FLUSHDB), a restart that
    keeps the data, another runner starting another run. The runner's next write is

    * fine when nothing destroyed its record;
    * Fenced when the last thing that destroyed it was a reset (``delete`` returned True):
      then the write-back is refused too;
    * CheckpointLost when the last thing was a loss: then the write-back succeeds.
    """
    raw = _raw(durable_redis)
    raw.flushall()
    with _open(durable_redis) as runner, _open(durable_redis) as operator:
        rec = runner.acquire("job", "mine", owner=ME, lease_seconds=30)
        last = None
        for i, event in enumerate(events):
            if event == "reset":
                if operator.delete("job", "mine"):
                    last = "reset"
            elif event == "flush":
                raw.flushdb()
                last = "lost"
            elif event == "restart":
                durable_redis.restart()
            elif event == "other-run":
                operator.acquire("job", f"other{i}", owner=OTHER, lease_seconds=30)
            else:
                operator.delete("job", "other0")
        if last is None:
            WRITES[write](runner, rec)
        elif last == "reset":
            with pytest.raises(Fenced):
                WRITES[write](runner, rec)
            with pytest.raises(Fenced):
                runner.restore(rec, lease_seconds=30)
            assert operator.load("job", "mine") is None
        else:
            with pytest.raises(CheckpointLost):
                WRITES[write](runner, rec)
            runner.restore(rec, lease_seconds=30)
            assert operator.load("job", "mine").epoch == rec.epoch
            # And the write-back restarted the rule: a reset now fences.
            assert operator.delete("job", "mine")
            with pytest.raises(Fenced):
                WRITES[write](runner, rec)


# -- a store written before the instance key existed ----------------------------------------


def _write_old_layout(server: RedisServer, prefix: str, job: str, run: str, *, lease_ms: int) -> int:
    """A run exactly as the store wrote it before the instance key: hash, history, index; no instance."""
    raw = _raw(server)
    now_ms = int(time.time() * 1000)
    epoch = first_epoch()
    body = encode_record(Checkpoint(job=job, run=run, epoch=epoch, owner=OTHER, done=5))
    raw.hset(
        f"{prefix}run:{job}:{run}",
        mapping={
            "body": body,
            "epoch": str(epoch),
            "status": "running",
            "owner": _owner_json(OTHER),
            "started": now_ms,
            "updated": now_ms,
            "heartbeat": now_ms,
            "lease": str(now_ms + lease_ms),
            "done": "5",
            "failed": "0",
            "expires": str(now_ms + 86_400_000),
        },
    )
    raw.lpush(f"{prefix}hist:{job}:{run}", f'{{"at":{now_ms},"done":5,"epoch":{epoch},"failed":0,"status":"running"}}')
    raw.zadd(f"{prefix}runs", {f"{job}\0{run}": now_ms + 86_400_000})
    for key in (f"{prefix}run:{job}:{run}", f"{prefix}hist:{job}:{run}", f"{prefix}runs"):
        raw.pexpireat(key, now_ms + 86_400_000)
    return epoch


def test_a_store_written_before_the_instance_key_keeps_working(durable_redis):
    prefix = "old:"
    raw = _raw(durable_redis)
    _write_old_layout(durable_redis, prefix, "job", "done-before", lease_ms=0)
    held = _write_old_layout(durable_redis, prefix, "job", "held", lease_ms=60_000)
    _write_old_layout(durable_redis, prefix, "job", "expired", lease_ms=-1)
    with _open(durable_redis, prefix=prefix) as s:
        # Reading, listing, resetting: nothing needs (or creates) the instance key.
        assert [r.run for r in s.list_runs("job")] == ["done-before", "expired", "held"]
        assert s.load("job", "held").done == 5 and len(s.history("job", "held")) == 1
        assert s.delete("job", "done-before")
        assert not raw.exists(f"{prefix}instance")
        with pytest.raises(RunLocked):
            s.acquire("job", "held", owner=ME, lease_seconds=30)
        assert not raw.exists(f"{prefix}instance")
        # A runner of the old record (same owner: a retried acquire) takes it over; the first
        # acquire of the new code makes the instance key.
        with _open(durable_redis, prefix=prefix) as runner:
            rec = runner.acquire("job", "held", owner=OTHER, lease_seconds=30)
            assert 0 < rec.epoch - held <= EPOCH_STEP and rec.done == 5
            assert raw.exists(f"{prefix}instance")
            taken = runner.acquire("job", "expired", owner=ME, lease_seconds=30)
            # Now the upgraded store tells a reset from a loss for both runs.
            durable_redis.restart()
            assert s.delete("job", "held")
            with pytest.raises(Fenced):
                runner.save(rec, lease_seconds=30)
            raw = _raw(durable_redis)
            raw.flushdb()
            with pytest.raises(CheckpointLost):
                runner.save(taken, lease_seconds=30)
            runner.restore(taken, lease_seconds=30)


def test_a_store_object_that_never_acquired_the_run_does_not_guess(volatile_redis):
    """Loss is judged against what this store saw at its acquire; without that it fences."""
    with _open(volatile_redis) as a, _open(volatile_redis) as stranger:
        rec = a.acquire("job", "r1", owner=ME, lease_seconds=30)
        _raw(volatile_redis).flushdb()
        with pytest.raises(Fenced):
            stranger.save(rec, lease_seconds=30)
        with pytest.raises(CheckpointLost):
            a.save(rec, lease_seconds=30)
        # The stranger may write back only with the proof a loss leaves: no instance key.
        stranger.restore(rec, lease_seconds=30)
        assert a.load("job", "r1").epoch == rec.epoch
        assert a.delete("job", "r1")
        with pytest.raises(Fenced):
            stranger.restore(rec, lease_seconds=30)


# -- reset after a restart WITHOUT persistence --------------------------------------------


def test_reset_after_a_loss_finds_nothing_and_the_runner_writes_back(volatile_redis, tmp_path):
    """After a restart without persistence the run is gone: ``reset`` says so (exit 2) and
    deletes nothing; the runner writes its record back at its next write. A reset after
    that fences it as usual. (Documented: there is nothing a reset could leave behind that
    the next loss would not destroy.)"""
    url = f"{volatile_redis.url}?retry=10s"
    with _open(volatile_redis) as s:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=30)
        volatile_redis.restart()
        cli = subprocess.run(
            [str(RESTARTABLE), "reset", "job", "--run", "r1", "--force", "--store", url],
            capture_output=True,
            text=True,
            timeout=60,
            env=procs.clean_env(),
        )
        assert cli.returncode == EXIT_USAGE and "no run 'r1'" in cli.stderr and "Traceback" not in cli.stderr
        with pytest.raises(CheckpointLost):
            WRITES["save"](s, rec)
        s.restore(rec, lease_seconds=30)
        cli = subprocess.run(
            [str(RESTARTABLE), "reset", "job", "--run", "r1", "--force", "--store", url],
            capture_output=True,
            text=True,
            timeout=60,
            env=procs.clean_env(),
        )
        assert cli.returncode == 0, cli.stderr
        with pytest.raises(Fenced):
            WRITES["save"](s, rec)


# -- a client mid-reply when the server restarts --------------------------------------------


@pytest.mark.parametrize("op", ["load", "save"])
def test_a_call_waiting_for_its_reply_rides_out_a_restart(durable_redis, op):
    """The server is frozen with the request in its socket, then killed and started again
    (data kept): the call in flight gets a reset connection, retries and answers right."""
    with _open(durable_redis, read_timeout="30") as s:
        rec = s.acquire("job", "r1", owner=ME, lease_seconds=60)
        rec = s.save(rec.replace(done=10), lease_seconds=60)
        result: dict[str, object] = {}

        def call() -> None:
            try:
                result["ok"] = s.load("job", "r1") if op == "load" else s.save(rec.replace(done=11), lease_seconds=60)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                result["err"] = exc

        durable_redis.freeze()
        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.3)  # the request is written and the client waits in recv
        assert t.is_alive()
        durable_redis.kill()
        durable_redis.start()
        t.join(30)
        assert not t.is_alive() and "err" not in result, result
        # The frozen server never read the save: the retry is its only execution.
        assert s.load("job", "r1").done == (10 if op == "load" else 11)
        assert s.load("job", "r1").epoch == rec.epoch
