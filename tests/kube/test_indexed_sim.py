"""Inside a pod, simulated on this machine with the variables Kubernetes and our manifests set:
the lease owner is the pod, a runner waits for a live holder, a permanent error writes the
termination log, SIGTERM checkpoints within the grace period; and an Indexed Job of worker
processes, restarted by a supervisor as the Job controller would under random SIGKILLs and
SIGTERMs, writes every item exactly once through ``job.transaction()``."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from restartable import Job, RunLocked
from restartable._entry import PERMANENT_CODES
from restartable.stores import open_store

POD_ENV = {
    "RESTARTABLE_POD_NAME": "export-0-x7k2p",
    "RESTARTABLE_POD_UID": "6b1c3a5e-2f4d-4c1b-9a8e-0d7f6e5c4b3a",
    "RESTARTABLE_NODE_NAME": "node-a",
}
CLEAN = (
    "RESTARTABLE_STORE",
    "RESTARTABLE_RUN",
    "RESTARTABLE_WAIT",
    "RESTARTABLE_LEASE_SECONDS",
    "JOB_COMPLETION_INDEX",
    "RESTARTABLE_SHARDS",
    "KUBERNETES_SERVICE_HOST",
    "RESTARTABLE_TERMINATION_LOG",
    "RESTARTABLE_PUSHGATEWAY",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLEAN:
        monkeypatch.delenv(name, raising=False)


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env.update(extra)
    return env


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


# -- the pod's identity and the lease ---------------------------------------------------------


def test_the_lease_owner_is_the_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in POD_ENV.items():
        monkeypatch.setenv(k, v)
    store = f"sqlite:///{tmp_path}/ckpt.db"
    with Job("pod-owner", store=store, progress=False) as job:
        owner = job.record.owner  # type: ignore[union-attr]
        assert (owner.pod, owner.pod_uid, owner.node) == tuple(POD_ENV.values())
        assert owner.pid == os.getpid()
        for _ in job.iterate(range(3)):
            pass
    with open_store(store) as s:
        stored = s.load("pod-owner", "default")
        assert stored is not None and stored.owner is not None
        assert "pod export-0-x7k2p on node-a" in stored.owner.describe()


HOLDER = """
    import sys, time
    from restartable import Job
    with Job("held", store=sys.argv[1], lease_seconds=3, progress=False) as job:
        print("held", flush=True)
        time.sleep(1.5)
        for _ in job.iterate(range(3)):
            pass
"""


def test_in_kubernetes_a_runner_waits_one_lease_for_a_live_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = f"sqlite:///{tmp_path}/ckpt.db"
    holder = subprocess.Popen(
        [sys.executable, str(_script(tmp_path, "holder.py", HOLDER)), store],
        stdout=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # Outside Kubernetes: the run is busy, exit 75 at once.
        t0 = time.monotonic()
        with pytest.raises(RunLocked), Job("held", store=store, lease_seconds=3, progress=False, handle_signals=False):
            pass
        assert time.monotonic() - t0 < 2.5  # not the 3 s a wait for the lease would take
        # In a pod (the replacement of a pod that is still terminating): wait up to one lease.
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        with Job("held", store=store, lease_seconds=3, progress=False, handle_signals=False) as job:
            assert job.wait == 3.0
            assert job.completed  # the holder finished meanwhile: nothing left to do
    finally:
        try:
            holder.wait(10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
    assert holder.returncode == 0


PERMANENT = """
    import sys
    import restartable

    @restartable.entrypoint
    def main():
        items = list(range(10)) if sys.argv[2] == "first" else [i * 2 for i in range(10)]
        with restartable.Job("perm", store=sys.argv[1], progress=False) as job:
            for i in job.iterate(items, every=1):
                if sys.argv[2] == "first" and i == 5:
                    raise SystemExit(75)  # a temporary failure half way: the pod is replaced

    main()
"""


def test_a_permanent_error_writes_one_line_to_the_termination_log(tmp_path: Path) -> None:
    script = _script(tmp_path, "perm.py", PERMANENT)
    log = tmp_path / "termination-log"
    log.write_text("")  # the kubelet creates it; we only write to an existing one
    env = _child_env(RESTARTABLE_TERMINATION_LOG=str(log), **POD_ENV)
    store = f"sqlite:///{tmp_path}/ckpt.db"
    first = subprocess.run(
        [sys.executable, str(script), store, "first"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert first.returncode == 75 and log.read_text() == ""  # temporary: nothing in the termination log
    second = subprocess.run(
        [sys.executable, str(script), store, "second"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert second.returncode == 65 and second.returncode in PERMANENT_CODES
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("restartable: error: ") and "changed" in lines[0]
    assert lines[0] in second.stderr and "Traceback" not in second.stderr


SIGTERM_JOB = """
    import os, sys, time
    import restartable

    @restartable.entrypoint
    def main():
        fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with restartable.Job("term", store=sys.argv[1], progress=False) as job:
            for i in job.iterate(range(100_000), every=10**9, seconds=3600):  # no periodic checkpoint
                time.sleep(0.01)
                os.write(fd, b"%d\\n" % i)

    main()
