"""The work queue on PostgreSQL and Redis: idempotent fill, leases, fencing, reclaiming the work
of dead workers (SIGKILL mid-lease), a zombie worker fenced after SIGSTOP/SIGCONT."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from restartable.errors import ConfigError, Fenced, UsageError
from restartable.queue import WorkQueue, ranges
from restartable.stores.base import EPOCH_STEP


@pytest.fixture(params=["postgres", "redis"])
def queue_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


def _queue(url: str, name: str = "q", **kw: Any) -> WorkQueue:
    kw.setdefault("handle_signals", False)
    return WorkQueue(name, store=url, **kw)


# -- the API, in one process -----------------------------------------------------------------


def test_fill_is_idempotent_and_claims_come_in_order(queue_url: str) -> None:
    with _queue(queue_url) as a, _queue(queue_url) as b:
        assert a.fill(ranges(10, 4)) == 3
        assert b.fill(ranges(10, 4)) == 0  # the second worker: already filled
        assert a.counts().total == 3 and a.counts().pending == 3
        c1, c2 = a.claim(), b.claim()
        assert c1 is not None and c2 is not None
        assert (c1.key, c1.start, c1.stop, c1.attempts) == ("0-4", 0, 4, 1) and 0 < c1.epoch <= EPOCH_STEP
        assert (c2.key, c2.start, c2.stop) == ("4-8", 4, 8)
        counts = a.counts()
        assert (counts.done, counts.leased, counts.pending) == (0, 2, 1)
        with c1:
            pass
        c2.complete()
        keys = []
        for claim in a.claims():  # ends once every task is done
            with claim:
                keys.append(claim.key)
        assert keys == ["8-10"]
        assert a.counts().done == 3 and a.claim() is None


def test_a_failed_block_releases_and_string_tasks(queue_url: str) -> None:
    with _queue(queue_url) as q:
        q.fill(["alpha", "beta"])
        first = q.claim()
        assert first is not None and first.key == "alpha" and first.payload is None
        with pytest.raises(RuntimeError), first:
            raise RuntimeError("boom")
        assert first.state == "released"
        again = q.claim()
        assert again is not None and again.key == "alpha" and again.attempts == 2
        assert 0 < again.epoch - first.epoch <= EPOCH_STEP
        again.complete()
        with pytest.raises(UsageError, match="already released"):
            first.complete()
        q.fill(["gamma"])  # already filled: nothing added
        with pytest.raises(UsageError, match="neither completed nor released"):
            for _ in q.claims(wait=False):
                pass


def test_an_expired_lease_is_claimed_again_and_the_old_claim_is_fenced(queue_url: str) -> None:
    with _queue(queue_url, lease_seconds=0.6) as slow, _queue(queue_url, lease_seconds=30) as fast:
        slow.fill(ranges(100, 100))
        old = slow.claim()
        assert old is not None
        old.checkpoint(40)
        slow._stop.set()  # the heartbeat stops, as in a stopped or partitioned process
        time.sleep(0.8)
        new = fast.claim()
        assert new is not None and new.key == old.key and 0 < new.epoch - old.epoch <= EPOCH_STEP
        assert new.offset == 40  # the earlier holder's progress
        with pytest.raises(Fenced, match="claimed again"):
            old.checkpoint(50)
        with pytest.raises(Fenced):
            old.complete()
        old.release()  # a fenced release changes nothing and raises nothing
        new.complete()
        assert fast.counts().done == 1


def test_only_shared_stores_and_a_clear_error_for_a_never_filled_queue(tmp_path: Path, postgres_url: str) -> None:
    with pytest.raises(ConfigError, match="postgresql:// or redis://"):
        WorkQueue("q", store=f"sqlite:///{tmp_path}/x.db")
    with _queue(postgres_url, fill_wait=0.3) as q, pytest.raises(UsageError, match="never filled"):
        next(iter(q.claims()))


def test_postgres_transaction_commits_output_with_the_completion(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url.split("?")[0], autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS never (x int)")  # connection works
    with _queue(postgres_url, lease_seconds=0.6) as slow, _queue(postgres_url) as fast:
        schema = postgres_url.split("schema=")[1]
        slow.fill(["t"])
        with psycopg.connect(postgres_url.split("?")[0], autocommit=True) as conn:
            conn.execute(f'CREATE TABLE "{schema}".out (x int)')
        old = slow.claim()
        assert old is not None
        slow._stop.set()
        time.sleep(0.8)
        new = fast.claim()
        assert new is not None
        with pytest.raises(Fenced), old.transaction() as tx:
            tx.execute(f'INSERT INTO "{schema}".out VALUES (1)')
        with new.transaction() as tx:
            tx.execute(f'INSERT INTO "{schema}".out VALUES (2)')
        assert new.state == "completed"
        with psycopg.connect(postgres_url.split("?")[0]) as conn:
            assert conn.execute(f'SELECT array_agg(x) FROM "{schema}".out').fetchone()[0] == [2]


def test_redis_has_no_transaction(redis_url: str) -> None:
    with _queue(redis_url) as q:
        q.fill(["t"])
        claim = q.claim()
        assert claim is not None
        with pytest.raises(UsageError, match="PostgreSQL"), claim.transaction():
            pass


# -- worker processes -----------------------------------------------------------------------

WORKER = """
    import json, os, sys, time
    import restartable
    from restartable.queue import WorkQueue, ranges

    cfg = json.loads(sys.argv[1])

    @restartable.entrypoint
    def main():
        with WorkQueue("work", store=cfg["store"], lease_seconds=cfg["lease"], poll=0.05) as queue:
            queue.fill(ranges(cfg["n"], cfg["size"]))
            for claim in queue.claims():
                print("claimed", claim.key, claim.epoch, flush=True)
                open(os.path.join(cfg["busy"], str(os.getpid())), "w").close()
                items = range(claim.start, claim.stop)
                if cfg["pg"]:
                    with claim.transaction() as tx:  # exactly once: the output commits with the completion
                        with tx.cursor() as cur:
                            cur.executemany(cfg["insert"], [(i, claim.epoch, os.getpid()) for i in items])
                        time.sleep(cfg["sleep"])
                else:
                    with claim:  # at least once: the output is appended, then the task completed
                        fd = os.open(cfg["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                        os.write(fd, "".join(f"{i} {claim.epoch} {os.getpid()}\\n" for i in items).encode())
                        os.close(fd)
                        time.sleep(cfg["sleep"])
                print("done", claim.key, flush=True)

    main()
"""


class Workers:
    def __init__(self, tmp_path: Path, url: str, **cfg: Any) -> None:
        self.pg = url.startswith("postgres")
        self.schema = url.split("schema=")[1] if self.pg else ""
        (tmp_path / "busy").mkdir(exist_ok=True)
        self.cfg = {
            "store": url,
            "lease": 1.0,
            "n": 1200,
            "size": 20,
            "sleep": 0.06,
            "pg": self.pg,
            "busy": str(tmp_path / "busy"),
            "log": str(tmp_path / "items.log"),
            "insert": f'INSERT INTO "{self.schema}".out (id, epoch, pid) VALUES (%s, %s, %s)',
            **cfg,
        }
        self.script = tmp_path / "worker.py"
        self.script.write_text(textwrap.dedent(WORKER))
        self.log = tmp_path / "items.log"
        if self.pg:
            import psycopg

            with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                conn.execute(f'CREATE TABLE "{self.schema}".out (id int NOT NULL, epoch int, pid int)')

    def start(self, **override: Any) -> subprocess.Popen[str]:
        cfg = {**self.cfg, **override}
        return subprocess.Popen(
            [sys.executable, str(self.script), json.dumps(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def busy(self, proc: subprocess.Popen[str]) -> bool:
        return proc.poll() is None and os.path.exists(os.path.join(self.cfg["busy"], str(proc.pid)))

    def output(self) -> list[tuple[int, int, int]]:
        if self.pg:
            import psycopg

            with psycopg.connect(self.cfg["store"].split("?")[0]) as conn:
                return [tuple(r) for r in conn.execute(f'SELECT id, epoch, pid FROM "{self.schema}".out')]
        return [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in self.log.read_text().splitlines())]


def test_workers_killed_mid_lease_complete_every_item(tmp_path: Path, queue_url: str) -> None:
    workers = Workers(tmp_path, queue_url)
    n = workers.cfg["n"]
    procs = [workers.start() for _ in range(3)]
    rng = random.Random(11)
    kills, joined = 0, 0
    deadline = time.monotonic() + 45
    while any(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "the workers did not finish"
        busy = [p for p in procs if workers.busy(p)]
        if kills < 6 and busy:
            time.sleep(rng.uniform(0.1, 0.3))
            victim = rng.choice(busy)
            victim.kill()  # mid-lease: its task is reclaimed once the lease expires
            kills += 1
            procs.append(workers.start())  # a new pod joins
            joined += 1
        time.sleep(0.02)
    for p in procs:
        _, err = p.communicate()
        assert p.returncode in (0, -9), err
    assert kills >= 4 and sum(p.returncode == 0 for p in procs) >= 3
    with WorkQueue("work", store=queue_url, handle_signals=False) as q:
        counts = q.counts()
    assert counts.total == counts.done == n // workers.cfg["size"]
    ids = [row[0] for row in workers.output()]
    assert set(ids) == set(range(n))  # every item
    if workers.pg:
        assert len(ids) == n  # exactly once: a killed worker's transaction never committed


def test_a_zombie_worker_is_fenced(tmp_path: Path, queue_url: str) -> None:
    workers = Workers(tmp_path, queue_url, n=200, size=50)
    zombie = workers.start(sleep=1.0)
    assert zombie.stdout is not None
    line = zombie.stdout.readline().split()
    assert line[0] == "claimed"
    key, epoch = line[1], int(line[2])
    zombie.send_signal(signal.SIGSTOP)  # a long pause: no heartbeat, the lease runs out
    try:
        time.sleep(1.5)
        healthy = workers.start()
        out, err = healthy.communicate(timeout=30)
        assert healthy.returncode == 0, err
        # It took the zombie's task over, at a higher epoch.
        taken = [int(w[2]) for w in (x.split() for x in out.splitlines()) if w[:2] == ["claimed", key]]
        assert taken and 0 < taken[0] - epoch <= EPOCH_STEP, out
    finally:
        zombie.send_signal(signal.SIGCONT)
    _, err = zombie.communicate(timeout=30)
    assert zombie.returncode == 75, err  # Fenced: exit 75, nothing written
    assert "lost its lease" in err and "Traceback" not in err
    rows = workers.output()
    start, stop = (int(x) for x in key.split("-"))
    # PostgreSQL: the zombie's transaction rolled back. Redis: its appended output stays (at least once).
    assert sorted(r[0] for r in rows if r[2] == zombie.pid) == ([] if workers.pg else list(range(start, stop)))
    assert sorted(r[0] for r in rows if r[2] != zombie.pid) == list(range(200))  # the healthy one did it all