"""


def test_sigterm_checkpoints_within_the_grace_period(tmp_path: Path) -> None:
    grace = 5.0  # the pod's terminationGracePeriodSeconds in this simulation
    items = tmp_path / "items"
    store = f"sqlite:///{tmp_path}/ckpt.db"
    proc = subprocess.Popen(
        [sys.executable, str(_script(tmp_path, "term.py", SIGTERM_JOB)), store, str(items)],
        env=_child_env(KUBERNETES_SERVICE_HOST="10.96.0.1", **POD_ENV),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not (items.exists() and len(items.read_bytes().splitlines()) >= 30):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # the kubelet: SIGTERM, then SIGKILL after the grace period
    try:
        code = proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the job did not stop within the grace period")
    assert code == 143
    done = [int(x) for x in items.read_bytes().splitlines()]
    with open_store(store) as s:
        rec = s.load("term", "default")
    assert rec is not None and rec.status == "interrupted" and rec.lease_expires is None
    assert rec.done == len(done) and done == list(range(len(done)))  # the item in flight finished and counts


# -- the simulated Indexed Job -----------------------------------------------------------------

WORKER = """
    import json, os, sys, time
    import restartable
    from restartable import Job, _shard
    from restartable._postgres.table import PostgresTable
    from psycopg import sql

    cfg = json.loads(sys.argv[1])

    @restartable.entrypoint
    def main():
        with Job("sim", store=cfg["store"], progress=False, lease_seconds=5) as job:
            block = _shard.slice_for(range(cfg["n"]), job.shard)  # this pod's deterministic slice
            table = PostgresTable(cfg["store"], "items", key="id", schema=cfg["schema"], batch_size=cfg["batch"],
                                  where="id >= %s AND id < %s", params=[block.start, block.stop])
            insert = sql.SQL("INSERT INTO {}.out (id, shard, pid) VALUES (%s, %s, %s)").format(
                sql.Identifier(cfg["schema"]))
            for batch in job.batches(table):
                with job.transaction() as tx:  # the output and the position commit together
                    with tx.cursor() as cur:
                        cur.executemany(insert, [(r["id"], job.shard[0], os.getpid()) for r in batch])
                    # Tell the supervisor this pod is at work (so its kills land mid-run), and widen
                    # the window in which a SIGKILL finds the transaction open.
                    open(os.path.join(cfg["busy"], str(os.getpid())), "w").close()
                    time.sleep(cfg["sleep"])

    main()
"""


@dataclass
class Supervisor:
    """The Job controller, as far as restarts go: a failed pod is replaced, unless its exit
    code is permanent (podFailurePolicy FailIndex); the index succeeds when its pod exits 0."""

    script: Path
    cfg: dict[str, Any]
    shards: int
    env: dict[str, str]
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    outcome: dict[int, int] = field(default_factory=dict)
    codes: list[int] = field(default_factory=list)
    restarts: int = 0
    signalled: dict[int, signal.Signals] = field(default_factory=dict)

    def start(self, index: int) -> None:
        env = dict(
            self.env,
            JOB_COMPLETION_INDEX=str(index),
            RESTARTABLE_SHARDS=str(self.shards),
            RESTARTABLE_POD_NAME=f"sim-{index}-{self.restarts}",
        )
        self.procs[index] = subprocess.Popen(
            [sys.executable, str(self.script), json.dumps(self.cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def poll(self) -> None:
        for index, proc in list(self.procs.items()):
            rc = proc.poll()
            if rc is None:
                continue
            err = proc.stderr.read().decode() if proc.stderr else ""
            del self.procs[index]
            self.codes.append(rc)
            sig = self.signalled.get(proc.pid)
            # A pod that got SIGTERM checkpoints and exits 143 (or 0, if its loop had just ended). A
            # SIGTERM that lands after the job has completed and given the signal back meets Python's
            # default action (-15), which a kubelet reports as 143 too; the run is complete by then.
            expected = {
                signal.SIGKILL: (-9, 0),
                signal.SIGTERM: (143, 0, -15),
                None: (0, 75, *PERMANENT_CODES),
            }[sig]
            if rc == -15:
                assert "completed:" in err, f"shard {index} died of SIGTERM before its run completed:\n{err}"
                rc = 143
            assert rc in expected, f"shard {index} got {sig} and exited {rc}:\n{err}"
            if rc == 0 or rc in PERMANENT_CODES:
                self.outcome[index] = rc
            else:
                self.restarts += 1
                self.start(index)

    def busy(self) -> list[int]:
        """The indexes whose pod is inside its loop (it said so in the ``busy`` directory)."""
        return [
            i
            for i, p in self.procs.items()
            if p.poll() is None
            and p.pid not in self.signalled
            and os.path.exists(os.path.join(self.cfg["busy"], str(p.pid)))
        ]

    def kill(self, index: int, sig: signal.Signals) -> None:
        self.signalled[self.procs[index].pid] = sig
        self.procs[index].send_signal(sig)


def _setup_tables(url: str, schema: str, n: int) -> None:
    import psycopg
    from psycopg import sql

    base = url.split("?", 1)[0]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL("CREATE TABLE {}.items (id int PRIMARY KEY, v int NOT NULL)").format(sql.Identifier(schema))
        )
        conn.execute(
            sql.SQL("INSERT INTO {}.items SELECT g, g * 7 FROM generate_series(0, %s) g").format(
                sql.Identifier(schema)
            ),
            [n - 1],
        )
        # No unique constraint: a duplicate would be visible, not refused.
        conn.execute(
            sql.SQL("CREATE TABLE {}.out (id int NOT NULL, shard int NOT NULL, pid int NOT NULL)").format(
                sql.Identifier(schema)
            )
        )


def test_indexed_job_under_random_kills_writes_every_item_exactly_once(tmp_path: Path, postgres_url: str) -> None:
    import psycopg
    from psycopg import sql

    schema = postgres_url.split("schema=", 1)[1]
    n, shards = 2400, 4
    _setup_tables(postgres_url, schema, n)
    (tmp_path / "busy").mkdir()
    cfg = {"store": postgres_url, "schema": schema, "n": n, "batch": 20, "sleep": 0.05, "busy": str(tmp_path / "busy")}
    sup = Supervisor(
        _script(tmp_path, "worker.py", WORKER),
        cfg,
        shards,
        _child_env(
            RESTARTABLE_RUN="0f7c2b1e-job-uid", **{k: v for k, v in POD_ENV.items() if k != "RESTARTABLE_POD_NAME"}
        ),
    )
    rng = random.Random(7)
    for index in range(shards):
        sup.start(index)
    kills = {"SIGKILL": 0, "SIGTERM": 0}
    deadline = time.monotonic() + 45
    next_kill = time.monotonic() + rng.uniform(0.4, 0.9)
    while len(sup.outcome) < shards:
        assert time.monotonic() < deadline, f"not done in time: {sup.outcome} codes={sup.codes}"
        sup.poll()
        now = time.monotonic()
        if sum(kills.values()) < 14 and now >= next_kill and sup.busy():
            # A fixed pattern (random moments and victims): any five faults hold three SIGKILLs
            # and two SIGTERMs, however soon a fast machine finishes the work.
            sig = signal.SIGTERM if sum(kills.values()) % 5 in (1, 3) else signal.SIGKILL
            sup.kill(rng.choice(sup.busy()), sig)
            kills[sig.name] += 1
            next_kill = now + rng.uniform(0.05, 0.4)
        time.sleep(0.02)
    assert sup.outcome == {i: 0 for i in range(shards)}
    assert kills["SIGKILL"] >= 3 and kills["SIGTERM"] >= 2, kills
    assert sup.codes.count(-9) >= 3 and sup.codes.count(143) >= 2, sup.codes
    with psycopg.connect(postgres_url.split("?", 1)[0]) as conn:
        total, distinct, lo, hi = conn.execute(
            sql.SQL("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {}.out").format(sql.Identifier(schema))
        ).fetchone()
        wrong = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.out WHERE shard <> id * %s / %s").format(sql.Identifier(schema)),
            [shards, n],
        ).fetchone()[0]
    assert (total, distinct, lo, hi) == (n, n, 0, n - 1)  # every item, exactly once
    assert wrong == 0  # each item written by the shard that owns it
    with open_store(postgres_url) as store:
        runs = {r.run: r for r in store.list_runs("sim")}
    assert sorted(runs) == [f"0f7c2b1e-job-uid.shard-{i}-of-{shards}" for i in range(shards)]
    assert all(r.status == "completed" and r.done == n // shards for r in runs.values())


def test_a_permanent_code_fails_the_index_without_a_restart(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    log.write_text("")
    # A store URL the image cannot use: a configuration error (exit 78), which no retry fixes.
    script = _script(
        tmp_path,
        "bad.py",
        """
        import restartable
        restartable.entrypoint(lambda: restartable.Job("bad", store="bogus://x").__enter__())()
    """,
    )
    sup = Supervisor(script, {}, 1, _child_env(RESTARTABLE_TERMINATION_LOG=str(log)))
    sup.start(0)
    sup.procs[0].wait(30)
    sup.poll()
    assert sup.outcome == {0: 78} and sup.restarts == 0 and not sup.procs
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and "unknown store URL scheme" in lines[0]
